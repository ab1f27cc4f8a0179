//! [`Message`] ⇄ AMQP 0-9-1 message, following the CloudEvents AMQP protocol binding.
//!
//! Written in binary mode: attributes as `cloudEvents:`-prefixed application properties
//! (headers), `datacontenttype` as the `content-type` property, the data as the body. Read
//! in binary mode (also with the binding's `cloudEvents_` prefix) and in structured mode
//! (`content-type: application/cloudevents+json`, the whole event as the body).
//!
//! Messages that are not CloudEvents are read and written through a mapped [`Envelope`]
//! (the bus URL's `envelope=` parameter or the subscription's own): the seeds' plain
//! `Event` JSON with `event-type` / `event-source` headers (`envelope=json-event`), an
//! outbox relay's records (`envelope=outbox-record`) or any body (`envelope=raw`). The
//! broker's id of a message is its `message-id` property (else its stream offset, else a
//! fresh id: give such messages a `message-id` so redeliveries keep theirs), its time the
//! `timestamp` property.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use runnel_core::chrono::{DateTime, Utc};
use runnel_core::cloudevents::{self, AMQP};
use runnel_core::envelope::{BrokerFacts, Envelope, Incoming};
use runnel_core::{BusError, Message};

/// `delivery_mode` of persistent messages.
pub(crate) const PERSISTENT: u8 = 2;
/// The AMQP binding's alternative prefix (for systems that do not allow `:` in names);
/// read as well as the canonical `cloudEvents:`.
const ALTERNATIVE_PREFIX: &str = "cloudevents_";
/// Header the broker sets on quorum-queue redeliveries (deliveries lost before).
pub(crate) const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// Header marking a fence Runnel writes into a topic's stream (never a message).
pub(crate) const FENCE_HEADER: &str = "runnel-fence";
/// Headers the broker adds; they are not part of the message.
const BROKER_HEADER_PREFIXES: &[&str] = &[
    DELIVERY_COUNT_HEADER,
    "x-death",
    "x-first-death-",
    "x-last-death-",
    "x-stream-offset",
    "x-stream-filter",
    "x-received-from",
    FENCE_HEADER,
];
/// Longest AMQP short string (properties such as `message-id` and `content-type`).
const SHORT_STRING_MAX: usize = 255;

/// The AMQP properties (persistent, CloudEvents headers) of `message`.
pub(crate) fn to_amqp(message: &Message) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
    for (name, value) in cloudevents::to_binary(message, AMQP) {
        if name == AMQP.content_type_header {
            if value.len() <= SHORT_STRING_MAX {
                properties = properties.with_content_type(ShortString::from(value));
            } else {
                headers.insert(
                    format!("{}datacontenttype", AMQP.prefix).into(),
                    AMQPValue::LongString(LongString::from(value)),
                );
            }
            continue;
        }
        headers.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
    if message.id.len() <= SHORT_STRING_MAX {
        properties = properties.with_message_id(ShortString::from(message.id.clone()));
    }
    properties.with_headers(headers)
}

