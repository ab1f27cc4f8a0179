//! Typed errors of the storage layer. Each variant says what happened and what to do.

use crate::event::EventId;
use crate::position::ExpectedRevision;

/// Errors from every storage trait: [`crate::EventStore`], [`crate::SnapshotStore`],
/// [`crate::CheckpointStore`], the outbox and blob stores, the
/// [`DeadLetterStore`](crate::dead_letter::DeadLetterStore) and the
/// [`DedupStore`](crate::idempotency::DedupStore). Every input error is raised before
/// anything is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Optimistic concurrency: the stream is not at the expected revision. Reload the
    /// stream and decide again (the framework's `Repository` retries by policy).
    #[error("conflict on stream {stream}: expected {expected}, but the stream is at {}", fmt_actual(.actual))]
    Conflict {
        stream: String,
        expected: ExpectedRevision,
        /// The stream's actual revision (`None`: the stream does not exist).
        actual: Option<u64>,
    },

    /// The stream name breaks the naming rules.
    #[error("invalid stream name {name:?}: {reason}")]
    InvalidStreamName { name: String, reason: String },

    /// An event in the append is malformed (for example an empty event type).
    #[error("invalid event {event_id}: {reason}")]
    InvalidEvent { event_id: EventId, reason: String },

    /// One event's payload (data plus metadata) is over the configured limit.
    #[error(
        "event {event_id} is {size_bytes} bytes, over the {limit_bytes}-byte payload limit; \
         keep the large part out of the event with a claim-check (put it in the store's blob \
         store, `runnel::connect::Stores::blobs`, and record its key in the event) or raise \
         `StoreLimits::max_payload_bytes`"
    )]
    PayloadTooLarge {
        event_id: EventId,
        size_bytes: usize,
        limit_bytes: usize,
    },

    /// The append holds more events than one append may carry.
    #[error("the append holds {count} events; at most {limit} may be appended at once — split it")]
    TooManyEvents { count: usize, limit: usize },

    /// An append with no events.
    #[error("the append holds no events")]
    EmptyAppend,

    /// Some of the appended event ids are already stored, but not as exactly this append
    /// (different stream, different order, or only some of them). A true retry of an
    /// earlier append is accepted silently; this is not one.
    #[error(
        "event id {event_id} is already stored in stream {existing_stream}; \
         this append is not a retry of the one that stored it"
    )]
    DuplicateEventId {
        event_id: EventId,
        existing_stream: String,
    },

    /// An inline projection (updated in the append's own transaction) could not apply one
    /// of the appended events: the append is refused and nothing of it was written.
    #[error(
        "inline projection {} refused event {} ({}): {}",
        .0.projection, .0.event_id, .0.event_type, .0.reason
    )]
    InlineProjectionFailed(Box<InlineFailure>),

    /// A message handed to a store (a dead letter's message) is malformed. Nothing was
    /// stored.
    #[error("invalid message {id:?}: {reason}")]
    InvalidMessage { id: String, reason: String },

    /// A dedup `complete` or `release` named a lock this caller no longer holds: it expired
    /// (the handler ran longer than the lock TTL) and may have been claimed by another
    /// handler, or the token is wrong. Nothing was stored or released. Use a lock TTL longer
    /// than the slowest handler.
    #[error(
        "the idempotency lock on key {key:?} is not held with this token (it expired or \
         another holder took it over); nothing was stored or released — use a lock TTL \
         longer than the slowest handler"
    )]
    DedupLockLost { key: String },

    /// An argument outside its allowed range (a zero limit, an invalid filter, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The backend could not be reached or failed mid-operation. Retrying is safe: appends
    /// are idempotent by event id, so a retried append never writes twice.
    #[error("store unavailable: {0}; retrying is safe")]
    Unavailable(String),

    /// The backend refused the credentials. Check the user name and password in the store
    /// URL.
    #[error("authentication failed: {0}; check the credentials in the store URL")]
    AuthenticationFailed(String),

    /// The backend refused an operation for lack of privileges.
    #[error("permission denied: {0}; grant the store's user rights on its schema")]
    PermissionDenied(String),

    /// Stored data could not be read back as written (a bug or a damaged file).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),

    /// The store was shut down.
    #[error("the store is closed")]
    Closed,

    /// Any other backend error.
    #[error("storage backend error: {0}")]
    Backend(String),
}

fn fmt_actual(actual: &Option<u64>) -> String {
    match actual {
        Some(n) => format!("revision {n}"),
        None => "no stream".to_string(),
    }
}

/// What [`StoreError::InlineProjectionFailed`] says (boxed: it is rare, and the error type
/// stays small).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineFailure {
    /// The projection.
    pub projection: String,
    /// The event it could not apply.
    pub event_id: EventId,
    /// Its type.
    pub event_type: String,
    /// Why.
    pub reason: String,
}

impl StoreError {
    /// Whether retrying the same call may succeed (transient backend trouble).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// Whether this is an optimistic-concurrency conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

/// Errors turning typed domain events into stored payloads and back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The event type is not one the target Rust type knows.
    #[error("unknown event type {event_type:?} for {target}")]
    UnknownEventType {
        event_type: String,
        target: &'static str,
    },
    /// After upcasting, the payload's schema version is still not the one the Rust type
    /// reads: register an upcaster for the missing step.
    #[error(
        "event type {event_type:?} is at schema version {found}, but {target} reads version \
         {expected}; register an upcaster from {found} to {}", .found + 1
    )]
    UnsupportedSchemaVersion {
        event_type: String,
        found: u32,
        expected: u32,
        target: &'static str,
    },
    /// The payload's content type is not JSON.
    #[error("content type {0:?} is not supported by the JSON codec")]
    UnsupportedContentType(String),
    /// The payload is not valid JSON or does not match the Rust type.
    #[error("cannot decode {event_type:?}: {message}")]
    Malformed { event_type: String, message: String },
    /// The value could not be serialized.
    #[error("cannot encode event: {0}")]
    Encode(String),
    /// An upcaster failed.
    #[error("upcasting {event_type:?} from version {from_version} failed: {message}")]
    Upcast {
        event_type: String,
        from_version: u32,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let e = StoreError::Conflict {
            stream: "Order-1".into(),
            expected: ExpectedRevision::Exact(3),
            actual: Some(4),
        };
        assert_eq!(
            e.to_string(),
            "conflict on stream Order-1: expected revision 3, but the stream is at revision 4"
        );
        let e = StoreError::PayloadTooLarge {
            event_id: EventId::new(),
            size_bytes: 2,
            limit_bytes: 1,
        };
        assert!(e.to_string().contains("claim-check"));
        assert!(e.to_string().contains("blob store"));
        let e = StoreError::DedupLockLost { key: "k".into() }.to_string();
        assert!(e.contains("nothing was stored or released"), "{e}");
        assert!(
            e.contains("lock TTL longer than the slowest handler"),
            "{e}"
        );
    }
}
