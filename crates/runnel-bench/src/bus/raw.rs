//! The raw SQLite baselines: plain rusqlite doing the bus's storage work by hand, on the
//! same disk, at the same durability (WAL, `synchronous=FULL`, foreign keys on).
//!
//! The tables are the embedded bus's own (`bus_topics`, `bus_messages`, `bus_queue` with
//! the same columns, keys and indexes); a message is one log row plus one queue row for
//! the topic's one group, exactly the rows Runnel writes. What the baseline leaves out is
//! Runnel's work around those rows: encoding each message's envelope (the baseline writes
//! one envelope of the same size, encoded once), looking the topic and its groups up, the
//! per-key head check, and handing jobs to the group-commit writer.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use runnel_sqlite::rusqlite::{self, params, Connection};

use super::workload::{message, Budget, Latency, Run, KEYS, PAYLOAD};

/// The embedded bus's tables (runnel-sqlite's `migrations/0002_bus.sql`), with one topic
/// and one group.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bus_topics (
    topic_id   INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bus_messages (
    seq          INTEGER PRIMARY KEY,
    topic_id     INTEGER NOT NULL REFERENCES bus_topics (topic_id),
    ordering_key BLOB,
    envelope     TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    published_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS bus_messages_by_topic ON bus_messages (topic_id, seq);
CREATE INDEX IF NOT EXISTS bus_messages_by_time ON bus_messages (published_at);
CREATE TABLE IF NOT EXISTS bus_queue (
    seq          INTEGER NOT NULL,
    group_id     INTEGER NOT NULL,
    ordering_key BLOB,
    head         INTEGER NOT NULL,
    visible_at   INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    lease_owner  TEXT,
    PRIMARY KEY (seq, group_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bus_queue_ready ON bus_queue (group_id, visible_at, seq) WHERE head = 1;
CREATE INDEX IF NOT EXISTS bus_queue_by_key ON bus_queue (group_id, ordering_key, seq)
    WHERE ordering_key IS NOT NULL;
INSERT INTO bus_topics (topic_id, name, created_at) VALUES (1, 'bench', 0)
    ON CONFLICT DO NOTHING;
";

const INSERT_MESSAGE: &str = "INSERT INTO bus_messages \
     (topic_id, ordering_key, envelope, payload, published_at) VALUES (1, ?1, ?2, ?3, ?4)";
const INSERT_QUEUE: &str = "INSERT INTO bus_queue \
     (seq, group_id, ordering_key, head, visible_at, attempt) VALUES (?1, 1, ?2, 1, ?3, 0)";

fn open_durable(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    anyhow::ensure!(
        mode.eq_ignore_ascii_case("wal"),
        "{} refused WAL mode",
        path.display()
    );
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.execute_batch(SCHEMA)
        .context("cannot create the baseline tables")?;
    Ok(conn)
}

/// One message's envelope as the bus stores it (the message without its payload, as
/// JSON), encoded once: every raw row carries these bytes.
fn envelope() -> anyhow::Result<String> {
    let mut m = message(0);
    m.payload.clear();
    serde_json::to_string(&m).context("cannot encode the baseline envelope")
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Inserts `n` messages (log row + queue row each) in the open transaction; returns their
/// sequence numbers.
fn insert_messages(
    tx: &rusqlite::Transaction<'_>,
    envelope: &str,
    next_key: &mut u64,
    n: usize,
    seqs: &mut Vec<i64>,
) -> anyhow::Result<()> {
    let now = now_micros();
    let mut insert_message = tx.prepare_cached(INSERT_MESSAGE)?;
    let mut insert_queue = tx.prepare_cached(INSERT_QUEUE)?;
    for _ in 0..n {
        let key = format!("Order-{}", *next_key % KEYS);
        *next_key += 1;
        insert_message.execute(params![key.as_bytes(), envelope, PAYLOAD.as_slice(), now])?;
        let seq = tx.last_insert_rowid();
        insert_queue.execute(params![seq, key.as_bytes(), now])?;
        seqs.push(seq);
    }
    Ok(())
}

/// Publishes by hand: transactions of `per_tx` messages until the budget is spent. The
/// latency is per transaction.
pub fn publish(
    path: &Path,
    per_tx: usize,
    budget: Budget,
    published: Arc<AtomicU64>,
) -> anyhow::Result<Run> {
    let mut conn = open_durable(path)?;
    let envelope = envelope()?;
    let mut latency = Latency::new()?;
    let (mut messages, mut commits, mut next_key) = (0u64, 0u64, 0u64);
    let mut seqs = Vec::with_capacity(per_tx);
    let start = Instant::now();
    while start.elapsed() < budget.duration && messages + per_tx as u64 <= budget.messages_max {
        let began = Instant::now();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        seqs.clear();
        insert_messages(&tx, &envelope, &mut next_key, per_tx, &mut seqs)?;
        tx.commit()?;
        latency.record(began.elapsed());
        commits += 1;
        messages += per_tx as u64;
        published.store(messages, Ordering::Relaxed);
    }
    Ok(Run {
        messages,
        elapsed: start.elapsed(),
        commits,
        latency,
    })
}

/// A hand-written queue, end to end, in batches of `batch`: one transaction inserts the
/// batch (log + queue rows), a SELECT reads the ready queue rows with their messages
/// (as a consumer would, into owned rows), and one transaction deletes those queue rows
/// (the ack). Every message's latency is its batch's insert start → delete commit. There
/// is no lease: a consumer crash between SELECT and DELETE is not handled, which Runnel's
/// claim (one more commit) is for.
pub fn end_to_end(
    path: &Path,
    batch: usize,
    budget: Budget,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<Run> {
    let mut conn = open_durable(path)?;
    let envelope = envelope()?;
    let mut latency = Latency::new()?;
    let (mut messages, mut commits, mut next_key) = (0u64, 0u64, 0u64);
    let mut seqs = Vec::with_capacity(batch);
    let start = Instant::now();
    while start.elapsed() < budget.duration && messages + batch as u64 <= budget.messages_max {
        let began = Instant::now();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        seqs.clear();
        insert_messages(&tx, &envelope, &mut next_key, batch, &mut seqs)?;
        tx.commit()?;
        let ready: Vec<(i64, String, Vec<u8>)> = {
            let mut select = conn.prepare_cached(
                "SELECT q.seq, m.envelope, m.payload FROM bus_queue q \
                 JOIN bus_messages m ON m.seq = q.seq \
                 WHERE q.group_id = 1 AND q.head = 1 AND q.visible_at <= ?1 \
                 ORDER BY q.visible_at, q.seq LIMIT ?2",
            )?;
            let rows = select
                .query_map(params![now_micros(), batch as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            rows
        };
        anyhow::ensure!(
            ready.len() == batch,
            "the raw queue returned {} of {batch} rows",
            ready.len()
        );
        debug_assert!(ready.iter().map(|r| r.0).eq(seqs.iter().copied()));
        std::hint::black_box(&ready);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut delete =
                tx.prepare_cached("DELETE FROM bus_queue WHERE seq = ?1 AND group_id = 1")?;
            for (seq, _, _) in &ready {
                delete.execute([seq])?;
            }
        }
        tx.commit()?;
        latency.record_n(began.elapsed(), batch as u64);
        commits += 2;
        messages += batch as u64;
        acked.store(messages, Ordering::Relaxed);
    }
    Ok(Run {
        messages,
        elapsed: start.elapsed(),
        commits,
        latency,
    })
}
