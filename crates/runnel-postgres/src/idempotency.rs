//! Idempotent consumers on PostgreSQL.
//!
//! * [`PostgresInbox`] — the transactional inbox: a handler whose state lives in this
//!   database marks the message id as processed in the **same** transaction as its own
//!   writes, so a redelivered message has no second effect (exactly-once effects over
//!   at-least-once delivery), even across processes.
//! * [`PostgresDedupStore`] — the dedup window ([`DedupStore`]) for handlers with external
//!   side effects, for applications that run without Redis.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use runnel_core::idempotency::{
    validate_dedup_key, validate_dedup_result, validate_dedup_ttl, validate_inbox_entry,
};
use runnel_core::idempotency::{DedupClaim, DedupStore};
use runnel_core::StoreError;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row};

use crate::error_map::map_sqlx;
use crate::store::PostgresStore;

/// Most rows one purge statement deletes. A purge runs as several short statements of at
/// most this many rows, so a large backlog never holds long locks or one huge transaction.
pub const PURGE_BATCH_ROWS_MAX: i64 = 10_000;
/// How often a claim retries when the key changed between its two statements (the upsert
/// found it held, then the holder released it before the read). Only a release racing
/// the claim causes this, so a couple of rounds suffice; after them the claim reports
/// `InProgress`, which is what it saw a moment ago.
const CLAIM_ROUNDS_MAX: usize = 4;

/// What [`PostgresInbox::process`] did with a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboxOutcome<T> {
    /// First delivery for this handler: the work ran and committed together with the mark.
    Processed(T),
    /// The handler already processed this message id: the work did not run.
    Duplicate,
}

impl<T> InboxOutcome<T> {
    /// Whether the delivery was a duplicate (the work did not run).
    pub fn is_duplicate(&self) -> bool {
        matches!(self, InboxOutcome::Duplicate)
    }

    /// The work's value, if it ran.
    pub fn processed(self) -> Option<T> {
        match self {
            InboxOutcome::Processed(v) => Some(v),
            InboxOutcome::Duplicate => None,
        }
    }
}

/// The transactional inbox on PostgreSQL: processed message ids per handler, written in
/// the same transaction as the handler's own rows.
///
/// Cheap to clone (a pool handle and the SQL).
///
/// ```no_run
/// # async fn demo() -> Result<(), runnel_core::StoreError> {
/// use runnel_postgres::idempotency::PostgresInbox;
/// use runnel_postgres::PostgresStore;
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1/app").await?;
/// let inbox = PostgresInbox::new(&store);
/// let outcome = inbox
///     .process("billing", "0192a6c4-message-id", |tx| {
///         Box::pin(async move {
///             sqlx::query("INSERT INTO invoices (order_id) VALUES ($1)")
///                 .bind("order-1")
///                 .execute(&mut *tx)
///                 .await
///                 .map_err(|e| runnel_core::StoreError::Backend(e.to_string()))?;
///             Ok::<_, runnel_core::StoreError>(())
///         })
///     })
///     .await?;
/// if outcome.is_duplicate() {
///     // Delivered before: the invoice exists exactly once; just acknowledge.
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresInbox {
    pool: PgPool,
    sql: Arc<InboxSql>,
}

struct InboxSql {
    mark: Arc<str>,
    exists: Arc<str>,
    purge: Arc<str>,
}

impl PostgresInbox {
    /// An inbox in `store`'s schema (the table is created by the store's migrations).
    pub fn new(store: &PostgresStore) -> Self {
        let table = format!("{}.inbox", store.schema());
        PostgresInbox {
            pool: store.pool().clone(),
            sql: Arc::new(InboxSql {
                mark: format!(
                    "INSERT INTO {table} (handler, message_id) VALUES ($1, $2) \
                     ON CONFLICT (handler, message_id) DO NOTHING"
                )
                .into(),
                exists: format!("SELECT 1 FROM {table} WHERE handler = $1 AND message_id = $2")
                    .into(),
                purge: format!(
                    "DELETE FROM {table} WHERE (handler, message_id) IN \
                     (SELECT handler, message_id FROM {table} WHERE processed_at < $1 LIMIT $2)"
                )
                .into(),
            }),
        }
    }

