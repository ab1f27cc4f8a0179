//! The [`CommandEnvelope`]: a command plus its id and metadata.

use runnel_core::Metadata;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A command with its id and metadata.
///
/// The command id is the causation id of every event the command produces, and the start
/// of a new correlation if the metadata carries none (see
/// [`CommandEnvelope::event_metadata`]).
///
/// ```
/// use runnel::CommandEnvelope;
///
/// let envelope = CommandEnvelope::new("confirm order 7")
///     .with_correlation_id("req-42")
///     .with_user_id("alice");
/// let effect = envelope.event_metadata();
/// assert_eq!(effect.correlation_id.as_deref(), Some("req-42"));
/// assert_eq!(effect.causation_id.as_deref(), Some(envelope.command_id.as_str()));
/// assert_eq!(effect.user_id.as_deref(), Some("alice"));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandEnvelope<C> {
    /// Unique id of this command (a UUIDv7 unless set).
    pub command_id: String,
    pub command: C,
    #[serde(default)]
    pub metadata: Metadata,
}

impl<C> CommandEnvelope<C> {
    /// Wraps `command` with a fresh UUIDv7 id and empty metadata.
    pub fn new(command: C) -> Self {
        CommandEnvelope {
            command_id: Uuid::now_v7().to_string(),
            command,
            metadata: Metadata::default(),
        }
    }

    /// Wraps `command` issued in reaction to a message with id `cause_id` and metadata
    /// `cause` (an event a saga or process manager handles): the correlation carries
    /// over and the causation is the cause's id.
    pub fn caused_by(command: C, cause: &Metadata, cause_id: impl Into<String>) -> Self {
        CommandEnvelope {
            metadata: Metadata::caused_by(cause, cause_id),
            ..CommandEnvelope::new(command)
        }
    }

    /// Replaces the command id (for example with a client-supplied idempotency key).
    pub fn with_command_id(mut self, id: impl Into<String>) -> Self {
        self.command_id = id.into();
        self
    }

    /// Replaces the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.metadata.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.metadata.causation_id = Some(id.into());
        self
    }

    /// Sets the id of the user on whose behalf the command runs.
    pub fn with_user_id(mut self, id: impl Into<String>) -> Self {
        self.metadata.user_id = Some(id.into());
        self
    }

    /// Sets the W3C trace context.
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.metadata.traceparent = Some(traceparent.into());
        self
    }

    /// Adds one header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.headers.insert(key.into(), value.into());
        self
    }

    /// The same envelope (id and metadata kept) around another command, for example the
    /// aggregate's own command built from a bus command.
    pub fn map<D>(self, f: impl FnOnce(C) -> D) -> CommandEnvelope<D> {
        CommandEnvelope {
            command_id: self.command_id,
            command: f(self.command),
            metadata: self.metadata,
        }
    }

    /// The metadata every event this command produces carries:
    /// [`Metadata::caused_by`] the envelope's metadata and command id.
    pub fn event_metadata(&self) -> Metadata {
        Metadata::caused_by(&self.metadata, self.command_id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_envelopes_get_distinct_v7_ids() {
        let a = CommandEnvelope::new(());
        let b = CommandEnvelope::new(());
        assert_ne!(a.command_id, b.command_id);
        let id: Uuid = a.command_id.parse().unwrap();
        assert_eq!(id.get_version_num(), 7);
    }

    #[test]
    fn events_start_a_correlation_from_the_command_id() {
        let env = CommandEnvelope::new(()).with_user_id("bob");
        let m = env.event_metadata();
        assert_eq!(m.correlation_id.as_deref(), Some(env.command_id.as_str()));
        assert_eq!(m.causation_id.as_deref(), Some(env.command_id.as_str()));
        assert_eq!(m.user_id.as_deref(), Some("bob"));
    }

    #[test]
    fn a_command_caused_by_an_event_keeps_its_correlation() {
        let event_meta = Metadata::default().with_correlation_id("c-1");
        let env = CommandEnvelope::caused_by((), &event_meta, "event-9");
        assert_eq!(env.metadata.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(env.metadata.causation_id.as_deref(), Some("event-9"));
        let effect = env.event_metadata();
        assert_eq!(effect.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(
            effect.causation_id.as_deref(),
            Some(env.command_id.as_str())
        );
    }

    #[test]
    fn map_keeps_id_and_metadata() {
        let env = CommandEnvelope::new(2).with_correlation_id("c");
        let id = env.command_id.clone();
        let mapped = env.map(|n| n * 10);
        assert_eq!(mapped.command, 20);
        assert_eq!(mapped.command_id, id);
        assert_eq!(mapped.metadata.correlation_id.as_deref(), Some("c"));
    }
}
