//! [`DeadLetterError`]: what the dead-letter tooling reports.

use runnel_core::dead_letter::DeadLetterId;
use runnel_core::{BusError, StoreError};

use super::replay::ReplayReport;

/// Errors of the dead-letter tooling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    /// No dead letter has this id (never stored, or purged).
    #[error(
        "dead letter {0} does not exist (list them with `runnel dlq list --include-replayed`)"
    )]
    NotFound(DeadLetterId),
    /// A setting or argument is outside its bounds.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The dead-letter store failed; nothing was changed by this call (or, for a bulk
    /// operation, see the operation's own error).
    #[error("the dead-letter store failed: {0}")]
    Store(#[source] StoreError),
    /// A replay stopped part-way because the bus or the store failed. `report` says what was
    /// replayed before; running the same replay again is safe — republished messages keep
    /// their ids, so idempotent consumers apply each one once.
    #[error(
        "replay interrupted after {} replayed and {} skipped: {source}; running it again is \
         safe (messages keep their ids)",
        report.replayed,
        report.skipped
    )]
    ReplayInterrupted {
        report: ReplayReport,
        #[source]
        source: ReplayFailure,
    },
}

/// What stopped a replay part-way: publishing to the bus, or marking in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayFailure {
    /// Publishing the dead letters again failed.
    #[error("publishing failed: {0}")]
    Bus(#[source] BusError),
    /// Marking published dead letters replayed failed; the next replay republishes them
    /// (same ids).
    #[error("marking dead letters replayed failed: {0}")]
    Store(#[source] StoreError),
}

impl ReplayFailure {
    /// Whether retrying the replay later may succeed (the bus or the store was unavailable).
    pub fn is_transient(&self) -> bool {
        match self {
            ReplayFailure::Bus(e) => e.is_transient(),
            ReplayFailure::Store(e) => e.is_transient(),
        }
    }
}

impl From<StoreError> for DeadLetterError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidArgument(m) => DeadLetterError::InvalidArgument(m),
            other => DeadLetterError::Store(other),
        }
    }
}
