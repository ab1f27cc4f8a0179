//! CloudEvents 1.0 mapping of [`Message`]: binary mode (attributes as transport headers,
//! data as the body) and structured mode (one JSON document).
//!
//! Attribute names in binary mode get the transport binding's prefix: `ce_` for Kafka,
//! `ce-` for HTTP and NATS headers, `cloudEvents:` for AMQP. Extensions: `correlationid`,
//! `causationid`, `traceparent` and `tracestate` (the distributed tracing extension) and
//! `partitionkey` (partitioning, = the ordering key). In binary mode the trace context is
//! also written as the plain W3C headers `traceparent` / `tracestate` (when
//! [`BinaryMapping::w3c_trace_headers`] is set), the names OpenTelemetry's messaging
//! instrumentations of Kafka, NATS and RabbitMQ read; on reading, the `ce` attribute wins
//! and the plain header is the fallback. Headers whose names are valid extension names travel as extensions;
//! other headers travel as plain headers. Plain `event-type` and `event-id` headers are
//! always added so consumers that know nothing of CloudEvents can route.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::message::{BusError, Message};

/// The CloudEvents spec version written.
pub const SPEC_VERSION: &str = "1.0";
/// Plain header always carrying the event type.
pub const EVENT_TYPE_HEADER: &str = "event-type";
/// Plain header always carrying the message id.
pub const EVENT_ID_HEADER: &str = "event-id";

/// How a transport names CloudEvents attributes in its headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BinaryMapping {
    /// Prefix of attribute headers.
    pub prefix: &'static str,
    /// Header carrying `datacontenttype`.
    pub content_type_header: &'static str,
    /// Whether the trace context is also written as plain `traceparent` / `tracestate`
    /// headers (SQS leaves them out: every attribute counts against its limit of ten).
    pub w3c_trace_headers: bool,
}

/// The plain W3C header carrying the trace parent.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// The plain W3C header carrying the trace state.
pub const TRACESTATE_HEADER: &str = "tracestate";

/// Kafka protocol binding.
pub const KAFKA: BinaryMapping = BinaryMapping {
    prefix: "ce_",
    content_type_header: "content-type",
    w3c_trace_headers: true,
};
/// HTTP binding (also used for NATS headers).
pub const HTTP: BinaryMapping = BinaryMapping {
    prefix: "ce-",
    content_type_header: "content-type",
    w3c_trace_headers: true,
};
/// AMQP binding (application properties).
pub const AMQP: BinaryMapping = BinaryMapping {
    prefix: "cloudEvents:",
    content_type_header: "content-type",
    w3c_trace_headers: true,
};

fn is_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 20
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// The headers of `message` in binary mode (the body is `message.payload`).
pub fn to_binary(message: &Message, mapping: BinaryMapping) -> Vec<(String, String)> {
    let p = mapping.prefix;
    let mut h = vec![
        (format!("{p}specversion"), SPEC_VERSION.to_string()),
        (format!("{p}id"), message.id.clone()),
        (format!("{p}type"), message.event_type.clone()),
        (format!("{p}source"), message.source.clone()),
        (
            mapping.content_type_header.to_string(),
            message.content_type.clone(),
        ),
        (EVENT_TYPE_HEADER.to_string(), message.event_type.clone()),
        (EVENT_ID_HEADER.to_string(), message.id.clone()),
    ];
    let mut opt = |name: &str, v: &Option<String>| {
        if let Some(v) = v {
            h.push((format!("{p}{name}"), v.clone()));
        }
    };
    opt("subject", &message.subject);
    opt("partitionkey", &message.key);
    opt("correlationid", &message.correlation_id);
    opt("causationid", &message.causation_id);
    opt("traceparent", &message.traceparent);
    opt("tracestate", &message.tracestate);
    if let Some(t) = message.time {
        h.push((format!("{p}time"), t.to_rfc3339()));
    }
    if mapping.w3c_trace_headers {
        if let Some(v) = &message.traceparent {
            h.push((TRACEPARENT_HEADER.to_string(), v.clone()));
        }
        if let Some(v) = &message.tracestate {
            h.push((TRACESTATE_HEADER.to_string(), v.clone()));
        }
    }
    for (k, v) in &message.headers {
        if is_extension_name(k) {
            h.push((format!("{p}{k}"), v.clone()));
        } else {
            h.push((k.clone(), v.clone()));
        }
    }
    h
}

