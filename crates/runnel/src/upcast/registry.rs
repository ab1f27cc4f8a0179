//! The [`Upcasters`] registry: per event type, a contiguous chain of steps n → n+1.

use std::collections::HashMap;
use std::fmt;

use runnel_core::codec::{self, DomainEvent};
use runnel_core::{CodecError, RecordedEvent, CONTENT_TYPE_JSON};
use serde_json::Value;

use super::error::{UpcastError, UpcasterError};

/// Most steps one event type's chain may hold. Every read runs the whole chain for old
/// events, so a very long chain is a cost worth noticing (squash old steps instead).
pub const UPCAST_STEPS_PER_TYPE_MAX: usize = 64;

/// One migration step: takes a payload at version n and returns it at version n+1.
pub type UpcastStep = Box<dyn Fn(Value) -> Result<Value, UpcastError> + Send + Sync + 'static>;

/// The steps of one event type: `steps[i]` migrates version `start + i` to `start + i + 1`.
struct Chain {
    start: u32,
    steps: Vec<UpcastStep>,
}

impl Chain {
    /// The version the last step produces.
    fn end(&self) -> u32 {
        self.start + self.steps.len() as u32
    }
}

/// Upcasters for every event type, applied on every read path.
///
/// Build it once while wiring the application, then share it (`Arc<Upcasters>`) with the
/// [`crate::Repository`] and any projection.
///
/// ```
/// use runnel::{UpcastError, Upcasters};
/// use serde_json::{json, Value};
///
/// let mut upcasters = Upcasters::new();
/// // Version 2 split the single `address` into shipping and billing addresses.
/// upcasters
///     .register("OrderPlaced", 1, |mut v: Value| {
///         let obj = v.as_object_mut().ok_or_else(UpcastError::not_an_object)?;
///         let address = obj.remove("address").ok_or_else(|| UpcastError::missing_field("address"))?;
///         obj.insert("shipping_address".into(), address.clone());
///         obj.insert("billing_address".into(), address);
///         Ok(v)
///     })
///     .unwrap();
///
/// let (version, payload) = upcasters
///     .upcast("OrderPlaced", 1, json!({"address": "1 Main St"}))
///     .unwrap();
/// assert_eq!(version, 2);
/// assert_eq!(payload["billing_address"], "1 Main St");
/// ```
#[derive(Default)]
pub struct Upcasters {
    chains: HashMap<String, Chain>,
}

impl Upcasters {
    /// An empty registry: every payload is read at the version it was stored at.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step that migrates `event_type` payloads from `from_version` to
    /// `from_version + 1`.
    ///
    /// The first step of an event type may start at any version; later steps must extend
    /// the chain at either end. A second step from the same version is
    /// [`UpcasterError::DuplicateStep`]; a step that does not touch the chain is
    /// [`UpcasterError::Gap`].
    pub fn register<F>(
        &mut self,
        event_type: &str,
        from_version: u32,
        step: F,
    ) -> Result<&mut Self, UpcasterError>
    where
        F: Fn(Value) -> Result<Value, UpcastError> + Send + Sync + 'static,
    {
        if event_type.is_empty() {
            return Err(UpcasterError::EmptyEventType);
        }
        if from_version == 0 {
            return Err(UpcasterError::VersionZero {
                event_type: event_type.to_string(),
            });
        }
        let step: UpcastStep = Box::new(step);
        let Some(chain) = self.chains.get_mut(event_type) else {
            self.chains.insert(
                event_type.to_string(),
                Chain {
                    start: from_version,
                    steps: vec![step],
                },
            );
            return Ok(self);
        };
        if chain.steps.len() >= UPCAST_STEPS_PER_TYPE_MAX {
            return Err(UpcasterError::TooManySteps {
                event_type: event_type.to_string(),
                limit: UPCAST_STEPS_PER_TYPE_MAX,
            });
        }
        if (chain.start..chain.end()).contains(&from_version) {
            return Err(UpcasterError::DuplicateStep {
                event_type: event_type.to_string(),
                from_version,
            });
        }
        if from_version == chain.end() {
            chain.steps.push(step);
        } else if from_version.checked_add(1) == Some(chain.start) {
            chain.steps.insert(0, step);
            chain.start = from_version;
        } else {
            return Err(UpcasterError::Gap {
                event_type: event_type.to_string(),
                from_version,
                chain_start: chain.start,
                chain_end: chain.end(),
            });
        }
        Ok(self)
    }

    /// Whether any step is registered for `event_type`.
    pub fn has_steps_for(&self, event_type: &str) -> bool {
        self.chains.contains_key(event_type)
    }