    /// Runs `work` exactly once per `(handler, message_id)`, in one transaction with the
    /// inbox mark.
    ///
    /// The transaction first inserts the mark. If it was already there the outcome is
    /// [`InboxOutcome::Duplicate`] and `work` does not run. Otherwise `work` gets the
    /// transaction's connection for its own SQL (and, say,
    /// [`PostgresStore::append_in`]); when it returns `Ok` the mark and its writes commit
    /// together, when it returns `Err` both roll back, so a retry runs it again.
    ///
    /// A concurrent delivery of the same message waits on the uncommitted mark and then
    /// sees `Duplicate` (this one committed) or runs (this one rolled back) — never both.
    /// Do not issue `COMMIT` or `ROLLBACK` inside `work`. If a statement in `work` failed
    /// and `work` still returns `Ok`, PostgreSQL has aborted the transaction: nothing is
    /// committed and the call returns an error rather than a false `Processed`.
    ///
    /// [`PostgresInbox::begin`] is the same protocol in explicit steps.
    pub async fn process<T, E, F>(
        &self,
        handler: &str,
        message_id: &str,
        work: F,
    ) -> Result<InboxOutcome<T>, E>
    where
        E: From<StoreError>,
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, E>>,
    {
        let Some(mut tx) = self.begin(handler, message_id).await? else {
            return Ok(InboxOutcome::Duplicate);
        };
        match work(tx.connection()).await {
            Ok(value) => {
                tx.commit().await?;
                Ok(InboxOutcome::Processed(value))
            }
            Err(e) => {
                tx.rollback().await;
                Err(e)
            }
        }
    }

    /// Opens a transaction for handling `message_id` with `handler` and inserts the mark in
    /// it: `None` when the message was processed before (nothing is left open), else the
    /// open [`InboxTransaction`]. Run the handler's SQL on
    /// [`InboxTransaction::connection`], then [`commit`](InboxTransaction::commit) — the
    /// writes and the mark together — or [`rollback`](InboxTransaction::rollback) (dropping
    /// it rolls back too).
    ///
    /// A concurrent `begin` for the same message waits until this transaction ends, then
    /// returns `None` (committed) or the transaction (rolled back).
    ///
    /// ```no_run
    /// # async fn demo(inbox: runnel_postgres::PostgresInbox) -> Result<(), runnel_core::StoreError> {
    /// if let Some(mut tx) = inbox.begin("billing", "0192a6c4-message-id").await? {
    ///     sqlx::query("INSERT INTO invoices (order_id) VALUES ($1)")
    ///         .bind("order-1")
    ///         .execute(tx.connection())
    ///         .await
    ///         .map_err(|e| runnel_core::StoreError::Backend(e.to_string()))?;
    ///     tx.commit().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn begin(
        &self,
        handler: &str,
        message_id: &str,
    ) -> Result<Option<InboxTransaction>, StoreError> {
        validate_inbox_entry(handler, message_id)?;
        let mut tx = self.pool.begin().await.map_err(map_sqlx)?;
        if !self.mark_processed_in(&mut tx, handler, message_id).await? {
            // Nothing was written; dropping the transaction would roll back as well, but
            // an explicit rollback returns the connection to the pool at once.
            if let Err(e) = tx.rollback().await {
                tracing::debug!(error = %e, "rollback after a duplicate failed; the connection is discarded");
            }
            return Ok(None);
        }
        Ok(Some(InboxTransaction {
            tx,
            handler: handler.to_owned(),
            message_id: message_id.to_owned(),
        }))
    }

    /// Marks `message_id` as processed by `handler` inside a transaction the caller
    /// already runs. Returns `true` when the mark is new — go on with the handler's writes,
    /// then commit — and `false` when the message was processed before: roll back (or write
    /// nothing) and acknowledge. The mark commits or rolls back with the transaction.
    ///
    /// A concurrent transaction marking the same id waits here until this one ends.
    pub async fn mark_processed_in(
        &self,
        tx: &mut PgConnection,
        handler: &str,
        message_id: &str,
    ) -> Result<bool, StoreError> {
        validate_inbox_entry(handler, message_id)?;
        let done = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.mark)))
            .bind(handler)
            .bind(message_id)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        debug_assert!(done.rows_affected() <= 1);
        Ok(done.rows_affected() == 1)
    }

    /// Whether `handler` has processed `message_id` (a committed mark exists).
    pub async fn is_processed(&self, handler: &str, message_id: &str) -> Result<bool, StoreError> {
        validate_inbox_entry(handler, message_id)?;
        let row = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.exists)))
            .bind(handler)
            .bind(message_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(row.is_some())
    }

    /// Retention: deletes the marks of messages processed before `older_than`; returns how
    /// many. A message redelivered after its mark is purged is processed again, so keep
    /// marks longer than the bus can redeliver (its retention and the longest retry
    /// schedule). Deletes in statements of at most [`PURGE_BATCH_ROWS_MAX`] rows.
    pub async fn purge_older_than(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        purge_in_batches(&self.pool, &self.sql.purge, Some(older_than)).await
    }
}

