//! The transactional inbox: what makes a handler's effects exactly-once when its state
//! lives in the same database as the inbox. The handler writes through a *scope* the inbox
//! opens for the attempt; the inbox commits those writes together with the "message
//! processed" mark, so either both happen or neither, and a redelivered duplicate finds the
//! mark and is skipped.
//!
//! The router's [`InboxLayer`](super::layers::InboxLayer) drives an [`Inbox`]:
//!
//! 1. `begin(key)` — `AlreadyProcessed` skips the handler; `Started(scope)` runs it with the
//!    scope available through [`HandlerContext::scope`](super::HandlerContext::scope);
//! 2. the handler succeeds → `commit(key, scope)` marks and commits atomically
//!    (`AlreadyProcessed` if a concurrent duplicate committed first: this attempt's writes
//!    are discarded); the handler fails → `rollback(key, scope)`.
//!
//! Implementations (each fits this shape in its own way):
//! * `runnel_postgres::PostgresInbox` (feature `postgres`, module `postgres`): `Scope` is
//!   the backend's `InboxTransaction`; `begin` inserts the inbox row in a new transaction
//!   (`ON CONFLICT DO NOTHING`; a concurrent duplicate waits on the uncommitted row), the
//!   handler runs its SQL on `scope.connection()`, `commit` commits.
//! * `runnel_sqlite::SqliteInbox` (feature `sqlite`, module `sqlite`): `Scope` is
//!   `SqliteInboxScope`, which collects the handler's writes as closures; `commit` runs one
//!   unit of work on the store's writer that inserts the inbox row and, if it was new,
//!   applies the writes — in the same fsynced batch.
//! * [`MemoryInbox`]: in memory, for tests.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use runnel_core::StoreError;

use super::error::BoxError;

mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use memory::{MemoryInbox, MemoryInboxScope, MEMORY_INBOX_ENTRIES_MAX};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteInboxScope, SqliteWrite, TooManyWrites, SQLITE_WRITES_PER_ATTEMPT_MAX};

/// Whose inbox and which message: the row an inbox marks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InboxKey {
    /// The handler (consumer) the mark belongs to, so two consumers of one message each
    /// handle it once. The router uses [`consumer_name`](super::layers::consumer_name)
    /// (`"{topic}/{group}"`, at most 200 bytes) unless configured otherwise.
    pub handler: String,
    /// The message id (CloudEvents `id`).
    pub message_id: String,
}

impl fmt::Display for InboxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.handler, self.message_id)
    }
}

/// What [`Inbox::begin`] found.
#[derive(Debug)]
pub enum InboxBegin<S> {
    /// Not processed yet (as far as the inbox can tell now): run the handler with `S`.
    Started(S),
    /// Already processed: skip the handler and acknowledge.
    AlreadyProcessed,
}

/// What [`Inbox::commit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboxCommit {
    /// The handler's writes and the mark committed together.
    Committed,
    /// The mark was already there (a concurrent duplicate committed first); nothing of
    /// this attempt was committed.
    AlreadyProcessed,
}

/// Why an inbox operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// The inbox's store failed (unreachable, I/O, busy): nothing was committed. The router
    /// hands the delivery back to the transport to come again later; it is not counted as
    /// a failure of the message.
    #[error("the inbox store failed: {0}")]
    Store(#[from] StoreError),
    /// The handler's own writes failed when they were applied (a constraint violated, bad
    /// data): nothing was committed. Counts as a failed attempt of the handler (retried, or
    /// dead-lettered if the retry layer's classifier says permanent).
    #[error("the handler's writes failed: {0}")]
    Writes(#[source] BoxError),
}

/// A transactional inbox. See the [module documentation](self) for the protocol.
///
/// Dropping a scope must roll back whatever it holds (the router drops it if the attempt
/// is cancelled, e.g. by shutdown at its deadline).
///
/// ```
/// use runnel::consumer::inbox::{Inbox, InboxBegin, InboxCommit, InboxKey, MemoryInbox};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let inbox = MemoryInbox::new();
/// let key = InboxKey { handler: "orders/billing".into(), message_id: "m-1".into() };
/// let InboxBegin::Started(mut scope) = inbox.begin(&key).await? else { unreachable!() };
/// scope.record("invoice for m-1");
/// assert_eq!(inbox.commit(&key, scope).await?, InboxCommit::Committed);
/// assert!(matches!(inbox.begin(&key).await?, InboxBegin::AlreadyProcessed));
/// assert_eq!(inbox.effects(), vec!["invoice for m-1".to_string()]);
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Inbox: Send + Sync + 'static {
    /// What the handler writes through (a transaction, a write set). The handler gets it
    /// with [`HandlerContext::scope::<Self::Scope>()`](super::HandlerContext::scope).
    type Scope: Send + 'static;

    /// Opens a scope for handling `key`, or reports that `key` is already processed.
    async fn begin(&self, key: &InboxKey) -> Result<InboxBegin<Self::Scope>, InboxError>;

    /// Atomically marks `key` processed and commits `scope`'s writes; or, if `key` is
    /// marked already, commits nothing and says so.
    async fn commit(&self, key: &InboxKey, scope: Self::Scope) -> Result<InboxCommit, InboxError>;

    /// Discards `scope` (the handler failed). The default drops it, which must roll back.
    async fn rollback(&self, key: &InboxKey, scope: Self::Scope) -> Result<(), InboxError> {
        let _ = key;
        drop(scope);
        Ok(())
    }
}

