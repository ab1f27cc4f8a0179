//! How messages sit on the wire: CloudEvents (binary or structured mode) by default, or a
//! mapping for producers that know nothing of CloudEvents.
//!
//! Every broker transport hands a received message to [`Envelope::decode`] as an
//! [`Incoming`] (its headers as text, its body, and what the broker itself knows: its own
//! message id, key and timestamp), so the four transports read the same shapes the same
//! way:
//!
//! * [`Envelope::CloudEvents`] (the default) reads **binary mode** (attributes as headers
//!   with the binding's prefix: `ce_` on Kafka, `ce-` on NATS and SQS, `cloudEvents:` on
//!   AMQP) and **structured mode** (content type `application/cloudevents+json`, the whole
//!   event as one JSON document in the body; a JSON body holding `specversion` is read as
//!   structured too when no content type says otherwise). Anything else is refused with an
//!   error that names the `envelope` option, so the consumer dead-letters it instead of
//!   guessing.
//! * [`Envelope::Mapped`] takes each attribute from a named header, a JSON field of the
//!   body or the broker's own metadata ([`Field`]), and the data from a field or the whole
//!   body ([`Data`]). Presets cover the common shapes:
//!   - `json-event` ([`Mapping::json_event`]): a JSON body
//!     `{"id", "type", "source", "timestamp", "data", "metadata"}`, often with
//!     `event-type` / `event-source` headers;
//!   - `outbox-record` ([`Mapping::outbox_record`]): a JSON body
//!     `{"eventId", "eventType", "aggregateId", "payload", "timestamp"}` with `event-type`
//!     / `event-id` headers, keyed by the aggregate id;
//!   - `raw` ([`Mapping::raw`]): any body, as is; the type from an `event-type` header or
//!     [`RAW_EVENT_TYPE`], the id from an `event-id` header or the broker's id.
//!
//! A mapped envelope also writes: a publisher configured with one sends messages in that
//! shape (and always the plain `event-type` / `event-id` headers), so a service not yet
//! moved to Runnel keeps reading what a Runnel service publishes.
//!
//! On a bus URL: `envelope=cloudevents|json-event|outbox-record|raw|mapped`, and for a
//! mapping, each attribute's sources in the order tried, comma-separated —
//! `envelope_type=header:event-type,field:type`, `envelope_id=field:id,broker`,
//! `envelope_data=field:data` or `body`, and likewise `envelope_source`, `envelope_time`,
//! `envelope_key`, `envelope_subject`. Given with a preset they replace that attribute's
//! sources; `envelope=mapped` starts from nothing and needs at least `envelope_type`.
//!
//! ```
//! use runnel_core::envelope::{BrokerFacts, Envelope, Incoming, Mapping};
//! use runnel_core::cloudevents::KAFKA;
//!
//! let envelope = Envelope::Mapped(Mapping::json_event().into());
//! let incoming = Incoming {
//!     headers: vec![("event-type".into(), "order.created".into())],
//!     body: br#"{"id":"e-1","type":"order.created","source":"order-service",
//!                "timestamp":"2026-12-06T10:00:00Z","data":{"orderId":"123"}}"#.to_vec(),
//!     broker: BrokerFacts::new("kafka:orders/0/42", "kafka:orders"),
//! };
//! let message = envelope.decode(incoming, KAFKA)?;
//! assert_eq!((message.id.as_str(), message.event_type.as_str()), ("e-1", "order.created"));
//! assert_eq!(message.payload, br#"{"orderId":"123"}"#);
//! # Ok::<(), runnel_core::BusError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::cloudevents::{self, BinaryMapping, EVENT_ID_HEADER, EVENT_TYPE_HEADER};
use crate::config::{ConfigError, UrlQuery};
use crate::event::CONTENT_TYPE_JSON;
use crate::message::{BusError, Message};

/// The bus URL parameter choosing the envelope.
pub const ENVELOPE_PARAM: &str = "envelope";
/// The event type `raw` gives a message without an `event-type` header.
pub const RAW_EVENT_TYPE: &str = "raw";
/// Content types that mark a structured-mode CloudEvent (`application/cloudevents+json`,
/// with or without parameters).
pub const STRUCTURED_CONTENT_TYPE_PREFIX: &str = "application/cloudevents";
/// The batch content type, which no transport reads (one message is one event).
const BATCH_CONTENT_TYPE_PREFIX: &str = "application/cloudevents-batch";
/// Where the docs explain the option (quoted in errors).
const DOCS: &str = "docs/configuration.md#envelopes";

/// How messages on a topic are shaped on the wire. See the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Envelope {
    /// CloudEvents 1.0, binary or structured mode.
    #[default]
    CloudEvents,
    /// A mapping for messages that are not CloudEvents.
    Mapped(Arc<Mapping>),
}

/// Where one attribute is read from (and written to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    /// A transport header (message attribute, application property), matched without
    /// regard to case.
    Header(String),
    /// A member of the JSON body: a top-level name (`type`), or a JSON pointer (`/meta/id`).
    Json(String),
    /// What the broker knows: its message id (for the id), the record or group key (for
    /// the key), its timestamp (for the time), the topic it came from (for the source).
    Broker,
}

/// Where the data is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    /// The whole body.
    Body,
    /// A member of the JSON body (a name or a JSON pointer), serialised as JSON.
    Json(String),
}

