//! The hand-written baseline on SQLite: tables shaped like Runnel's instance, timer,
//! history and outbox tables (same columns, same indexes), at Runnel's durability (WAL,
//! `synchronous=FULL`), written through one writer thread — SQLite's own model: one
//! writer at a time. C clients hand it their transitions and wait for the commit.
//!
//! Two batchings: one transaction per transition (the baseline the issue names: an fsync
//! per step), and one transaction for everything queued when the writer comes round
//! (group commit, as Runnel's own writer does: the ceiling of the same SQL).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use runnel_sqlite::rusqlite::{self, params, Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::workload::{
    instance_id, kind, raw_transition, Latencies, Order, RawTransition, RAW_LEASE, RAW_OWNER,
    TRANSITIONS_PER_INSTANCE,
};

/// The baseline's tables: Runnel's `processor_instances`, `processor_timers`,
/// `processor_history` (migration 7) and `outbox_messages` (migration 5), renamed.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bench_instances (
    kind TEXT NOT NULL, id TEXT NOT NULL, definition_version INTEGER NOT NULL,
    correlation TEXT, state TEXT NOT NULL, status TEXT NOT NULL, progress BLOB NOT NULL,
    data BLOB NOT NULL, version INTEGER NOT NULL, last_error TEXT,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, finished_at INTEGER,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS bench_instances_by_correlation
    ON bench_instances (kind, correlation) WHERE correlation IS NOT NULL;
