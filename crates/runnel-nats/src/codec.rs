//! [`Message`] ⇄ NATS message: the CloudEvents NATS protocol binding.
//!
//! Binary mode: attributes travel as `ce-` headers (the HTTP header mapping, which the
//! NATS binding uses for NATS headers), `content-type` carries `datacontenttype`, the body
//! is the payload bytes. `Nats-Msg-Id` is the message id, so JetStream drops a republish
//! of the same message within the stream's duplicate window. Messages from other
//! publishers in structured mode (`content-type: application/cloudevents+json`, the whole
//! event as one JSON document) are read too, and so is a JSON body holding `specversion`
//! without a content type.
//!
//! Messages that are not CloudEvents are read and written through a mapped
//! [`Envelope`] (the bus URL's `envelope=` parameter or the subscription's own): the seeds'
//! plain `Event` JSON (`envelope=json-event`), an outbox relay's records
//! (`envelope=outbox-record`), or any body (`envelope=raw`). The broker's id of a message
//! is `nats:STREAM/SEQUENCE`; its time the JetStream publish time.

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use runnel_core::cloudevents::{self, HTTP};
use runnel_core::envelope::{BrokerFacts, Envelope, Incoming};
use runnel_core::{BusError, Message};

/// The JetStream deduplication header.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Header names starting with this are the server's (`Nats-Msg-Id`,
/// `Nats-Expected-...`); messages may not carry their own.
const RESERVED_HEADER_PREFIX: &str = "nats-";

/// Checks what the generic validation does not: header names and values NATS can carry.
pub fn validate_for_nats(message: &Message) -> Result<(), BusError> {
    let invalid = |reason: String| BusError::InvalidMessage {
        id: message.id.chars().take(64).collect(),
        reason,
    };
    for (k, v) in &message.headers {
        if k.to_ascii_lowercase().starts_with(RESERVED_HEADER_PREFIX) {
            return Err(invalid(format!(
                "header {k:?}: names starting with \"Nats-\" are reserved for the server"
            )));
        }
        if k.contains(':') || k.chars().any(|c| c.is_ascii_control() || c == ' ') {
            return Err(invalid(format!(
                "header name {k:?} is not a valid NATS header name"
            )));
        }
        if v.contains(['\r', '\n']) {
            return Err(invalid(format!(
                "header {k:?}: values may not contain line breaks"
            )));
        }
    }
    let fields = [
        &message.id,
        &message.event_type,
        &message.source,
        &message.content_type,
    ];
    let optional = [
        &message.subject,
        &message.key,
        &message.correlation_id,
        &message.causation_id,
        &message.traceparent,
        &message.tracestate,
    ];
    if fields.iter().any(|f| f.contains(['\r', '\n']))
        || optional
            .iter()
            .any(|f| f.as_deref().is_some_and(|f| f.contains(['\r', '\n'])))
    {
        return Err(invalid("attributes may not contain line breaks".into()));
    }
    Ok(())
}

/// The headers of `message` in binary mode, with `Nats-Msg-Id`.
pub fn to_headers(message: &Message) -> Result<HeaderMap, BusError> {
    let mut headers = HeaderMap::new();
    for (name, value) in cloudevents::to_binary(message, HTTP) {
        let name: HeaderName = name.parse().map_err(|_| BusError::InvalidMessage {
            id: message.id.clone(),
            reason: format!("header name {name:?} is not a valid NATS header name"),
        })?;
        headers.insert(name, HeaderValue::from(value.as_str()));
    }
    headers.insert(MSG_ID_HEADER, dedup_id(message).as_str());
    Ok(headers)
}

/// The headers and body of `message` as `envelope` shapes it: CloudEvents binary mode, or
/// a mapped shape; always with `Nats-Msg-Id`.
pub fn encode(message: &Message, envelope: &Envelope) -> Result<(HeaderMap, Bytes), BusError> {
    let Some(out) = envelope.encode(message)? else {
        return Ok((
            to_headers(message)?,
            Bytes::copy_from_slice(&message.payload),
        ));
    };
    let mut headers = HeaderMap::new();
    for (name, value) in out.headers {
        let parsed: HeaderName = name.parse().map_err(|_| BusError::InvalidMessage {
            id: message.id.clone(),
            reason: format!("header name {name:?} is not a valid NATS header name"),
        })?;
        headers.insert(parsed, HeaderValue::from(value.as_str()));
    }
    headers.insert(MSG_ID_HEADER, dedup_id(message).as_str());
    Ok((headers, Bytes::from(out.body)))
}