/// Reads a binary-mode message. Header names are matched case-insensitively for the
/// prefix (AMQP and HTTP intermediaries change case).
pub fn from_binary<I, K, V>(
    headers: I,
    payload: Vec<u8>,
    mapping: BinaryMapping,
) -> Result<Message, BusError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: Into<String>,
{
    let prefix = mapping.prefix.to_ascii_lowercase();
    let mut attrs: BTreeMap<String, String> = BTreeMap::new();
    let mut plain: BTreeMap<String, String> = BTreeMap::new();
    let mut content_type = None;
    let mut w3c: (Option<String>, Option<String>) = (None, None);
    for (k, v) in headers {
        let k = k.as_ref();
        let lower = k.to_ascii_lowercase();
        if let Some(name) = lower.strip_prefix(&prefix) {
            attrs.insert(name.to_string(), v.into());
        } else if lower == mapping.content_type_header {
            content_type = Some(v.into());
        } else if lower == TRACEPARENT_HEADER {
            w3c.0 = Some(v.into());
        } else if lower == TRACESTATE_HEADER {
            w3c.1 = Some(v.into());
        } else if lower != EVENT_TYPE_HEADER && lower != EVENT_ID_HEADER {
            plain.insert(k.to_string(), v.into());
        }
    }
    if attrs.is_empty() {
        return Err(BusError::InvalidMessage {
            id: String::new(),
            reason: format!(
                "no CloudEvents attributes (headers starting with {:?})",
                mapping.prefix
            ),
        });
    }
    // The plain W3C headers stand in for missing attributes (a producer instrumented by
    // OpenTelemetry alone sets only them); the state goes with whichever parent is used.
    if !attrs.contains_key("traceparent") {
        if let Some(parent) = w3c.0 {
            attrs.insert("traceparent".into(), parent);
            attrs.remove("tracestate");
            if let Some(state) = w3c.1 {
                attrs.insert("tracestate".into(), state);
            }
        }
    }
    build(attrs, plain, content_type, payload)
}

fn build(
    mut attrs: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
    content_type: Option<String>,
    payload: Vec<u8>,
) -> Result<Message, BusError> {
    let id = attrs.remove("id").unwrap_or_default();
    let missing = |what: &str| BusError::InvalidMessage {
        id: id.clone(),
        reason: format!("the CloudEvents attribute {what:?} is missing"),
    };
    match attrs.remove("specversion").as_deref() {
        Some(v) if v.starts_with("1.") => {}
        Some(v) => {
            return Err(BusError::InvalidMessage {
                id: id.clone(),
                reason: format!("unsupported CloudEvents specversion {v:?}"),
            })
        }
        None => return Err(missing("specversion")),
    }
    if id.is_empty() {
        return Err(missing("id"));
    }
    let event_type = attrs.remove("type").ok_or_else(|| missing("type"))?;
    let source = attrs.remove("source").ok_or_else(|| missing("source"))?;
    let time = match attrs.remove("time") {
        None => None,
        Some(t) => Some(
            DateTime::parse_from_rfc3339(&t)
                .map_err(|e| BusError::InvalidMessage {
                    id: id.clone(),
                    reason: format!("time {t:?} is not RFC 3339: {e}"),
                })?
                .with_timezone(&Utc),
        ),
    };
    let mut all_headers = headers;
    let subject = attrs.remove("subject");
    let key = attrs.remove("partitionkey");
    let correlation_id = attrs.remove("correlationid");
    let causation_id = attrs.remove("causationid");
    let traceparent = attrs.remove("traceparent");
    let tracestate = attrs.remove("tracestate");
    let content_type = content_type
        .or_else(|| attrs.remove("datacontenttype"))
        .unwrap_or_else(|| crate::event::CONTENT_TYPE_JSON.to_string());
    all_headers.extend(attrs);
    Ok(Message {
        id,
        event_type,
        source,
        time,
        subject,
        content_type,
        key,
        correlation_id,
        causation_id,
        traceparent,
        tracestate,
        headers: all_headers,
        payload,
    })
}