/// The AMQP properties of `message` as `envelope` shapes it, and its body when that is not
/// the payload itself (`None`: send `message.payload` as it is, no copy).
pub(crate) fn encode(
    message: &Message,
    envelope: &Envelope,
) -> Result<(BasicProperties, Option<Vec<u8>>), BusError> {
    let Some(out) = envelope.encode(message)? else {
        return Ok((to_amqp(message), None));
    };
    let mut headers = FieldTable::default();
    let mut properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
    for (name, value) in out.headers {
        if name.eq_ignore_ascii_case(AMQP.content_type_header) && value.len() <= SHORT_STRING_MAX {
            properties = properties.with_content_type(ShortString::from(value));
            continue;
        }
        if name.len() > SHORT_STRING_MAX {
            return Err(BusError::InvalidMessage {
                id: message.id.chars().take(64).collect(),
                reason: format!("header name {name:?} is over 255 bytes"),
            });
        }
        headers.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
    if message.id.len() <= SHORT_STRING_MAX {
        properties = properties.with_message_id(ShortString::from(message.id.clone()));
    }
    if let Some(seconds) = message.time.and_then(|t| u64::try_from(t.timestamp()).ok()) {
        properties = properties.with_timestamp(seconds);
    }
    Ok((properties.with_headers(headers), Some(out.body)))
}

/// The broker's facts of a delivery from the topic `origin`.
fn broker_facts(properties: &BasicProperties, origin: &str) -> BrokerFacts {
    let stream_offset = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-stream-offset").cloned())
        .and_then(|v| value_text(&v));
    let id = match (properties.message_id(), stream_offset) {
        (Some(id), _) => id.to_string(),
        (None, Some(offset)) => format!("amqp:{origin}/{offset}"),
        (None, None) => runnel_core::uuid::Uuid::now_v7().to_string(),
    };
    // AMQP 0-9-1 timestamps are seconds; some clients write milliseconds.
    let time = properties.timestamp().and_then(|t| {
        let t = i64::try_from(t).ok()?;
        if t > 100_000_000_000 {
            DateTime::<Utc>::from_timestamp_millis(t)
        } else {
            DateTime::<Utc>::from_timestamp(t, 0)
        }
    });
    BrokerFacts {
        time,
        ..BrokerFacts::new(id, format!("amqp:{origin}"))
    }
}

/// The message in an AMQP delivery from the topic `origin`, read as `envelope` says.
pub(crate) fn from_amqp(
    properties: &BasicProperties,
    body: Vec<u8>,
    envelope: &Envelope,
    origin: &str,
) -> Result<Message, BusError> {
    let broker = broker_facts(properties, origin);
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(headers) = properties.headers() {
        for (name, value) in headers.inner() {
            let name = name.as_str();
            let lower = name.to_ascii_lowercase();
            if BROKER_HEADER_PREFIXES.iter().any(|p| lower.starts_with(p)) {
                continue;
            }
            let name = match lower.strip_prefix(ALTERNATIVE_PREFIX) {
                Some(attribute) => format!("{}{attribute}", AMQP.prefix),
                None => name.to_string(),
            };
            let is_time = name.eq_ignore_ascii_case(TIME_ATTRIBUTE);
            let Some(value) = time_text(is_time, value).or_else(|| value_text(value)) else {
                continue;
            };
            pairs.push((name, value));
        }
    }
    if let Some(ct) = properties.content_type() {
        pairs.push((AMQP.content_type_header.to_string(), ct.to_string()));
    }
    envelope.decode(
        Incoming {
            headers: pairs,
            body,
            broker,
        },
        AMQP,
    )
}

/// The `time` attribute's header in the canonical prefix.
const TIME_ATTRIBUTE: &str = "cloudEvents:time";

/// A `time` attribute sent as a native AMQP value, as RFC 3339: an AMQP 0-9-1 timestamp
/// (seconds) or an integer of milliseconds (the AMQP 1.0 timestamp, which the CloudEvents
/// SDKs write).
fn time_text(is_time: bool, value: &AMQPValue) -> Option<String> {
    if !is_time {
        return None;
    }
    let at = match value {
        AMQPValue::Timestamp(seconds) => {
            DateTime::<Utc>::from_timestamp(i64::try_from(*seconds).ok()?, 0)?
        }
        AMQPValue::LongLongInt(ms) => DateTime::<Utc>::from_timestamp_millis(*ms)?,
        AMQPValue::LongInt(ms) => DateTime::<Utc>::from_timestamp_millis(i64::from(*ms))?,
        AMQPValue::LongUInt(ms) => DateTime::<Utc>::from_timestamp_millis(i64::from(*ms))?,
        _ => return None,
    };
    Some(at.to_rfc3339())
}

/// The text of a header value: strings as they are, numbers and booleans printed; tables
/// and arrays are not message headers.
fn value_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        _ => return None,
    })
}

/// An integer header value.
pub(crate) fn header_int(properties: &BasicProperties, name: &str) -> Option<i64> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        _ => None,
    }
}

/// The attempt number of a delivery: the quorum queue's delivery count (deliveries lost
/// with a consumer) plus one; the `redelivered` flag means at least the second.
pub(crate) fn broker_attempt(properties: &BasicProperties, redelivered: bool) -> u32 {
    let counted = header_int(properties, DELIVERY_COUNT_HEADER)
        .map(|n| {
            u32::try_from(n.max(0))
                .unwrap_or(u32::MAX)
                .saturating_add(1)
        })
        .unwrap_or(1);
    if redelivered {
        counted.max(2)
    } else {
        counted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut m = Message::json("OrderPlaced", &serde_json::json!({"order": 7}))
            .with_key("Order-7")
            .with_header("tenant", "acme")
            .with_header("x-app-header", "v");
        m.time = Some(
            DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
        );
        let props = to_amqp(&m);
        assert_eq!(*props.delivery_mode(), Some(PERSISTENT));
        let back = from_amqp(&props, m.payload.clone(), &Envelope::CloudEvents, "t").unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn alternative_prefix_and_broker_headers() {
        let mut headers = FieldTable::default();
        for (k, v) in [
            ("cloudEvents_specversion", "1.0"),
            ("cloudEvents_id", "e-1"),
            ("cloudEvents_type", "T"),
            ("cloudEvents_source", "/s"),
        ] {
            headers.insert(k.into(), AMQPValue::LongString(v.into()));
        }
        headers.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::LongLongInt(2));
        headers.insert(
            "cloudEvents_time".into(),
            AMQPValue::LongLongInt(1_763_805_600_123),
        );
        let props = BasicProperties::default().with_headers(headers);
        let m = from_amqp(&props, b"{}".to_vec(), &Envelope::CloudEvents, "t").unwrap();
        assert_eq!((m.id.as_str(), m.event_type.as_str()), ("e-1", "T"));
        assert!(m.headers.is_empty(), "{:?}", m.headers);
        assert_eq!(
            m.time.map(|t| t.to_rfc3339()).as_deref(),
            Some("2025-11-22T10:00:00.123+00:00")
        );
        assert_eq!(broker_attempt(&props, true), 3);
        assert_eq!(broker_attempt(&BasicProperties::default(), false), 1);
        assert_eq!(broker_attempt(&BasicProperties::default(), true), 2);
    }
}
