//! The CloudEvents Kafka protocol binding, binary content mode: attributes travel as
//! `ce_`-prefixed record headers, `content-type` as a header, the data as the record value
//! and the ordering key as the record key (also `ce_partitionkey`).
//!
//! Records that carry no CloudEvents headers (written by a plain producer) are still
//! delivered: they become messages whose id names the record's position.

use rdkafka::message::{Header, Headers, OwnedHeaders};
use runnel_core::cloudevents::{self, EVENT_ID_HEADER, EVENT_TYPE_HEADER, KAFKA};
use runnel_core::Message;

/// The `type` given to a record written without CloudEvents headers (and without an
/// `event-type` header).
pub const PLAIN_RECORD_TYPE: &str = "kafka.record";

/// The record headers of `message` in binary mode.
pub fn to_headers(message: &Message) -> OwnedHeaders {
    let pairs = cloudevents::to_binary(message, KAFKA);
    let mut headers = OwnedHeaders::new_with_capacity(pairs.len());
    for (name, value) in &pairs {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    }
    headers
}

/// A consumed record, detached from the consumer.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub payload: Vec<u8>,
}

impl Record {
    /// Copies what Runnel needs out of a borrowed record.
    pub fn from_kafka<M: rdkafka::Message>(m: &M) -> Record {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            headers,
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        }
    }

    /// The record as a [`Message`]: binary-mode CloudEvents when it has `ce_` headers,
    /// otherwise a plain record (id `kafka:<topic>/<partition>/<offset>` unless it has an
    /// `event-id` header).
    pub fn to_message(&self, topic: &str) -> Message {
        let text = |v: &Option<Vec<u8>>| {
            v.as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let has_ce = self
            .headers
            .iter()
            .any(|(k, _)| k.to_ascii_lowercase().starts_with(KAFKA.prefix));
        if has_ce {
            let pairs = self.headers.iter().map(|(k, v)| (k.as_str(), text(v)));
            if let Ok(mut m) = cloudevents::from_binary(pairs, self.payload.clone(), KAFKA) {
                if m.key.is_none() {
                    m.key = self.key_text();
                }
                return m;
            }
        }
        let header = |name: &str| {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| text(v))
        };
        let mut m = Message::json(
            header(EVENT_TYPE_HEADER).unwrap_or_else(|| PLAIN_RECORD_TYPE.to_string()),
            &serde_json::Value::Null,
        );
        m.id = header(EVENT_ID_HEADER)
            .unwrap_or_else(|| format!("kafka:{topic}/{}/{}", self.partition, self.offset));
        m.source = format!("kafka:{topic}");
        m.time = None;
        m.content_type = header(KAFKA.content_type_header)
            .unwrap_or_else(|| "application/octet-stream".to_string());
        m.key = self.key_text();
        m.payload = self.payload.clone();
        for (k, v) in &self.headers {
            let lower = k.to_ascii_lowercase();
            if lower != EVENT_TYPE_HEADER
                && lower != EVENT_ID_HEADER
                && lower != KAFKA.content_type_header
            {
                m.headers.insert(k.clone(), text(v));
            }
        }
        m
    }

    fn key_text(&self) -> Option<String> {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_mode_round_trip() {
        let m = Message::json("OrderPlaced", &serde_json::json!({"n": 1}))
            .with_key("Order-1")
            .with_header("tenant", "acme")
            .with_header("x-app", "v");
        let headers = to_headers(&m);
        let record = Record {
            partition: 0,
            offset: 7,
            key: Some(b"Order-1".to_vec()),
            headers: headers
                .iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect(),
            payload: m.payload.clone(),
        };
        assert!(record.headers.iter().any(|(k, _)| k == "ce_specversion"));
        assert_eq!(record.to_message("orders"), m);
    }

    #[test]
    fn plain_records_become_messages() {
        let record = Record {
            partition: 2,
            offset: 9,
            key: Some(b"k".to_vec()),
            headers: vec![("x".into(), Some(b"y".to_vec()))],
            payload: b"raw".to_vec(),
        };
        let m = record.to_message("orders");
        assert_eq!(m.id, "kafka:orders/2/9");
        assert_eq!(m.event_type, PLAIN_RECORD_TYPE);
        assert_eq!(m.key.as_deref(), Some("k"));
        assert_eq!(m.payload, b"raw");
        assert_eq!(m.headers.get("x").map(String::as_str), Some("y"));
    }
}
