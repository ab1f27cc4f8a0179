//! [`PostgresOutbox`]: the transactional outbox on PostgreSQL, shared safely by several
//! relay processes.
//!
//! The application enqueues inside its own transaction ([`PostgresOutbox::enqueue_in`] on
//! a `&mut` connection of an open sqlx transaction), so its rows and the outbox rows commit
//! together; the enqueue also sends a NOTIFY, delivered at commit, that wakes relays at
//! once. Relays claim heads of keys with `FOR UPDATE SKIP LOCKED` and lease them with the
//! key's following rows; see the crate's DESIGN.md, "Outbox".

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::message::MESSAGE_PAYLOAD_MAX_DEFAULT;
use runnel_core::outbox::{
    decode_envelope, encode_envelope, error_text, validate_claim, validate_enqueue, FailureAction,
    OutboxMessage, OutboxRecord, OutboxStatus, OutboxStore, TopicStatus, PURGE_BATCH_MAX,
};
use runnel_core::{Clock, StoreError, SystemClock, TopicName};
use sqlx::postgres::{PgListener, PgRow};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::watch;

use crate::error_map::map_sqlx;
use crate::store::PostgresStore;

/// Pause before listening again after the LISTEN connection failed.
const LISTEN_RETRY_DELAY: Duration = Duration::from_millis(200);

/// The outbox in a [`PostgresStore`]'s schema. Cheap to clone; clones share one LISTEN
/// connection, which stops when the last clone is dropped.
///
/// ```no_run
/// # async fn demo(store: runnel_postgres::PostgresStore) -> Result<(), runnel_core::StoreError> {
/// use runnel_core::outbox::{OutboxMessage, TopicRouting};
/// use runnel_core::Message;
/// use runnel_postgres::PostgresOutbox;
///
/// let outbox = PostgresOutbox::new(store.clone()).await?;
/// let mut tx = store.pool().begin().await.map_err(|e| runnel_core::StoreError::Backend(e.to_string()))?;
/// sqlx::query("UPDATE accounts SET balance = balance - 5 WHERE id = 1")
///     .execute(&mut *tx)
///     .await
///     .map_err(|e| runnel_core::StoreError::Backend(e.to_string()))?;
/// let msg = Message::json("Withdrawn", &serde_json::json!({"amount": 5}));
/// let msg = OutboxMessage::for_aggregate(&TopicRouting::default(), "Account", "1", msg)
///     .map_err(|e| runnel_core::StoreError::InvalidArgument(e.to_string()))?;
/// outbox.enqueue_in(&mut tx, &[msg]).await?;
/// tx.commit().await.map_err(|e| runnel_core::StoreError::Backend(e.to_string()))?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresOutbox {
    inner: Arc<Inner>,
}

struct Inner {
    store: PostgresStore,
    table: String,
    channel: String,
    clock: Arc<dyn Clock>,
    max_payload_bytes: usize,
    /// This handle's view of the NOTIFY wake-ups (remembers what it has seen, so a
    /// notification between an empty claim and the wait is not missed).
    woken: tokio::sync::Mutex<watch::Receiver<u64>>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl std::fmt::Debug for PostgresOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOutbox")
            .field("table", &self.inner.table)
            .finish_non_exhaustive()
    }
}

const ROW_COLUMNS: &str = "seq, topic, envelope, payload, created_at, attempts, last_error";
/// How many columns [`ROW_COLUMNS`] names.
const ROW_COLUMN_COUNT: usize = 7;

fn record_from_row(row: &PgRow) -> Result<OutboxRecord, StoreError> {
    record_from_row_at(row, 0)
}

