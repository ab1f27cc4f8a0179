//! Combines concurrent appends into one round trip, with no hand-off for a lone append.
//!
//! One append runs at a time per store (they serialize on the append lock in the database
//! anyway). An append that finds none running runs itself, on the caller's task, through
//! `append_one`: the lone writer pays no task switch. Appends that arrive while one runs
//! queue up; when it ends, the batcher task takes every append waiting (up to
//! [`BATCH_APPENDS_MAX`] / [`BATCH_EVENTS_MAX`]) and sends them as one call of `append_batch`,
//! one transaction and one commit, and keeps doing so until the queue is empty. Each append
//! still succeeds or fails on its own (conflicts and duplicate ids are per-append results,
//! not errors).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use runnel_core::{
    AppendResult, EventId, ExpectedRevision, Metadata, NewEvent, Position, StoreError, StreamName,
};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection as _;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::error_map::map_sqlx;
use crate::options::{APPEND_QUEUE_MAX, BATCH_APPENDS_MAX, BATCH_EVENTS_MAX};

struct AppendRequest {
    stream: StreamName,
    expected: ExpectedRevision,
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<AppendResult, StoreError>>,
    /// A place in the bounded queue, given back when the batcher takes the request.
    _room: OwnedSemaphorePermit,
}

/// Batcher counters, for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct BatchStats {
    pub round_trips: AtomicU64,
    pub appends: AtomicU64,
    pub events: AtomicU64,
}

/// A copy of the batcher counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStatsSnapshot {
    /// Calls of `append_one` or `append_batch` (each one transaction, one commit).
    pub round_trips: u64,
    pub appends: u64,
    pub events: u64,
}

impl BatchStats {
    pub fn snapshot(&self) -> BatchStatsSnapshot {
        BatchStatsSnapshot {
            round_trips: self.round_trips.load(Ordering::Relaxed),
            appends: self.appends.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
        }
    }
}

/// Who is sending appends to the database right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Runner {
    Nobody,
    /// An append running itself on its caller's task.
    Caller,
    /// The batcher task, draining the queue.
    Batcher,
}

struct State {
    queue: VecDeque<AppendRequest>,
    runner: Runner,
}

/// The SQL both paths send, and where they send it.
pub(crate) struct AppendSql {
    /// For the appender's own connection: one runner at a time needs only one, and a pooled
    /// connection would cost a task spawn per append to go back to the pool.
    pub connect: PgConnectOptions,
    pub connect_timeout: Duration,
    /// `append_batch($1 … $13)`.
    pub batch: String,
    /// `append_one($1 … $12)`.
    pub one: String,
    pub lock_key: i64,
    pub channel: String,
}

pub(crate) struct Appender {
    sql: AppendSql,
    /// The connection appends go through; `None` until first use and after an error (the
    /// next append reconnects). Only the current runner locks it.
    conn: tokio::sync::Mutex<Option<PgConnection>>,
    state: Mutex<State>,
    /// Wakes the batcher task when a caller hands the queue over.
    handed_over: Notify,
    /// Bounds the queue at [`APPEND_QUEUE_MAX`]: callers past it wait (back-pressure).
    room: Arc<Semaphore>,
    pub stats: Arc<BatchStats>,
}