    /// The newest version the chain of `event_type` reaches (`None`: no steps registered).
    pub fn latest_version(&self, event_type: &str) -> Option<u32> {
        self.chains.get(event_type).map(Chain::end)
    }

    /// The oldest version the chain of `event_type` upcasts from (`None`: no steps).
    pub fn earliest_version(&self, event_type: &str) -> Option<u32> {
        self.chains.get(event_type).map(|c| c.start)
    }

    /// Every event type with steps, as `(event_type, earliest, latest)` versions, sorted.
    pub fn chains(&self) -> Vec<(&str, u32, u32)> {
        let mut chains: Vec<(&str, u32, u32)> = self
            .chains
            .iter()
            .map(|(t, c)| (t.as_str(), c.start, c.end()))
            .collect();
        chains.sort_unstable();
        chains
    }

    /// Runs every step that applies to a payload of `event_type` at `version`, returning
    /// the version reached and the migrated payload. A payload no step applies to comes
    /// back unchanged; whether the reached version is the one a Rust type reads is checked
    /// by [`runnel_core::codec::decode_value`].
    pub fn upcast(
        &self,
        event_type: &str,
        version: u32,
        payload: Value,
    ) -> Result<(u32, Value), CodecError> {
        let Some(chain) = self.chains.get(event_type) else {
            return Ok((version, payload));
        };
        let mut version = version;
        let mut payload = payload;
        while version >= chain.start && version < chain.end() {
            let step = &chain.steps[(version - chain.start) as usize];
            payload = step(payload).map_err(|e| CodecError::Upcast {
                event_type: event_type.to_string(),
                from_version: version,
                message: e.message().to_string(),
            })?;
            version += 1;
        }
        Ok((version, payload))
    }

    /// Parses a stored event's JSON payload and upcasts it. Follow with
    /// [`runnel_core::codec::decode_value`] (or use [`Upcasters::decode`]).
    pub fn upcast_recorded(&self, event: &RecordedEvent) -> Result<(u32, Value), CodecError> {
        if !is_json(&event.content_type) {
            return Err(CodecError::UnsupportedContentType(
                event.content_type.clone(),
            ));
        }
        let payload: Value =
            serde_json::from_slice(&event.data).map_err(|e| CodecError::Malformed {
                event_type: event.event_type.clone(),
                message: e.to_string(),
            })?;
        self.upcast(&event.event_type, event.schema_version, payload)
    }

    /// Upcasts a stored event and decodes it as `E`.
    pub fn decode<E: DomainEvent>(&self, event: &RecordedEvent) -> Result<E, CodecError> {
        // No step applies (the common case): decode from the stored bytes, without
        // parsing them into a `serde_json::Value` first.
        let applies = self.chains.get(&event.event_type).is_some_and(|chain| {
            event.schema_version >= chain.start && event.schema_version < chain.end()
        });
        if !applies {
            return codec::decode(event);
        }
        let (version, payload) = self.upcast_recorded(event)?;
        codec::decode_value(&event.event_type, version, payload)
    }
}