/// The record whose [`ROW_COLUMNS`] start at column `at` of `row`.
fn record_from_row_at(row: &PgRow, at: usize) -> Result<OutboxRecord, StoreError> {
    let bad = |e: sqlx::Error| StoreError::Corrupt(format!("unreadable outbox row: {e}"));
    let seq: i64 = row.try_get(at).map_err(bad)?;
    let topic: String = row.try_get(at + 1).map_err(bad)?;
    let envelope: String = row.try_get(at + 2).map_err(bad)?;
    let payload: Vec<u8> = row.try_get(at + 3).map_err(bad)?;
    let attempts: i32 = row.try_get(at + 5).map_err(bad)?;
    Ok(OutboxRecord {
        seq: seq as u64,
        topic: TopicName::new(topic)
            .map_err(|e| StoreError::Corrupt(format!("outbox row {seq} topic: {e}")))?,
        message: decode_envelope(&envelope, payload)?,
        created_at: row.try_get(at + 4).map_err(bad)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        last_error: row.try_get(at + 6).map_err(bad)?,
    })
}

fn to_i64(seqs: &[u64]) -> Vec<i64> {
    seqs.iter()
        .map(|s| (*s).min(i64::MAX as u64) as i64)
        .collect()
}

/// The outbox table of `schema` and the NOTIFY channel its relays listen on.
pub(crate) fn outbox_names(schema: &str) -> (String, String) {
    (
        format!("{schema}.outbox_messages"),
        format!("runnel_outbox_{schema}"),
    )
}

/// Inserts `messages` (validated by the caller) into `table` on `tx`, stamped `now`, and
/// sends the NOTIFY on `channel` that PostgreSQL delivers to relays at commit. The one
/// enqueue statement, shared by [`PostgresOutbox::enqueue_in`] and the processor store.
pub(crate) async fn insert_rows(
    tx: &mut sqlx::PgConnection,
    table: &str,
    channel: &str,
    now: DateTime<Utc>,
    messages: &[OutboxMessage],
) -> Result<(), StoreError> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(messages.len());
    let mut topics = Vec::with_capacity(messages.len());
    let mut keys: Vec<Option<String>> = Vec::with_capacity(messages.len());
    let mut envelopes = Vec::with_capacity(messages.len());
    let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(messages.len());
    for m in messages {
        ids.push(m.message.id.clone());
        topics.push(m.topic.to_string());
        keys.push(m.message.ordering_key().map(str::to_string));
        envelopes.push(encode_envelope(&m.message)?);
        payloads.push(m.message.payload.clone());
    }
    // WITH ORDINALITY + ORDER BY: rows get their seq in the order given.
    let sql = format!(
        "WITH ins AS (INSERT INTO {table} (message_id, topic, ordering_key, envelope, payload, created_at) \
         SELECT m, t, k, e, p, $6 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[]) \
         WITH ORDINALITY AS u(m, t, k, e, p, n) ORDER BY n RETURNING 1) \
         SELECT pg_notify($7, '') FROM (SELECT count(*) FROM ins) c"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(ids)
        .bind(topics)
        .bind(keys)
        .bind(envelopes)
        .bind(payloads)
        .bind(now)
        .bind(channel)
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}

async fn listen(mut listener: PgListener, wake: watch::Sender<u64>) {
    loop {
        match listener.recv().await {
            Ok(_) => wake.send_modify(|n| *n = n.wrapping_add(1)),
            Err(e) => {
                // Notifications may have been lost meanwhile: wake everyone to re-read.
                tracing::warn!(error = %e, "outbox LISTEN connection lost; reconnecting");
                wake.send_modify(|n| *n = n.wrapping_add(1));
                tokio::time::sleep(LISTEN_RETRY_DELAY).await;
            }
        }
    }
}

impl PostgresOutbox {
    /// The outbox in `store`'s schema (created by the store's migrations), listening for
    /// the NOTIFY its enqueues send.
    pub async fn new(store: PostgresStore) -> Result<Self, StoreError> {
        let (table, channel) = outbox_names(store.schema());
        let mut listener = PgListener::connect_with(store.pool())
            .await
            .map_err(map_sqlx)?;
        listener.listen(&channel).await.map_err(map_sqlx)?;
        let (wake, rx) = watch::channel(0);
        let task = tokio::spawn(listen(listener, wake));
        Ok(PostgresOutbox {
            inner: Arc::new(Inner {
                table,
                store,
                channel,
                clock: Arc::new(SystemClock),
                max_payload_bytes: MESSAGE_PAYLOAD_MAX_DEFAULT,
                woken: tokio::sync::Mutex::new(rx),
                listener: task,
            }),
        })
    }

