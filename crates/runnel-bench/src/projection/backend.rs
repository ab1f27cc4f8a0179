//! The database a run measures (a fresh SQLite file, or a fresh PostgreSQL schema), and
//! the two ways of rebuilding a read model on it: Runnel's runner and the hand loop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use runnel::app::ShutdownTrigger;
use runnel::projection::{ProjectionRunner, RunnerOptions};
use runnel_core::projection::{ProjectionStatus, ProjectionStore};
use runnel_core::{EventStore, ExpectedRevision, StoreError, StreamName};
use runnel_postgres::{PostgresOptions, PostgresProjectionStore, PostgresStore};
use runnel_sqlite::{SqliteProjectionStore, SqliteStore};

use super::workload::{event_of, seed_appends, stream_of, Totals, Upserting};
use super::{raw_postgres, raw_sqlite};
use crate::cpu;
use crate::exit::BadInput;
use crate::progress::CountBar;
use crate::rss;

/// How often the driver looks at Runnel's checkpoint while a rebuild runs.
const POLL: Duration = Duration::from_millis(10);
/// Events per unit of work while seeding a SQLite file (one commit each).
const SEED_UNIT_EVENTS: u64 = 2_000;
/// Connections of Runnel's PostgreSQL pool (the runner uses one at a time; the seeding
/// appends share the store's batcher).
const PG_POOL: u32 = 8;

/// One side's rebuilds, summed.
#[derive(Clone, Debug, Default)]
pub struct SideRun {
    pub events: u64,
    pub elapsed: Duration,
    /// Write transactions (SQLite: the writer's commits on Runnel's side; PostgreSQL: the
    /// batches). The loop: its page commits.
    pub transactions: u64,
    /// CPU time of this process (every thread) while it ran.
    pub cpu: Duration,
    pub peak_rss_bytes: Option<u64>,
}

impl SideRun {
    /// Events applied per second.
    pub fn per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Mean wall time of one of `rebuilds` rebuilds.
    pub fn per_rebuild(&self, rebuilds: u32) -> Duration {
        self.elapsed / rebuilds.max(1)
    }

