//! Bus messages: what travels between services over the embedded bus or a broker.
//!
//! A [`Message`] carries the CloudEvents 1.0 core attributes as typed fields (id, type,
//! source, time, subject, content type) plus Runnel's extensions (correlation id, causation
//! id, W3C `traceparent` and `tracestate`), free headers, an ordering key and the payload. Each transport maps
//! it onto its broker with [`crate::cloudevents`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{RecordedEvent, CONTENT_TYPE_JSON};
use crate::metadata::Metadata;

/// Longest topic or group name, in bytes (fits Kafka's 249, SNS's 256, NATS and AMQP).
pub const BUS_NAME_LEN_MAX: usize = 200;
/// Default largest message payload: 1 MiB (above it, send a claim-check: `runnel::outbox::ClaimCheckPublisher`).
pub const MESSAGE_PAYLOAD_MAX_DEFAULT: usize = 1024 * 1024;
/// Most messages in one publish call.
pub const PUBLISH_BATCH_MAX: usize = 1000;
/// Most headers on one message.
pub const HEADERS_MAX: usize = 64;
/// Longest header name or value, in bytes.
pub const HEADER_LEN_MAX: usize = 4096;
/// The CloudEvents `source` used when none is set.
pub const SOURCE_DEFAULT: &str = "urn:runnel";

fn validate_bus_name(kind: &str, name: &str) -> Result<(), BusError> {
    let ok = !name.is_empty()
        && name.len() <= BUS_NAME_LEN_MAX
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(BusError::InvalidName {
            kind: kind.to_string(),
            name: name.chars().take(64).collect(),
            reason: format!(
                "1..={BUS_NAME_LEN_MAX} bytes of ASCII letters, digits, '.', '_', '-', starting with a letter or digit"
            ),
        })
    }
}

macro_rules! bus_name {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `name`.
            pub fn new(name: impl Into<String>) -> Result<Self, BusError> {
                let name = name.into();
                validate_bus_name($kind, &name)?;
                Ok(Self(name))
            }

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = BusError;
            fn from_str(s: &str) -> Result<Self, BusError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = BusError;
            fn try_from(s: String) -> Result<Self, BusError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

bus_name!(
    /// A topic: where messages are published. Every consumer group of a topic receives
    /// every message published to it.
    ///
    /// ```
    /// use runnel_core::message::TopicName;
    /// assert!(TopicName::new("orders.OrderPlaced").is_ok());
    /// assert!(TopicName::new("no spaces").is_err());
    /// ```
    TopicName,
    "topic"
);

bus_name!(
    /// A consumer group: within a group, each message is handled by one consumer.
    GroupName,
    "group"
);

/// A message on the bus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// CloudEvents `id`: unique per source; the idempotency key of consumers.
    pub id: String,
    /// CloudEvents `type` (for domain events, the event type, e.g. `OrderPlaced`).
    pub event_type: String,
    /// CloudEvents `source` (a URI-reference naming the producer).
    pub source: String,
    /// CloudEvents `time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
    /// CloudEvents `subject` (for domain events, the stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// CloudEvents `datacontenttype`.
    pub content_type: String,
    /// The ordering key: messages with the same key are delivered and handled in order.
    /// Defaults to the subject (the stream) when built from an event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Extension `correlationid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Extension `causationid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// Extension `traceparent` (W3C trace context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Extension `tracestate` (W3C trace context, vendor-specific part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// Other headers (CloudEvents extensions and application headers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The data.
    #[serde(with = "crate::event::bytes_serde")]
    pub payload: Vec<u8>,
}

impl Message {
    /// A JSON message with a fresh UUIDv7 id and the current time.
    pub fn json(event_type: impl Into<String>, data: &serde_json::Value) -> Self {
        Message {
            id: uuid::Uuid::now_v7().to_string(),
            event_type: event_type.into(),
            source: SOURCE_DEFAULT.to_string(),
            time: Some(Utc::now()),
            subject: None,
            content_type: CONTENT_TYPE_JSON.to_string(),
            key: None,
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            tracestate: None,
            headers: BTreeMap::new(),
            payload: serde_json::to_vec(data).expect("a serde_json::Value always serializes"),
        }
    }