/// A mapping of a non-CloudEvents message onto a [`Message`]: for each attribute, the
/// places tried in order; the first one present wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The name errors quote (`json-event`, `outbox-record`, `raw`, `mapped`).
    pub name: String,
    /// The event type. Required (or [`Mapping::default_type`]).
    pub event_type: Vec<Field>,
    /// Used when no source of the event type is present.
    pub default_type: Option<String>,
    /// The message id. Required.
    pub id: Vec<Field>,
    /// The source; the topic it came from when none is present.
    pub source: Vec<Field>,
    /// The time (RFC 3339 text, or milliseconds since the Unix epoch).
    pub time: Vec<Field>,
    /// The ordering key.
    pub key: Vec<Field>,
    /// The subject.
    pub subject: Vec<Field>,
    /// The correlation id.
    pub correlation_id: Vec<Field>,
    /// The causation id.
    pub causation_id: Vec<Field>,
    /// The data.
    pub data: Data,
    /// A JSON object member whose string entries become headers (and are written from
    /// them), e.g. `metadata`.
    pub headers_field: Option<String>,
}

fn header(name: &str) -> Field {
    Field::Header(name.to_string())
}

fn json(name: &str) -> Field {
    Field::Json(name.to_string())
}

impl Mapping {
    /// An empty mapping named `mapped`: the id from the broker, the data the whole body,
    /// nothing else (set at least [`Mapping::event_type`]).
    pub fn new() -> Self {
        Mapping {
            name: "mapped".into(),
            event_type: Vec::new(),
            default_type: None,
            id: vec![Field::Broker],
            source: vec![Field::Broker],
            time: vec![Field::Broker],
            key: vec![Field::Broker],
            subject: Vec::new(),
            correlation_id: Vec::new(),
            causation_id: Vec::new(),
            data: Data::Body,
            headers_field: None,
        }
    }

    /// `json-event`: `{"id", "type", "source", "timestamp", "data", "metadata"}`, with
    /// optional `event-type` / `event-source` headers; `metadata` entries become headers
    /// (`correlationId` and `causationId` the correlation and causation ids).
    pub fn json_event() -> Self {
        Mapping {
            name: "json-event".into(),
            event_type: vec![json("type"), header(EVENT_TYPE_HEADER)],
            default_type: None,
            id: vec![json("id"), header(EVENT_ID_HEADER), Field::Broker],
            source: vec![json("source"), header("event-source"), Field::Broker],
            time: vec![json("timestamp"), Field::Broker],
            key: vec![Field::Broker],
            subject: Vec::new(),
            correlation_id: vec![json("/metadata/correlationId"), header("correlation-id")],
            causation_id: vec![json("/metadata/causationId"), header("causation-id")],
            data: Data::Json("data".into()),
            headers_field: Some("metadata".into()),
        }
    }

    /// `outbox-record`: `{"eventId", "eventType", "aggregateId", "payload", "timestamp"}`
    /// with `event-type` / `event-id` headers; the aggregate id is the key and the subject.
    pub fn outbox_record() -> Self {
        Mapping {
            name: "outbox-record".into(),
            event_type: vec![json("eventType"), header(EVENT_TYPE_HEADER)],
            default_type: None,
            id: vec![json("eventId"), header(EVENT_ID_HEADER), Field::Broker],
            source: vec![json("aggregateType"), Field::Broker],
            time: vec![json("timestamp"), Field::Broker],
            key: vec![json("aggregateId"), Field::Broker],
            subject: vec![json("aggregateId")],
            correlation_id: vec![header("correlation-id")],
            causation_id: vec![header("causation-id")],
            data: Data::Json("payload".into()),
            headers_field: None,
        }
    }

    /// `raw`: the body as it is; the type from an `event-type` header or
    /// [`RAW_EVENT_TYPE`], the id from an `event-id` header or the broker's own id, the
    /// time from an `event-time` header or the broker's timestamp.
    pub fn raw() -> Self {
        Mapping {
            name: "raw".into(),
            event_type: vec![header(EVENT_TYPE_HEADER)],
            default_type: Some(RAW_EVENT_TYPE.into()),
            id: vec![header(EVENT_ID_HEADER), Field::Broker],
            source: vec![header("event-source"), Field::Broker],
            time: vec![header("event-time"), Field::Broker],
            key: vec![Field::Broker],
            subject: Vec::new(),
            correlation_id: vec![header("correlation-id")],
            causation_id: vec![header("causation-id")],
            data: Data::Body,
            headers_field: None,
        }
    }

    /// The header names the mapping reads attributes from (lower case): they are the
    /// envelope's, not the message's own headers.
    fn envelope_headers(&self) -> Vec<String> {
        self.attributes()
            .flat_map(|(_, fields)| fields.iter())
            .filter_map(|f| match f {
                Field::Header(name) => Some(name.to_ascii_lowercase()),
                _ => None,
            })
            .collect()
    }

    fn needs_json(&self) -> bool {
        matches!(self.data, Data::Json(_))
            || self.headers_field.is_some()
            || self
                .attributes()
                .any(|(_, fields)| fields.iter().any(|f| matches!(f, Field::Json(_))))
    }

    fn attributes(&self) -> impl Iterator<Item = (&'static str, &Vec<Field>)> {
        [
            ("type", &self.event_type),
            ("id", &self.id),
            ("source", &self.source),
            ("time", &self.time),
            ("key", &self.key),
            ("subject", &self.subject),
            ("correlation_id", &self.correlation_id),
            ("causation_id", &self.causation_id),
        ]
        .into_iter()
    }

