//! The group-commit writer: one thread owns the only write connection. Callers queue jobs;
//! the writer takes every job waiting (up to [`BATCH_JOBS_MAX`] / [`BATCH_EVENTS_MAX`]),
//! runs each under its own SAVEPOINT inside one transaction, commits once (one fsync), and
//! only then answers every caller. A job that fails rolls back to its savepoint alone; the
//! rest of the batch commits.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use runnel_core::{Position, StoreError};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, watch};

use crate::error_map::map_sqlite;
use crate::options::{BATCH_EVENTS_MAX, BATCH_JOBS_MAX};

/// What a job sees while it runs inside the batch transaction.
pub(crate) struct BatchContext {
    /// The batch's timestamp (microseconds since the epoch); never goes backwards.
    pub now_micros: i64,
}

/// A unit of work for the writer.
pub(crate) trait WriteJob: Send {
    /// Events this job will append (for batch sizing only).
    fn event_count(&self) -> usize {
        0
    }
    /// Runs inside the batch transaction under the job's savepoint. Returns `true` to keep
    /// its writes, `false` to roll them back (the job has failed and recorded why).
    fn run(&mut self, conn: &Connection, ctx: &BatchContext) -> bool;
    /// Whether the batch holding this job must fsync at commit under `Durability::Full`.
    /// A batch of jobs that all answer `false` commits with `synchronous=NORMAL`: it
    /// survives a process crash, and the next synced commit makes it durable too (the
    /// write-ahead log is synced as a whole).
    fn needs_sync(&self) -> bool {
        true
    }
    /// Called once after the batch's commit (or its failure). The job answers its caller.
    fn complete(self: Box<Self>, committed: Result<(), StoreError>);
}

/// Writer counters, for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Of those, the ones committed with an fsync (`Durability::Full` and a job in the
    /// batch that needs it, [`WriteJob::needs_sync`]).
    pub synced_commits: AtomicU64,
    /// Jobs answered.
    pub jobs: AtomicU64,
    /// Events in committed jobs.
    pub events: AtomicU64,
}

/// A copy of [`WriterStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStatsSnapshot {
    pub commits: u64,
    pub synced_commits: u64,
    pub jobs: u64,
    pub events: u64,
}

