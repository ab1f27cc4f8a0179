//! [`SqliteOutbox`]: the transactional outbox on the store's SQLite file.
//!
//! Enqueue inside a unit of work ([`SqliteOutbox::enqueue_in`], or the
//! [`SqliteOutbox::unit_of_work`] wrapper that also wakes relays after the commit): the
//! outbox rows commit in the same SQLite transaction as the application's own rows and
//! events, or not at all. Claims, marks and purges run through the store's group-commit
//! writer like every other write. See the crate's DESIGN.md, "Outbox", for the table and why
//! per-key order holds.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::message::MESSAGE_PAYLOAD_MAX_DEFAULT;
use runnel_core::outbox::{
    decode_envelope, encode_envelope, error_text, validate_claim, validate_enqueue, FailureAction,
    OutboxMessage, OutboxRecord, OutboxStatus, OutboxStore, TopicStatus, PURGE_BATCH_MAX,
};
use runnel_core::{Clock, StoreError, SystemClock, TopicName};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::watch;

use crate::error_map::map_sqlite;
use crate::rows::micros_to_time;
use crate::store::{keep_all, SqliteStore, UnitOfWork};
use crate::writer::BatchContext;

/// In-process wake-ups for relays, one per database file, shared by every
/// [`SqliteOutbox`] on that file in this process (the application's and the relay's may be
/// built separately). Relays in other processes notice new rows by polling.
fn signal_for(path: PathBuf) -> Arc<watch::Sender<u64>> {
    static SIGNALS: OnceLock<Mutex<HashMap<PathBuf, Weak<watch::Sender<u64>>>>> = OnceLock::new();
    let map = SIGNALS.get_or_init(Mutex::default);
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    // Forget files nobody holds an outbox on any more, so the map stays small.
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(s) = map.get(&path).and_then(Weak::upgrade) {
        return s;
    }
    let s = Arc::new(watch::channel(0).0);
    map.insert(path, Arc::downgrade(&s));
    s
}

/// The outbox on a [`SqliteStore`]'s file. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), runnel_core::StoreError> {
/// use runnel_core::outbox::{OutboxMessage, TopicRouting};
/// use runnel_core::Message;
/// use runnel_sqlite::{SqliteOutbox, SqliteStore};
///
/// let store = SqliteStore::open("app.db")?;
/// let outbox = SqliteOutbox::new(store);
/// let inner = outbox.clone();
/// outbox
///     .unit_of_work(move |uow| {
///         uow.connection()
///             .execute("UPDATE accounts SET balance = balance - 5 WHERE id = 1", [])
///             .map_err(|e| runnel_core::StoreError::Backend(e.to_string()))?;
///         let msg = Message::json("Withdrawn", &serde_json::json!({"amount": 5}));
///         let msg = OutboxMessage::for_aggregate(&TopicRouting::default(), "Account", "1", msg)
///             .map_err(|e| runnel_core::StoreError::InvalidArgument(e.to_string()))?;
///         inner.enqueue_in(uow, &[msg])
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteOutbox {
    store: SqliteStore,
    clock: Arc<dyn Clock>,
    wake: Arc<watch::Sender<u64>>,
    /// This handle's view of the wake-ups: a bump between a relay's empty claim and its
    /// wait is not missed, because the receiver remembers what it has seen.
    woken: Arc<tokio::sync::Mutex<watch::Receiver<u64>>>,
    max_payload_bytes: usize,
    /// The relay's publisher commits to this same file with an fsync
    /// ([`with_publisher_in_this_file`](Self::with_publisher_in_this_file)), so claims need
    /// no fsync of their own.
    publisher_in_this_file: bool,
}

impl std::fmt::Debug for SqliteOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOutbox")
            .field("path", &self.store.path())
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("publisher_in_this_file", &self.publisher_in_this_file)
            .finish_non_exhaustive()
    }
}

/// A row's columns for [`record_from_row`], from `outbox_messages m` joined with its body
/// `outbox_bodies b` (migration 14).
const ROW_COLUMNS: &str =
    "m.seq, m.topic, b.envelope, b.payload, m.created_at, m.attempts, m.last_error";