impl Appender {
    pub fn new(sql: AppendSql) -> Arc<Self> {
        Arc::new(Appender {
            sql,
            conn: tokio::sync::Mutex::new(None),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                runner: Runner::Nobody,
            }),
            handed_over: Notify::new(),
            room: Arc::new(Semaphore::new(APPEND_QUEUE_MAX)),
            stats: Arc::new(BatchStats::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock is never held across an await or user code, so poisoning cannot leave the
        // state half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends, running the append itself when nothing else is running, else queueing it for
    /// the batcher.
    pub async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let room = Arc::clone(&self.room)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let answer = {
            let mut state = self.state();
            if state.runner == Runner::Nobody {
                state.runner = Runner::Caller;
                Err(events)
            } else {
                let (reply, answer) = oneshot::channel();
                state.queue.push_back(AppendRequest {
                    stream: stream.clone(),
                    expected,
                    events,
                    reply,
                    _room: room,
                });
                Ok(answer)
            }
        };
        match answer {
            Ok(answer) => answer.await.map_err(|_| {
                StoreError::Unavailable("the append batcher stopped; the outcome is unknown".into())
            })?,
            Err(events) => {
                // Hands the queue on when this append ends, also if the caller drops it.
                let _turn = CallerTurn(self);
                self.run_one(stream, expected, events).await
            }
        }
    }

    /// Appends waiting in the queue.
    pub fn queued(&self) -> usize {
        self.state().queue.len()
    }

    /// Ends a caller's turn: the batcher takes over if appends queued up meanwhile.
    fn caller_done(&self) {
        let mut state = self.state();
        debug_assert_eq!(state.runner, Runner::Caller);
        if state.queue.is_empty() {
            state.runner = Runner::Nobody;
        } else {
            state.runner = Runner::Batcher;
            drop(state);
            self.handed_over.notify_one();
        }
    }

    /// The batcher task: drains the queue each time a caller hands it over.
    pub async fn run_batcher(self: Arc<Self>) {
        let mut batch: Vec<AppendRequest> = Vec::with_capacity(BATCH_APPENDS_MAX);
        loop {
            self.handed_over.notified().await;
            loop {
                {
                    let mut state = self.state();
                    if state.runner != Runner::Batcher {
                        break;
                    }
                    let mut events = 0;
                    while batch.len() < BATCH_APPENDS_MAX && events < BATCH_EVENTS_MAX {
                        let Some(r) = state.queue.pop_front() else {
                            break;
                        };
                        events += r.events.len();
                        batch.push(r);
                    }
                    if batch.is_empty() {
                        state.runner = Runner::Nobody;
                        break;
                    }
                }
                self.run_batch(&mut batch).await;
                debug_assert!(batch.is_empty());
            }
        }
    }

    async fn run_one(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let count = events.len() as u64;
        let key = [(stream.clone(), expected)];
        let arrays = BatchArrays::build(&mut [(stream.clone(), expected, events)]);
        let mut slot = self.conn.lock().await;
        let conn = self.connection(&mut slot).await?;
        let rows = arrays
            .query_one(&self.sql.one, self.sql.lock_key, &self.sql.channel)
            .fetch_all(conn)
            .await;
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        let result = match rows {
            Ok(rows) => results_from_rows(rows, &key)
                .pop()
                .flatten()
                .unwrap_or_else(|| Err(StoreError::Corrupt("append_one returned no row".into()))),
            Err(e) => {
                *slot = None;
                Err(outcome_unknown(e, 1))
            }
        };
        if result.is_ok() {
            self.stats.appends.fetch_add(1, Ordering::Relaxed);
            self.stats.events.fetch_add(count, Ordering::Relaxed);
        }
        result
    }

    async fn run_batch(&self, batch: &mut Vec<AppendRequest>) {
        let n = batch.len();
        let mut items: Vec<(StreamName, ExpectedRevision, Vec<NewEvent>)> = batch
            .iter_mut()
            .map(|r| (r.stream.clone(), r.expected, std::mem::take(&mut r.events)))
            .collect();
        let arrays = BatchArrays::build(&mut items);
        let mut slot = self.conn.lock().await;
        let rows = match self.connection(&mut slot).await {
            Ok(conn) => {
                let rows = if n == 1 {
                    arrays.query_one(&self.sql.one, self.sql.lock_key, &self.sql.channel)
                } else {
                    arrays.query(&self.sql.batch, self.sql.lock_key, &self.sql.channel)
                }
                .fetch_all(conn)
                .await;
                self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
                rows.map_err(|e| {
                    *slot = None;
                    outcome_unknown(e, n)
                })
            }
            Err(e) => Err(e),
        };
        drop(slot);
        let rows = match rows {
            Ok(rows) => rows,
            Err(err) => {
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(err.clone()));
                }
                return;
            }
        };
        let keys: Vec<(StreamName, ExpectedRevision)> = items
            .into_iter()
            .map(|(stream, expected, _)| (stream, expected))
            .collect();
        let results = results_from_rows(rows, &keys);
        for (i, (r, result)) in batch.drain(..).zip(results).enumerate() {
            if let Some(Ok(_)) = &result {
                self.stats.appends.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .events
                    .fetch_add(arrays.counts[i] as u64, Ordering::Relaxed);
            }
            let _ = r.reply.send(result.unwrap_or_else(|| {
                Err(StoreError::Corrupt("append_batch skipped an append".into()))
            }));
        }
    }
}