    /// Uses `clock` for leases, backoff and marks. Call before cloning.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.clock = clock;
        }
        self
    }

    /// Sets the largest payload an enqueued message may carry. Call before cloning.
    pub fn with_max_payload_bytes(mut self, bytes: usize) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.max_payload_bytes = bytes;
        }
        self
    }

    /// The store this outbox writes to.
    pub fn store(&self) -> &PostgresStore {
        &self.inner.store
    }

    /// Enqueues `messages` inside the caller's open transaction (`&mut *tx`): they commit
    /// with the application's rows or not at all. Sends the NOTIFY that wakes relays at
    /// commit.
    pub async fn enqueue_in(
        &self,
        tx: &mut sqlx::PgConnection,
        messages: &[OutboxMessage],
    ) -> Result<(), StoreError> {
        validate_enqueue(messages, self.inner.max_payload_bytes)?;
        insert_rows(
            tx,
            &self.inner.table,
            &self.inner.channel,
            self.inner.clock.now(),
            messages,
        )
        .await
    }

    fn pool(&self) -> &sqlx::PgPool {
        self.inner.store.pool()
    }
}

#[async_trait]
impl OutboxStore for PostgresOutbox {
    async fn enqueue(&self, messages: Vec<OutboxMessage>) -> Result<(), StoreError> {
        validate_enqueue(&messages, self.inner.max_payload_bytes)?;
        if messages.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await.map_err(map_sqlx)?;
        self.enqueue_in(&mut tx, &messages).await?;
        tx.commit().await.map_err(map_sqlx)
    }