fn record_from_row(row: &rusqlite::Row<'_>) -> Result<OutboxRecord, StoreError> {
    let bad = |e: rusqlite::Error| StoreError::Corrupt(format!("unreadable outbox row: {e}"));
    let seq: i64 = row.get(0).map_err(bad)?;
    let topic: String = row.get(1).map_err(bad)?;
    let envelope: String = row.get(2).map_err(bad)?;
    let payload: Vec<u8> = row.get(3).map_err(bad)?;
    let created_at: i64 = row.get(4).map_err(bad)?;
    let attempts: i64 = row.get(5).map_err(bad)?;
    Ok(OutboxRecord {
        seq: seq as u64,
        topic: TopicName::new(topic)
            .map_err(|e| StoreError::Corrupt(format!("outbox row {seq} topic: {e}")))?,
        message: decode_envelope(&envelope, payload)?,
        created_at: micros_to_time(created_at)?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        last_error: row.get(6).map_err(bad)?,
    })
}

/// Inserts `messages` in the open transaction at `now_micros`.
pub(crate) fn insert_rows(
    conn: &Connection,
    now_micros: i64,
    messages: &[OutboxMessage],
) -> Result<(), StoreError> {
    let mut row = conn
        .prepare_cached(
            "INSERT INTO outbox_messages (message_id, topic, ordering_key, created_at) \
             VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(map_sqlite)?;
    let mut body = conn
        .prepare_cached("INSERT INTO outbox_bodies (seq, envelope, payload) VALUES (?1, ?2, ?3)")
        .map_err(map_sqlite)?;
    for m in messages {
        let envelope = encode_envelope(&m.message)?;
        row.execute(params![
            m.message.id,
            m.topic.as_str(),
            m.message.ordering_key(),
            now_micros
        ])
        .map_err(map_sqlite)?;
        body.execute(params![
            conn.last_insert_rowid(),
            envelope,
            m.message.payload
        ])
        .map_err(map_sqlite)?;
    }
    Ok(())
}

/// Whether a pending row may be claimed now: not parked, due, no live lease (`?2` = now).
const CLAIMABLE: &str = "parked = 0 AND next_attempt_at <= ?2 \
     AND (leased_until IS NULL OR leased_until <= ?2)";

/// The heads a claim takes: each key's earliest pending row and the unkeyed rows that are
/// claimable, oldest first, at most `limit`. With at most `limit` pending keys, a skip scan
/// over `outbox_pending_by_key` finds each key's head with one index probe (the writer is
/// the only one changing the table, so the earliest pending row is the head); with more
/// keys, the pending rows are tested in `seq` order until `limit` heads are found.
fn claim_heads(conn: &Connection, now: i64, limit: usize) -> Result<Vec<i64>, StoreError> {
    let mut heads: Vec<i64> = Vec::new();
    let mut keys = 0usize;
    {
        let mut first = conn
            .prepare_cached(&format!(
                "SELECT ordering_key, seq, {CLAIMABLE} FROM outbox_messages \
                 INDEXED BY outbox_pending_by_key \
                 WHERE published_at IS NULL AND ordering_key >= ?1 \
                 ORDER BY ordering_key, seq LIMIT 1"
            ))
            .map_err(map_sqlite)?;
        let mut next = conn
            .prepare_cached(&format!(
                "SELECT ordering_key, seq, {CLAIMABLE} FROM outbox_messages \
                 INDEXED BY outbox_pending_by_key \
                 WHERE published_at IS NULL AND ordering_key > ?1 \
                 ORDER BY ordering_key, seq LIMIT 1"
            ))
            .map_err(map_sqlite)?;
        let row = |r: &rusqlite::Row<'_>| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, bool>(2)?,
            ))
        };
        // Every key is at least the empty text.
        let mut at = first
            .query_row(params!["", now], row)
            .optional()
            .map_err(map_sqlite)?;
        while let Some((key, seq, claimable)) = at {
            keys += 1;
            if keys > limit {
                break;
            }
            if claimable {
                heads.push(seq);
            }
            at = next
                .query_row(params![key, now], row)
                .optional()
                .map_err(map_sqlite)?;
        }
    }
    if keys > limit {
        heads.clear();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT o.seq FROM outbox_messages o INDEXED BY outbox_pending \
                 WHERE o.published_at IS NULL AND {CLAIMABLE} \
                   AND (o.ordering_key IS NULL OR NOT EXISTS ( \
                        SELECT 1 FROM outbox_messages p INDEXED BY outbox_pending_by_key \
                        WHERE p.ordering_key = o.ordering_key AND p.published_at IS NULL \
                          AND p.seq < o.seq)) \
                 ORDER BY o.seq LIMIT ?1"
            ))
            .map_err(map_sqlite)?;
        let rows = stmt
            .query_map(params![limit as i64, now], |r| r.get(0))
            .map_err(map_sqlite)?;
        return rows.collect::<Result<_, _>>().map_err(map_sqlite);
    }
    let mut unkeyed = conn
        .prepare_cached(&format!(
            "SELECT seq FROM outbox_messages INDEXED BY outbox_pending_unkeyed \
             WHERE published_at IS NULL AND ordering_key IS NULL AND {CLAIMABLE} \
             ORDER BY seq LIMIT ?1"
        ))
        .map_err(map_sqlite)?;
    let rows = unkeyed
        .query_map(params![limit as i64, now], |r| r.get::<_, i64>(0))
        .map_err(map_sqlite)?;
    for seq in rows {
        heads.push(seq.map_err(map_sqlite)?);
    }
    heads.sort_unstable();
    heads.truncate(limit);
    Ok(heads)
}