/// Header the dead-letter replay adds (the id of the dead letter replayed).
const REPLAY_OF_HEADER: &str = "runnelreplayof";

/// The `Nats-Msg-Id` of `message`: its id, so a retried publish is stored once. A
/// deliberate replay from the dead-letter store carries the dead letter's id in
/// `runnelreplayof` and gets its own dedup id, or the server would drop it as a retry of
/// the original within the duplicate window.
pub fn dedup_id(message: &Message) -> String {
    match message.headers.get(REPLAY_OF_HEADER) {
        Some(replay_of) => format!("{}~replay~{replay_of}", message.id),
        None => message.id.clone(),
    }
}

/// Reads a message as `envelope` says (CloudEvents binary or structured mode by default);
/// `broker` is what JetStream knows of it.
pub fn from_nats(
    headers: Option<&HeaderMap>,
    payload: &Bytes,
    envelope: &Envelope,
    broker: BrokerFacts,
) -> Result<Message, BusError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(h) = headers {
        for (name, values) in h.iter() {
            let name: &str = name.as_ref();
            if name
                .to_ascii_lowercase()
                .starts_with(RESERVED_HEADER_PREFIX)
                || is_dead_letter_header(name)
            {
                continue;
            }
            if let Some(v) = values.first() {
                pairs.push((name.to_string(), v.as_str().to_string()));
            }
        }
    }
    envelope.decode(
        Incoming {
            headers: pairs,
            body: payload.to_vec(),
            broker,
        },
        HTTP,
    )
}

/// The broker's facts of a stored message.
pub fn broker_facts(
    stream: &str,
    sequence: u64,
    topic: &str,
    published: Option<runnel_core::chrono::DateTime<runnel_core::chrono::Utc>>,
) -> BrokerFacts {
    BrokerFacts {
        time: published,
        ..BrokerFacts::new(format!("nats:{stream}/{sequence}"), format!("nats:{topic}"))
    }
}

/// Headers the dead-letter stream adds to a copied message.
pub mod dead_letter_headers {
    /// The topic the message was consumed from.
    pub const TOPIC: &str = "Runnel-Dlq-Topic";
    /// The group that gave up on it.
    pub const GROUP: &str = "Runnel-Dlq-Group";
    /// How many deliveries it had.
    pub const ATTEMPTS: &str = "Runnel-Dlq-Attempts";
    /// Why it was dead-lettered.
    pub const REASON: &str = "Runnel-Dlq-Reason";
    /// The stream sequence of the original.
    pub const STREAM_SEQUENCE: &str = "Runnel-Dlq-Stream-Seq";
    /// When it was dead-lettered (RFC 3339).
    pub const AT: &str = "Runnel-Dlq-At";
}

fn is_dead_letter_header(name: &str) -> bool {
    name.to_ascii_lowercase().starts_with("runnel-dlq-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_round_trip_drops_the_dedup_header() {
        let m = Message::json("Tested", &serde_json::json!({"a": 1}))
            .with_key("k")
            .with_header("tenant", "acme")
            .with_header("X-Plain", "v");
        let h = to_headers(&m).expect("headers");
        assert_eq!(
            h.get(MSG_ID_HEADER).map(|v| v.as_str().to_string()),
            Some(m.id.clone())
        );
        let back = from_nats(
            Some(&h),
            &Bytes::from(m.payload.clone()),
            &Envelope::CloudEvents,
            broker_facts("S", 1, "t", None),
        )
        .expect("decode");
        assert_eq!(back, m);
    }

    #[test]
    fn reserved_and_multiline_headers_are_rejected() {
        let m = Message::json("T", &serde_json::json!(1)).with_header("Nats-Foo", "x");
        assert!(validate_for_nats(&m).is_err());
        let m = Message::json("T", &serde_json::json!(1)).with_header("a", "x\r\ny");
        assert!(validate_for_nats(&m).is_err());
    }
}
