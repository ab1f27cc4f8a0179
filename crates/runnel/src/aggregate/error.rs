//! Why running a command through the repository failed.

use runnel_core::{CodecError, StoreError};

/// Errors of [`crate::Repository::load`] and [`crate::Repository::execute`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepositoryError<E> {
    /// The aggregate refused the command (an invariant would break). Nothing was written;
    /// retrying the same command in the same state fails the same way.
    #[error(transparent)]
    Domain(E),

    /// The store failed or refused the call (including an invalid aggregate id, which makes
    /// an invalid stream name).
    #[error(transparent)]
    Store(#[from] StoreError),

    /// A stored event could not be upcast or decoded, or a new one encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),

    /// Every try lost the optimistic-concurrency race: the stream kept changing between
    /// load and append. Nothing from this command was written.
    #[error(
        "gave up after {attempts} attempts because the stream kept changing between load and \
         append (last: {last}); send the command again later, or raise \
         `RetryPolicy::max_attempts` if this aggregate is this contended"
    )]
    ConflictRetriesExhausted { attempts: u32, last: StoreError },
}

impl<E> RepositoryError<E> {
    /// The aggregate's own error, if the aggregate refused the command.
    pub fn domain(&self) -> Option<&E> {
        match self {
            RepositoryError::Domain(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the aggregate refused the command.
    pub fn is_domain(&self) -> bool {
        matches!(self, RepositoryError::Domain(_))
    }

    /// Whether the command lost every optimistic-concurrency retry.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            RepositoryError::ConflictRetriesExhausted { .. }
                | RepositoryError::Store(StoreError::Conflict { .. })
        )
    }
}
