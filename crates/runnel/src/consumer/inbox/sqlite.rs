//! The router's [`Inbox`] on SQLite: [`SqliteInbox`] with a scope that collects the
//! handler's writes ([`SqliteInboxScope`]) and applies them at commit, in one unit of work
//! with the processed mark.
//!
//! Why closures rather than an open transaction: every SQLite write goes through the
//! store's single group-commit writer (one thread, one connection), so a handler cannot hold
//! a transaction open across its `await`s without stalling every other writer. Instead the
//! handler does its reads and decisions first, and hands the writes over as closures;
//! [`SqliteInbox::process`] runs them on the writer inside the unit of work that inserts the
//! mark, under its own savepoint:
//!
//! * the mark was already there (a concurrent duplicate committed first) → nothing is
//!   applied, [`InboxCommit::AlreadyProcessed`];
//! * a write returns an error or panics → the mark and every write roll back,
//!   [`InboxError::Writes`] (a failed attempt: retried, then dead-lettered);
//! * the store itself fails → [`InboxError::Store`] (the delivery comes back later).
//!
//! The writes run on the writer thread: keep them short, do no network I/O in them.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use async_trait::async_trait;
use runnel_core::StoreError;
use runnel_sqlite::{InboxOutcome, SqliteInbox, UnitOfWork};

use super::{Inbox, InboxBegin, InboxCommit, InboxError, InboxKey};
use crate::consumer::error::{BoxError, HandlerError};
use crate::consumer::handler::panic_message;

/// Most writes one attempt may stage: they are held in memory until the commit and run in
/// one writer job, which must stay short.
pub const SQLITE_WRITES_PER_ATTEMPT_MAX: usize = 1024;

/// One staged write: runs on the writer inside the inbox's unit of work.
pub type SqliteWrite = Box<dyn FnOnce(&UnitOfWork<'_>) -> Result<(), BoxError> + Send>;

/// The scope of a [`SqliteInbox`] attempt: the handler's writes, applied at commit together
/// with the processed mark — or not at all.
///
/// A handler gets it with [`HandlerContext::scope`](crate::consumer::HandlerContext::scope):
///
/// ```
/// use runnel::consumer::inbox::SqliteInboxScope;
/// use runnel::consumer::{HandlerContext, HandlerError};
///
/// async fn bill(ctx: HandlerContext) -> Result<(), HandlerError> {
///     let order_id = ctx.message().id.clone();
///     // Decide first (reads, other services), then stage the writes: they commit with
///     // the inbox mark, so a redelivered message never bills twice.
///     ctx.scope::<SqliteInboxScope>().await?.write(move |uow| {
///         uow.connection()
///             .execute("INSERT INTO invoices (order_id) VALUES (?1)", [order_id])?;
///         Ok(())
///     })
/// }
/// # fn assert_handler(_: impl runnel::consumer::Handler) {}
/// # assert_handler(bill);
/// ```
#[derive(Default)]
pub struct SqliteInboxScope {
    writes: Vec<SqliteWrite>,
}

impl fmt::Debug for SqliteInboxScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteInboxScope")
            .field("writes", &self.writes.len())
            .finish()
    }
}

/// An attempt staged more than [`SQLITE_WRITES_PER_ATTEMPT_MAX`] writes.
#[derive(Debug, thiserror::Error)]
#[error(
    "the handler staged more than {SQLITE_WRITES_PER_ATTEMPT_MAX} inbox writes in one attempt; \
     batch them into fewer closures (one closure may run many statements)"
)]
pub struct TooManyWrites;

