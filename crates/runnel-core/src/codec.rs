//! The JSON codec for typed domain events: each Rust event value maps to an event type
//! name, a schema version and a JSON payload, and back.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::CodecError;
use crate::event::{NewEvent, RecordedEvent, CONTENT_TYPE_JSON};
use crate::metadata::Metadata;

/// A typed domain event.
///
/// The usual shape is a serde enum with one variant per event type, in serde's default
/// (externally tagged) representation: the variant name is the event type and the
/// variant's content is the stored payload. A plain struct works too; its whole value is
/// the payload.
///
/// ```
/// use runnel_core::{codec, DomainEvent, Metadata};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// enum CartEvent {
///     ItemAdded { sku: String, quantity: u32 },
///     CheckedOut,
/// }
///
/// impl DomainEvent for CartEvent {
///     fn event_type(&self) -> &'static str {
///         match self {
///             CartEvent::ItemAdded { .. } => "ItemAdded",
///             CartEvent::CheckedOut => "CheckedOut",
///         }
///     }
///     // `ItemAdded` payloads are at version 2; older ones are upcast on read.
///     fn schema_version(event_type: &str) -> u32 {
///         if event_type == "ItemAdded" { 2 } else { 1 }
///     }
/// }
///
/// let e = CartEvent::ItemAdded { sku: "A-1".into(), quantity: 2 };
/// let new = codec::encode(&e, Metadata::default()).unwrap();
/// assert_eq!(new.event_type, "ItemAdded");
/// assert_eq!(new.schema_version, 2);
/// assert_eq!(new.data, br#"{"quantity":2,"sku":"A-1"}"#);
/// let back: CartEvent = codec::decode_parts("ItemAdded", 2, "application/json", &new.data).unwrap();
/// assert_eq!(back, e);
/// ```
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The event type name of this value (past tense, e.g. `OrderPlaced`).
    fn event_type(&self) -> &'static str;

    /// The schema version this Rust type writes and reads for `event_type`.
    fn schema_version(event_type: &str) -> u32 {
        let _ = event_type;
        1
    }
}

/// Encodes a typed event as a [`NewEvent`] with a fresh id and the given metadata.
pub fn encode<E: DomainEvent>(event: &E, metadata: Metadata) -> Result<NewEvent, CodecError> {
    let event_type = event.event_type();
    let value = serde_json::to_value(event).map_err(|e| CodecError::Encode(e.to_string()))?;
    let payload = match value {
        Value::Object(mut map) if map.len() == 1 && map.contains_key(event_type) => {
            map.remove(event_type).unwrap_or(Value::Null)
        }
        Value::String(s) if s == event_type => Value::Object(Default::default()),
        other => other,
    };
    let data = serde_json::to_vec(&payload).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(NewEvent {
        id: crate::event::EventId::new(),
        event_type: event_type.to_string(),
        schema_version: E::schema_version(event_type),
        content_type: CONTENT_TYPE_JSON.to_string(),
        data,
        metadata,
    })
}

/// Decodes a stored event into a typed event. The stored schema version must be the one
/// `E` reads: upcast first (the framework's read paths do).
pub fn decode<E: DomainEvent>(event: &RecordedEvent) -> Result<E, CodecError> {
    decode_parts(
        &event.event_type,
        event.schema_version,
        &event.content_type,
        &event.data,
    )
}

/// Decodes from the parts of a stored event.
pub fn decode_parts<E: DomainEvent>(
    event_type: &str,
    schema_version: u32,
    content_type: &str,
    data: &[u8],
) -> Result<E, CodecError> {
    let base_type = content_type.split(';').next().unwrap_or("").trim();
    if base_type != CONTENT_TYPE_JSON && !base_type.ends_with("+json") {
        return Err(CodecError::UnsupportedContentType(content_type.to_string()));
    }
    let payload: Value = serde_json::from_slice(data).map_err(|e| CodecError::Malformed {
        event_type: event_type.to_string(),
        message: e.to_string(),
    })?;
    decode_value(event_type, schema_version, payload)
}

