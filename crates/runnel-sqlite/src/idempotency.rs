//! Idempotent consumers on SQLite.
//!
//! * [`SqliteInbox`] — the transactional inbox: a handler whose state lives in this file
//!   marks the message id as processed in the **same** unit of work as its own writes, so
//!   a redelivered message has no second effect (exactly-once effects over at-least-once
//!   delivery).
//! * [`SqliteDedupStore`] — the dedup window ([`DedupStore`]) for handlers with external
//!   side effects, for applications that run without Redis.
//!
//! Both write through the store's single group-commit writer, which runs one job at a
//! time: a claim or an inbox mark is therefore checked and written without any other
//! writer in between, in this process and in any other process on the same file.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::idempotency::{
    validate_dedup_key, validate_dedup_result, validate_dedup_ttl, validate_inbox_entry,
};
use runnel_core::idempotency::{DedupClaim, DedupStore};
use runnel_core::StoreError;
use rusqlite::{params, OptionalExtension};

use crate::error_map::map_sqlite;
use crate::rows::time_to_micros;
use crate::store::{keep_all, SqliteStore, UnitOfWork};

/// Most rows one purge job deletes. A purge runs as several writer jobs of at most this
/// many rows, so a large backlog never holds the writer (and every other write) for long.
pub const PURGE_BATCH_ROWS_MAX: usize = 10_000;

/// What [`SqliteInbox::process`] did with a delivery.
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

/// The transactional inbox on SQLite: processed message ids per handler, written in the
/// same transaction as the handler's own rows.
///
/// Cheap to clone (it holds a [`SqliteStore`] handle).
///
/// ```no_run
/// # async fn demo() -> Result<(), runnel_core::StoreError> {
/// use runnel_sqlite::idempotency::{InboxOutcome, SqliteInbox};
/// let store = runnel_sqlite::SqliteStore::open("app.db")?;
/// let inbox = SqliteInbox::new(store);
/// let outcome = inbox
///     .process("billing", "0192a6c4-message-id", |uow| {
///         uow.connection()
///             .execute("INSERT INTO invoices (order_id) VALUES (?1)", ["order-1"])
///             .map_err(|e| runnel_core::StoreError::Backend(e.to_string()))?;
///         Ok::<_, runnel_core::StoreError>(())
///     })
///     .await?;
/// if outcome.is_duplicate() {
///     // Delivered before: the invoice exists exactly once; just acknowledge.
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteInbox {
    store: SqliteStore,
}

impl SqliteInbox {
    /// An inbox in `store`'s file (the tables are created by the store's migrations).
    pub fn new(store: SqliteStore) -> Self {
        SqliteInbox { store }
    }

    /// Runs `work` exactly once per `(handler, message_id)`.
    ///
    /// Inside one unit of work (see [`SqliteStore::unit_of_work`]) the id is marked as
    /// processed first; if the mark was already there the outcome is
    /// [`InboxOutcome::Duplicate`] and `work` does not run. Otherwise `work` runs in the
    /// same savepoint and, when it returns `Ok`, its writes and the mark commit together
    /// (durably). When it returns `Err` — or panics — both are rolled back, so a retry
    /// of the same message runs it again.
    ///
    /// `work` runs on the writer thread: keep it short and do no network I/O in it.
    pub async fn process<T, E, F>(
        &self,
        handler: &str,
        message_id: &str,
        work: F,
    ) -> Result<InboxOutcome<T>, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&UnitOfWork<'_>) -> Result<T, E> + Send + 'static,
    {
        validate_inbox_entry(handler, message_id)?;
        let handler = handler.to_owned();
        let message_id = message_id.to_owned();
        self.store
            .unit_of_work(move |uow| {
                if !mark_processed_in(uow, &handler, &message_id)? {
                    return Ok(InboxOutcome::Duplicate);
                }
                work(uow).map(InboxOutcome::Processed)
            })
            .await
    }

    /// Whether `handler` has processed `message_id` (a committed mark exists).
    pub async fn is_processed(&self, handler: &str, message_id: &str) -> Result<bool, StoreError> {
        validate_inbox_entry(handler, message_id)?;
        let handler = handler.to_owned();
        let message_id = message_id.to_owned();
        self.store
            .read(move |conn| {
                conn.prepare_cached("SELECT 1 FROM inbox WHERE handler = ?1 AND message_id = ?2")
                    .map_err(map_sqlite)?
                    .query_row(params![handler, message_id], |_| Ok(()))
                    .optional()
                    .map(|row| row.is_some())
                    .map_err(map_sqlite)
            })
            .await
    }