/// An open transaction holding a new inbox mark, from [`PostgresInbox::begin`]. The
/// handler's SQL runs on [`connection`](Self::connection); [`commit`](Self::commit) makes
/// it and the mark durable together. Dropping it without committing rolls back.
pub struct InboxTransaction {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    handler: String,
    message_id: String,
}

impl std::fmt::Debug for InboxTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxTransaction")
            .field("handler", &self.handler)
            .field("message_id", &self.message_id)
            .finish_non_exhaustive()
    }
}

impl InboxTransaction {
    /// The transaction's connection, for the handler's own SQL (and
    /// [`PostgresStore::append_in`]). Do not issue `COMMIT` or `ROLLBACK` on it.
    pub fn connection(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// The handler the mark belongs to.
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// The marked message id.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    /// Commits the handler's writes and the mark together.
    ///
    /// If a statement on the connection failed, PostgreSQL has aborted the transaction and
    /// a `COMMIT` would silently roll back; this checks first and returns an error instead
    /// (nothing is committed, the message will be handled again). A failed commit is
    /// `Unavailable`: the outcome is unknown, and a redelivery finds the mark or not.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        if let Err(e) = sqlx::query("SELECT 1").execute(&mut *self.tx).await {
            self.rollback().await;
            return Err(aborted_transaction(e));
        }
        self.tx.commit().await.map_err(map_sqlx)
    }

    /// Rolls back the handler's writes and the mark, so a retry handles the message again.
    /// If the rollback itself fails the connection is closed, which rolls back as well.
    pub async fn rollback(self) {
        if let Err(e) = self.tx.rollback().await {
            tracing::debug!(error = %e, "inbox rollback failed; the connection is discarded, which rolls back");
        }
    }
}

/// The error for a handler transaction found aborted before commit.
fn aborted_transaction(e: sqlx::Error) -> StoreError {
    let aborted = matches!(
        &e,
        sqlx::Error::Database(db) if db.code().as_deref() == Some("25P02")
    );
    if aborted {
        StoreError::Backend(
            "a statement in the handler failed and PostgreSQL aborted its transaction, but \
             the handler returned Ok; nothing was committed (return the statement's error)"
                .into(),
        )
    } else {
        map_sqlx(e)
    }
}

/// Runs `sql` (a DELETE bounded by `LIMIT $2`; `$1` is the cutoff when given) until a
/// statement deletes fewer rows than the bound.
async fn purge_in_batches(
    pool: &PgPool,
    sql: &Arc<str>,
    cutoff: Option<DateTime<Utc>>,
) -> Result<u64, StoreError> {
    let mut total = 0u64;
    loop {
        let mut query = sqlx::query(AssertSqlSafe(Arc::clone(sql)));
        if let Some(cutoff) = cutoff {
            query = query.bind(cutoff);
        }
        let deleted = query
            .bind(PURGE_BATCH_ROWS_MAX)
            .execute(pool)
            .await
            .map_err(map_sqlx)?
            .rows_affected();
        total += deleted;
        if deleted < PURGE_BATCH_ROWS_MAX as u64 {
            return Ok(total);
        }
    }
}

/// The dedup window ([`DedupStore`]) on PostgreSQL, for applications without Redis.
///
/// Expiry is measured with the database's clock (`clock_timestamp()`), which every process
/// sharing the schema agrees on. Expired rows stop counting at once and are overwritten by
/// the next claim; [`PostgresDedupStore::purge_expired`] deletes the rest.
///
/// ```no_run
/// # async fn demo() -> Result<(), runnel_core::StoreError> {
/// use std::time::Duration;
/// use runnel_core::idempotency::{DedupClaim, DedupStore};
/// use runnel_postgres::{PostgresDedupStore, PostgresStore};
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1/app").await?;
/// let dedup = PostgresDedupStore::new(&store);
/// if let DedupClaim::Acquired { token } = dedup.claim("email/order-1", Duration::from_secs(30)).await? {
///     // send the email, then cache what happened for a day
///     dedup.complete("email/order-1", &token, b"sent".to_vec(), Duration::from_secs(86_400)).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresDedupStore {
    pool: PgPool,
    sql: Arc<DedupSql>,
}

struct DedupSql {
    claim: Arc<str>,
    peek: Arc<str>,
    complete: Arc<str>,
    release: Arc<str>,
    purge: Arc<str>,
}