impl SqliteInboxScope {
    /// Stages `write`: it runs at commit on the store's writer, inside the unit of work
    /// that marks the message processed. Return an error from it (any error converts with
    /// `?`) to roll back the whole attempt.
    ///
    /// Fails — permanently, it would fail the same way on every attempt — when the attempt
    /// already staged [`SQLITE_WRITES_PER_ATTEMPT_MAX`] writes.
    pub fn write<F>(&mut self, write: F) -> Result<(), HandlerError>
    where
        F: FnOnce(&UnitOfWork<'_>) -> Result<(), BoxError> + Send + 'static,
    {
        if self.writes.len() >= SQLITE_WRITES_PER_ATTEMPT_MAX {
            return Err(HandlerError::permanent(TooManyWrites));
        }
        self.writes.push(Box::new(write));
        Ok(())
    }

    /// How many writes are staged.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Whether no write is staged.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// Why a commit's unit of work failed: the store, or one of the handler's writes.
enum CommitError {
    Store(StoreError),
    Writes(BoxError),
}

impl From<StoreError> for CommitError {
    fn from(e: StoreError) -> Self {
        CommitError::Store(e)
    }
}

fn store_failed(e: StoreError) -> InboxError {
    InboxError::Store(e)
}

#[async_trait]
impl Inbox for SqliteInbox {
    type Scope = SqliteInboxScope;

    async fn begin(&self, key: &InboxKey) -> Result<InboxBegin<SqliteInboxScope>, InboxError> {
        // A read on a reader connection, so a known duplicate skips the handler without a
        // writer job. It only saves work: the decisive check is the mark's insert at commit.
        if self
            .is_processed(&key.handler, &key.message_id)
            .await
            .map_err(store_failed)?
        {
            Ok(InboxBegin::AlreadyProcessed)
        } else {
            Ok(InboxBegin::Started(SqliteInboxScope::default()))
        }
    }

    async fn commit(
        &self,
        key: &InboxKey,
        scope: SqliteInboxScope,
    ) -> Result<InboxCommit, InboxError> {
        let writes = scope.writes;
        debug_assert!(writes.len() <= SQLITE_WRITES_PER_ATTEMPT_MAX);
        let outcome = self
            .process(&key.handler, &key.message_id, move |uow| {
                for write in writes {
                    // A panicking write is the handler's failure (retried, then
                    // dead-lettered), not the store's: caught here, it rolls back this
                    // unit alone like any failed write.
                    match catch_unwind(AssertUnwindSafe(|| write(uow))) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(CommitError::Writes(e)),
                        Err(panic) => {
                            return Err(CommitError::Writes(
                                format!("an inbox write panicked: {}", panic_message(&*panic))
                                    .into(),
                            ))
                        }
                    }
                }
                Ok(())
            })
            .await;
        match outcome {
            Ok(InboxOutcome::Processed(())) => Ok(InboxCommit::Committed),
            Ok(InboxOutcome::Duplicate) => Ok(InboxCommit::AlreadyProcessed),
            Err(CommitError::Store(e)) => Err(store_failed(e)),
            Err(CommitError::Writes(e)) => Err(InboxError::Writes(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_sqlite::SqliteStore;

    fn key(id: &str) -> InboxKey {
        InboxKey {
            handler: "orders/billing".into(),
            message_id: id.into(),
        }
    }

    async fn inbox_with_table() -> (SqliteStore, SqliteInbox) {
        let store = SqliteStore::open_temporary().unwrap();
        store
            .unit_of_work(|uow| {
                uow.connection()
                    .execute("CREATE TABLE invoices (order_id TEXT NOT NULL UNIQUE)", [])
                    .map_err(|e| StoreError::Backend(e.to_string()))
            })
            .await
            .unwrap();
        (store.clone(), SqliteInbox::new(store))
    }

    async fn invoices(store: &SqliteStore) -> i64 {
        let count = store
            .unit_of_work(|uow| {
                uow.connection()
                    .query_row("SELECT count(*) FROM invoices", [], |r| r.get(0))
                    .map_err(|e| StoreError::Backend(e.to_string()))
            })
            .await
            .unwrap();
        count
    }

    fn insert(order: &'static str) -> impl FnOnce(&UnitOfWork<'_>) -> Result<(), BoxError> {
        move |uow| {
            uow.connection()
                .execute("INSERT INTO invoices (order_id) VALUES (?1)", [order])?;
            Ok(())
        }
    }

    #[tokio::test]
    async fn writes_commit_with_the_mark_and_a_duplicate_applies_nothing() {
        let (store, inbox) = inbox_with_table().await;
        let InboxBegin::Started(mut first) = Inbox::begin(&inbox, &key("m-1")).await.unwrap()
        else {
            panic!("a new message was reported processed");
        };
        // A concurrent duplicate began before the first committed: both hold a scope.
        let InboxBegin::Started(mut twin) = Inbox::begin(&inbox, &key("m-1")).await.unwrap() else {
            panic!("the twin saw a mark that was not committed");
        };
        first.write(insert("o-1")).unwrap();
        twin.write(insert("o-1-again")).unwrap();
        assert_eq!(
            inbox.commit(&key("m-1"), first).await.unwrap(),
            InboxCommit::Committed
        );
        assert_eq!(
            inbox.commit(&key("m-1"), twin).await.unwrap(),
            InboxCommit::AlreadyProcessed
        );
        assert!(matches!(
            Inbox::begin(&inbox, &key("m-1")).await.unwrap(),
            InboxBegin::AlreadyProcessed
        ));
        assert_eq!(invoices(&store).await, 1);
    }

    #[tokio::test]
    async fn a_failing_or_panicking_write_rolls_back_the_mark_and_every_write() {
        let (store, inbox) = inbox_with_table().await;
        let mut scope = SqliteInboxScope::default();
        scope.write(insert("o-1")).unwrap();
        scope.write(insert("o-1")).unwrap(); // violates UNIQUE
        let err = inbox.commit(&key("m-1"), scope).await.unwrap_err();
        assert!(matches!(err, InboxError::Writes(_)), "{err:?}");

        let mut scope = SqliteInboxScope::default();
        scope.write(insert("o-2")).unwrap();
        scope.write(|_| panic!("boom")).unwrap();
        let err = inbox.commit(&key("m-1"), scope).await.unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");

        assert_eq!(invoices(&store).await, 0);
        assert!(!inbox.is_processed("orders/billing", "m-1").await.unwrap());
        // The retry applies normally.
        let mut scope = SqliteInboxScope::default();
        scope.write(insert("o-1")).unwrap();
        assert_eq!(
            inbox.commit(&key("m-1"), scope).await.unwrap(),
            InboxCommit::Committed
        );
        assert_eq!(invoices(&store).await, 1);
    }

    #[test]
    fn staged_writes_are_bounded() {
        let mut scope = SqliteInboxScope::default();
        for _ in 0..SQLITE_WRITES_PER_ATTEMPT_MAX {
            scope.write(|_| Ok(())).unwrap();
        }
        let err = scope.write(|_| Ok(())).unwrap_err();
        assert_eq!(err.kind(), crate::consumer::ErrorKind::Permanent);
        assert_eq!(scope.len(), SQLITE_WRITES_PER_ATTEMPT_MAX);
    }
}
