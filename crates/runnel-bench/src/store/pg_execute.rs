//! The command scenarios of `runnel-bench store --store postgres://…`: `Repository::execute`
//! (load, handle, append with the loaded revision as the expectation) beside one raw
//! `INSERT … SELECT` per command that takes the next revision from the stream's last row,
//! through the same driver at the same durability, on the same number of connections.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use runnel::core::DomainEvent;
use runnel::{Aggregate, CommandEnvelope, Repository, RepositoryError, RetryPolicy};
use runnel_postgres::sqlx::{self, PgConnection};
use serde::{Deserialize, Serialize};

use super::workload::EVENT_TYPE;

/// Events per aggregate before a writer moves on to a fresh one (the issue's "aggregates of
/// up to 100 events"): loads replay 0–99 events, 50 on average.
pub const EXEC_STREAM_LEN_MAX: u64 = 100;

/// The stream category of the command scenarios (the raw rows use the same names).
const EXEC_CATEGORY: &str = "BenchCounter";

/// A counter: every command records one event.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BenchCounter {
    count: u64,
    amount_cents: i64,
}

/// The counter's one event.
#[derive(Debug, Serialize, Deserialize)]
pub enum BenchCounterEvent {
    BenchEventRecorded {
        order_id: String,
        sku: String,
        quantity: u32,
        amount_cents: i64,
        note: String,
    },
}

impl DomainEvent for BenchCounterEvent {
    fn event_type(&self) -> &'static str {
        EVENT_TYPE
    }
}

impl Aggregate for BenchCounter {
    const TYPE: &'static str = EXEC_CATEGORY;
    type Command = ();
    type Event = BenchCounterEvent;
    type Error = Infallible;

    fn handle(&self, _command: ()) -> Result<Vec<BenchCounterEvent>, Infallible> {
        Ok(vec![BenchCounterEvent::BenchEventRecorded {
            order_id: "0190a3c4-bench".into(),
            sku: "SKU-0042".into(),
            quantity: 3,
            amount_cents: 12999,
            note: "runnel bench".into(),
        }])
    }

    fn apply(&mut self, event: &BenchCounterEvent) {
        let BenchCounterEvent::BenchEventRecorded { amount_cents, .. } = event;
        self.count += 1;
        self.amount_cents = self.amount_cents.saturating_add(*amount_cents);
    }
}

/// The shape of a command scenario.
#[derive(Clone, Copy, Debug)]
pub struct ExecShape {
    pub writers: usize,
    /// All writers on one aggregate (conflicts expected) rather than one each.
    pub hot: bool,
}

/// The outcome of a command scenario.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecRun {
    /// Commands whose events were committed.
    pub committed: u64,
    /// Commands refused by the expected-revision check (retries are off).
    pub conflicts: u64,
    pub elapsed: Duration,
}

impl ExecRun {
    pub fn plus(self, other: ExecRun) -> ExecRun {
        ExecRun {
            committed: self.committed + other.committed,
            conflicts: self.conflicts + other.conflicts,
            elapsed: self.elapsed + other.elapsed,
        }
    }

