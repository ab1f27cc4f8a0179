//! Errors of upcasting: a failing step ([`UpcastError`]) and a badly built chain
//! ([`UpcasterError`]).

/// A single upcasting step could not migrate a payload (for example a field the old
/// version always had is missing). On read it becomes
/// [`runnel_core::CodecError::Upcast`] naming the event type and the step's version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct UpcastError {
    message: String,
}

impl UpcastError {
    /// A step failure with a message saying what was wrong with the payload.
    pub fn new(message: impl Into<String>) -> Self {
        UpcastError {
            message: message.into(),
        }
    }

    /// The payload lacks a field this version always had.
    pub fn missing_field(field: &str) -> Self {
        UpcastError::new(format!("the payload has no {field:?} field"))
    }

    /// The payload is not a JSON object.
    pub fn not_an_object() -> Self {
        UpcastError::new("the payload is not a JSON object")
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Registering an upcasting step would leave the chain ambiguous or broken. Raised when the
/// application is wired, before any event is read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpcasterError {
    /// A step from this version is already registered for this event type.
    #[error(
        "an upcaster for {event_type:?} from version {from_version} to {} is already registered; \
         register each step once", .from_version + 1
    )]
    DuplicateStep {
        event_type: String,
        from_version: u32,
    },

    /// The step does not join the registered chain, which would leave versions no step
    /// reaches.
    #[error(
        "an upcaster for {event_type:?} from version {from_version} leaves a gap: the chain \
         covers versions {chain_start}..={chain_end}, so the next step must start at \
         {chain_end} (or end at {chain_start}); register the missing steps in between"
    )]
    Gap {
        event_type: String,
        from_version: u32,
        chain_start: u32,
        chain_end: u32,
    },

    /// Schema versions start at 1.
    #[error("an upcaster for {event_type:?} starts at version 0; schema versions start at 1")]
    VersionZero { event_type: String },

    /// The event type name is empty.
    #[error("an upcaster was registered for an empty event type name")]
    EmptyEventType,

    /// The chain for this event type is at its length limit.
    #[error(
        "the upcaster chain for {event_type:?} already has {limit} steps, the most allowed; \
         squash old steps into one"
    )]
    TooManySteps { event_type: String, limit: usize },
}
