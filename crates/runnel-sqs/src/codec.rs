//! The CloudEvents mapping of a [`Message`] onto an SNS/SQS message.
//!
//! There is no official CloudEvents binding for SQS or SNS, so this follows the spirit of
//! the binary content mode of the HTTP binding, which a plain consumer can reuse as is:
//!
//! * **binary mode** (the normal case): every CloudEvents attribute is a `String` message
//!   attribute named `ce-{attribute}` (`ce-id`, `ce-type`, `ce-source`, `ce-specversion`,
//!   `ce-time`, `ce-subject`, `ce-partitionkey` = the ordering key, `ce-correlationid`,
//!   `ce-causationid`, `ce-traceparent`, and `ce-{name}` for extension-named headers),
//!   `datacontenttype` is the `content-type` attribute, other headers are attributes of
//!   their own name, and the message body is the data. A consumer hands the attributes to
//!   any CloudEvents HTTP-binding parser as headers.
//! * **structured mode** when binary mode cannot carry the message: SNS and SQS allow at
//!   most [`ATTRIBUTES_MAX`] attributes per message, no empty attribute values, and a body
//!   of non-empty XML-safe text. Then the body is the CloudEvents JSON document
//!   (`data`, or `data_base64` for bytes that are not text or not canonical JSON), the one
//!   attribute is `content-type: application/cloudevents+json; charset=UTF-8`, and headers
//!   that are not valid extension names travel as the extension `runnelheaders` (a JSON
//!   object), so every field still round-trips exactly.
//!
//! The plain `event-type` / `event-id` headers of the other transports are left out: they
//! would cost two of the ten attributes and repeat `ce-type` / `ce-id`.
//!
//! **Trace context within the attribute budget.** In binary mode the W3C trace context
//! travels as `ce-traceparent` / `ce-tracestate` (the CloudEvents distributed tracing
//! extension) and counts against the ten like every attribute; the plain `traceparent` /
//! `tracestate` duplicates the other transports send are left out. When a message needs
//! more than ten attributes it goes structured (nothing is lost: the document carries
//! everything), and then the trace context is also sent as the plain attributes
//! `traceparent` and `tracestate` beside `content-type` (three of ten), so tracing tools
//! that read message attributes see it without parsing the body. With a mapped envelope
//! (`envelope=raw`, …) the mapping's own attributes come first; the trace attributes
//! are added while the budget lasts and are dropped first when it does not, `tracestate`
//! before `traceparent` — the only attributes ever dropped, never the message's own.
//!
//! Both modes are read, whoever wrote them; a structured body is recognised by its
//! content-type attribute, or without one by a JSON body holding `specversion`.
//!
//! Messages that are not CloudEvents are read and written through a mapped [`Envelope`]
//! (the bus URL's `envelope=` parameter or the subscription's own): the seeds' plain
//! `Event` JSON as the body (`envelope=json-event`), an outbox relay's records
//! (`envelope=outbox-record`), or any text body (`envelope=raw`). The broker's id of a
//! message is its SQS `MessageId`, its key the `MessageGroupId` of a FIFO queue, its time
//! `SentTimestamp`.

use std::collections::BTreeMap;

use runnel_core::cloudevents::{
    self, BinaryMapping, EVENT_ID_HEADER, EVENT_TYPE_HEADER, TRACEPARENT_HEADER, TRACESTATE_HEADER,
};
use runnel_core::envelope::{BrokerFacts, Envelope, Incoming};
use runnel_core::{BusError, Message};
use serde_json::{Map, Value};

use crate::config::WIRE_MESSAGE_BYTES_MAX;
use crate::names::fifo_id;

/// SNS's and SQS's limit of message attributes per message.
pub const ATTRIBUTES_MAX: usize = 10;
/// The attribute naming of binary mode (that of the CloudEvents HTTP binding, without the
/// plain W3C trace duplicates: see the module docs on the attribute budget).
pub const MAPPING: BinaryMapping = BinaryMapping {
    w3c_trace_headers: false,
    ..cloudevents::HTTP
};
/// The content type marking a structured-mode body.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";
/// The extension carrying non-extension-named headers in structured mode.
pub const HEADERS_EXTENSION: &str = "runnelheaders";

/// A message as it goes on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireMessage {
    pub body: String,
    /// `String` message attributes.
    pub attributes: Vec<(String, String)>,
    /// `MessageGroupId`: the ordering key, or the message id for keyless messages (so
    /// they do not serialise behind each other).
    pub group_id: String,
    /// `MessageDeduplicationId`: the message id.
    pub deduplication_id: String,
}