    /// Retention: deletes the marks of messages processed before `older_than`; returns how
    /// many. A message redelivered after its mark is purged is processed again, so keep
    /// marks longer than the bus can redeliver (its retention and the longest retry
    /// schedule). Deletes in jobs of at most [`PURGE_BATCH_ROWS_MAX`] rows.
    pub async fn purge_older_than(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        let cutoff = time_to_micros(older_than);
        purge_in_batches(
            &self.store,
            "DELETE FROM inbox WHERE (handler, message_id) IN \
             (SELECT handler, message_id FROM inbox WHERE processed_at < ?1 LIMIT ?2)",
            move |_now| cutoff,
        )
        .await
    }
}

/// Marks `message_id` as processed by `handler` inside a unit of work the caller already
/// runs (for example one that also saves a projection checkpoint). Returns `true` when
/// the mark is new — go on with the handler's writes — and `false` when the message was
/// processed before: the caller should return without writing anything.
///
/// The mark commits or rolls back with the rest of the unit of work.
pub fn mark_processed_in(
    uow: &UnitOfWork<'_>,
    handler: &str,
    message_id: &str,
) -> Result<bool, StoreError> {
    validate_inbox_entry(handler, message_id)?;
    let inserted = uow
        .connection()
        .prepare_cached(
            "INSERT INTO inbox (handler, message_id, processed_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (handler, message_id) DO NOTHING",
        )
        .map_err(map_sqlite)?
        .execute(params![handler, message_id, uow.now_micros()])
        .map_err(map_sqlite)?;
    debug_assert!(inserted <= 1);
    Ok(inserted == 1)
}

/// Runs `sql` (a DELETE bounded by `LIMIT ?2`, with the cutoff `?1` computed from the
/// batch time by `cutoff`) as writer jobs until a job deletes fewer rows than the bound.
async fn purge_in_batches(
    store: &SqliteStore,
    sql: &'static str,
    cutoff: impl Fn(i64) -> i64 + Send + Sync + Clone + 'static,
) -> Result<u64, StoreError> {
    let mut total = 0u64;
    loop {
        let cutoff = cutoff.clone();
        let deleted = store
            .submit(0, keep_all, move |conn, ctx| {
                conn.prepare_cached(sql)
                    .map_err(map_sqlite)?
                    .execute(params![cutoff(ctx.now_micros), PURGE_BATCH_ROWS_MAX as i64])
                    .map_err(map_sqlite)
            })
            .await?;
        debug_assert!(deleted <= PURGE_BATCH_ROWS_MAX);
        total += deleted as u64;
        if deleted < PURGE_BATCH_ROWS_MAX {
            return Ok(total);
        }
    }
}

/// The dedup window ([`DedupStore`]) on SQLite, for applications without Redis.
///
/// Expiry is measured with the writer's batch clock (wall-clock microseconds that never go
/// backwards). Expired rows stop counting at once and are overwritten by the next claim;
/// [`SqliteDedupStore::purge_expired`] deletes the rest.
///
/// ```no_run
/// # async fn demo() -> Result<(), runnel_core::StoreError> {
/// use std::time::Duration;
/// use runnel_core::idempotency::{DedupClaim, DedupStore};
/// use runnel_sqlite::idempotency::SqliteDedupStore;
/// let dedup = SqliteDedupStore::new(runnel_sqlite::SqliteStore::open("app.db")?);
/// match dedup.claim("email/order-1", Duration::from_secs(30)).await? {
///     DedupClaim::Acquired { token } => {
///         // send the email, then cache what happened for a day
///         let receipt = b"sent".to_vec();
///         dedup
///             .complete("email/order-1", &token, receipt, Duration::from_secs(86_400))
///             .await?;
///     }
///     DedupClaim::Completed { result } => { /* sent before: reuse `result` */ }
///     DedupClaim::InProgress => { /* another handler is sending it: retry later */ }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteDedupStore {
    store: SqliteStore,
}

impl SqliteDedupStore {
    /// A dedup store in `store`'s file.
    pub fn new(store: SqliteStore) -> Self {
        SqliteDedupStore { store }
    }