    /// Checks that the mapping can read a message: it has a type and an id, and every
    /// source names something. The error says what to add.
    pub fn validate(&self) -> Result<(), String> {
        if self.event_type.is_empty() && self.default_type.is_none() {
            return Err(
                "the mapping has no source for the event type; give envelope_type=header:NAME or field:NAME".into(),
            );
        }
        if self.id.is_empty() {
            return Err(
                "the mapping has no source for the message id; give envelope_id=header:NAME, field:NAME or broker".into(),
            );
        }
        if self.event_type.contains(&Field::Broker) {
            return Err(
                "the broker knows no event type: envelope_type takes header:NAME or field:NAME"
                    .into(),
            );
        }
        for (name, fields) in self.attributes() {
            for field in fields {
                if let Field::Json(path) | Field::Header(path) = field {
                    if path.is_empty() {
                        return Err(format!("an empty name in the sources of {name}"));
                    }
                }
            }
        }
        if let Data::Json(path) = &self.data {
            if path.is_empty() {
                return Err("envelope_data=field: needs a name".into());
            }
        }
        Ok(())
    }
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping::new()
    }
}

/// What the broker itself knows about a received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerFacts {
    /// The broker's id of this message, stable across redeliveries
    /// (`kafka:TOPIC/PARTITION/OFFSET`, the JetStream stream sequence, the SQS message id).
    pub id: String,
    /// The record key or message group.
    pub key: Option<String>,
    /// When the broker (or the producer, through it) stamped the message.
    pub time: Option<DateTime<Utc>>,
    /// Where it came from (`kafka:orders`), the source of messages that name none.
    pub origin: String,
}

impl BrokerFacts {
    /// Facts with an id and an origin only.
    pub fn new(id: impl Into<String>, origin: impl Into<String>) -> Self {
        BrokerFacts {
            id: id.into(),
            key: None,
            time: None,
            origin: origin.into(),
        }
    }
}

/// A received message as a transport hands it over: its headers as text (the transport's
/// own bookkeeping headers removed; the content type under the binding's content-type
/// header), its body, and the broker's facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// What the broker knows.
    pub broker: BrokerFacts,
}

/// A message in a mapped shape, ready for a transport to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Headers to send (including `content-type`).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl fmt::Display for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Envelope::CloudEvents => f.write_str("cloudevents"),
            Envelope::Mapped(m) => f.write_str(&m.name),
        }
    }
}

impl Envelope {
    /// Reads `envelope` and `envelope_*` from a bus URL's query (absent: CloudEvents).
    pub fn from_query(query: &mut UrlQuery) -> Result<Envelope, ConfigError> {
        let scheme = query.scheme();
        let choices = [
            ("cloudevents", 0u8),
            ("json-event", 1),
            ("outbox-record", 2),
            ("raw", 3),
            ("mapped", 4),
        ];
        let chosen = query.choice(ENVELOPE_PARAM, &choices)?;
        let mut mapping = match chosen {
            None | Some(0) => None,
            Some(1) => Some(Mapping::json_event()),
            Some(2) => Some(Mapping::outbox_record()),
            Some(3) => Some(Mapping::raw()),
            _ => Some(Mapping::new()),
        };
        type Slot = fn(&mut Mapping) -> &mut Vec<Field>;
        let fields: [(&'static str, Slot); 8] = [
            ("envelope_type", |m| &mut m.event_type),
            ("envelope_id", |m| &mut m.id),
            ("envelope_source", |m| &mut m.source),
            ("envelope_time", |m| &mut m.time),
            ("envelope_key", |m| &mut m.key),
            ("envelope_subject", |m| &mut m.subject),
            ("envelope_correlation_id", |m| &mut m.correlation_id),
            ("envelope_causation_id", |m| &mut m.causation_id),
        ];
        for (name, slot) in fields {
            let Some(text) = query.string(name) else {
                continue;
            };
            let Some(mapping) = mapping.as_mut() else {
                return Err(needs_mapping(scheme, name, &text));
            };
            *slot(mapping) = parse_fields(scheme, name, &text)?;
        }
        if let Some(text) = query.string("envelope_data") {
            let Some(mapping) = mapping.as_mut() else {
                return Err(needs_mapping(scheme, "envelope_data", &text));
            };
            mapping.data = match text.as_str() {
                "body" => Data::Body,
                other => match other.strip_prefix("field:") {
                    Some(path) if !path.is_empty() => Data::Json(path.to_string()),
                    _ => {
                        return Err(ConfigError::invalid_value(
                            scheme,
                            "envelope_data",
                            &text,
                            "body or field:NAME",
                        ))
                    }
                },
            };
        }
        match mapping {
            None => Ok(Envelope::CloudEvents),
            Some(mapping) => {
                mapping.validate().map_err(|reason| {
                    ConfigError::invalid_value(scheme, ENVELOPE_PARAM, &mapping.name, reason)
                })?;
                Ok(Envelope::Mapped(Arc::new(mapping)))
            }
        }
    }

    /// Whether this is the CloudEvents default.
    pub fn is_cloudevents(&self) -> bool {
        matches!(self, Envelope::CloudEvents)
    }

    /// The message in `incoming`, read as this envelope says; `binding` names the
    /// transport's CloudEvents headers.
    pub fn decode(&self, incoming: Incoming, binding: BinaryMapping) -> Result<Message, BusError> {
        match self {
            Envelope::CloudEvents => decode_cloudevents(incoming, binding),
            Envelope::Mapped(mapping) => decode_mapped(mapping, incoming, binding),
        }
    }

    /// `message` in this envelope's mapped shape, or `None` for CloudEvents (each
    /// transport writes CloudEvents its own way).
    pub fn encode(&self, message: &Message) -> Result<Option<Outgoing>, BusError> {
        match self {
            Envelope::CloudEvents => Ok(None),
            Envelope::Mapped(mapping) => encode_mapped(mapping, message).map(Some),
        }
    }
}

fn needs_mapping(scheme: &'static str, name: &'static str, value: &str) -> ConfigError {
    ConfigError::invalid_value(
        scheme,
        name,
        value,
        "a parameter of a mapped envelope only: add envelope=mapped (or a preset: \
         json-event, outbox-record, raw)",
    )
}

fn parse_fields(
    scheme: &'static str,
    name: &'static str,
    text: &str,
) -> Result<Vec<Field>, ConfigError> {
    let invalid = |reason: String| ConfigError::invalid_value(scheme, name, text, reason);
    let mut fields = Vec::new();
    for part in text.split(',').map(str::trim) {
        let field = if part == "broker" {
            Field::Broker
        } else if let Some(h) = part.strip_prefix("header:") {
            Field::Header(h.to_string())
        } else if let Some(f) = part.strip_prefix("field:") {
            Field::Json(f.to_string())
        } else {
            return Err(invalid(format!(
                "{part:?}: expected header:NAME, field:NAME (a name or a /json/pointer) or broker"
            )));
        };
        if matches!(&field, Field::Header(n) | Field::Json(n) if n.is_empty()) {
            return Err(invalid(format!("{part:?} names nothing")));
        }
        fields.push(field);
    }
    Ok(fields)
}

fn content_type_of(headers: &[(String, String)], binding: BinaryMapping) -> Option<&str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(binding.content_type_header))
        .map(|(_, v)| v.as_str())
}