/// Whether SQS accepts `s` as text (its XML 1.0 character rule).
fn is_sqs_text(s: &str) -> bool {
    s.chars().all(|c| {
        matches!(c, '\u{9}' | '\u{a}' | '\u{d}' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
    })
}

/// The `MessageGroupId` of `message`: its key, or its id when it has none.
pub fn encode_group_id(message: &Message) -> String {
    fifo_id(message.key.as_deref().unwrap_or(&message.id))
}

/// Encodes `message` as `envelope` shapes it: CloudEvents (binary mode where it fits,
/// structured otherwise), or a mapped shape.
pub fn encode(message: &Message, envelope: &Envelope) -> Result<WireMessage, BusError> {
    match envelope.encode(message)? {
        None => encode_cloudevents(message),
        Some(out) => {
            let invalid = |reason: String| BusError::InvalidMessage {
                id: message.id.chars().take(64).collect(),
                reason: format!("envelope={envelope}: {reason}"),
            };
            let body = String::from_utf8(out.body)
                .ok()
                .filter(|b| !b.is_empty() && is_sqs_text(b))
                .ok_or_else(|| {
                    invalid("SQS carries a non-empty text body only; this one is not".into())
                })?;
            let mut attributes: Vec<(String, String)> = out
                .headers
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .collect();
            drop_trace_attributes_over_budget(&mut attributes);
            if attributes.len() > ATTRIBUTES_MAX {
                return Err(invalid(format!(
                    "{} message attributes, over SNS/SQS's {ATTRIBUTES_MAX}; send fewer headers",
                    attributes.len()
                )));
            }
            if let Some((k, _)) = attributes.iter().find(|(_, v)| !is_sqs_text(v)) {
                return Err(invalid(format!("attribute {k:?} is not SQS text")));
            }
            let wire = WireMessage {
                body,
                attributes,
                group_id: encode_group_id(message),
                deduplication_id: fifo_id(&message.id),
            };
            check_size(message, &wire)?;
            Ok(wire)
        }
    }
}

/// Drops the plain trace attributes while `attributes` is over [`ATTRIBUTES_MAX`]:
/// `tracestate` first, then `traceparent` (see the module docs).
fn drop_trace_attributes_over_budget(attributes: &mut Vec<(String, String)>) {
    for name in [TRACESTATE_HEADER, TRACEPARENT_HEADER] {
        if attributes.len() <= ATTRIBUTES_MAX {
            return;
        }
        attributes.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }
}

fn check_size(message: &Message, wire: &WireMessage) -> Result<(), BusError> {
    let size = wire_size(wire);
    if size > WIRE_MESSAGE_BYTES_MAX {
        return Err(BusError::InvalidMessage {
            id: message.id.chars().take(64).collect(),
            reason: format!(
                "encoded with its attributes and headers the message is {size} bytes, over \
                 SNS/SQS's {WIRE_MESSAGE_BYTES_MAX}-byte limit; send large payloads by \
                 reference with a claim-check (`runnel::outbox::ClaimCheckPublisher`)"
            ),
        });
    }
    Ok(())
}

fn encode_cloudevents(message: &Message) -> Result<WireMessage, BusError> {
    let group_id = encode_group_id(message);
    let deduplication_id = fifo_id(&message.id);
    let attributes: Vec<(String, String)> = cloudevents::to_binary(message, MAPPING)
        .into_iter()
        .filter(|(k, _)| k != EVENT_TYPE_HEADER && k != EVENT_ID_HEADER)
        .collect();
    let body_text = std::str::from_utf8(&message.payload).ok();
    let binary_fits = attributes.len() <= ATTRIBUTES_MAX
        && attributes.iter().all(|(k, v)| {
            !v.is_empty() && is_sqs_text(v) && !k.starts_with("AWS.") && !k.starts_with("Amazon.")
        })
        && body_text.is_some_and(|b| !b.is_empty() && is_sqs_text(b));
    let wire = match body_text {
        Some(body) if binary_fits => WireMessage {
            body: body.to_string(),
            attributes,
            group_id,
            deduplication_id,
        },
        _ => {
            let mut attributes = vec![(
                MAPPING.content_type_header.to_string(),
                STRUCTURED_CONTENT_TYPE.to_string(),
            )];
            for (name, value) in [
                (TRACEPARENT_HEADER, &message.traceparent),
                (TRACESTATE_HEADER, &message.tracestate),
            ] {
                if let Some(v) = value.as_ref().filter(|v| !v.is_empty() && is_sqs_text(v)) {
                    attributes.push((name.to_string(), v.clone()));
                }
            }
            WireMessage {
                body: structured(message),
                attributes,
                group_id,
                deduplication_id,
            }
        }
    };
    check_size(message, &wire)?;
    Ok(wire)
}

/// Bytes SNS/SQS count against their size limit: body plus attribute names, types, values.
pub fn wire_size(wire: &WireMessage) -> usize {
    wire.body.len()
        + wire
            .attributes
            .iter()
            .map(|(k, v)| k.len() + "String".len() + v.len())
            .sum::<usize>()
}

fn structured(message: &Message) -> String {
    let doc = cloudevents::to_structured(message);
    let mut map: Map<String, Value> = match serde_json::from_slice(&doc) {
        Ok(Value::Object(m)) => m,
        // to_structured always writes an object; keep its text if that ever changes.
        _ => return String::from_utf8_lossy(&doc).into_owned(),
    };
    // `data` re-serialises the JSON payload: keep it only when that is byte-exact.
    if let Some(data) = map.get("data") {
        let exact = serde_json::to_vec(data).is_ok_and(|b| b == message.payload);
        if !exact {
            map.remove("data");
            map.insert(
                "data_base64".into(),
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    &message.payload,
                )
                .into(),
            );
        }
    }
    let plain: BTreeMap<&str, &str> = message
        .headers
        .iter()
        .filter(|(k, _)| !map.contains_key(k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if !plain.is_empty() {
        let text = serde_json::to_string(&plain).unwrap_or_default();
        map.insert(HEADERS_EXTENSION.into(), text.into());
    }
    serde_json::to_string(&Value::Object(map)).unwrap_or_default()
}

/// What SQS knows of a received message from `topic`: its `MessageId`, its
/// `MessageGroupId` (FIFO queues), its `SentTimestamp`.
pub fn broker_facts(m: &aws_sdk_sqs::types::Message, topic: &str) -> BrokerFacts {
    use aws_sdk_sqs::types::MessageSystemAttributeName as Name;
    let sys = m.attributes();
    let attribute = |name: &Name| sys.and_then(|a| a.get(name)).cloned();
    BrokerFacts {
        id: m.message_id().unwrap_or_default().to_string(),
        key: attribute(&Name::MessageGroupId),
        time: attribute(&Name::SentTimestamp)
            .and_then(|t| t.parse::<i64>().ok())
            .and_then(runnel_core::chrono::DateTime::from_timestamp_millis),
        origin: format!("sqs:{topic}"),
    }
}

/// Decodes a received message from its body and `String` attributes, as `envelope` says.
pub fn decode<I>(
    body: &str,
    attributes: I,
    envelope: &Envelope,
    broker: BrokerFacts,
) -> Result<Message, BusError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut message = envelope.decode(
        Incoming {
            headers: attributes.into_iter().collect(),
            body: body.as_bytes().to_vec(),
            broker,
        },
        MAPPING,
    )?;
    if envelope.is_cloudevents() {
        if let Some(text) = message.headers.remove(HEADERS_EXTENSION) {
            let plain: BTreeMap<String, String> =
                serde_json::from_str(&text).map_err(|e| BusError::InvalidMessage {
                    id: message.id.clone(),
                    reason: format!("the {HEADERS_EXTENSION} extension is not a JSON object: {e}"),
                })?;
            message.headers.extend(plain);
        }
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_core::chrono::{DateTime, Utc};

    fn full() -> Message {
        let mut m = Message::json(
            "OrderPlaced",
            &serde_json::json!({"order": 7, "note": "ü ✓"}),
        )
        .with_key("Order-7")
        .with_subject("Order-7")
        .with_header("tenant", "acme")
        .with_header("x-app-header", "some value");
        m.correlation_id = Some("corr".into());
        m.causation_id = Some("cause".into());
        m.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        m.time = Some(
            DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123456Z")
                .expect("time")
                .with_timezone(&Utc),
        );
        m
    }

    fn round_trip(m: &Message) -> (WireMessage, Message) {
        let wire = encode(m, &Envelope::CloudEvents).expect("encode");
        let back = decode(
            &wire.body,
            wire.attributes.clone(),
            &Envelope::CloudEvents,
            BrokerFacts::new("sqs-1", "sqs:t"),
        )
        .expect("decode");
        (wire, back)
    }

    #[test]
    fn small_messages_use_binary_mode() {
        let m = Message::json("Tested", &serde_json::json!({"n": 1}))
            .with_key("k")
            .with_header("conformance-n", "1");
        let (wire, back) = round_trip(&m);
        assert!(wire.attributes.len() <= ATTRIBUTES_MAX);
        assert!(wire
            .attributes
            .iter()
            .any(|(k, v)| k == "ce-id" && *v == m.id));
        assert_eq!(wire.body, "{\"n\":1}");
        assert_eq!(wire.group_id, "k");
        assert_eq!(wire.deduplication_id, m.id);
        assert_eq!(back, m);
    }

    #[test]
    fn rich_empty_and_binary_messages_use_structured_mode_and_round_trip() {
        let m = full();
        let (wire, back) = round_trip(&m);
        // content-type, and the trace context as a plain attribute beside the document.
        assert_eq!(wire.attributes.len(), 2, "{:?}", wire.attributes);
        assert_eq!(back, m);

        let mut bytes = Message::json("Blob", &serde_json::json!(null)).with_key("b");
        bytes.content_type = "application/octet-stream".into();
        bytes.payload = (0..=255u8).collect();
        bytes.time = None;
        assert_eq!(round_trip(&bytes).1, bytes);

        let mut empty = Message::json("Ping", &serde_json::json!({}));
        empty.payload = Vec::new();
        assert_eq!(round_trip(&empty).1, empty);

        let mut spaced = Message::json("Spaced", &serde_json::json!({}));
        spaced.payload = b"{ \"a\" : 1 }".to_vec();
        spaced.headers.insert("h".into(), String::new());
        assert_eq!(round_trip(&spaced).1, spaced);
    }

    fn attribute<'a>(wire: &'a WireMessage, name: &str) -> Option<&'a str> {
        wire.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn trace_context_fits_the_sqs_attribute_budget() {
        const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        // Binary mode: the trace context is the ce- attributes, no plain duplicates.
        let mut small = Message::json("Tested", &serde_json::json!({"n": 1}));
        small.traceparent = Some(PARENT.into());
        small.tracestate = Some("vendor=x".into());
        let (wire, back) = round_trip(&small);
        assert!(wire.attributes.len() <= ATTRIBUTES_MAX);
        assert_eq!(attribute(&wire, "ce-traceparent"), Some(PARENT));
        assert_eq!(attribute(&wire, "ce-tracestate"), Some("vendor=x"));
        assert_eq!(attribute(&wire, "traceparent"), None);
        assert_eq!(back, small);

        // Over ten attributes: structured, with the plain trace attributes beside it.
        let mut rich = full();
        rich.tracestate = Some("vendor=x".into());
        let (wire, back) = round_trip(&rich);
        assert_eq!(wire.attributes.len(), 3);
        assert_eq!(attribute(&wire, "traceparent"), rich.traceparent.as_deref());
        assert_eq!(attribute(&wire, "tracestate"), Some("vendor=x"));
        assert_eq!(
            back, rich,
            "the trace attributes are not read back as headers"
        );

        // A mapped envelope: the message's own attributes first; the trace attributes
        // are dropped when the budget runs out, tracestate before traceparent.
        // raw: event-type, event-id, event-source, event-time, content-type + 4 headers = 9.
        let raw = Envelope::Mapped(runnel_core::envelope::Mapping::raw().into());
        let mut nine = Message::json("T", &serde_json::json!({}));
        for i in 0..4 {
            nine.headers.insert(format!("h{i}"), "v".into());
        }
        nine.traceparent = Some(PARENT.into());
        nine.tracestate = Some("vendor=x".into());
        let wire = encode(&nine, &raw).expect("encode");
        let names: Vec<&str> = wire.attributes.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(wire.attributes.len(), ATTRIBUTES_MAX, "{names:?}");
        assert_eq!(attribute(&wire, "traceparent"), Some(PARENT));
        assert_eq!(attribute(&wire, "tracestate"), None);
        nine.headers.insert("h4".into(), "v".into());
        let wire = encode(&nine, &raw).expect("encode");
        assert_eq!(attribute(&wire, "traceparent"), None);
        assert_eq!(wire.attributes.len(), ATTRIBUTES_MAX);
    }

    #[test]
    fn keyless_messages_group_by_their_id() {
        let m = Message::json("T", &serde_json::json!({}));
        assert_eq!(
            encode(&m, &Envelope::CloudEvents).expect("encode").group_id,
            m.id
        );
    }

    #[test]
    fn over_the_wire_limit_is_a_typed_error() {
        let mut m = Message::json("T", &serde_json::json!({}));
        m.payload = vec![0xff; 200 * 1024];
        let err = encode(&m, &Envelope::CloudEvents).unwrap_err();
        assert!(err.to_string().contains("claim-check"), "{err}");
    }
}