    /// The message for a stored event: same id, type, time and metadata; the subject and
    /// the default key are the stream.
    pub fn from_event(event: &RecordedEvent, source: &str) -> Self {
        Message {
            id: event.id.to_string(),
            event_type: event.event_type.clone(),
            source: source.to_string(),
            time: Some(event.recorded_at),
            subject: Some(event.stream.to_string()),
            content_type: event.content_type.clone(),
            key: Some(event.stream.to_string()),
            correlation_id: event.metadata.correlation_id.clone(),
            causation_id: event.metadata.causation_id.clone(),
            traceparent: event.metadata.traceparent.clone(),
            tracestate: event.metadata.tracestate.clone(),
            headers: event.metadata.headers.clone(),
            payload: event.data.clone(),
        }
        .with_header("runnelschemaversion", event.schema_version.to_string())
    }

    /// Sets the ordering key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the subject.
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Takes correlation id, causation id and trace context from event metadata.
    pub fn with_metadata(mut self, metadata: &Metadata) -> Self {
        self.correlation_id = metadata.correlation_id.clone();
        self.causation_id = metadata.causation_id.clone();
        self.traceparent = metadata.traceparent.clone();
        self.tracestate = metadata.tracestate.clone();
        for (k, v) in &metadata.headers {
            self.headers.insert(k.clone(), v.clone());
        }
        self
    }

    /// The metadata an effect of this message should carry: correlation kept (or started
    /// from this message's id), causation = this message's id, trace context carried.
    pub fn effect_metadata(&self) -> Metadata {
        let cause = Metadata {
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            user_id: self.headers.get("userid").cloned(),
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
            headers: BTreeMap::new(),
        };
        Metadata::caused_by(&cause, self.id.clone())
    }

    /// The payload parsed as JSON.
    pub fn payload_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }

    /// The key used for ordering: the key, else the subject, else none.
    pub fn ordering_key(&self) -> Option<&str> {
        self.key.as_deref().or(self.subject.as_deref())
    }

    /// Checks the message against `max_payload_bytes` and the envelope rules.
    pub fn validate(&self, max_payload_bytes: usize) -> Result<(), BusError> {
        let invalid = |reason: String| BusError::InvalidMessage {
            id: self.id.chars().take(64).collect(),
            reason,
        };
        if self.id.is_empty() || self.id.len() > 256 {
            return Err(invalid("the id must be 1..=256 bytes".into()));
        }
        if self.event_type.is_empty() || self.event_type.len() > 256 {
            return Err(invalid("the type must be 1..=256 bytes".into()));
        }
        if self.source.is_empty() {
            return Err(invalid("the source is empty".into()));
        }
        if self.content_type.is_empty() {
            return Err(invalid("the content type is empty".into()));
        }
        if self.payload.len() > max_payload_bytes {
            return Err(BusError::PayloadTooLarge {
                id: self.id.clone(),
                size_bytes: self.payload.len(),
                limit_bytes: max_payload_bytes,
            });
        }
        if self.headers.len() > HEADERS_MAX {
            return Err(invalid(format!("more than {HEADERS_MAX} headers")));
        }
        for (k, v) in &self.headers {
            if k.is_empty() || k.len() > HEADER_LEN_MAX || v.len() > HEADER_LEN_MAX {
                return Err(invalid(format!(
                    "header {k:?}: names must be 1..={HEADER_LEN_MAX} bytes, values at most {HEADER_LEN_MAX}"
                )));
            }
            if !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(invalid(format!(
                    "header name {k:?} may hold only ASCII letters, digits, '-', '_', '.'"
                )));
            }
        }
        if let Some(key) = &self.key {
            if key.len() > HEADER_LEN_MAX {
                return Err(invalid(format!("the key is over {HEADER_LEN_MAX} bytes")));
            }
        }
        for (name, value) in [
            ("traceparent", &self.traceparent),
            ("tracestate", &self.tracestate),
        ] {
            if value.as_ref().is_some_and(|v| v.len() > HEADER_LEN_MAX) {
                return Err(invalid(format!("{name} is over {HEADER_LEN_MAX} bytes")));
            }
        }
        Ok(())
    }
}