fn decode_cloudevents(incoming: Incoming, binding: BinaryMapping) -> Result<Message, BusError> {
    let prefix = binding.prefix.to_ascii_lowercase();
    let binary = incoming
        .headers
        .iter()
        .any(|(k, _)| k.to_ascii_lowercase().starts_with(&prefix));
    if binary {
        return cloudevents::from_binary(incoming.headers, incoming.body, binding);
    }
    let content_type = content_type_of(&incoming.headers, binding).map(str::to_ascii_lowercase);
    let declared = content_type
        .as_deref()
        .map(str::trim_start)
        .filter(|c| c.starts_with(STRUCTURED_CONTENT_TYPE_PREFIX));
    if declared.is_some_and(|c| c.starts_with(BATCH_CONTENT_TYPE_PREFIX)) {
        return Err(BusError::InvalidMessage {
            id: incoming.broker.id,
            reason: "a CloudEvents batch (application/cloudevents-batch+json): publish one event per message".into(),
        });
    }
    let looks_structured = declared.is_some()
        || (content_type.as_deref().is_none_or(|c| c.contains("json"))
            && body_has_specversion(&incoming.body));
    if looks_structured {
        let mut message = cloudevents::from_structured(&incoming.body)?;
        // Plain transport headers travel beside the document; keep them. The W3C trace
        // headers (SQS sends them beside a structured body) fill the trace context when
        // the document has none, and are never kept as free headers.
        let mut w3c: (Option<String>, Option<String>) = (None, None);
        for (k, v) in incoming.headers {
            let lower = k.to_ascii_lowercase();
            if lower == cloudevents::TRACEPARENT_HEADER {
                w3c.0 = Some(v);
            } else if lower == cloudevents::TRACESTATE_HEADER {
                w3c.1 = Some(v);
            } else if lower != binding.content_type_header
                && lower != EVENT_TYPE_HEADER
                && lower != EVENT_ID_HEADER
            {
                message.headers.entry(k).or_insert(v);
            }
        }
        if message.traceparent.is_none() && w3c.0.is_some() {
            message.traceparent = w3c.0;
            message.tracestate = w3c.1;
        }
        return Ok(message);
    }
    Err(BusError::InvalidMessage {
        id: incoming.broker.id,
        reason: format!(
            "not a CloudEvent: no {:?} headers and no structured-mode body (content type \
             application/cloudevents+json); to read messages that are not CloudEvents set \
             envelope=json-event, envelope=outbox-record, envelope=raw or a mapping \
             (envelope=mapped&envelope_type=…) on the bus URL, see {DOCS}",
            binding.prefix
        ),
    })
}

fn body_has_specversion(body: &[u8]) -> bool {
    let trimmed = body.trim_ascii_start();
    trimmed.first() == Some(&b'{')
        && serde_json::from_slice::<Map<String, Value>>(body)
            .is_ok_and(|doc| doc.contains_key("specversion"))
}

/// Looks up a name or a JSON pointer in a document.
fn lookup<'a>(doc: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(pointer) = path.strip_prefix('/') {
        let mut parts = pointer.split('/');
        let first = unescape_pointer(parts.next()?);
        let mut at = doc.get(first.as_str())?;
        for part in parts {
            at = match at {
                Value::Object(o) => o.get(unescape_pointer(part).as_str())?,
                Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(at)
    } else {
        doc.get(path)
    }
}

