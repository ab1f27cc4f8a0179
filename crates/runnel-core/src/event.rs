//! The event envelope: what is appended ([`NewEvent`]) and what is read back
//! ([`RecordedEvent`]).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::metadata::Metadata;
use crate::position::Position;
use crate::stream_name::StreamName;

/// The content type used for JSON payloads.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// Longest event type name accepted, in bytes.
pub const EVENT_TYPE_LEN_MAX: usize = 128;

/// A globally unique event id. New ids are UUIDv7 (time-ordered, so they index well).
/// The id is also the idempotency key of an append: appending an event whose id is
/// already stored writes nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    /// A fresh UUIDv7 id.
    pub fn new() -> Self {
        EventId(Uuid::now_v7())
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

impl From<Uuid> for EventId {
    fn from(u: Uuid) -> Self {
        EventId(u)
    }
}

/// An event to append. Build one with [`NewEvent::json`] or from a typed domain event with
/// [`crate::codec::encode`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    pub id: EventId,
    pub event_type: String,
    pub schema_version: u32,
    pub content_type: String,
    #[serde(with = "bytes_serde")]
    pub data: Vec<u8>,
    pub metadata: Metadata,
}

impl NewEvent {
    /// A JSON event with a fresh id, schema version 1 and empty metadata.
    pub fn json(event_type: impl Into<String>, data: &serde_json::Value) -> Self {
        NewEvent {
            id: EventId::new(),
            event_type: event_type.into(),
            schema_version: 1,
            content_type: CONTENT_TYPE_JSON.to_string(),
            data: serde_json::to_vec(data).expect("a serde_json::Value always serializes"),
            metadata: Metadata::default(),
        }
    }

    /// An event with raw bytes and an explicit content type.
    pub fn bytes(
        event_type: impl Into<String>,
        content_type: impl Into<String>,
        data: Vec<u8>,
    ) -> Self {
        NewEvent {
            id: EventId::new(),
            event_type: event_type.into(),
            schema_version: 1,
            content_type: content_type.into(),
            data,
            metadata: Metadata::default(),
        }
    }

    /// Replaces the id (use a deterministic id to make a retried append idempotent).
    pub fn with_id(mut self, id: impl Into<EventId>) -> Self {
        self.id = id.into();
        self
    }

    /// Replaces the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the schema version of the payload.
    pub fn with_schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }
}

/// An event as stored: the appended envelope plus where and when it landed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub id: EventId,
    pub stream: StreamName,
    /// Revision within the stream; the first event is 1.
    pub revision: u64,
    /// Global position in `$all`.
    pub position: Position,
    pub recorded_at: DateTime<Utc>,
    pub event_type: String,
    pub schema_version: u32,
    pub content_type: String,
    #[serde(with = "bytes_serde")]
    pub data: Vec<u8>,
    pub metadata: Metadata,
}

impl RecordedEvent {
    /// The payload parsed as JSON.
    pub fn data_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }
}

/// The outcome of a successful append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// The stream's revision after the append: pass `ExpectedRevision::Exact` of this to
    /// append next without a conflict.
    pub next_expected_revision: u64,
    /// The global position of the last appended event.
    pub position: Position,
}

/// Serde helper: JSON payloads serialize as embedded JSON (readable in `--json` output),
/// anything else as `{"base64": "..."}`.
pub(crate) mod bytes_serde {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(v) => v.serialize(s),
            Err(_) => {
                let mut map = serde_json::Map::new();
                map.insert("base64".into(), encode_base64(bytes).into());
                serde_json::Value::Object(map).serialize(s)
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        if let serde_json::Value::Object(map) = &v {
            if map.len() == 1 {
                if let Some(serde_json::Value::String(b64)) = map.get("base64") {
                    return decode_base64(b64).ok_or_else(|| D::Error::custom("invalid base64"));
                }
            }
        }
        serde_json::to_vec(&v).map_err(D::Error::custom)
    }

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub(crate) fn encode_base64(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub(crate) fn decode_base64(s: &str) -> Option<Vec<u8>> {
        let s = s.trim_end_matches('=');
        let mut out = Vec::with_capacity(s.len() * 3 / 4);
        let mut acc: u32 = 0;
        let mut bits = 0;
        for c in s.bytes() {
            let v = ALPHABET.iter().position(|&a| a == c)? as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        Some(out)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn base64_round_trip() {
            for len in 0..20 {
                let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
                let enc = super::encode_base64(&data);
                assert_eq!(super::decode_base64(&enc).unwrap(), data, "len {len}");
            }
            assert_eq!(super::encode_base64(b"foob"), "Zm9vYg==");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_time_ordered_v7() {
        let a = EventId::new();
        let b = EventId::new();
        assert_eq!(a.0.get_version_num(), 7);
        assert!(a < b);
    }

    #[test]
    fn json_payloads_serialize_inline_and_binary_as_base64() {
        let e = NewEvent::json("Tested", &serde_json::json!({"a": 1}));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["data"], serde_json::json!({"a": 1}));
        let back: NewEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);

        let bin = NewEvent::bytes("Blob", "application/octet-stream", vec![0xff, 0, 1]);
        let v = serde_json::to_value(&bin).unwrap();
        assert!(v["data"]["base64"].is_string());
        let back: NewEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back.data, vec![0xff, 0, 1]);
    }
}