impl Appender {
    /// The appender's connection, opened if there is none. A failure to connect means
    /// nothing was sent: the appends were not written.
    async fn connection<'a>(
        &self,
        slot: &'a mut Option<PgConnection>,
    ) -> Result<&'a mut PgConnection, StoreError> {
        if slot.is_none() {
            let conn = tokio::time::timeout(
                self.sql.connect_timeout,
                PgConnection::connect_with(&self.sql.connect),
            )
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "connecting to PostgreSQL timed out after {:?}; nothing was appended",
                    self.sql.connect_timeout
                ))
            })?
            .map_err(map_sqlx)?;
            *slot = Some(conn);
        }
        Ok(slot.as_mut().expect("connected just above"))
    }
}

/// A caller's turn at running appends; ending it (also by drop) hands the queue on.
struct CallerTurn<'a>(&'a Appender);

impl Drop for CallerTurn<'_> {
    fn drop(&mut self) {
        self.0.caller_done();
    }
}

/// A failed round trip: the appends in it may or may not have committed.
fn outcome_unknown(e: sqlx::Error, appends: usize) -> StoreError {
    let err = match map_sqlx(e) {
        StoreError::Unavailable(m) => {
            StoreError::Unavailable(format!("{m}; the append's outcome is unknown"))
        }
        other => other,
    };
    tracing::warn!(error = %err, appends, "append round trip failed");
    err
}

/// The column arrays `append_batch` takes: per append, then per event.
pub(crate) struct BatchArrays {
    stream_names: Vec<String>,
    categories: Vec<String>,
    kinds: Vec<i16>,
    revs: Vec<i64>,
    pub counts: Vec<i32>,
    ids: Vec<Uuid>,
    types: Vec<String>,
    versions: Vec<i32>,
    content_types: Vec<String>,
    datas: Vec<Vec<u8>>,
    metas: Vec<Option<serde_json::Value>>,
}

type BatchRow = (i32, i16, Option<i64>, Option<i64>, Option<String>);

impl BatchArrays {
    /// Moves the events out of `items` into column arrays.
    pub fn build(items: &mut [(StreamName, ExpectedRevision, Vec<NewEvent>)]) -> Self {
        let n = items.len();
        let events: usize = items.iter().map(|i| i.2.len()).sum();
        let mut a = BatchArrays {
            stream_names: Vec::with_capacity(n),
            categories: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            revs: Vec::with_capacity(n),
            counts: Vec::with_capacity(n),
            ids: Vec::with_capacity(events),
            types: Vec::with_capacity(events),
            versions: Vec::with_capacity(events),
            content_types: Vec::with_capacity(events),
            datas: Vec::with_capacity(events),
            metas: Vec::with_capacity(events),
        };
        for (stream, expected, evs) in items.iter_mut() {
            a.stream_names.push(stream.as_str().to_string());
            a.categories.push(stream.category().to_string());
            let (kind, rev) = match *expected {
                ExpectedRevision::Any => (0, 0),
                ExpectedRevision::NoStream => (1, 0),
                ExpectedRevision::StreamExists => (2, 0),
                ExpectedRevision::Exact(v) => (3, v.min(i64::MAX as u64) as i64),
            };
            a.kinds.push(kind);
            a.revs.push(rev);
            a.counts.push(evs.len() as i32);
            for e in evs.drain(..) {
                a.ids.push(e.id.0);
                a.types.push(e.event_type);
                a.versions.push(e.schema_version as i32);
                a.content_types.push(e.content_type);
                a.datas.push(e.data);
                a.metas.push(if e.metadata == Metadata::default() {
                    None
                } else {
                    serde_json::to_value(&e.metadata).ok()
                });
            }
        }
        a
    }