impl WriterStats {
    pub fn snapshot(&self) -> WriterStatsSnapshot {
        WriterStatsSnapshot {
            commits: self.commits.load(Ordering::Relaxed),
            synced_commits: self.synced_commits.load(Ordering::Relaxed),
            jobs: self.jobs.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct Writer {
    pub conn: Connection,
    pub jobs: mpsc::Receiver<Box<dyn WriteJob>>,
    pub head: watch::Sender<Position>,
    pub stats: Arc<WriterStats>,
    pub last_micros: i64,
    /// The store's durability is `Full` (batches fsync unless no job needs it).
    pub full_sync: bool,
    /// Whether the connection is at `synchronous=FULL` now.
    pub synced: bool,
}

impl Writer {
    /// Runs until every sender is gone.
    pub fn run(mut self) {
        let mut batch: Vec<Box<dyn WriteJob>> = Vec::with_capacity(BATCH_JOBS_MAX);
        while let Some(first) = self.jobs.blocking_recv() {
            let mut events = first.event_count();
            batch.push(first);
            while batch.len() < BATCH_JOBS_MAX && events < BATCH_EVENTS_MAX {
                match self.jobs.try_recv() {
                    Ok(job) => {
                        events += job.event_count();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch, events);
            debug_assert!(batch.is_empty());
        }
        tracing::debug!("sqlite writer stopped: every store handle is gone");
    }

    fn commit_batch(&mut self, batch: &mut Vec<Box<dyn WriteJob>>, events: usize) {
        if self.full_sync {
            let sync = batch.iter().any(|j| j.needs_sync());
            if sync != self.synced {
                let mode = if sync { "FULL" } else { "NORMAL" };
                match self.conn.pragma_update(None, "synchronous", mode) {
                    Ok(()) => self.synced = sync,
                    // Left at FULL: the batch commits durably all the same.
                    Err(e) if !sync => {
                        tracing::warn!(error = %e, "cannot relax synchronous for a batch")
                    }
                    Err(e) => {
                        let e = map_sqlite(e);
                        tracing::error!(error = %e, "cannot restore synchronous=FULL; the batch fails");
                        for job in batch.drain(..) {
                            job.complete(Err(e.clone()));
                        }
                        return;
                    }
                }
            }
        }
        let now = chrono::Utc::now().timestamp_micros();
        // Timestamps never go backwards, so time order equals position order.
        self.last_micros = self.last_micros.max(now);
        let ctx = BatchContext {
            now_micros: self.last_micros,
        };
        let committed = run_in_transaction(&mut self.conn, batch, &ctx);
        let jobs = batch.len() as u64;
        if committed.is_ok() {
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            if self.full_sync && self.synced {
                self.stats.synced_commits.fetch_add(1, Ordering::Relaxed);
            }
            self.stats
                .events
                .fetch_add(events as u64, Ordering::Relaxed);
        } else if let Err(e) = &committed {
            tracing::error!(error = %e, jobs, "sqlite batch commit failed; every job in it is answered with the error");
        }
        // Publish the new head before answering, so a caller that appends and then waits
        // for its own position never waits in vain.
        if committed.is_ok() {
            match head_position(&self.conn) {
                Ok(head) => {
                    self.head.send_if_modified(|h| {
                        if head > *h {
                            *h = head;
                            true
                        } else {
                            false
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the head position after commit"),
            }
        }
        for job in batch.drain(..) {
            job.complete(committed.clone());
        }
        self.stats.jobs.fetch_add(jobs, Ordering::Relaxed);
    }
}

fn run_in_transaction(
    conn: &mut Connection,
    batch: &mut [Box<dyn WriteJob>],
    ctx: &BatchContext,
) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_sqlite)?;
    for job in batch.iter_mut() {
        tx.execute_batch("SAVEPOINT job").map_err(map_sqlite)?;
        let keep = match catch_unwind(AssertUnwindSafe(|| job.run(&tx, ctx))) {
            Ok(keep) => keep,
            Err(_) => {
                // The job recorded nothing; complete() reports the panic as its failure.
                tracing::error!("a write job panicked; its writes are rolled back");
                false
            }
        };
        if keep {
            tx.execute_batch("RELEASE job").map_err(map_sqlite)?;
        } else {
            tx.execute_batch("ROLLBACK TO job; RELEASE job")
                .map_err(map_sqlite)?;
        }
    }
    tx.commit().map_err(map_sqlite)
}

pub(crate) fn head_position(conn: &Connection) -> Result<Position, StoreError> {
    let max: Option<i64> = conn
        .prepare_cached("SELECT max(position) FROM events")
        .map_err(map_sqlite)?
        .query_row([], |r| r.get(0))
        .map_err(map_sqlite)?;
    Ok(Position(max.unwrap_or(0) as u64))
}

/// A job that runs a closure and answers with its result.
pub(crate) struct FnJob<T, F> {
    pub f: Option<F>,
    pub events: usize,
    /// Whether a successful result's writes are kept (a unit of work that returns the
    /// application's own error is rolled back but still answered with that error).
    pub keep: fn(&T) -> bool,
    /// See [`WriteJob::needs_sync`].
    pub sync: bool,
    pub outcome: Option<Result<T, StoreError>>,
    pub reply: Option<tokio::sync::oneshot::Sender<Result<T, StoreError>>>,
}

impl<T, F> WriteJob for FnJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection, &BatchContext) -> Result<T, StoreError> + Send + 'static,
{
    fn event_count(&self) -> usize {
        self.events
    }

    fn needs_sync(&self) -> bool {
        self.sync
    }

    fn run(&mut self, conn: &Connection, ctx: &BatchContext) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let outcome = f(conn, ctx);
        let keep = match &outcome {
            Ok(v) => (self.keep)(v),
            Err(_) => false,
        };
        self.outcome = Some(outcome);
        keep
    }

    fn complete(mut self: Box<Self>, committed: Result<(), StoreError>) {
        let answer = match (self.outcome.take(), committed) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(_)), Err(e)) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (None, Err(e)) => Err(e),
            (None, Ok(())) => Err(StoreError::Backend(
                "the write job panicked; nothing it wrote was kept".into(),
            )),
        };
        if let Some(reply) = self.reply.take() {
            // The caller may have given up waiting; the write stands either way.
            let _ = reply.send(answer);
        }
    }
}