/// The message as a structured-mode JSON document (`application/cloudevents+json`). JSON
/// payloads are embedded as `data`, others as `data_base64`.
pub fn to_structured(message: &Message) -> Vec<u8> {
    let mut doc = Map::new();
    doc.insert("specversion".into(), SPEC_VERSION.into());
    doc.insert("id".into(), message.id.clone().into());
    doc.insert("type".into(), message.event_type.clone().into());
    doc.insert("source".into(), message.source.clone().into());
    doc.insert(
        "datacontenttype".into(),
        message.content_type.clone().into(),
    );
    let mut opt = |name: &str, v: &Option<String>| {
        if let Some(v) = v {
            doc.insert(name.into(), v.clone().into());
        }
    };
    opt("subject", &message.subject);
    opt("partitionkey", &message.key);
    opt("correlationid", &message.correlation_id);
    opt("causationid", &message.causation_id);
    opt("traceparent", &message.traceparent);
    opt("tracestate", &message.tracestate);
    if let Some(t) = message.time {
        doc.insert("time".into(), t.to_rfc3339().into());
    }
    for (k, v) in &message.headers {
        if is_extension_name(k) {
            doc.insert(k.clone(), v.clone().into());
        }
    }
    let is_json = message
        .content_type
        .split(';')
        .next()
        .map(str::trim)
        .is_some_and(|t| t == crate::event::CONTENT_TYPE_JSON || t.ends_with("+json"));
    match serde_json::from_slice::<Value>(&message.payload) {
        Ok(v) if is_json => {
            doc.insert("data".into(), v);
        }
        _ => {
            doc.insert(
                "data_base64".into(),
                crate::event::bytes_serde::encode_base64(&message.payload).into(),
            );
        }
    }
    serde_json::to_vec(&Value::Object(doc)).expect("a JSON map always serializes")
}