fn is_json(content_type: &str) -> bool {
    let base = content_type.split(';').next().unwrap_or("").trim();
    base == CONTENT_TYPE_JSON || base.ends_with("+json")
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upcasters")
            .field("chains", &self.chains())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use runnel_core::{EventId, Metadata, Position, StreamName};
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    /// Version 3 of a `Registered` event. v1 had `name`; v2 split it into `first`/`last`;
    /// v3 added `email`.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum UserEvent {
        Registered {
            first: String,
            last: String,
            email: Option<String>,
        },
    }

    impl DomainEvent for UserEvent {
        fn event_type(&self) -> &'static str {
            "Registered"
        }
        fn schema_version(_: &str) -> u32 {
            3
        }
    }

    fn split_name(mut v: Value) -> Result<Value, UpcastError> {
        let obj = v.as_object_mut().ok_or_else(UpcastError::not_an_object)?;
        let name = obj
            .remove("name")
            .and_then(|n| n.as_str().map(str::to_string))
            .ok_or_else(|| UpcastError::missing_field("name"))?;
        let (first, last) = name.split_once(' ').unwrap_or((name.as_str(), ""));
        obj.insert("first".into(), first.into());
        obj.insert("last".into(), last.into());
        Ok(v)
    }

    fn add_email(mut v: Value) -> Result<Value, UpcastError> {
        let obj = v.as_object_mut().ok_or_else(UpcastError::not_an_object)?;
        obj.insert("email".into(), Value::Null);
        Ok(v)
    }

    fn recorded(version: u32, data: Value) -> RecordedEvent {
        RecordedEvent {
            id: EventId::new(),
            stream: StreamName::new("User-1").unwrap(),
            revision: 1,
            position: Position(1),
            recorded_at: Utc::now(),
            event_type: "Registered".into(),
            schema_version: version,
            content_type: CONTENT_TYPE_JSON.into(),
            data: serde_json::to_vec(&data).unwrap(),
            metadata: Metadata::default(),
        }
    }

    #[test]
    fn v1_event_decodes_through_a_two_step_chain() {
        let mut up = Upcasters::new();
        up.register("Registered", 1, split_name)
            .unwrap()
            .register("Registered", 2, add_email)
            .unwrap();
        let event = recorded(1, json!({"name": "Ada Lovelace"}));
        assert_eq!(
            up.upcast_recorded(&event).unwrap(),
            (
                3,
                json!({"first": "Ada", "last": "Lovelace", "email": null})
            )
        );
        let decoded: UserEvent = up.decode(&event).unwrap();
        assert_eq!(
            decoded,
            UserEvent::Registered {
                first: "Ada".into(),
                last: "Lovelace".into(),
                email: None
            }
        );
    }

    #[test]
    fn current_version_events_pass_through_unchanged() {
        let mut up = Upcasters::new();
        up.register("Registered", 1, split_name).unwrap();
        let data = json!({"first": "A", "last": "B", "email": "a@b"});
        let (version, payload) = up.upcast_recorded(&recorded(3, data.clone())).unwrap();
        assert_eq!((version, payload), (3, data));
    }

    #[test]
    fn missing_step_gives_unsupported_schema_version() {
        let mut up = Upcasters::new();
        up.register("Registered", 1, split_name).unwrap();
        let r = up.decode::<UserEvent>(&recorded(1, json!({"name": "Ada Lovelace"})));
        assert!(
            matches!(
                r,
                Err(CodecError::UnsupportedSchemaVersion {
                    found: 2,
                    expected: 3,
                    ..
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn failing_step_gives_typed_upcast_error() {
        let mut up = Upcasters::new();
        up.register("Registered", 1, split_name).unwrap();
        let r = up.upcast_recorded(&recorded(1, json!({"nom": "x"})));
        match r {
            Err(CodecError::Upcast {
                event_type,
                from_version,
                message,
            }) => {
                assert_eq!(event_type, "Registered");
                assert_eq!(from_version, 1);
                assert!(message.contains("name"), "{message}");
            }
            other => panic!("expected an upcast error, got {other:?}"),
        }
    }

    #[test]
    fn duplicate_step_is_rejected() {
        let mut up = Upcasters::new();
        up.register("Registered", 1, split_name).unwrap();
        let r = up.register("Registered", 1, split_name).map(|_| ());
        assert_eq!(
            r,
            Err(UpcasterError::DuplicateStep {
                event_type: "Registered".into(),
                from_version: 1
            })
        );
    }

    #[test]
    fn gap_in_chain_is_rejected() {
        let mut up = Upcasters::new();
        up.register("Registered", 1, split_name).unwrap();
        let r = up.register("Registered", 3, add_email).map(|_| ());
        assert!(
            matches!(
                r,
                Err(UpcasterError::Gap {
                    from_version: 3,
                    chain_start: 1,
                    chain_end: 2,
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(up.latest_version("Registered"), Some(2));
    }

    #[test]
    fn steps_may_be_registered_newest_first() {
        let mut up = Upcasters::new();
        up.register("Registered", 2, add_email).unwrap();
        up.register("Registered", 1, split_name).unwrap();
        let (version, _) = up.upcast("Registered", 1, json!({"name": "A B"})).unwrap();
        assert_eq!(version, 3);
    }

    #[test]
    fn version_zero_and_empty_type_are_rejected() {
        let mut up = Upcasters::new();
        assert!(matches!(
            up.register("Registered", 0, add_email).map(|_| ()),
            Err(UpcasterError::VersionZero { .. })
        ));
        assert_eq!(
            up.register("", 1, add_email).map(|_| ()),
            Err(UpcasterError::EmptyEventType)
        );
    }

    #[test]
    fn non_json_payloads_are_a_typed_error() {
        let up = Upcasters::new();
        let mut event = recorded(1, json!({}));
        event.content_type = "application/octet-stream".into();
        assert!(matches!(
            up.upcast_recorded(&event),
            Err(CodecError::UnsupportedContentType(_))
        ));
        let mut event = recorded(1, json!({}));
        event.data = b"{nope".to_vec();
        assert!(matches!(
            up.upcast_recorded(&event),
            Err(CodecError::Malformed { .. })
        ));
    }
}