impl PostgresDedupStore {
    /// A dedup store in `store`'s schema.
    pub fn new(store: &PostgresStore) -> Self {
        let table = format!("{}.dedup_keys", store.schema());
        PostgresDedupStore {
            pool: store.pool().clone(),
            sql: Arc::new(DedupSql {
                // One statement decides: a concurrent claim on the same key waits on the
                // row lock and re-checks the WHERE against the committed winner, so
                // exactly one claimer gets a row back.
                claim: format!(
                    "INSERT INTO {table} AS d (key, token, result, expires_at) \
                     VALUES ($1, $2, NULL, clock_timestamp() + make_interval(secs => $3)) \
                     ON CONFLICT (key) DO UPDATE SET token = excluded.token, result = NULL, \
                     expires_at = excluded.expires_at \
                     WHERE d.expires_at <= clock_timestamp() \
                     RETURNING d.token"
                )
                .into(),
                peek: format!(
                    "SELECT result, expires_at > clock_timestamp() AS live FROM {table} \
                     WHERE key = $1"
                )
                .into(),
                complete: format!(
                    "UPDATE {table} SET token = NULL, result = $3, \
                     expires_at = clock_timestamp() + make_interval(secs => $4) \
                     WHERE key = $1 AND token = $2 AND expires_at > clock_timestamp()"
                )
                .into(),
                release: format!(
                    "DELETE FROM {table} \
                     WHERE key = $1 AND token = $2 AND expires_at > clock_timestamp()"
                )
                .into(),
                purge: format!(
                    "DELETE FROM {table} WHERE key IN \
                     (SELECT key FROM {table} WHERE expires_at <= clock_timestamp() LIMIT $1)"
                )
                .into(),
            }),
        }
    }

    /// Deletes expired locks and results; returns how many. Optional housekeeping: expired
    /// rows already count as absent. Deletes in statements of at most
    /// [`PURGE_BATCH_ROWS_MAX`] rows.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        purge_in_batches(&self.pool, &self.sql.purge, None).await
    }
}

/// A TTL as the fractional seconds `make_interval` takes (microsecond precision; TTLs are
/// bounded by `DEDUP_TTL_MAX`, far inside f64's exact range).
fn ttl_secs(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

#[async_trait]
impl DedupStore for PostgresDedupStore {
    async fn claim(&self, key: &str, lock_ttl: Duration) -> Result<DedupClaim, StoreError> {
        validate_dedup_key(key)?;
        validate_dedup_ttl("lock TTL", lock_ttl)?;
        let token = runnel_core::uuid::Uuid::new_v4().simple().to_string();
        for _ in 0..CLAIM_ROUNDS_MAX {
            let acquired = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.claim)))
                .bind(key)
                .bind(&token)
                .bind(ttl_secs(lock_ttl))
                .fetch_optional(&self.pool)
                .await
                .map_err(map_sqlx)?;
            if acquired.is_some() {
                return Ok(DedupClaim::Acquired { token });
            }
            // The key is live: read what it holds.
            let row = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.peek)))
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_sqlx)?;
            if let Some(row) = row {
                let corrupt = |e: sqlx::Error| StoreError::Backend(format!("dedup row: {e}"));
                let result: Option<Vec<u8>> = row.try_get(0).map_err(corrupt)?;
                let live: bool = row.try_get(1).map_err(corrupt)?;
                match (result, live) {
                    (Some(result), true) => return Ok(DedupClaim::Completed { result }),
                    (None, true) => return Ok(DedupClaim::InProgress),
                    // Expired since the upsert looked: claim again.
                    (_, false) => {}
                }
            }
            // Released (or purged) since the upsert looked: claim again.
        }
        Ok(DedupClaim::InProgress)
    }

    async fn complete(
        &self,
        key: &str,
        token: &str,
        result: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        validate_dedup_key(key)?;
        validate_dedup_ttl("result TTL", ttl)?;
        validate_dedup_result(&result)?;
        let done = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.complete)))
            .bind(key)
            .bind(token)
            .bind(result)
            .bind(ttl_secs(ttl))
            .execute(&self.pool)
            .await
            .map_err(map_sqlx)?;
        lock_held(key, done.rows_affected())
    }

    async fn release(&self, key: &str, token: &str) -> Result<(), StoreError> {
        validate_dedup_key(key)?;
        let done = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.release)))
            .bind(key)
            .bind(token)
            .execute(&self.pool)
            .await
            .map_err(map_sqlx)?;
        lock_held(key, done.rows_affected())
    }
}

/// One changed row means the caller held a live lock; none means it did not.
fn lock_held(key: &str, rows_changed: u64) -> Result<(), StoreError> {
    debug_assert!(rows_changed <= 1, "dedup keys are unique");
    if rows_changed == 1 {
        Ok(())
    } else {
        Err(StoreError::DedupLockLost {
            key: key.chars().take(64).collect(),
        })
    }
}
