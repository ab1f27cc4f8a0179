//! Combines concurrent appends into one round trip: one task takes every append waiting
//! (up to [`BATCH_APPENDS_MAX`] / [`BATCH_EVENTS_MAX`]) and sends them as one call of the
//! `append_batch` function, one transaction and one commit. Each append still succeeds or
//! fails on its own (conflicts and duplicate ids are per-append results, not errors).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use runnel_core::{
    AppendResult, EventId, ExpectedRevision, Metadata, NewEvent, Position, StoreError, StreamName,
};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::error_map::map_sqlx;
use crate::options::{BATCH_APPENDS_MAX, BATCH_EVENTS_MAX};

pub(crate) struct AppendRequest {
    pub stream: StreamName,
    pub expected: ExpectedRevision,
    pub events: Vec<NewEvent>,
    pub reply: oneshot::Sender<Result<AppendResult, StoreError>>,
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
    /// Calls of `append_batch` (each one transaction, one commit).
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

pub(crate) struct Batcher {
    pub pool: PgPool,
    pub sql: String,
    pub lock_key: i64,
    pub channel: String,
    pub requests: mpsc::Receiver<AppendRequest>,
    pub stats: Arc<BatchStats>,
}

impl Batcher {
    pub async fn run(mut self) {
        let mut batch: Vec<AppendRequest> = Vec::with_capacity(BATCH_APPENDS_MAX);
        while let Some(first) = self.requests.recv().await {
            let mut events = first.events.len();
            batch.push(first);
            while batch.len() < BATCH_APPENDS_MAX && events < BATCH_EVENTS_MAX {
                match self.requests.try_recv() {
                    Ok(r) => {
                        events += r.events.len();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.execute(&mut batch, events).await;
            debug_assert!(batch.is_empty());
        }
    }

    async fn execute(&self, batch: &mut Vec<AppendRequest>, _event_count: usize) {
        let n = batch.len();
        let mut items: Vec<(StreamName, ExpectedRevision, Vec<NewEvent>)> = batch
            .iter_mut()
            .map(|r| (r.stream.clone(), r.expected, std::mem::take(&mut r.events)))
            .collect();
        let arrays = BatchArrays::build(&mut items);
        let rows = arrays
            .query(&self.sql, self.lock_key, &self.channel)
            .fetch_all(&self.pool)
            .await;
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                let err = match map_sqlx(e) {
                    StoreError::Unavailable(m) => {
                        StoreError::Unavailable(format!("{m}; the append's outcome is unknown"))
                    }
                    other => other,
                };
                tracing::warn!(error = %err, appends = n, "append batch failed");
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(err.clone()));
                }
                return;
            }
        };
        let keys: Vec<(StreamName, ExpectedRevision)> = batch
            .iter()
            .map(|r| (r.stream.clone(), r.expected))
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
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(lock_key)
            .bind(channel)
            .bind(&self.stream_names)
            .bind(&self.categories)
            .bind(&self.kinds)
            .bind(&self.revs)
            .bind(&self.counts)
            .bind(&self.ids)
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