/// An [`Inbox`] with its scope type erased, so the inbox layer is one type for every inbox.
/// The scope travels as an `Arc<tokio::sync::Mutex<Option<I::Scope>>>` (what
/// [`HandlerContext::scope`](super::HandlerContext::scope) downcasts to).
pub(crate) type ScopeSlot = Arc<dyn std::any::Any + Send + Sync>;

pub(crate) trait ErasedInbox: Send + Sync + 'static {
    fn begin<'a>(
        &'a self,
        key: &'a InboxKey,
    ) -> BoxFuture<'a, Result<Option<ScopeSlot>, InboxError>>;
    fn commit<'a>(
        &'a self,
        key: &'a InboxKey,
        slot: ScopeSlot,
    ) -> BoxFuture<'a, Result<InboxCommit, ScopeError>>;
    fn rollback<'a>(
        &'a self,
        key: &'a InboxKey,
        slot: ScopeSlot,
    ) -> BoxFuture<'a, Result<(), InboxError>>;
}

/// Why the layer could not commit a scope.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScopeError {
    #[error(transparent)]
    Inbox(#[from] InboxError),
    #[error("the handler still holds the inbox scope after returning (drop the guard before returning, do not move it into a spawned task)")]
    StillHeld,
    #[error("the inbox scope was already taken")]
    Missing,
}

impl<I: Inbox> ErasedInbox for I {
    fn begin<'a>(
        &'a self,
        key: &'a InboxKey,
    ) -> BoxFuture<'a, Result<Option<ScopeSlot>, InboxError>> {
        Box::pin(async move {
            match Inbox::begin(self, key).await? {
                InboxBegin::AlreadyProcessed => Ok(None),
                InboxBegin::Started(scope) => {
                    let slot: ScopeSlot = Arc::new(tokio::sync::Mutex::new(Some(scope)));
                    Ok(Some(slot))
                }
            }
        })
    }

    fn commit<'a>(
        &'a self,
        key: &'a InboxKey,
        slot: ScopeSlot,
    ) -> BoxFuture<'a, Result<InboxCommit, ScopeError>> {
        Box::pin(async move {
            let scope = take_scope::<I::Scope>(slot)?;
            Ok(Inbox::commit(self, key, scope).await?)
        })
    }

    fn rollback<'a>(
        &'a self,
        key: &'a InboxKey,
        slot: ScopeSlot,
    ) -> BoxFuture<'a, Result<(), InboxError>> {
        Box::pin(async move {
            match take_scope::<I::Scope>(slot) {
                Ok(scope) => Inbox::rollback(self, key, scope).await,
                // Still held by a leaked guard: it rolls back when that guard's slot drops.
                Err(_) => Ok(()),
            }
        })
    }
}

fn take_scope<S: Send + 'static>(slot: ScopeSlot) -> Result<S, ScopeError> {
    let slot = slot
        .downcast::<tokio::sync::Mutex<Option<S>>>()
        .map_err(|_| ScopeError::Missing)?;
    let mut guard = slot.try_lock().map_err(|_| ScopeError::StillHeld)?;
    guard.take().ok_or(ScopeError::Missing)
}