CREATE INDEX IF NOT EXISTS bench_instances_by_status ON bench_instances (status, kind, id);
CREATE INDEX IF NOT EXISTS bench_instances_finished ON bench_instances (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS bench_timers (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, instance TEXT NOT NULL, name TEXT NOT NULL,
    due_at INTEGER NOT NULL, payload BLOB NOT NULL, leased_by TEXT, leased_until INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS bench_timers_by_instance ON bench_timers (kind, instance, name);
CREATE INDEX IF NOT EXISTS bench_timers_by_due ON bench_timers (kind, due_at);
CREATE TABLE IF NOT EXISTS bench_history (
    kind TEXT NOT NULL, instance TEXT NOT NULL, seq INTEGER NOT NULL, at INTEGER NOT NULL,
    step TEXT, what TEXT NOT NULL, detail TEXT,
    PRIMARY KEY (kind, instance, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bench_outbox (
    seq INTEGER PRIMARY KEY, message_id TEXT NOT NULL, topic TEXT NOT NULL,
    ordering_key TEXT, envelope TEXT NOT NULL, payload BLOB NOT NULL,
    created_at INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    next_attempt_at INTEGER NOT NULL DEFAULT 0, parked INTEGER NOT NULL DEFAULT 0,
    leased_by TEXT, leased_until INTEGER, published_at INTEGER
);
CREATE INDEX IF NOT EXISTS bench_outbox_pending ON bench_outbox (seq) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS bench_outbox_pending_by_key ON bench_outbox (ordering_key, seq)
    WHERE published_at IS NULL AND ordering_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS bench_outbox_published ON bench_outbox (published_at)
    WHERE published_at IS NOT NULL;
";

/// Most transitions the writer takes from its queue at once (Runnel's writer takes up
/// to 1,024 jobs per batch).
const BATCH_MAX: usize = 1024;

/// How the writer commits what it takes from its queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batching {
    /// One transaction (one fsync) per transition.
    PerTransition,
    /// One transaction for every transition queued.
    Group,
}

/// One transition for the writer.
struct Job {
    id: String,
    data: Vec<u8>,
    rows: RawTransition,
    reply: oneshot::Sender<Result<(), String>>,
}

/// The writer thread and its queue.
pub struct RawSqlite {
    jobs: mpsc::Sender<Job>,
    commits: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Writes transition `job` in the open transaction.
fn write(conn: &Connection, job: &Job) -> rusqlite::Result<()> {
    let kind = kind();
    let t = &job.rows;
    let now = now_micros();
    let finished = t.finished.then_some(now);
    if t.version == 1 {
        conn.prepare_cached(
            "INSERT INTO bench_instances (kind, id, definition_version, correlation, state, \
             status, progress, data, version, last_error, created_at, updated_at, finished_at) \
             VALUES (?1, ?2, 1, NULL, ?3, ?4, ?5, ?6, 1, NULL, ?7, ?7, ?8)",
        )?
        .execute(params![
            kind, job.id, t.state, t.status, t.progress, job.data, now, finished
        ])?;
    } else {
        let changed = conn
            .prepare_cached(
                "UPDATE bench_instances SET definition_version = 1, state = ?3, status = ?4, \
                 progress = ?5, data = ?6, version = version + 1, last_error = NULL, \
                 updated_at = ?7, finished_at = ?8 WHERE kind = ?1 AND id = ?2 AND version = ?9",
            )?
            .execute(params![
                kind,
                job.id,
                t.state,
                t.status,
                t.progress,
                job.data,
                now,
                finished,
                t.version - 1
            ])?;
        if changed != 1 {
            // The baseline has one writer per instance: a missed version is a bug.
            return Err(rusqlite::Error::QueryReturnedNoRows);
        }
    }
    if t.deletes_timer {
        conn.prepare_cached("DELETE FROM bench_timers WHERE kind = ?1 AND instance = ?2")?
            .execute(params![kind, job.id])?;
    }
    if let Some(payload) = &t.timer {
        let until = now + RAW_LEASE.as_micros() as i64;
        conn.prepare_cached(
            "INSERT INTO bench_timers (kind, instance, name, due_at, payload, leased_by, \
             leased_until) VALUES (?1, ?2, 'run', ?3, ?4, ?5, ?6)",
        )?
        .execute(params![kind, job.id, now, payload, RAW_OWNER, until])?;
    }
    let mut history = conn.prepare_cached(
        "INSERT INTO bench_history (kind, instance, seq, at, step, what, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let first_seq = (t.version - 1) * 2 + 1;
    for (i, (step, what, detail)) in t.history.iter().enumerate() {
        history.execute(params![
            kind,
            job.id,
            first_seq + i as i64,
            now,
            step,
            what,
            detail
        ])?;
    }
    if let Some((message_id, envelope, payload)) = &t.outbox {
        conn.prepare_cached(
            "INSERT INTO bench_outbox (message_id, topic, ordering_key, envelope, payload, \
             created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            message_id,
            super::workload::events_topic(),
            job.id,
            envelope,
            payload,
            now
        ])?;
    }
    Ok(())
}

fn in_transaction(conn: &mut Connection, jobs: &[Job]) -> Result<(), String> {
    let run = |conn: &mut Connection| -> rusqlite::Result<()> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for job in jobs {
            write(&tx, job)?;
        }
        tx.commit()
    };
    run(conn).map_err(|e| e.to_string())
}

fn writer(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    batching: Batching,
    commits: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match batching {
            Batching::PerTransition => {
                for job in batch.drain(..) {
                    let outcome = in_transaction(&mut conn, std::slice::from_ref(&job));
                    commits.fetch_add(1, Ordering::Relaxed);
                    let _ = job.reply.send(outcome);
                }
            }
            Batching::Group => {
                let outcome = in_transaction(&mut conn, &batch);
                commits.fetch_add(1, Ordering::Relaxed);
                for job in batch.drain(..) {
                    let _ = job.reply.send(outcome.clone());
                }
            }
        }
    }
}

impl RawSqlite {
    /// Opens `path` (creating the tables) and starts the writer thread.
    pub fn open(path: &Path, batching: Batching) -> anyhow::Result<RawSqlite> {
        let conn =
            Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        anyhow::ensure!(
            mode.eq_ignore_ascii_case("wal"),
            "{} refused WAL mode",
            path.display()
        );
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.execute_batch(SCHEMA)
            .context("cannot create the baseline tables")?;
        let (jobs, rx) = mpsc::channel(BATCH_MAX * 4);
        let commits = Arc::new(AtomicU64::new(0));
        let thread = std::thread::Builder::new()
            .name("bench-raw-sqlite-writer".into())
            .spawn({
                let commits = Arc::clone(&commits);
                move || writer(conn, rx, batching, commits)
            })
            .context("cannot start the baseline's writer thread")?;
        Ok(RawSqlite {
            jobs,
            commits,
            thread,
        })
    }

    /// Transactions committed so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Completes instances `from..to` from `clients` concurrent clients, each instance's
    /// transitions one after the other (as its steps run). Returns the elapsed time and
    /// the start-to-completion latencies.
    pub async fn complete(
        &self,
        prefix: &str,
        from: u64,
        to: u64,
        clients: usize,
        done: Arc<AtomicU64>,
    ) -> anyhow::Result<(Duration, Latencies)> {
        let next = Arc::new(AtomicU64::new(from));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (jobs, next, done) = (self.jobs.clone(), Arc::clone(&next), Arc::clone(&done));
            let prefix = prefix.to_string();
            tasks.spawn(async move {
                let mut latencies = Latencies::new()?;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= to {
                        return anyhow::Ok(latencies);
                    }
                    let id = instance_id(&prefix, n);
                    let start = Instant::now();
                    for k in 0..TRANSITIONS_PER_INSTANCE {
                        let (reply, answer) = oneshot::channel();
                        let job = Job {
                            id: id.clone(),
                            data: serde_json::to_vec(&Order::new(n))?,
                            rows: raw_transition(&id, k)?,
                            reply,
                        };
                        jobs.send(job)
                            .await
                            .map_err(|_| anyhow::anyhow!("the baseline writer stopped"))?;
                        answer
                            .await
                            .context("the baseline writer stopped")?
                            .map_err(|e| anyhow::anyhow!("baseline transition {k} of {id}: {e}"))?;
                    }
                    latencies.record(start.elapsed())?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let mut all = Latencies::new()?;
        while let Some(joined) = tasks.join_next().await {
            all.add(&joined.context("a baseline client panicked")??)?;
        }
        Ok((started.elapsed(), all))
    }

    /// Stops the writer thread.
    pub fn close(self) {
        drop(self.jobs);
        let _ = self.thread.join();
    }
}

/// Completed instances in the baseline's file, checked after each round.
pub fn count_completed(path: &Path) -> anyhow::Result<u64> {
    let conn = Connection::open(path)?;
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM bench_instances WHERE status = 'completed'",
        [],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}