    pub fn query<'a>(
        &'a self,
        sql: &'a str,
        lock_key: i64,
        channel: &'a str,
    ) -> sqlx::query::QueryAs<'a, sqlx::Postgres, BatchRow, sqlx::postgres::PgArguments> {
        let q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(lock_key)
            .bind(channel)
            .bind(&self.stream_names)
            .bind(&self.categories)
            .bind(&self.kinds)
            .bind(&self.revs)
            .bind(&self.counts);
        self.bind_events(q)
    }

    /// `append_one`'s call for arrays built from exactly one append.
    pub fn query_one<'a>(
        &'a self,
        sql: &'a str,
        lock_key: i64,
        channel: &'a str,
    ) -> sqlx::query::QueryAs<'a, sqlx::Postgres, BatchRow, sqlx::postgres::PgArguments> {
        debug_assert_eq!(self.stream_names.len(), 1);
        let q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(lock_key)
            .bind(channel)
            .bind(&self.stream_names[0])
            .bind(&self.categories[0])
            .bind(self.kinds[0])
            .bind(self.revs[0]);
        self.bind_events(q)
    }

    /// The per-event arrays, the last six parameters of both functions.
    fn bind_events<'a>(
        &'a self,
        q: sqlx::query::QueryAs<'a, sqlx::Postgres, BatchRow, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'a, sqlx::Postgres, BatchRow, sqlx::postgres::PgArguments> {
        q.bind(&self.ids)
            .bind(&self.types)
            .bind(&self.versions)
            .bind(&self.content_types)
            .bind(&self.datas)
            .bind(&self.metas)
    }
}

/// Turns `append_batch` rows into one result per append (in input order).
pub(crate) fn results_from_rows(
    rows: Vec<BatchRow>,
    keys: &[(StreamName, ExpectedRevision)],
) -> Vec<Option<Result<AppendResult, StoreError>>> {
    let mut results: Vec<Option<Result<AppendResult, StoreError>>> = vec![None; keys.len()];
    for (idx, status, revision, pos, detail) in rows {
        let i = (idx - 1) as usize;
        let Some((stream, expected)) = keys.get(i) else {
            continue;
        };
        let result = match status {
            0 | 1 => match (revision, pos) {
                (Some(rev), Some(p)) => Ok(AppendResult {
                    next_expected_revision: rev as u64,
                    position: Position(p as u64),
                }),
                _ => Err(StoreError::Corrupt(
                    "append_batch returned no position".into(),
                )),
            },
            2 => Err(StoreError::Conflict {
                stream: stream.to_string(),
                expected: *expected,
                actual: revision.map(|r| r as u64),
            }),
            3 => {
                let detail = detail.unwrap_or_default();
                let (id, existing) = detail.split_once(' ').unwrap_or((&detail, ""));
                Err(StoreError::DuplicateEventId {
                    event_id: EventId(Uuid::parse_str(id).unwrap_or_default()),
                    existing_stream: existing.to_string(),
                })
            }
            other => Err(StoreError::Corrupt(format!("append_batch status {other}"))),
        };
        results[i] = Some(result);
    }
    results
}
