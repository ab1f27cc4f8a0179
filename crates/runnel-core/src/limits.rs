//! Explicit limits on what one append may carry, checked before anything is written.

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::event::{NewEvent, CONTENT_TYPE_JSON, EVENT_TYPE_LEN_MAX};

/// Default largest payload (data + encoded metadata) of one event: 1 MiB.
pub const PAYLOAD_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Default most events in one append.
pub const EVENTS_PER_APPEND_MAX_DEFAULT: usize = 1000;
/// Default largest total size of one append: 16 MiB. Bounds the memory one queued append
/// can hold in a group-commit writer's queue.
pub const APPEND_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;

/// The limits a store enforces on appends. Every violation is a typed [`StoreError`]
/// raised before anything is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreLimits {
    /// Largest payload of one event (data plus serialized metadata), in bytes.
    pub max_payload_bytes: usize,
    /// Most events in one append call.
    pub max_events_per_append: usize,
    /// Largest total payload of one append call, in bytes.
    pub max_append_bytes: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_payload_bytes: PAYLOAD_BYTES_MAX_DEFAULT,
            max_events_per_append: EVENTS_PER_APPEND_MAX_DEFAULT,
            max_append_bytes: APPEND_BYTES_MAX_DEFAULT,
        }
    }
}

impl StoreLimits {
    /// Checks one append against these limits and the envelope rules (non-empty, valid
    /// event types, JSON payloads that parse). Backends call this before touching storage.
    pub fn validate_append(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Err(StoreError::EmptyAppend);
        }
        if events.len() > self.max_events_per_append {
            return Err(StoreError::TooManyEvents {
                count: events.len(),
                limit: self.max_events_per_append,
            });
        }
        let mut total_bytes = 0usize;
        for (i, event) in events.iter().enumerate() {
            validate_event_type(event)?;
            if event.content_type.is_empty() {
                return Err(StoreError::InvalidEvent {
                    event_id: event.id,
                    reason: "the content type is empty".into(),
                });
            }
            let size_bytes = event.data.len() + event.metadata.encoded_len();
            if size_bytes > self.max_payload_bytes {
                return Err(StoreError::PayloadTooLarge {
                    event_id: event.id,
                    size_bytes,
                    limit_bytes: self.max_payload_bytes,
                });
            }
            total_bytes += size_bytes;
            if is_json(&event.content_type)
                && serde_json::from_slice::<serde::de::IgnoredAny>(&event.data).is_err()
            {
                return Err(StoreError::InvalidEvent {
                    event_id: event.id,
                    reason: format!(
                        "the content type is {} but the data is not valid JSON",
                        event.content_type
                    ),
                });
            }
            if events[..i].iter().any(|e| e.id == event.id) {
                return Err(StoreError::InvalidEvent {
                    event_id: event.id,
                    reason: "the same event id appears twice in one append".into(),
                });
            }
        }
        if total_bytes > self.max_append_bytes {
            return Err(StoreError::InvalidArgument(format!(
                "the append carries {total_bytes} bytes, over the {}-byte limit per append; split it",
                self.max_append_bytes
            )));
        }
        Ok(())
    }
}

fn is_json(content_type: &str) -> bool {
    let base = content_type.split(';').next().unwrap_or("").trim();
    base == CONTENT_TYPE_JSON || base.ends_with("+json")
}

fn validate_event_type(event: &NewEvent) -> Result<(), StoreError> {
    let t = &event.event_type;
    let reason = if t.is_empty() {
        Some("the event type is empty".to_string())
    } else if t.len() > EVENT_TYPE_LEN_MAX {
        Some(format!(
            "the event type is {} bytes; the limit is {EVENT_TYPE_LEN_MAX}",
            t.len()
        ))
    } else if !t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'))
    {
        Some(format!(
            "the event type {t:?} may hold only ASCII letters, digits and '_', '.', '-', ':'"
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::InvalidEvent {
            event_id: event.id,
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rejects_each_kind_of_bad_append() {
        let limits = StoreLimits {
            max_payload_bytes: 64,
            max_events_per_append: 2,
            max_append_bytes: 100,
        };
        let ok = NewEvent::json("Ok", &json!({}));
        assert!(limits.validate_append(std::slice::from_ref(&ok)).is_ok());
        assert_eq!(limits.validate_append(&[]), Err(StoreError::EmptyAppend));
        assert!(matches!(
            limits.validate_append(&[ok.clone(), ok.clone(), ok.clone()]),
            Err(StoreError::TooManyEvents { count: 3, limit: 2 })
        ));
        let big = NewEvent::json("Big", &json!({"x": "y".repeat(100)}));
        assert!(matches!(
            limits.validate_append(&[big]),
            Err(StoreError::PayloadTooLarge {
                limit_bytes: 64,
                ..
            })
        ));
        let bad_json = NewEvent::bytes("Bad", "application/json", b"{nope".to_vec());
        assert!(matches!(
            limits.validate_append(&[bad_json]),
            Err(StoreError::InvalidEvent { .. })
        ));
        let bad_type = NewEvent::json("has space", &json!({}));
        assert!(matches!(
            limits.validate_append(&[bad_type]),
            Err(StoreError::InvalidEvent { .. })
        ));
        assert!(matches!(
            limits.validate_append(&[ok.clone(), ok.clone()]),
            Err(StoreError::InvalidEvent { .. })
        ));
        let binary = NewEvent::bytes("Bin", "application/octet-stream", vec![0xff; 10]);
        assert!(limits.validate_append(&[binary]).is_ok());
    }
}