    /// Deletes expired locks and results; returns how many. Optional housekeeping: expired
    /// rows already count as absent. Deletes in jobs of at most [`PURGE_BATCH_ROWS_MAX`]
    /// rows.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        purge_in_batches(
            &self.store,
            "DELETE FROM dedup_keys WHERE key IN \
             (SELECT key FROM dedup_keys WHERE expires_at <= ?1 LIMIT ?2)",
            |now| now,
        )
        .await
    }
}

/// `now + ttl` in microseconds, saturating (TTLs are bounded, the sum never overflows in
/// practice).
fn expiry_micros(now_micros: i64, ttl: std::time::Duration) -> i64 {
    let ttl_micros = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
    now_micros.saturating_add(ttl_micros.max(1))
}

#[async_trait]
impl DedupStore for SqliteDedupStore {
    async fn claim(
        &self,
        key: &str,
        lock_ttl: std::time::Duration,
    ) -> Result<DedupClaim, StoreError> {
        validate_dedup_key(key)?;
        validate_dedup_ttl("lock TTL", lock_ttl)?;
        let key = key.to_owned();
        let token = runnel_core::uuid::Uuid::new_v4().simple().to_string();
        let claim = self
            .store
            .submit(0, keep_all, move |conn, ctx| {
                let now = ctx.now_micros;
                let row: Option<(Option<Vec<u8>>, i64)> = conn
                    .prepare_cached("SELECT result, expires_at FROM dedup_keys WHERE key = ?1")
                    .map_err(map_sqlite)?
                    .query_row([key.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(map_sqlite)?;
                match row {
                    Some((Some(result), expires_at)) if expires_at > now => {
                        return Ok(DedupClaim::Completed { result });
                    }
                    Some((None, expires_at)) if expires_at > now => {
                        return Ok(DedupClaim::InProgress);
                    }
                    // Absent, or an expired lock (a crashed holder) or expired result.
                    _ => {}
                }
                conn.prepare_cached(
                    "INSERT INTO dedup_keys (key, token, result, expires_at) \
                     VALUES (?1, ?2, NULL, ?3) \
                     ON CONFLICT (key) DO UPDATE SET token = excluded.token, result = NULL, \
                     expires_at = excluded.expires_at",
                )
                .map_err(map_sqlite)?
                .execute(params![key, token, expiry_micros(now, lock_ttl)])
                .map_err(map_sqlite)?;
                Ok(DedupClaim::Acquired { token })
            })
            .await?;
        Ok(claim)
    }

    async fn complete(
        &self,
        key: &str,
        token: &str,
        result: Vec<u8>,
        ttl: std::time::Duration,
    ) -> Result<(), StoreError> {
        validate_dedup_key(key)?;
        validate_dedup_ttl("result TTL", ttl)?;
        validate_dedup_result(&result)?;
        let (k, t) = (key.to_owned(), token.to_owned());
        let updated = self
            .store
            .submit(0, keep_all, move |conn, ctx| {
                conn.prepare_cached(
                    "UPDATE dedup_keys SET token = NULL, result = ?3, expires_at = ?4 \
                     WHERE key = ?1 AND token = ?2 AND expires_at > ?5",
                )
                .map_err(map_sqlite)?
                .execute(params![
                    k,
                    t,
                    result,
                    expiry_micros(ctx.now_micros, ttl),
                    ctx.now_micros
                ])
                .map_err(map_sqlite)
            })
            .await?;
        lock_held(key, updated)
    }

    async fn release(&self, key: &str, token: &str) -> Result<(), StoreError> {
        validate_dedup_key(key)?;
        let (k, t) = (key.to_owned(), token.to_owned());
        let deleted = self
            .store
            .submit(0, keep_all, move |conn, ctx| {
                conn.prepare_cached(
                    "DELETE FROM dedup_keys WHERE key = ?1 AND token = ?2 AND expires_at > ?3",
                )
                .map_err(map_sqlite)?
                .execute(params![k, t, ctx.now_micros])
                .map_err(map_sqlite)
            })
            .await?;
        lock_held(key, deleted)
    }
}

/// One changed row means the caller held a live lock; none means it did not.
fn lock_held(key: &str, rows_changed: usize) -> Result<(), StoreError> {
    debug_assert!(rows_changed <= 1, "dedup keys are unique");
    if rows_changed == 1 {
        Ok(())
    } else {
        Err(StoreError::DedupLockLost {
            key: key.chars().take(64).collect(),
        })
    }
}
