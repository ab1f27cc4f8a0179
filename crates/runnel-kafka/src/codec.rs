//! The CloudEvents Kafka protocol binding, binary content mode: attributes travel as
//! `ce_`-prefixed record headers, `content-type` as a header, the data as the record value
//! and the ordering key as the record key (also `ce_partitionkey`).
//!
//! Written in binary mode; read in binary mode and in structured mode (content type
//! `application/cloudevents+json`, the whole event as the record value).
//!
//! Records that are not CloudEvents are read (and written) through a mapped [`Envelope`]
//! (the bus URL's `envelope=` parameter, or the subscription's own): the seeds' plain
//! `Event` JSON with `event-type` / `event-source` headers (`envelope=json-event`), an
//! outbox relay's records (`envelope=outbox-record`), or any value as it is
//! (`envelope=raw`). The broker's id of a record is `kafka:TOPIC/PARTITION/OFFSET`, its
//! key the record key, its time the record timestamp. Without a matching envelope a record
//! goes to the dead-letter topic with the reason, never silently into a handler.

use rdkafka::message::{Header, Headers, OwnedHeaders};
use runnel_core::cloudevents::{self, KAFKA};
use runnel_core::envelope::{BrokerFacts, Envelope, Incoming, Mapping};
use runnel_core::{BusError, Message};

/// The record headers of `message` as `envelope` shapes it, and its value when that is not
/// the payload itself (`None`: send `message.payload` as it is, no copy).
pub fn encode(
    message: &Message,
    envelope: &Envelope,
) -> Result<(OwnedHeaders, Option<Vec<u8>>), BusError> {
    let Some(out) = envelope.encode(message)? else {
        return Ok((to_headers(message), None));
    };
    let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
    for (name, value) in &out.headers {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    }
    Ok((headers, Some(out.body)))
}

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
    /// The record timestamp, milliseconds since the Unix epoch.
    pub timestamp: Option<i64>,
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
            timestamp: m.timestamp().to_millis(),
        }
    }

    /// The record as a [`Message`], read as `envelope` says.
    pub fn to_message(&self, topic: &str, envelope: &Envelope) -> Result<Message, BusError> {
        let mut m = envelope.decode(self.incoming(topic), KAFKA)?;
        if m.key.is_none() {
            m.key = self.key_text();
        }
        Ok(m)
    }

    /// A record that could not be read, kept whole as a message (the value as it is, its
    /// headers except CloudEvents attributes), bound for the dead-letter topic.
    pub fn undecodable(&self, topic: &str) -> Message {
        let mut incoming = self.incoming(topic);
        incoming
            .headers
            .retain(|(k, _)| !k.to_ascii_lowercase().starts_with(KAFKA.prefix));
        Envelope::Mapped(Mapping::raw().into())
            .decode(incoming, KAFKA)
            .unwrap_or_else(|_| {
                let mut m = Message::json(
                    runnel_core::envelope::RAW_EVENT_TYPE,
                    &serde_json::Value::Null,
                );
                m.id = self.broker_id(topic);
                m.content_type = "application/octet-stream".into();
                m.payload = self.payload.clone();
                m
            })
    }

    fn broker_id(&self, topic: &str) -> String {
        format!("kafka:{topic}/{}/{}", self.partition, self.offset)
    }

    fn incoming(&self, topic: &str) -> Incoming {
        let text = |v: &Option<Vec<u8>>| {
            v.as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        Incoming {
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), text(v)))
                .collect(),
            body: self.payload.clone(),
            broker: BrokerFacts {
                id: self.broker_id(topic),
                key: self.key_text(),
                time: self
                    .timestamp
                    .and_then(runnel_core::chrono::DateTime::from_timestamp_millis),
                origin: format!("kafka:{topic}"),
            },
        }
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
            timestamp: None,
        };
        assert!(record.headers.iter().any(|(k, _)| k == "ce_specversion"));
        assert_eq!(
            record.to_message("orders", &Envelope::CloudEvents).unwrap(),
            m
        );
    }

    #[test]
    fn plain_records_are_refused_by_default_and_read_raw_on_request() {
        let record = Record {
            partition: 2,
            offset: 9,
            key: Some(b"k".to_vec()),
            headers: vec![("x".into(), Some(b"y".to_vec()))],
            payload: b"raw".to_vec(),
            timestamp: Some(1_765_015_200_000),
        };
        let err = record
            .to_message("orders", &Envelope::CloudEvents)
            .unwrap_err();
        assert!(err.to_string().contains("envelope="), "{err}");
        let m = record
            .to_message("orders", &Envelope::Mapped(Mapping::raw().into()))
            .unwrap();
        assert_eq!(m.id, "kafka:orders/2/9");
        assert_eq!(m.event_type, runnel_core::envelope::RAW_EVENT_TYPE);
        assert_eq!(m.key.as_deref(), Some("k"));
        assert_eq!(m.payload, b"raw");
        assert_eq!(
            m.time.map(|t| t.timestamp_millis()),
            Some(1_765_015_200_000)
        );
        assert_eq!(m.headers.get("x").map(String::as_str), Some("y"));

        let kept = record.undecodable("orders");
        assert_eq!(kept.payload, b"raw");
        assert_eq!(kept.id, "kafka:orders/2/9");
    }
}