    pub fn per_second(&self) -> f64 {
        self.committed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Which aggregate a writer works on: its own, or the one all writers share, moving to a
/// fresh one every [`EXEC_STREAM_LEN_MAX`] events.
struct Aggregates {
    tag: String,
    hot: bool,
    /// The shared aggregate's index (hot scenarios).
    shared: AtomicU64,
}

impl Aggregates {
    fn id(&self, writer: usize, own_index: u64) -> (String, u64) {
        if self.hot {
            let index = self.shared.load(Ordering::Acquire);
            (format!("{}-hot-{index}", self.tag), index)
        } else {
            (format!("{}-w{writer}-{own_index}", self.tag), own_index)
        }
    }

    /// After a committed command left `index` at `revision`: the index to use next.
    fn after(&self, index: u64, revision: u64) -> u64 {
        if revision < EXEC_STREAM_LEN_MAX {
            return index;
        }
        if self.hot {
            let _ =
                self.shared
                    .compare_exchange(index, index + 1, Ordering::AcqRel, Ordering::Acquire);
        }
        index + 1
    }
}

/// A repository as the scenarios use it: no snapshots, conflict retries off, and the
/// aggregate-state cache if `cache` is set.
pub fn repository(
    store: &runnel_postgres::PostgresStore,
    cache: Option<usize>,
) -> Repository<BenchCounter> {
    let repo = Repository::<BenchCounter>::new(Arc::new(store.clone()))
        .with_retry_policy(RetryPolicy::no_retry());
    match cache {
        Some(capacity) => repo.with_state_cache(capacity),
        None => repo,
    }
}

/// `Repository::execute` from `shape.writers` tasks for `duration`.
pub async fn runnel_execute(
    repo: &Repository<BenchCounter>,
    shape: ExecShape,
    duration: Duration,
    tag: String,
    committed: Arc<AtomicU64>,
) -> anyhow::Result<ExecRun> {
    let aggregates = Arc::new(Aggregates {
        tag,
        hot: shape.hot,
        shared: AtomicU64::new(0),
    });
    let conflicts = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(shape.writers);
    for writer in 0..shape.writers {
        let repo = repo.clone();
        let (aggregates, committed, conflicts) = (
            Arc::clone(&aggregates),
            Arc::clone(&committed),
            Arc::clone(&conflicts),
        );
        tasks.push(tokio::spawn(async move {
            let mut own = 0u64;
            while start.elapsed() < duration {
                let (id, index) = aggregates.id(writer, own);
                match repo.execute(&id, CommandEnvelope::new(())).await {
                    Ok(outcome) => {
                        committed.fetch_add(1, Ordering::Relaxed);
                        own = aggregates.after(index, outcome.revision.unwrap_or(0));
                    }
                    Err(RepositoryError::ConflictRetriesExhausted { .. }) => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context("execute failed")),
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("a benchmark writer panicked")??;
    }
    Ok(ExecRun {
        committed: committed.load(Ordering::Relaxed),
        conflicts: conflicts.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    })
}

/// SQLSTATE of a unique violation: the raw side's expected-revision conflict.
const UNIQUE_VIOLATION: &str = "23505";

/// One raw `INSERT … SELECT` per command (autocommit: one round trip, one commit), each
/// writer on its own connection from `conns` (put back afterwards).
pub async fn raw_execute(
    conns: &mut Vec<PgConnection>,
    schema: &str,
    shape: ExecShape,
    duration: Duration,
    tag: String,
    committed: Arc<AtomicU64>,
) -> anyhow::Result<ExecRun> {
    anyhow::ensure!(
        conns.len() >= shape.writers,
        "the raw baseline has {} connections for {} writers",
        conns.len(),
        shape.writers
    );
    let sql = Arc::new(format!(
        "INSERT INTO {schema}.raw_events (event_id, stream, revision, category, event_type, data) \
         SELECT $1, $2, coalesce(max(revision), 0) + 1, '{EXEC_CATEGORY}', $3, $4 \
         FROM {schema}.raw_events WHERE stream = $2 RETURNING revision"
    ));
    let aggregates = Arc::new(Aggregates {
        tag,
        hot: shape.hot,
        shared: AtomicU64::new(0),
    });
    let conflicts = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(shape.writers);
    for writer in 0..shape.writers {
        let mut conn = conns.pop().context("a raw connection")?;
        let (aggregates, committed, conflicts, sql) = (
            Arc::clone(&aggregates),
            Arc::clone(&committed),
            Arc::clone(&conflicts),
            Arc::clone(&sql),
        );
        tasks.push(tokio::spawn(async move {
            let mut own = 0u64;
            while start.elapsed() < duration {
                let (id, index) = aggregates.id(writer, own);
                let stream = format!("{EXEC_CATEGORY}-{id}");
                let inserted = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(runnel::core::uuid::Uuid::now_v7())
                    .bind(&stream)
                    .bind(EVENT_TYPE)
                    .bind(super::workload::PAYLOAD)
                    .fetch_one(&mut conn)
                    .await;
                match inserted {
                    Ok(revision) => {
                        committed.fetch_add(1, Ordering::Relaxed);
                        own = aggregates.after(index, revision as u64);
                    }
                    Err(sqlx::Error::Database(e))
                        if e.code().as_deref() == Some(UNIQUE_VIOLATION) =>
                    {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context("raw INSERT … SELECT")),
                }
            }
            anyhow::Ok(conn)
        }));
    }
    let mut ended = Vec::with_capacity(tasks.len());
    for t in tasks {
        ended.push(t.await.context("a raw writer panicked")?);
    }
    let elapsed = start.elapsed();
    for conn in ended {
        conns.push(conn?);
    }
    Ok(ExecRun {
        committed: committed.load(Ordering::Relaxed),
        conflicts: conflicts.load(Ordering::Relaxed),
        elapsed,
    })
}
