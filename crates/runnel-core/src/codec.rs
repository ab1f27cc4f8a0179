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
    // The usual shape (an externally tagged enum at the version it reads) decodes straight
    // from the bytes: no `serde_json::Value` tree is built, which is most of the cost of an
    // aggregate load. Anything else (a struct event, another enum representation, a bad
    // payload) takes the general path below, which also words the errors.
    if schema_version == E::schema_version(event_type) {
        if let Ok(event) = E::deserialize(tagged::Tagged::new(event_type, data)) {
            if event.event_type() == event_type {
                return Ok(event);
            }
        }
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

/// Deserializing an externally tagged enum variant from its tag and its JSON content.
mod tagged {
    use serde::de::{self, DeserializeSeed, EnumAccess, VariantAccess, Visitor};
    use serde::forward_to_deserialize_any;

    /// The variant `variant` with the JSON `data` as its content, as a deserializer of an
    /// externally tagged enum. Only `deserialize_enum` succeeds: any other shape is
    /// refused, so the caller decodes it the general way.
    pub(super) struct Tagged<'de> {
        variant: &'de str,
        data: &'de [u8],
    }

    impl<'de> Tagged<'de> {
        pub(super) fn new(variant: &'de str, data: &'de [u8]) -> Self {
            Tagged { variant, data }
        }
    }

    impl<'de> de::Deserializer<'de> for Tagged<'de> {
        type Error = serde_json::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not an externally tagged enum"))
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            visitor.visit_enum(self)
        }

        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            struct identifier ignored_any
        }
    }

    impl<'de> EnumAccess<'de> for Tagged<'de> {
        type Error = serde_json::Error;
        type Variant = Content<'de>;

        fn variant_seed<S: DeserializeSeed<'de>>(
            self,
            seed: S,
        ) -> Result<(S::Value, Content<'de>), Self::Error> {
            let variant: de::value::BorrowedStrDeserializer<'de, serde_json::Error> =
                de::value::BorrowedStrDeserializer::new(self.variant);
            let value = seed.deserialize(variant)?;
            Ok((value, Content { data: self.data }))
        }
    }

    /// A variant's content: the stored JSON, which must be used whole.
    pub(super) struct Content<'de> {
        data: &'de [u8],
    }

    impl<'de> Content<'de> {
        fn whole<T>(
            self,
            f: impl FnOnce(
                &mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
            ) -> Result<T, serde_json::Error>,
        ) -> Result<T, serde_json::Error> {
            let mut json = serde_json::Deserializer::from_slice(self.data);
            let value = f(&mut json)?;
            json.end()?;
            Ok(value)
        }
    }

    impl<'de> VariantAccess<'de> for Content<'de> {
        type Error = serde_json::Error;

        /// A unit variant is stored as `{}` (or `null`).
        fn unit_variant(self) -> Result<(), Self::Error> {
            self.whole(|json| de::Deserializer::deserialize_any(json, UnitContent))
        }

        fn newtype_variant_seed<S: DeserializeSeed<'de>>(
            self,
            seed: S,
        ) -> Result<S::Value, Self::Error> {
            self.whole(|json| seed.deserialize(json))
        }

        fn tuple_variant<V: Visitor<'de>>(
            self,
            len: usize,
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.whole(|json| de::Deserializer::deserialize_tuple(json, len, visitor))
        }

        fn struct_variant<V: Visitor<'de>>(
            self,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.whole(|json| de::Deserializer::deserialize_struct(json, "", fields, visitor))
        }
    }

    /// Accepts `{}` and `null`, the stored forms of a variant without content.
    struct UnitContent;

    impl<'de> Visitor<'de> for UnitContent {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("{} or null for a variant without content")
        }

        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }

        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            match map.next_key::<de::IgnoredAny>()? {
                None => Ok(()),
                Some(_) => Err(de::Error::custom("a variant without content has fields")),
            }
        }
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

    /// The direct decoding from bytes and the general decoding through a JSON value agree
    /// on every shape, and what neither reads is refused. (What the direct one refuses is
    /// decoded the general way, so `decode_parts` accepts exactly what it accepted before.)
    #[test]
    fn direct_decoding_agrees_with_the_value_path() {
        let cases: Vec<(&str, &[u8])> = vec![
            ("Created", br#"{"name":"a"}"#),
            ("Renamed", br#""b""#),
            ("Closed", b"{}"),
            ("Closed", b"null"),
        ];
        for (event_type, data) in cases {
            let direct: Ev = decode_parts(event_type, 1, "application/json", data).unwrap();
            let value: Value = serde_json::from_slice(data).unwrap();
            let general: Ev = decode_value(event_type, 1, value).unwrap();
            assert_eq!(direct, general, "{event_type}");
        }
        for (event_type, data) in [
            ("Created", &br#"{"name":"a"} trailing"#[..]),
            ("Created", br#"{"name":1}"#),
            ("Missing", b"{}"),
        ] {
            assert!(
                decode_parts::<Ev>(event_type, 1, "application/json", data).is_err(),
                "{event_type} {:?}",
                String::from_utf8_lossy(data)
            );
        }
    }
}