/// Reads a structured-mode JSON document.
pub fn from_structured(document: &[u8]) -> Result<Message, BusError> {
    let doc: Map<String, Value> =
        serde_json::from_slice(document).map_err(|e| BusError::InvalidMessage {
            id: String::new(),
            reason: format!("not a CloudEvents JSON document: {e}"),
        })?;
    let mut attrs = BTreeMap::new();
    let mut payload = Vec::new();
    for (k, v) in doc {
        match (k.as_str(), v) {
            ("data", v) => {
                payload = serde_json::to_vec(&v).map_err(|e| BusError::InvalidMessage {
                    id: String::new(),
                    reason: e.to_string(),
                })?
            }
            ("data_base64", Value::String(b)) => {
                payload = crate::event::bytes_serde::decode_base64(&b).ok_or_else(|| {
                    BusError::InvalidMessage {
                        id: String::new(),
                        reason: "data_base64 is not base64".into(),
                    }
                })?
            }
            (_, Value::String(s)) => {
                attrs.insert(k, s);
            }
            (_, other) => {
                attrs.insert(k, other.to_string());
            }
        }
    }
    build(attrs, BTreeMap::new(), None, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let mut m = Message::json("OrderPlaced", &serde_json::json!({"order": 7}))
            .with_key("Order-7")
            .with_subject("Order-7")
            .with_header("tenant", "acme")
            .with_header("x-app-header", "v");
        m.correlation_id = Some("corr-1".into());
        m.causation_id = Some("cmd-1".into());
        m.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        m.tracestate = Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".into());
        m.time = Some(
            DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
        );
        m
    }

    #[test]
    fn binary_round_trip_for_every_binding() {
        for mapping in [KAFKA, HTTP, AMQP] {
            let m = sample();
            let headers = to_binary(&m, mapping);
            assert!(headers
                .iter()
                .any(|(k, v)| k == EVENT_TYPE_HEADER && v == "OrderPlaced"));
            assert!(headers
                .iter()
                .any(|(k, v)| k == EVENT_ID_HEADER && *v == m.id));
            let back = from_binary(headers, m.payload.clone(), mapping).unwrap();
            assert_eq!(back, m, "{mapping:?}");
        }
    }

    #[test]
    fn trace_context_travels_as_w3c_headers_too() {
        let m = sample();
        for mapping in [KAFKA, HTTP, AMQP] {
            let headers = to_binary(&m, mapping);
            let get = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(get(TRACEPARENT_HEADER), m.traceparent);
            assert_eq!(get(TRACESTATE_HEADER), m.tracestate);
            assert_eq!(
                get(&format!("{}traceparent", mapping.prefix)),
                m.traceparent
            );
            // A producer that sets only the W3C headers (OpenTelemetry instrumentation
            // without CloudEvents' extension) is read with its context.
            let foreign: Vec<(String, String)> = headers
                .iter()
                .filter(|(k, _)| !k.ends_with("traceparent") || k == TRACEPARENT_HEADER)
                .filter(|(k, _)| !k.ends_with("tracestate") || k == TRACESTATE_HEADER)
                .cloned()
                .collect();
            let back = from_binary(foreign, m.payload.clone(), mapping).unwrap();
            assert_eq!(back.traceparent, m.traceparent);
            assert_eq!(back.tracestate, m.tracestate);
            assert!(!back.headers.contains_key(TRACEPARENT_HEADER));
        }
        let mut quiet = HTTP;
        quiet.w3c_trace_headers = false;
        assert!(!to_binary(&m, quiet)
            .iter()
            .any(|(k, _)| k == TRACEPARENT_HEADER || k == TRACESTATE_HEADER));
    }

    #[test]
    fn structured_round_trip() {
        let m = sample().with_header("x-app-header", "dropped-in-structured-mode");
        let doc = to_structured(&m);
        let v: Value = serde_json::from_slice(&doc).unwrap();
        assert_eq!(v["data"]["order"], 7);
        assert_eq!(v["specversion"], "1.0");
        let back = from_structured(&doc).unwrap();
        assert_eq!(back.id, m.id);
        assert_eq!(back.payload_json().unwrap(), m.payload_json().unwrap());
        assert_eq!(back.headers.get("tenant").map(String::as_str), Some("acme"));
        assert_eq!(back.correlation_id, m.correlation_id);
        assert_eq!(back.traceparent, m.traceparent);
        assert_eq!(back.tracestate, m.tracestate);
    }

    #[test]
    fn binary_payloads_use_data_base64() {
        let mut m = sample();
        m.content_type = "application/octet-stream".into();
        m.payload = vec![0, 159, 146, 150];
        let back = from_structured(&to_structured(&m)).unwrap();
        assert_eq!(back.payload, m.payload);
    }

    #[test]
    fn missing_attributes_are_typed_errors() {
        let err = from_binary(vec![("ce_id", "1")], vec![], KAFKA).unwrap_err();
        assert!(matches!(err, BusError::InvalidMessage { .. }));
        let err = from_binary(Vec::<(String, String)>::new(), vec![], KAFKA).unwrap_err();
        assert!(err.to_string().contains("no CloudEvents attributes"));
        assert!(from_structured(b"{nope").is_err());
        let bad_time = vec![
            ("ce_specversion", "1.0"),
            ("ce_id", "1"),
            ("ce_type", "T"),
            ("ce_source", "s"),
            ("ce_time", "yesterday"),
        ];
        assert!(from_binary(bad_time, vec![], KAFKA).is_err());
    }
}