/// Errors of publishers, subscribers and the stores behind them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        kind: String,
        name: String,
        reason: String,
    },
    #[error("invalid message {id:?}: {reason}")]
    InvalidMessage { id: String, reason: String },
    #[error(
        "message {id} is {size_bytes} bytes, over the {limit_bytes}-byte limit; send large \
         payloads by reference with a claim-check (publish through \
         `runnel::outbox::ClaimCheckPublisher`, consume through `ClaimCheckSubscriber`)"
    )]
    PayloadTooLarge {
        id: String,
        size_bytes: usize,
        limit_bytes: usize,
    },
    #[error("the publish holds {count} messages; at most {limit} may be published at once")]
    TooManyMessages { count: usize, limit: usize },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The broker could not be reached or refused for now; retrying is safe (publishing is
    /// idempotent where the broker deduplicates by message id, at-least-once otherwise).
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("authentication failed: {0}")]
    AuthenticationFailed(String),
    /// The delivery was already acked or nacked, or its lease expired and it was handed
    /// to another consumer.
    #[error("delivery {0} is no longer held by this consumer")]
    DeliveryLost(String),
    #[error("the subscription or bus is closed")]
    Closed,
    #[error("bus backend error: {0}")]
    Backend(String),
    /// A new group cannot start at [`StartPosition::Earliest`](crate::bus::StartPosition)
    /// here: the bus keeps no history it could replay into it (the reason says why).
    /// Nothing was consumed; starting the group at `Latest` works.
    #[error(
        "a new group cannot start at the earliest message on this bus: {reason}; start it \
         at the latest message (StartPosition::Latest) to receive what is published from \
         now on"
    )]
    EarliestUnavailable { reason: String },
}

impl BusError {
    /// Whether retrying may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, BusError::Unavailable(_))
    }
}

impl From<crate::error::StoreError> for BusError {
    fn from(e: crate::error::StoreError) -> Self {
        use crate::error::StoreError as S;
        match e {
            S::Unavailable(m) => BusError::Unavailable(m),
            S::AuthenticationFailed(m) => BusError::AuthenticationFailed(m),
            S::InvalidArgument(m) => BusError::InvalidArgument(m),
            S::InvalidMessage { id, reason } => BusError::InvalidMessage { id, reason },
            S::Closed => BusError::Closed,
            other => BusError::Backend(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(TopicName::new("orders").is_ok());
        assert!(TopicName::new("Order.OrderPlaced-v1_x").is_ok());
        for bad in [
            "",
            ".x",
            "a b",
            "a/b",
            "ü",
            &"x".repeat(BUS_NAME_LEN_MAX + 1),
        ] {
            assert!(TopicName::new(bad).is_err(), "{bad:?}");
            assert!(GroupName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn messages_are_validated() {
        let m = Message::json("Tested", &serde_json::json!({"a": 1}));
        assert!(m.validate(1024).is_ok());
        assert!(matches!(
            m.validate(2),
            Err(BusError::PayloadTooLarge { limit_bytes: 2, .. })
        ));
        assert!(m
            .clone()
            .with_header("bad name", "v")
            .validate(1024)
            .is_err());
        assert!(m.clone().with_id("").validate(1024).is_err());
        let e = m.validate(2).unwrap_err().to_string();
        assert!(e.contains("claim-check"), "{e}");
    }

    #[test]
    fn effect_metadata_chains_correlation_and_causation() {
        let mut m = Message::json("Tested", &serde_json::json!({}));
        m.correlation_id = Some("corr".into());
        let meta = m.effect_metadata();
        assert_eq!(meta.correlation_id.as_deref(), Some("corr"));
        assert_eq!(meta.causation_id.as_deref(), Some(m.id.as_str()));
    }

    #[test]
    fn json_round_trip() {
        let m = Message::json("Tested", &serde_json::json!({"a": 1})).with_key("k");
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), m);
    }
}