/// Decodes from an already parsed (and, if needed, upcast) JSON payload.
pub fn decode_value<E: DomainEvent>(
    event_type: &str,
    schema_version: u32,
    payload: Value,
) -> Result<E, CodecError> {
    let target = std::any::type_name::<E>();
    let expected = E::schema_version(event_type);
    if schema_version != expected {
        return Err(CodecError::UnsupportedSchemaVersion {
            event_type: event_type.to_string(),
            found: schema_version,
            expected,
            target,
        });
    }
    // Enum events: wrap the payload in its variant tag (moved, not cloned: this runs once
    // per event on every aggregate load). Unit variants were stored as `{}`.
    let is_empty_object = matches!(&payload, Value::Object(m) if m.is_empty());
    let mut tagged = serde_json::Map::with_capacity(1);
    tagged.insert(
        event_type.to_string(),
        if is_empty_object {
            Value::Null
        } else {
            payload
        },
    );
    let tagged = Value::Object(tagged);
    let tagged_err = match E::deserialize(&tagged) {
        Ok(e) if e.event_type() == event_type => return Ok(e),
        Ok(_) => None,
        Err(e) => Some(e),
    };
    let payload = match tagged {
        Value::Object(mut m) => match m.remove(event_type) {
            Some(Value::Null) if is_empty_object => Value::Object(Default::default()),
            Some(v) => v,
            None => Value::Null,
        },
        other => other,
    };
    // Struct events: the payload is the whole value. A unit variant stored as `{}` may
    // also only decode from its bare name.
    match E::deserialize(&payload) {
        Ok(e) if e.event_type() == event_type => return Ok(e),
        _ => {
            if let Ok(e) = serde_json::from_value::<E>(Value::String(event_type.to_string())) {
                if e.event_type() == event_type {
                    return Ok(e);
                }
            }
        }
    }
    match tagged_err {
        Some(e) if !e.to_string().starts_with("unknown variant") => Err(CodecError::Malformed {
            event_type: event_type.to_string(),
            message: e.to_string(),
        }),
        _ => Err(CodecError::UnknownEventType {
            event_type: event_type.to_string(),
            target,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Ev {
        Created { name: String },
        Renamed(String),
        Closed,
    }

    impl DomainEvent for Ev {
        fn event_type(&self) -> &'static str {
            match self {
                Ev::Created { .. } => "Created",
                Ev::Renamed(_) => "Renamed",
                Ev::Closed => "Closed",
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Pinged {
        at: u64,
    }

    impl DomainEvent for Pinged {
        fn event_type(&self) -> &'static str {
            "Pinged"
        }
        fn schema_version(_: &str) -> u32 {
            3
        }
    }

    fn round_trip<E: DomainEvent + PartialEq + std::fmt::Debug>(e: E) {
        let n = encode(&e, Metadata::default()).unwrap();
        let back: E =
            decode_parts(&n.event_type, n.schema_version, &n.content_type, &n.data).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn every_variant_shape_round_trips() {
        round_trip(Ev::Created { name: "a".into() });
        round_trip(Ev::Renamed("b".into()));
        round_trip(Ev::Closed);
        round_trip(Pinged { at: 7 });
    }

    #[test]
    fn payload_is_the_variant_content() {
        let n = encode(&Ev::Created { name: "a".into() }, Metadata::default()).unwrap();
        assert_eq!(n.data, br#"{"name":"a"}"#);
        let n = encode(&Ev::Closed, Metadata::default()).unwrap();
        assert_eq!(n.data, b"{}");
        assert_eq!(
            encode(&Pinged { at: 1 }, Metadata::default())
                .unwrap()
                .schema_version,
            3
        );
    }

    #[test]
    fn bad_input_gets_typed_errors() {
        let r = decode_parts::<Ev>("Exploded", 1, CONTENT_TYPE_JSON, b"{}");
        assert!(
            matches!(r, Err(CodecError::UnknownEventType { .. })),
            "{r:?}"
        );
        let r = decode_parts::<Ev>("Created", 1, CONTENT_TYPE_JSON, b"{\"name\": 5}");
        assert!(matches!(r, Err(CodecError::Malformed { .. })), "{r:?}");
        let r = decode_parts::<Ev>("Created", 1, CONTENT_TYPE_JSON, b"{nope");
        assert!(matches!(r, Err(CodecError::Malformed { .. })), "{r:?}");
        let r = decode_parts::<Ev>("Created", 2, CONTENT_TYPE_JSON, b"{}");
        assert!(matches!(
            r,
            Err(CodecError::UnsupportedSchemaVersion {
                found: 2,
                expected: 1,
                ..
            })
        ));
        let r = decode_parts::<Ev>("Created", 1, "text/plain", b"x");
        assert!(matches!(r, Err(CodecError::UnsupportedContentType(_))));
        let r = decode_parts::<Pinged>("Pinged", 3, CONTENT_TYPE_JSON, b"{\"at\": \"x\"}");
        assert!(r.is_err());
    }
}