fn claim_in_tx(
    conn: &Connection,
    relay: &str,
    now: i64,
    until: i64,
    limit: usize,
) -> Result<Vec<OutboxRecord>, StoreError> {
    let heads = claim_heads(conn, now, limit)?;
    if heads.is_empty() {
        return Ok(Vec::new());
    }
    // Only heads are leased: a key's followers cannot become heads before its head is
    // marked published, which only the lease holder does.
    let mut lease = conn
        .prepare_cached(
            "UPDATE outbox_messages SET leased_by = ?1, leased_until = ?2 WHERE seq = ?3 \
             RETURNING ordering_key",
        )
        .map_err(map_sqlite)?;
    let mut read = conn
        .prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM outbox_messages m \
             CROSS JOIN outbox_bodies b ON b.seq = m.seq WHERE m.seq = ?1"
        ))
        .map_err(map_sqlite)?;
    // Followers: the key's next pending rows, claimed with its head so one relay publishes
    // them in order. Shared fairly among the heads, so the claim stays within `limit`.
    let follow = (limit - heads.len()) / heads.len();
    let mut followers = conn
        .prepare_cached(&format!(
            "SELECT {ROW_COLUMNS}, m.parked \
             FROM outbox_messages m INDEXED BY outbox_pending_by_key \
             CROSS JOIN outbox_bodies b ON b.seq = m.seq \
             WHERE m.ordering_key = ?1 AND m.published_at IS NULL AND m.seq > ?2 \
             ORDER BY m.seq LIMIT ?3"
        ))
        .map_err(map_sqlite)?;
    let mut out = Vec::with_capacity(limit);
    for head in heads {
        let key: Option<String> = lease
            .query_row(params![relay, until, head], |r| r.get(0))
            .map_err(map_sqlite)?;
        let record = read
            .query_row([head], |r| Ok(record_from_row(r)))
            .map_err(map_sqlite)?;
        out.push(record?);
        let Some(key) = key else { continue };
        if follow == 0 {
            continue;
        }
        let mut rows = followers
            .query(params![key, head, follow as i64])
            .map_err(map_sqlite)?;
        while let Some(r) = rows.next().map_err(map_sqlite)? {
            if r.get::<_, i64>(7).map_err(map_sqlite)? != 0 {
                break;
            }
            out.push(record_from_row(r)?);
        }
    }
    out.sort_unstable_by_key(|r| r.seq);
    debug_assert!(out.len() <= limit);
    Ok(out)
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn to_i64(seqs: &[u64]) -> Vec<i64> {
    seqs.iter()
        .map(|s| (*s).min(i64::MAX as u64) as i64)
        .collect()
}