    /// This run and another of the same side, as one.
    pub fn add(&mut self, other: SideRun) {
        self.events += other.events;
        self.elapsed += other.elapsed;
        self.transactions += other.transactions;
        self.cpu += other.cpu;
        self.peak_rss_bytes = match (self.peak_rss_bytes, other.peak_rss_bytes) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Measures `work` (which returns the events it applied and the transactions it
/// committed): wall time, this process's CPU time, and its peak RSS when the platform lets
/// the peak be reset first.
async fn measured<F, Fut>(work: F) -> anyhow::Result<SideRun>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(u64, u64)>>,
{
    let own_peak = rss::reset_peak();
    let cpu_before = cpu::process_cpu();
    let started = Instant::now();
    let (events, transactions) = work().await?;
    let elapsed = started.elapsed();
    let cpu = match (cpu_before, cpu::process_cpu()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => Duration::ZERO,
    };
    Ok(SideRun {
        events,
        elapsed,
        transactions,
        cpu,
        peak_rss_bytes: if own_peak {
            rss::peak_rss_bytes()
        } else {
            None
        },
    })
}

/// The database under test.
pub enum Backend {
    Sqlite {
        store: SqliteStore,
        path: PathBuf,
    },
    Postgres {
        store: PostgresStore,
        /// The server's URL without Runnel's parameters (for the loop's connection).
        url: String,
        schema: String,
    },
}

impl Backend {
    /// A fresh SQLite file in `dir`.
    pub fn sqlite(dir: &Path) -> anyhow::Result<Backend> {
        let path = dir.join("runnel-projection.db");
        let store = SqliteStore::open(&path)?;
        Ok(Backend::Sqlite { store, path })
    }

    /// A fresh schema `{prefix}_{suffix}` on the server at `url`.
    pub async fn postgres(url: &str, prefix: &str) -> anyhow::Result<Backend> {
        let schema = format!("{prefix}_{}", crate::saga::schema_suffix());
        let options = PostgresOptions::from_url(url)
            .map_err(|e| BadInput(e.to_string()))?
            .schema(schema.clone())
            .pool_size(PG_POOL);
        let base = options.url.clone();
        let store = PostgresStore::connect_with(options).await?;
        Ok(Backend::Postgres {
            store,
            url: base,
            schema,
        })
    }

    /// Closes the store and drops a PostgreSQL schema (SQLite's file goes with the
    /// temporary directory).
    pub async fn drop_schema(self) -> anyhow::Result<()> {
        if let Backend::Postgres { store, url, schema } = self {
            // Dropped, not closed: closing the pool would wait for the connection the
            // store's LISTEN task keeps, which only dropping the store's last handle ends.
            drop(store);
            crate::saga::drop_schemas(&url, &[&schema]).await?;
        }
        Ok(())
    }

    fn events(&self) -> Arc<dyn EventStore> {
        match self {
            Backend::Sqlite { store, .. } => Arc::new(store.clone()),
            Backend::Postgres { store, .. } => Arc::new(store.clone()),
        }
    }

    fn projections(&self) -> Arc<dyn ProjectionStore> {
        match self {
            Backend::Sqlite { store, .. } => Arc::new(SqliteProjectionStore::new(store.clone())),
            Backend::Postgres { store, .. } => {
                Arc::new(PostgresProjectionStore::new(store.clone()))
            }
        }
    }

    /// The SQLite store (its writer's commit count, its heap), if this is SQLite.
    pub fn sqlite_store(&self) -> Option<&SqliteStore> {
        match self {
            Backend::Sqlite { store, .. } => Some(store),
            Backend::Postgres { .. } => None,
        }
    }

    /// Appends events `from..to` over `streams` streams, under a progress bar. Untimed.
    pub async fn seed(&self, from: u64, to: u64, streams: u64, label: &str) -> anyhow::Result<()> {
        let done = Arc::new(AtomicU64::new(0));
        let bar = CountBar::start(label, "events", to - from, Arc::clone(&done));
        let outcome = match self {
            // Many appends per unit of work: seeding is not what is measured, and one
            // commit per append would take minutes for a million events.
            Backend::Sqlite { store, .. } => seed_sqlite(store, from, to, streams, &done).await,
            Backend::Postgres { .. } => {
                seed_appends(self.events(), from, to, streams, Arc::clone(&done)).await
            }
        };
        bar.finish();
        outcome.with_context(|| format!("{label}: appending the events failed"))
    }

    /// Reads every event once, untimed, so the first timed rebuild does not pay for a cold
    /// cache that the later ones do not.
    pub async fn warm_up(&self) -> anyhow::Result<()> {
        let sql = "SELECT count(*), sum(length(data)) FROM events";
        match self {
            Backend::Sqlite { store, .. } => {
                store
                    .read_with(move |conn| {
                        conn.query_row(sql, [], |_| Ok(()))
                            .map_err(|e| StoreError::Backend(e.to_string()))
                    })
                    .await?
            }
            Backend::Postgres { store, schema, .. } => {
                let sql = format!("SELECT count(*), sum(length(data)) FROM {schema}.events");
                runnel_postgres::sqlx::query(runnel_postgres::sqlx::AssertSqlSafe(sql))
                    .execute(store.pool())
                    .await?;
            }
        }
        Ok(())
    }

    /// Rebuilds the projection `name` from the start of `$all` with Runnel's runner (the
    /// `run` task an application runs), until its checkpoint reaches the head. `total`:
    /// events expected (the progress bar's length).
    pub async fn runnel_rebuild(
        &self,
        name: &str,
        batch: usize,
        total: u64,
        label: &str,
    ) -> anyhow::Result<SideRun> {
        let events = self.events();
        let projections = self.projections();
        let head = events.head_position().await?;
        let runner = Arc::new(ProjectionRunner::new(
            Arc::new(Upserting::new(name)),
            Arc::clone(&projections),
            Arc::clone(&events),
            RunnerOptions {
                batch_events: batch,
                ..RunnerOptions::default()
            },
        ));
        let done = Arc::new(AtomicU64::new(0));
        let bar = CountBar::start(label, "events", total, Arc::clone(&done));
        let commits_before = self.sqlite_store().map(|s| s.writer_stats().commits);
        let outcome = measured(|| async {
            let (stop, shutdown) = ShutdownTrigger::new();
            let task = tokio::spawn({
                let runner = Arc::clone(&runner);
                async move { runner.run(shutdown).await }
            });
            let reached = loop {
                if task.is_finished() {
                    break Err(anyhow::anyhow!("the runner stopped before it caught up"));
                }
                let states = match projections.states(Some(name)).await {
                    Ok(states) => states,
                    Err(e) => break Err(e.into()),
                };
                if let Some(state) = states.first() {
                    done.store(state.events_applied, Ordering::Relaxed);
                    if state.status != ProjectionStatus::Running {
                        break Err(anyhow::anyhow!(
                            "the projection is {}: {:?}",
                            state.status.as_str(),
                            state.last_error
                        ));
                    }
                    if state.checkpoint >= head {
                        break Ok(state.events_applied);
                    }
                }
                tokio::time::sleep(POLL).await;
            };
            stop.fire();
            task.await
                .context("the runner task panicked")?
                .context("the runner failed")?;
            let applied = reached?;
            let batches = applied.div_ceil(batch as u64);
            Ok((applied, batches))
        })
        .await;
        bar.finish();
        let mut run = outcome.with_context(|| format!("{label} failed"))?;
        if let (Some(store), Some(before)) = (self.sqlite_store(), commits_before) {
            run.transactions = store.writer_stats().commits - before;
        }
        Ok(run)
    }

    /// Rebuilds `table` from the start of `$all` with the hand-written loop.
    pub async fn raw_rebuild(
        &self,
        table: &str,
        batch: usize,
        total: u64,
        label: &str,
    ) -> anyhow::Result<SideRun> {
        let done = Arc::new(AtomicU64::new(0));
        let bar = CountBar::start(label, "events", total, Arc::clone(&done));
        let outcome = measured(|| async {
            match self {
                Backend::Sqlite { path, .. } => {
                    let (path, table) = (path.clone(), table.to_string());
                    let done = Arc::clone(&done);
                    tokio::task::spawn_blocking(move || {
                        raw_sqlite::rebuild(&path, &table, batch, done)
                    })
                    .await
                    .context("the loop's thread panicked")?
                }
                Backend::Postgres { url, schema, .. } => {
                    raw_postgres::rebuild(url, schema, table, batch, Arc::clone(&done)).await
                }
            }
        })
        .await;
        bar.finish();
        outcome.with_context(|| format!("{label} failed"))
    }

    /// Checks `table` (Runnel's view or the loop's table) holds `expected`.
    pub async fn check(&self, table: &str, expected: Totals, side: &str) -> anyhow::Result<()> {
        let got = match self {
            Backend::Sqlite { store, .. } => raw_sqlite::totals(store, table).await?,
            Backend::Postgres { url, schema, .. } => {
                raw_postgres::totals(url, schema, table).await?
            }
        };
        anyhow::ensure!(
            got == expected,
            "{side}'s read model {table} holds {got:?}, expected {expected:?}"
        );
        Ok(())
    }
}

/// Appends `from..to` in units of work of [`SEED_UNIT_EVENTS`] events, one event per
/// append.
async fn seed_sqlite(
    store: &SqliteStore,
    from: u64,
    to: u64,
    streams: u64,
    done: &AtomicU64,
) -> Result<(), StoreError> {
    let mut k = from;
    while k < to {
        let end = (k + SEED_UNIT_EVENTS).min(to);
        store
            .unit_of_work(move |uow| {
                for i in k..end {
                    let stream = StreamName::new(stream_of(i, streams))?;
                    uow.append(&stream, ExpectedRevision::Any, &[event_of(i)])?;
                }
                Ok::<_, StoreError>(())
            })
            .await?;
        done.fetch_add(end - k, Ordering::Relaxed);
        k = end;
    }
    Ok(())
}