    async fn claim(
        &self,
        relay: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        validate_claim(relay, lease, limit)?;
        let now = self.inner.clock.now();
        let until = now
            + chrono::Duration::from_std(lease)
                .map_err(|e| StoreError::InvalidArgument(format!("lease: {e}")))?;
        let t = &self.inner.table;
        let mut tx = self.pool().begin().await.map_err(map_sqlx)?;
        // Candidate heads, without locks: each pending key's earliest row, one index probe
        // per key (a skip scan over `outbox_pending_by_key`), and the oldest unkeyed rows.
        // More keys than the claim could take heads of: their heads are found in `seq`
        // order instead (the scan stops after `limit` heads).
        let cands: Vec<(i64, bool)> = sqlx::query_as(AssertSqlSafe(format!(
            "WITH RECURSIVE keys(k, s) AS ( \
               (SELECT ordering_key, seq FROM {t} \
                 WHERE published_at IS NULL AND ordering_key IS NOT NULL \
                 ORDER BY ordering_key, seq LIMIT 1) \
               UNION ALL \
               SELECT n.k, n.s FROM keys CROSS JOIN LATERAL ( \
                 SELECT ordering_key AS k, seq AS s FROM {t} \
                  WHERE published_at IS NULL AND ordering_key > keys.k \
                  ORDER BY ordering_key, seq LIMIT 1) n) \
             (SELECT s, true FROM keys LIMIT $2 + 1) \
             UNION ALL \
             (SELECT seq, false FROM {t} \
               WHERE published_at IS NULL AND ordering_key IS NULL AND NOT parked \
                 AND next_attempt_at <= $1 AND (leased_until IS NULL OR leased_until <= $1) \
               ORDER BY seq LIMIT $2)"
        )))
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        let keyed = cands.iter().filter(|(_, k)| *k).count();
        let cands: Option<Vec<i64>> =
            (keyed <= limit).then(|| cands.iter().map(|(s, _)| *s).collect());
        // Heads: a key's earliest pending row, free, due, not parked, locked with
        // FOR UPDATE SKIP LOCKED (a head another relay is claiming right now is left to
        // it; once its lease is committed the recheck of the row's lease excludes it
        // here), then leased. Only heads are leased: a key's followers cannot become heads
        // before its head is marked, which only the lease holder does.
        let scope = if cands.is_some() {
            "o.seq = ANY($4) AND "
        } else {
            ""
        };
        let heads = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {t} SET leased_by = $1, leased_until = $2 WHERE seq IN ( \
               SELECT o.seq FROM {t} o \
                WHERE {scope}o.published_at IS NULL AND NOT o.parked \
                  AND o.next_attempt_at <= $5 \
                  AND (o.leased_until IS NULL OR o.leased_until <= $5) \
                  AND (o.ordering_key IS NULL OR NOT EXISTS ( \
                       SELECT 1 FROM {t} p WHERE p.ordering_key = o.ordering_key \
                         AND p.published_at IS NULL AND p.seq < o.seq)) \
                ORDER BY o.seq LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING {ROW_COLUMNS}, ordering_key"
        )))
        .bind(relay)
        .bind(until)
        .bind(limit as i64)
        .bind(cands.unwrap_or_default())
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        if heads.is_empty() {
            tx.commit().await.map_err(map_sqlx)?;
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(limit);
        let mut key_heads: Vec<i64> = Vec::new();
        let mut keys: Vec<String> = Vec::new();
        for row in &heads {
            let record = record_from_row(row)?;
            let key: Option<String> = row
                .try_get(ROW_COLUMN_COUNT)
                .map_err(|e| StoreError::Corrupt(format!("unreadable outbox row: {e}")))?;
            if let Some(key) = key {
                key_heads.push(record.seq as i64);
                keys.push(key);
            }
            out.push(record);
        }
        // Followers: the next pending rows of each key, claimed with the head (nobody else
        // can claim them while it is pending), shared fairly within `limit`, cut at the
        // first parked one.
        let follow = (limit - heads.len()) / heads.len();
        if follow > 0 && !keys.is_empty() {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT h.head, f.* FROM unnest($1::bigint[], $2::text[]) AS h(head, key) \
                 CROSS JOIN LATERAL (SELECT parked, {ROW_COLUMNS} FROM {t} \
                    WHERE ordering_key = h.key AND published_at IS NULL AND seq > h.head \
                    ORDER BY seq LIMIT $3) f ORDER BY h.head, f.seq"
            )))
            .bind(&key_heads)
            .bind(&keys)
            .bind(follow as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_sqlx)?;
            let bad = |e: sqlx::Error| StoreError::Corrupt(format!("unreadable outbox row: {e}"));
            let mut stopped: Option<i64> = None;
            for row in &rows {
                let head: i64 = row.try_get(0).map_err(bad)?;
                if stopped == Some(head) {
                    continue;
                }
                if row.try_get::<bool, _>(1).map_err(bad)? {
                    stopped = Some(head);
                    continue;
                }
                out.push(record_from_row_at(row, 2)?);
            }
        }
        tx.commit().await.map_err(map_sqlx)?;
        debug_assert!(out.len() <= limit);
        out.sort_by_key(|r| r.seq);
        Ok(out)
    }

    async fn mark_published(&self, seqs: &[u64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        // Committed without waiting for the WAL flush: a mark lost to a server crash only
        // republishes its rows (at least once), and the next claim — a synchronous commit,
        // whose flush covers every earlier commit — makes it durable before any later row
        // of those keys can be claimed.
        let mut tx = self.pool().begin().await.map_err(map_sqlx)?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET published_at = $1, leased_by = NULL, leased_until = NULL \
             WHERE seq = ANY($2) AND published_at IS NULL",
            self.inner.table
        )))
        .bind(self.inner.clock.now())
        .bind(to_i64(seqs))
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)
    }

    async fn record_failure(
        &self,
        seqs: &[u64],
        error: &str,
        action: FailureAction,
    ) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let (next, parked): (Option<DateTime<Utc>>, bool) = match action {
            FailureAction::RetryAt(t) => (Some(t), false),
            FailureAction::Park => (None, true),
        };
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET attempts = attempts + 1, last_error = $1, \
             next_attempt_at = coalesce($2, '-infinity'::timestamptz), parked = $3, \
             leased_by = NULL, leased_until = NULL \
             WHERE seq = ANY($4) AND published_at IS NULL",
            self.inner.table
        )))
        .bind(error_text(error))
        .bind(next)
        .bind(parked)
        .bind(to_i64(seqs))
        .execute(self.pool())
        .await
        .map_err(map_sqlx)?;
        Ok(())
    }

    async fn release(&self, relay: &str) -> Result<u64, StoreError> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET leased_by = NULL, leased_until = NULL \
             WHERE leased_by = $1 AND published_at IS NULL",
            self.inner.table
        )))
        .bind(relay)
        .execute(self.pool())
        .await
        .map_err(map_sqlx)?;
        Ok(r.rows_affected())
    }

    async fn purge_published(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let limit = limit.clamp(1, PURGE_BATCH_MAX) as i64;
        let t = &self.inner.table;
        let r = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} \
             WHERE published_at IS NOT NULL AND published_at < $1 \
             ORDER BY published_at LIMIT $2)"
        )))
        .bind(before)
        .bind(limit)
        .execute(self.pool())
        .await
        .map_err(map_sqlx)?;
        Ok(r.rows_affected())
    }

    async fn status(&self) -> Result<OutboxStatus, StoreError> {
        let t = &self.inner.table;
        let rows: Vec<(String, i64, i64, DateTime<Utc>)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT topic, count(*), count(*) FILTER (WHERE parked), min(created_at) \
             FROM {t} WHERE published_at IS NULL GROUP BY topic ORDER BY topic"
        )))
        .fetch_all(self.pool())
        .await
        .map_err(map_sqlx)?;
        let published: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {t} WHERE published_at IS NOT NULL"
        )))
        .fetch_one(self.pool())
        .await
        .map_err(map_sqlx)?;
        let mut status = OutboxStatus {
            published_retained: published as u64,
            ..OutboxStatus::default()
        };
        for (topic, pending, parked, oldest) in rows {
            status.pending += pending as u64;
            status.parked += parked as u64;
            status.oldest_pending = Some(status.oldest_pending.map_or(oldest, |o| o.min(oldest)));
            status.topics.push(TopicStatus {
                topic,
                pending: pending as u64,
                parked: parked as u64,
                oldest_pending: Some(oldest),
            });
        }
        Ok(status)
    }

    async fn retry_parked(&self, topic: Option<&TopicName>) -> Result<u64, StoreError> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "WITH r AS (UPDATE {} SET parked = false, attempts = 0, \
             next_attempt_at = '-infinity' \
             WHERE parked AND published_at IS NULL AND ($1::text IS NULL OR topic = $1) \
             RETURNING 1) SELECT count(*) AS n, pg_notify($2, '') FROM r",
            self.inner.table
        )))
        .bind(topic.map(|t| t.to_string()))
        .bind(&self.inner.channel)
        .fetch_one(self.pool())
        .await
        .map_err(map_sqlx)?;
        let n: i64 = r.try_get("n").map_err(map_sqlx)?;
        Ok(n as u64)
    }

    async fn wait_for_messages(&self, max_wait: Duration) -> Result<(), StoreError> {
        // A timeout is the polling fallback (a lost notification, an expired lease).
        let _ = tokio::time::timeout(max_wait, async {
            let mut rx = self.inner.woken.lock().await;
            let _ = rx.changed().await;
        })
        .await;
        Ok(())
    }
}