impl SqliteOutbox {
    /// The outbox on `store`'s file, with the system clock and the bus's default payload
    /// limit ([`MESSAGE_PAYLOAD_MAX_DEFAULT`]).
    pub fn new(store: SqliteStore) -> Self {
        let wake = signal_for(store.path().to_path_buf());
        let woken = Arc::new(tokio::sync::Mutex::new(wake.subscribe()));
        SqliteOutbox {
            store,
            clock: Arc::new(SystemClock),
            wake,
            woken,
            max_payload_bytes: MESSAGE_PAYLOAD_MAX_DEFAULT,
            publisher_in_this_file: false,
        }
    }

    /// Declares that the relay of this outbox publishes to the embedded bus on this same
    /// file ([`SqliteBus`](crate::bus::SqliteBus) on a clone of this store, or on the same
    /// path): every publish is then an fsynced commit of the same write-ahead log. Claims
    /// (and the marks committed with them) then commit without an fsync of their own, one
    /// fsync a relay round fewer: the publish that follows a claim makes it durable, the
    /// log being synced as a whole, and nothing is published before that. Why this keeps
    /// every guarantee is in the crate's DESIGN.md, "Outbox". Never set it for a relay
    /// that publishes anywhere else (a broker): there a claim's fsync is what makes the
    /// earlier marks of its keys durable before their later rows leave the machine.
    pub fn with_publisher_in_this_file(mut self) -> Self {
        self.publisher_in_this_file = true;
        self
    }

    /// Uses `clock` for leases, backoff and marks (tests drive a virtual clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the largest payload an enqueued message may carry (use the claim check above).
    pub fn with_max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// The store this outbox writes to.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    /// Enqueues `messages` inside a unit of work: they commit together with everything
    /// else in it, or not at all. Relays in this process are woken by
    /// [`wake_relays`](Self::wake_relays) (which [`unit_of_work`](Self::unit_of_work) calls
    /// for you after the commit), others within their polling interval.
    pub fn enqueue_in(
        &self,
        uow: &UnitOfWork<'_>,
        messages: &[OutboxMessage],
    ) -> Result<(), StoreError> {
        validate_enqueue(messages, self.max_payload_bytes)?;
        insert_rows(uow.connection(), uow.now_micros(), messages)
    }

    /// Wakes this process's relays (after a unit of work that enqueued).
    pub fn wake_relays(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// [`SqliteStore::unit_of_work`], then — if it committed — wakes the relays.
    pub async fn unit_of_work<T, E, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&UnitOfWork<'_>) -> Result<T, E> + Send + 'static,
    {
        let result = self.store.unit_of_work(work).await;
        if result.is_ok() {
            self.wake_relays();
        }
        result
    }

    fn now(&self) -> i64 {
        micros(self.clock.now())
    }

    /// Runs a claim on the writer: fsynced, unless the relay's publisher commits to this
    /// file with an fsync of its own after it (see
    /// [`with_publisher_in_this_file`](Self::with_publisher_in_this_file)).
    async fn submit_claim<F>(&self, f: F) -> Result<Vec<OutboxRecord>, StoreError>
    where
        F: FnOnce(&Connection, &BatchContext) -> Result<Vec<OutboxRecord>, StoreError>
            + Send
            + 'static,
    {
        if self.publisher_in_this_file {
            self.store.submit_unsynced(keep_all, f).await
        } else {
            self.store.submit(0, keep_all, f).await
        }
    }
}

/// Marks `seqs` published at `now` (idempotent) and drops their leases.
fn mark_in_tx(conn: &Connection, now: i64, seqs: &[i64]) -> Result<(), StoreError> {
    if seqs.is_empty() {
        return Ok(());
    }
    let mut stmt = conn
        .prepare_cached(
            "UPDATE outbox_messages SET published_at = ?1, leased_by = NULL, \
             leased_until = NULL WHERE seq = ?2 AND published_at IS NULL",
        )
        .map_err(map_sqlite)?;
    for seq in seqs {
        stmt.execute(params![now, seq]).map_err(map_sqlite)?;
    }
    Ok(())
}

#[async_trait]
impl OutboxStore for SqliteOutbox {
    async fn enqueue(&self, messages: Vec<OutboxMessage>) -> Result<(), StoreError> {
        validate_enqueue(&messages, self.max_payload_bytes)?;
        if messages.is_empty() {
            return Ok(());
        }
        self.store
            .submit(0, keep_all, move |conn, ctx| {
                insert_rows(conn, ctx.now_micros, &messages)
            })
            .await?;
        self.wake_relays();
        Ok(())
    }