fn unescape_pointer(part: &str) -> String {
    part.replace("~1", "/").replace("~0", "~")
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

fn decode_mapped(
    mapping: &Mapping,
    incoming: Incoming,
    binding: BinaryMapping,
) -> Result<Message, BusError> {
    let broker_id = incoming.broker.id.clone();
    let invalid = |reason: String| BusError::InvalidMessage {
        id: broker_id.clone(),
        reason: format!("envelope={}: {reason}", mapping.name),
    };
    let doc: Option<Map<String, Value>> = if mapping.needs_json() {
        match serde_json::from_slice::<Value>(&incoming.body) {
            Ok(Value::Object(doc)) => Some(doc),
            Ok(_) => return Err(invalid("the body is JSON but not an object".into())),
            Err(e) if matches!(mapping.data, Data::Json(_)) => {
                return Err(invalid(format!("the body is not a JSON object: {e}")))
            }
            // Attributes may still come from headers; the data is the body.
            Err(_) => None,
        }
    } else {
        None
    };
    let header_value = |name: &str| {
        incoming
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let envelope_headers = mapping.envelope_headers();
    let read = |fields: &[Field], broker: Option<String>| -> Option<String> {
        for field in fields {
            let found = match field {
                Field::Header(name) => header_value(name),
                Field::Json(path) => doc.as_ref().and_then(|d| lookup(d, path)).and_then(text_of),
                Field::Broker => broker.clone(),
            };
            if found.is_some() {
                return found;
            }
        }
        None
    };
    let describe = |fields: &[Field]| {
        fields
            .iter()
            .map(|f| match f {
                Field::Header(h) => format!("header {h}"),
                Field::Json(j) => format!("field {j}"),
                Field::Broker => "the broker".to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let event_type = match read(&mapping.event_type, None) {
        Some(t) => t,
        None => match &mapping.default_type {
            Some(t) => t.clone(),
            None => {
                return Err(invalid(format!(
                    "no event type (looked in {})",
                    describe(&mapping.event_type)
                )))
            }
        },
    };
    let id = read(&mapping.id, Some(incoming.broker.id.clone())).ok_or_else(|| {
        invalid(format!(
            "no message id (looked in {})",
            describe(&mapping.id)
        ))
    })?;
    let source = read(&mapping.source, Some(incoming.broker.origin.clone()))
        .unwrap_or_else(|| incoming.broker.origin.clone());
    let time_text = read(&mapping.time, incoming.broker.time.map(|t| t.to_rfc3339()));
    let time = match time_text {
        None => None,
        Some(text) => Some(parse_time(&text).ok_or_else(|| {
            invalid(format!(
                "time {text:?} is neither RFC 3339 nor milliseconds since the Unix epoch"
            ))
        })?),
    };
    let key = read(&mapping.key, incoming.broker.key.clone());
    let subject = read(&mapping.subject, None);
    let correlation_id = read(&mapping.correlation_id, None);
    let causation_id = read(&mapping.causation_id, None);

    let header_content_type = content_type_of(&incoming.headers, binding).map(str::to_string);
    let (payload, content_type) = match &mapping.data {
        Data::Body => {
            let content_type = header_content_type.unwrap_or_else(|| {
                if serde_json::from_slice::<serde::de::IgnoredAny>(&incoming.body).is_ok() {
                    CONTENT_TYPE_JSON.to_string()
                } else {
                    "application/octet-stream".to_string()
                }
            });
            (incoming.body, content_type)
        }
        Data::Json(path) => {
            let value = doc
                .as_ref()
                .and_then(|d| lookup(d, path))
                .ok_or_else(|| invalid(format!("no data (field {path} is missing)")))?;
            let bytes = serde_json::to_vec(value)
                .map_err(|e| invalid(format!("data is not serialisable: {e}")))?;
            (bytes, CONTENT_TYPE_JSON.to_string())
        }
    };

    let mut headers = BTreeMap::new();
    let mut traceparent = None;
    let mut tracestate = None;
    for (k, v) in &incoming.headers {
        let lower = k.to_ascii_lowercase();
        // The plain W3C trace headers are the trace context of every shape.
        if lower == cloudevents::TRACEPARENT_HEADER {
            traceparent = Some(v.clone());
            continue;
        }
        if lower == cloudevents::TRACESTATE_HEADER {
            tracestate = Some(v.clone());
            continue;
        }
        if lower == binding.content_type_header
            || lower == EVENT_TYPE_HEADER
            || lower == EVENT_ID_HEADER
            || envelope_headers.contains(&lower)
        {
            continue;
        }
        headers.insert(k.clone(), v.clone());
    }
    if let Some(field) = &mapping.headers_field {
        if let Some(Value::Object(entries)) = doc.as_ref().and_then(|d| lookup(d, field)) {
            for (k, v) in entries {
                if let Some(text) = text_of(v) {
                    headers.insert(k.clone(), text);
                }
            }
        }
        // Read as the correlation and causation ids already.
        headers.remove("correlationId");
        headers.remove("causationId");
    }
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
        tracestate: traceparent.as_ref().and(tracestate),
        traceparent,
        headers,
        payload,
    })
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    let ms: i64 = text.parse().ok()?;
    DateTime::<Utc>::from_timestamp_millis(ms)
}

/// Sets a name or a JSON pointer in a document, creating objects on the way.
fn set(doc: &mut Map<String, Value>, path: &str, value: Value) {
    let Some(pointer) = path.strip_prefix('/') else {
        doc.insert(path.to_string(), value);
        return;
    };
    let parts: Vec<String> = pointer.split('/').map(unescape_pointer).collect();
    let (last, parents) = parts.split_last().expect("split always yields a part");
    let mut at = doc;
    for part in parents {
        let entry = at
            .entry(part.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        at = entry.as_object_mut().expect("made an object above");
    }
    at.insert(last.clone(), value);
}

fn encode_mapped(mapping: &Mapping, message: &Message) -> Result<Outgoing, BusError> {
    let invalid = |reason: String| BusError::InvalidMessage {
        id: message.id.chars().take(64).collect(),
        reason: format!("envelope={}: {reason}", mapping.name),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut doc = match &mapping.data {
        Data::Json(_) => Some(Map::new()),
        Data::Body => None,
    };
    let mut write = |fields: &[Field], value: Option<&str>, required: Option<&str>| {
        let Some(value) = value else { return Ok(()) };
        let mut written = false;
        for field in fields {
            match field {
                Field::Header(name) => {
                    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name)) {
                        headers.push((name.clone(), value.to_string()));
                    }
                    written = true;
                }
                Field::Json(path) => {
                    if let Some(doc) = doc.as_mut() {
                        set(doc, path, Value::String(value.to_string()));
                        written = true;
                    }
                }
                Field::Broker => {}
            }
        }
        match required {
            Some(what) if !written => Err(invalid(format!(
                "cannot write the {what}: the mapping reads it only from the body's fields \
                 and its data is the whole body; add a header:NAME source"
            ))),
            _ => Ok(()),
        }
    };
    write(
        &mapping.event_type,
        Some(&message.event_type),
        Some("event type"),
    )?;
    write(&mapping.id, Some(&message.id), None)?;
    write(&mapping.source, Some(&message.source), None)?;
    let time = message.time.map(|t| t.to_rfc3339());
    write(&mapping.time, time.as_deref(), None)?;
    write(&mapping.key, message.key.as_deref(), None)?;
    write(&mapping.subject, message.subject.as_deref(), None)?;
    write(
        &mapping.correlation_id,
        message.correlation_id.as_deref(),
        None,
    )?;
    write(&mapping.causation_id, message.causation_id.as_deref(), None)?;
    // The plain routing headers every Runnel publisher sends.
    for (name, value) in [
        (EVENT_TYPE_HEADER, &message.event_type),
        (EVENT_ID_HEADER, &message.id),
    ] {
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name)) {
            headers.push((name.to_string(), value.clone()));
        }
    }
    let body = match (&mapping.data, doc) {
        (Data::Json(path), Some(mut doc)) => {
            let data: Value = serde_json::from_slice(&message.payload).map_err(|_| {
                invalid(format!(
                    "its data is a JSON field, and this payload ({}) is not JSON",
                    message.content_type
                ))
            })?;
            set(&mut doc, path, data);
            if let Some(field) = &mapping.headers_field {
                let mut entries = Map::new();
                for (k, v) in &message.headers {
                    entries.insert(k.clone(), Value::String(v.clone()));
                }
                if let Some(Value::Object(existing)) = lookup(&doc, field) {
                    for (k, v) in existing {
                        entries.insert(k.clone(), v.clone());
                    }
                }
                if !entries.is_empty() {
                    set(&mut doc, field, Value::Object(entries));
                }
            } else {
                for (k, v) in &message.headers {
                    headers.push((k.clone(), v.clone()));
                }
            }
            headers.push(("content-type".into(), CONTENT_TYPE_JSON.into()));
            serde_json::to_vec(&Value::Object(doc)).expect("a JSON map always serializes")
        }
        _ => {
            for (k, v) in &message.headers {
                headers.push((k.clone(), v.clone()));
            }
            headers.push(("content-type".into(), message.content_type.clone()));
            message.payload.clone()
        }
    };
    // The trace context as the plain W3C headers (last, so a transport with a header
    // budget, SQS, can drop them first: `tracestate`, then `traceparent`).
    for (name, value) in [
        (cloudevents::TRACEPARENT_HEADER, &message.traceparent),
        (cloudevents::TRACESTATE_HEADER, &message.tracestate),
    ] {
        if let Some(value) = value {
            if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name)) {
                headers.push((name.to_string(), value.clone()));
            }
        }
    }
    Ok(Outgoing { headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudevents::{AMQP, HTTP, KAFKA};

    fn incoming(headers: &[(&str, &str)], body: &str) -> Incoming {
        Incoming {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
            broker: BrokerFacts {
                id: "kafka:orders/0/7".into(),
                key: Some("123".into()),
                time: Some(
                    DateTime::parse_from_rfc3339("2026-12-06T09:00:00Z")
                        .unwrap()
                        .with_timezone(&Utc),
                ),
                origin: "kafka:orders".into(),
            },
        }
    }

    fn sample() -> Message {
        let mut m = Message::json("OrderPlaced", &serde_json::json!({"order": 7}))
            .with_key("Order-7")
            .with_header("tenant", "acme");
        m.correlation_id = Some("corr-1".into());
        m.time = Some(
            DateTime::parse_from_rfc3339("2026-12-06T10:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        );
        m
    }

    #[test]
    fn cloudevents_reads_binary_and_structured_on_every_binding() {
        for binding in [KAFKA, HTTP, AMQP] {
            let m = sample();
            let headers = cloudevents::to_binary(&m, binding);
            let binary = Incoming {
                headers,
                body: m.payload.clone(),
                broker: BrokerFacts::new("b-1", "test:t"),
            };
            assert_eq!(Envelope::CloudEvents.decode(binary, binding).unwrap(), m);

            let doc = cloudevents::to_structured(&m);
            let structured = Incoming {
                headers: vec![(
                    "Content-Type".into(),
                    "application/cloudevents+json; charset=utf-8".into(),
                )],
                body: doc.clone(),
                broker: BrokerFacts::new("b-1", "test:t"),
            };
            let back = Envelope::CloudEvents.decode(structured, binding).unwrap();
            assert_eq!(back.id, m.id);
            assert_eq!(back.event_type, "OrderPlaced");
            assert_eq!(back.key, m.key);
            assert_eq!(back.payload_json().unwrap(), m.payload_json().unwrap());

            // No content type at all: a JSON body with specversion is structured.
            let bare = Incoming {
                headers: vec![],
                body: doc,
                broker: BrokerFacts::new("b-1", "test:t"),
            };
            assert_eq!(
                Envelope::CloudEvents.decode(bare, binding).unwrap().id,
                m.id
            );
        }
    }

    #[test]
    fn cloudevents_refuses_plain_json_and_names_the_option() {
        let err = Envelope::CloudEvents
            .decode(
                incoming(&[("event-type", "order.created")], r#"{"type":"x"}"#),
                KAFKA,
            )
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("envelope=json-event"), "{text}");
        assert!(text.contains("kafka:orders/0/7"), "{text}");
        let batch = incoming(
            &[("content-type", "application/cloudevents-batch+json")],
            "[]",
        );
        assert!(Envelope::CloudEvents
            .decode(batch, KAFKA)
            .unwrap_err()
            .to_string()
            .contains("batch"));
    }

    #[test]
    fn json_event_reads_the_plain_event_shape() {
        let body = r#"{"id":"e-1","type":"order.created","source":"order-service",
            "timestamp":"2026-12-06T10:00:00.000Z","data":{"orderId":"123","total":99.99},
            "metadata":{"correlationId":"c-9","tenant":"acme"}}"#;
        let envelope = Envelope::Mapped(Mapping::json_event().into());
        let m = envelope
            .decode(
                incoming(
                    &[
                        ("event-type", "order.created"),
                        ("event-source", "order-service"),
                    ],
                    body,
                ),
                KAFKA,
            )
            .unwrap();
        assert_eq!(m.id, "e-1");
        assert_eq!(m.event_type, "order.created");
        assert_eq!(m.source, "order-service");
        assert_eq!(m.key.as_deref(), Some("123"));
        assert_eq!(m.correlation_id.as_deref(), Some("c-9"));
        assert_eq!(m.headers.get("tenant").map(String::as_str), Some("acme"));
        assert!(!m.headers.contains_key("event-source"), "{:?}", m.headers);
        assert_eq!(
            m.payload_json().unwrap(),
            serde_json::json!({"orderId":"123","total":99.99})
        );
        assert_eq!(m.time.unwrap().to_rfc3339(), "2026-12-06T10:00:00+00:00");

        // Epoch milliseconds (Date.now()) are a time too.
        let body = r#"{"id":"e-2","type":"t","source":"s","timestamp":1765015200000,"data":1}"#;
        let m = envelope.decode(incoming(&[], body), KAFKA).unwrap();
        assert_eq!(m.time.unwrap().timestamp_millis(), 1_765_015_200_000);
    }

    #[test]
    fn outbox_record_reads_the_relay_shape() {
        let body = r#"{"eventId":"ev-1","eventType":"OrderPlaced","aggregateId":"ord-1",
            "payload":{"orderId":"ord-1"},"timestamp":"2026-12-06T10:00:00Z"}"#;
        let envelope = Envelope::Mapped(Mapping::outbox_record().into());
        let m = envelope
            .decode(
                incoming(&[("event-type", "OrderPlaced"), ("event-id", "ev-1")], body),
                KAFKA,
            )
            .unwrap();
        assert_eq!(
            (m.id.as_str(), m.event_type.as_str()),
            ("ev-1", "OrderPlaced")
        );
        assert_eq!(m.key.as_deref(), Some("ord-1"));
        assert_eq!(m.subject.as_deref(), Some("ord-1"));
        assert_eq!(m.payload, br#"{"orderId":"ord-1"}"#);
        assert!(m.headers.is_empty(), "{:?}", m.headers);
    }

    #[test]
    fn raw_takes_anything_and_keeps_the_broker_id() {
        let envelope = Envelope::Mapped(Mapping::raw().into());
        let m = envelope
            .decode(incoming(&[("x-app", "1")], "not json"), KAFKA)
            .unwrap();
        assert_eq!(m.event_type, RAW_EVENT_TYPE);
        assert_eq!(m.id, "kafka:orders/0/7");
        assert_eq!(m.content_type, "application/octet-stream");
        assert_eq!(m.payload, b"not json");
        assert_eq!(m.headers.get("x-app").map(String::as_str), Some("1"));
        let typed = envelope
            .decode(incoming(&[("event-type", "Pinged")], "{}"), KAFKA)
            .unwrap();
        assert_eq!(typed.event_type, "Pinged");
        assert_eq!(typed.content_type, CONTENT_TYPE_JSON);
    }

    #[test]
    fn a_mapping_that_finds_no_type_is_a_typed_error_naming_where_it_looked() {
        let envelope = Envelope::Mapped(Mapping::json_event().into());
        let err = envelope
            .decode(incoming(&[], r#"{"id":"1","data":{}}"#), KAFKA)
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, BusError::InvalidMessage { .. }));
        assert!(text.contains("envelope=json-event"), "{text}");
        assert!(text.contains("field type, header event-type"), "{text}");
        let not_json = envelope.decode(incoming(&[], "hello"), KAFKA).unwrap_err();
        assert!(not_json.to_string().contains("not a JSON object"));
        let bad_time = envelope
            .decode(
                incoming(
                    &[],
                    r#"{"id":"1","type":"t","timestamp":"yesterday","data":1}"#,
                ),
                KAFKA,
            )
            .unwrap_err();
        assert!(bad_time.to_string().contains("yesterday"));
    }

    #[test]
    fn mapped_presets_write_what_they_read() {
        for mapping in [
            Mapping::json_event(),
            Mapping::outbox_record(),
            Mapping::raw(),
        ] {
            let envelope = Envelope::Mapped(mapping.clone().into());
            let m = sample();
            let out = envelope.encode(&m).unwrap().expect("a mapped shape");
            assert!(out
                .headers
                .iter()
                .any(|(k, v)| k == EVENT_TYPE_HEADER && v == "OrderPlaced"));
            let back = envelope
                .decode(
                    Incoming {
                        headers: out.headers,
                        body: out.body,
                        broker: BrokerFacts {
                            key: m.key.clone(),
                            ..BrokerFacts::new("b-1", "test:t")
                        },
                    },
                    KAFKA,
                )
                .unwrap();
            assert_eq!(back.id, m.id, "{}", mapping.name);
            assert_eq!(back.event_type, m.event_type, "{}", mapping.name);
            assert_eq!(back.key, m.key, "{}", mapping.name);
            assert_eq!(back.time, m.time, "{}", mapping.name);
            assert_eq!(back.correlation_id, m.correlation_id, "{}", mapping.name);
            assert_eq!(
                back.payload_json().unwrap(),
                m.payload_json().unwrap(),
                "{}",
                mapping.name
            );
            assert_eq!(
                back.headers.get("tenant").map(String::as_str),
                Some("acme"),
                "{}",
                mapping.name
            );
        }
        // The plain event shape as its consumers parse it.
        let out = Envelope::Mapped(Mapping::json_event().into())
            .encode(&sample())
            .unwrap()
            .unwrap();
        let doc: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(doc["type"], "OrderPlaced");
        assert_eq!(doc["data"]["order"], 7);
        assert_eq!(doc["metadata"]["tenant"], "acme");
        assert_eq!(doc["metadata"]["correlationId"], "corr-1");
    }

    #[test]
    fn a_json_data_mapping_refuses_to_write_bytes() {
        let mut m = sample();
        m.content_type = "application/octet-stream".into();
        m.payload = vec![0, 1, 2];
        let err = Envelope::Mapped(Mapping::json_event().into())
            .encode(&m)
            .unwrap_err();
        assert!(err.to_string().contains("not JSON"), "{err}");
    }

    #[test]
    fn the_url_grammar_builds_presets_and_mappings() {
        let parse = |q: &str| {
            let mut query = UrlQuery::parse("nats", q)?;
            let envelope = Envelope::from_query(&mut query)?;
            query.finish()?;
            Ok::<_, ConfigError>(envelope)
        };
        assert_eq!(parse("").unwrap(), Envelope::CloudEvents);
        assert_eq!(
            parse("envelope=cloudevents").unwrap(),
            Envelope::CloudEvents
        );
        assert_eq!(
            parse("envelope=json-event").unwrap(),
            Envelope::Mapped(Mapping::json_event().into())
        );
        let Envelope::Mapped(m) = parse(
            "envelope=mapped&envelope_type=header:kind,field:/meta/type&envelope_id=field:uid,broker&envelope_data=field:body",
        )
        .unwrap() else {
            panic!("a mapping")
        };
        assert_eq!(
            m.event_type,
            vec![
                Field::Header("kind".into()),
                Field::Json("/meta/type".into())
            ]
        );
        assert_eq!(m.id, vec![Field::Json("uid".into()), Field::Broker]);
        assert_eq!(m.data, Data::Json("body".into()));

        let errors = [
            ("envelope=xml", "envelope"),
            ("envelope=mapped", "event type"),
            ("envelope_type=header:x", "envelope=mapped"),
            ("envelope=mapped&envelope_type=broker", "no event type"),
            (
                "envelope=mapped&envelope_type=column:x",
                "expected header:NAME",
            ),
            ("envelope=raw&envelope_data=field:", "field:NAME"),
        ];
        for (query, expected) in errors {
            let err = parse(query).unwrap_err().to_string();
            assert!(err.contains(expected), "{query}: {err}");
        }
    }

    #[test]
    fn pointers_read_and_write_nested_members() {
        let mut doc = Map::new();
        set(&mut doc, "/a/b~1c", Value::from(1));
        assert_eq!(lookup(&doc, "/a/b~1c"), Some(&Value::from(1)));
        assert_eq!(Value::Object(doc), serde_json::json!({"a": {"b/c": 1}}));
    }
}