    async fn claim(
        &self,
        relay: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        validate_claim(relay, lease, limit)?;
        let relay = relay.to_string();
        let now = self.now();
        let until = now.saturating_add(duration_micros(lease));
        self.submit_claim(move |conn, _| claim_in_tx(conn, &relay, now, until, limit))
            .await
    }

    async fn mark_published_and_claim(
        &self,
        published: &[u64],
        relay: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        validate_claim(relay, lease, limit)?;
        let relay = relay.to_string();
        let seqs = to_i64(published);
        let now = self.now();
        let until = now.saturating_add(duration_micros(lease));
        // One writer job: the marks first (they unblock their keys' next rows), then the
        // claim, in one commit.
        self.submit_claim(move |conn, _| {
            mark_in_tx(conn, now, &seqs)?;
            claim_in_tx(conn, &relay, now, until, limit)
        })
        .await
    }

    async fn mark_published(&self, seqs: &[u64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let seqs = to_i64(seqs);
        let now = self.now();
        // Not fsynced on its own: a mark lost to a power failure only republishes its rows
        // (at least once), and the next claim — always fsynced — makes it durable before
        // any later row of those keys can be claimed.
        self.store
            .submit_unsynced(keep_all, move |conn, _| mark_in_tx(conn, now, &seqs))
            .await
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
        let seqs = to_i64(seqs);
        let error = error_text(error);
        let (next, parked) = match action {
            FailureAction::RetryAt(t) => (micros(t), 0),
            FailureAction::Park => (0, 1),
        };
        self.store
            .submit(0, keep_all, move |conn, _| {
                let mut stmt = conn
                    .prepare_cached(
                        "UPDATE outbox_messages SET attempts = attempts + 1, last_error = ?1, \
                         next_attempt_at = ?2, parked = ?3, leased_by = NULL, \
                         leased_until = NULL WHERE seq = ?4 AND published_at IS NULL",
                    )
                    .map_err(map_sqlite)?;
                for seq in seqs {
                    stmt.execute(params![error, next, parked, seq])
                        .map_err(map_sqlite)?;
                }
                Ok(())
            })
            .await
    }

    async fn release(&self, relay: &str) -> Result<u64, StoreError> {
        let relay = relay.to_string();
        let n = self
            .store
            .submit(0, keep_all, move |conn, _| {
                conn.prepare_cached(
                    "UPDATE outbox_messages SET leased_by = NULL, leased_until = NULL \
                     WHERE leased_by = ?1 AND published_at IS NULL",
                )
                .map_err(map_sqlite)?
                .execute([relay])
                .map_err(map_sqlite)
            })
            .await?;
        if n > 0 {
            self.wake_relays();
        }
        Ok(n as u64)
    }

    async fn purge_published(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let limit = limit.clamp(1, PURGE_BATCH_MAX) as i64;
        let before = micros(before);
        let n = self
            .store
            .submit(0, keep_all, move |conn, _| {
                let seqs = conn
                    .prepare_cached(
                        "DELETE FROM outbox_messages WHERE seq IN ( \
                         SELECT seq FROM outbox_messages INDEXED BY outbox_published \
                         WHERE published_at IS NOT NULL AND published_at < ?1 \
                         ORDER BY published_at LIMIT ?2) RETURNING seq",
                    )
                    .map_err(map_sqlite)?
                    .query_map(params![before, limit], |r| r.get::<_, i64>(0))
                    .map_err(map_sqlite)?
                    .collect::<Result<Vec<i64>, _>>()
                    .map_err(map_sqlite)?;
                let mut body = conn
                    .prepare_cached("DELETE FROM outbox_bodies WHERE seq = ?1")
                    .map_err(map_sqlite)?;
                for seq in &seqs {
                    body.execute([seq]).map_err(map_sqlite)?;
                }
                Ok(seqs.len())
            })
            .await?;
        Ok(n as u64)
    }

    async fn status(&self) -> Result<OutboxStatus, StoreError> {
        self.store
            .read(|conn| {
                let mut status = OutboxStatus::default();
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT topic, count(*), sum(parked), min(created_at) \
                         FROM outbox_messages INDEXED BY outbox_pending \
                         WHERE published_at IS NULL GROUP BY topic ORDER BY topic",
                    )
                    .map_err(map_sqlite)?;
                let mut rows = stmt.query([]).map_err(map_sqlite)?;
                while let Some(r) = rows.next().map_err(map_sqlite)? {
                    let topic: String = r.get(0).map_err(map_sqlite)?;
                    let pending: i64 = r.get(1).map_err(map_sqlite)?;
                    let parked: i64 = r.get(2).map_err(map_sqlite)?;
                    let oldest: i64 = r.get(3).map_err(map_sqlite)?;
                    let oldest = micros_to_time(oldest)?;
                    status.pending += pending as u64;
                    status.parked += parked as u64;
                    status.oldest_pending = Some(
                        status
                            .oldest_pending
                            .map_or(oldest, |o: DateTime<Utc>| o.min(oldest)),
                    );
                    status.topics.push(TopicStatus {
                        topic,
                        pending: pending as u64,
                        parked: parked as u64,
                        oldest_pending: Some(oldest),
                    });
                }
                let published: i64 = conn
                    .prepare_cached(
                        "SELECT count(*) FROM outbox_messages INDEXED BY outbox_published \
                         WHERE published_at IS NOT NULL",
                    )
                    .map_err(map_sqlite)?
                    .query_row([], |r| r.get(0))
                    .map_err(map_sqlite)?;
                status.published_retained = published as u64;
                Ok(status)
            })
            .await
    }

    async fn retry_parked(&self, topic: Option<&TopicName>) -> Result<u64, StoreError> {
        let topic = topic.map(|t| t.to_string());
        let n = self
            .store
            .submit(0, keep_all, move |conn, _| {
                conn.prepare_cached(
                    "UPDATE outbox_messages SET parked = 0, attempts = 0, next_attempt_at = 0 \
                     WHERE parked = 1 AND published_at IS NULL AND (?1 IS NULL OR topic = ?1)",
                )
                .map_err(map_sqlite)?
                .execute([topic])
                .map_err(map_sqlite)
            })
            .await?;
        if n > 0 {
            self.wake_relays();
        }
        Ok(n as u64)
    }

    async fn wait_for_messages(&self, max_wait: Duration) -> Result<(), StoreError> {
        // A timeout is the polling fallback (rows written by other processes).
        let _ = tokio::time::timeout(max_wait, async {
            let mut rx = self.woken.lock().await;
            let _ = rx.changed().await;
        })
        .await;
        Ok(())
    }
}

/// Reads one row by message id (for tests and the CLI): `(seq, published)`.
pub fn find_by_message_id(
    conn: &Connection,
    message_id: &str,
) -> Result<Option<(u64, bool)>, StoreError> {
    conn.query_row(
        "SELECT seq, published_at IS NOT NULL FROM outbox_messages WHERE message_id = ?1 \
         ORDER BY seq LIMIT 1",
        [message_id],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, bool>(1)?)),
    )
    .optional()
    .map_err(map_sqlite)
}
