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

    async fn execute(&self, batch: &mut Vec<AppendRequest>, event_count: usize) {
        let n = batch.len();
        let mut stream_names = Vec::with_capacity(n);
        let mut categories = Vec::with_capacity(n);
        let mut kinds: Vec<i16> = Vec::with_capacity(n);
        let mut revs: Vec<i64> = Vec::with_capacity(n);
        let mut counts: Vec<i32> = Vec::with_capacity(n);
        let mut ids: Vec<Uuid> = Vec::with_capacity(event_count);
        let mut types = Vec::with_capacity(event_count);
        let mut versions: Vec<i32> = Vec::with_capacity(event_count);
        let mut content_types = Vec::with_capacity(event_count);
        let mut datas: Vec<Vec<u8>> = Vec::with_capacity(event_count);
        let mut metas: Vec<Option<serde_json::Value>> = Vec::with_capacity(event_count);
        for r in batch.iter_mut() {
            stream_names.push(r.stream.as_str().to_string());
            categories.push(r.stream.category().to_string());
            let (kind, rev) = match r.expected {
                ExpectedRevision::Any => (0, 0),
                ExpectedRevision::NoStream => (1, 0),
                ExpectedRevision::StreamExists => (2, 0),
                ExpectedRevision::Exact(v) => (3, v.min(i64::MAX as u64) as i64),
            };
            kinds.push(kind);
            revs.push(rev);
            counts.push(r.events.len() as i32);
            for e in r.events.drain(..) {
                ids.push(e.id.0);
                types.push(e.event_type);
                versions.push(e.schema_version as i32);
                content_types.push(e.content_type);
                datas.push(e.data);
                metas.push(if e.metadata == Metadata::default() {
                    None
                } else {
                    serde_json::to_value(&e.metadata).ok()
                });
            }
        }
        let rows: Result<Vec<(i32, i16, Option<i64>, Option<i64>, Option<String>)>, _> =
            sqlx::query_as(sqlx::AssertSqlSafe(self.sql.as_str()))
                .bind(self.lock_key)
                .bind(&self.channel)
                .bind(&stream_names)
                .bind(&categories)
                .bind(&kinds)
                .bind(&revs)
                .bind(&counts)
                .bind(&ids)
                .bind(&types)
                .bind(&versions)
                .bind(&content_types)
                .bind(&datas)
                .bind(&metas)
                .fetch_all(&self.pool)
                .await;
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                let err = match map_sqlx(e) {
                    StoreError::Unavailable(m) => StoreError::Unavailable(format!(
                        "{m}; the append's outcome is unknown"
                    )),
                    other => other,
                };
                tracing::warn!(error = %err, appends = n, "append batch failed");
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(err.clone()));
                }
                return;
            }
        };
        let mut results: Vec<Option<Result<AppendResult, StoreError>>> = vec![None; n];
        let mut appended_events = 0u64;
        let mut appended = 0u64;
        for (idx, status, revision, pos, detail) in rows {
            let i = (idx - 1) as usize;
            let Some(req) = batch.get(i) else { continue };
            let result = match status {
                0 | 1 => match (revision, pos) {
                    (Some(rev), Some(p)) => {
                        if status == 0 {
                            appended += 1;
                            appended_events += counts[i] as u64;
                        }
                        Ok(AppendResult {
                            next_expected_revision: rev as u64,
                            position: Position(p as u64),
                        })
                    }
                    _ => Err(StoreError::Corrupt("append_batch returned no position".into())),
                },
                2 => Err(StoreError::Conflict {
                    stream: req.stream.to_string(),
                    expected: req.expected,
                    actual: revision.map(|r| r as u64),
                }),
                3 => {
                    let detail = detail.unwrap_or_default();
                    let (id, stream) = detail.split_once(' ').unwrap_or((&detail, ""));
                    Err(StoreError::DuplicateEventId {
                        event_id: EventId(Uuid::parse_str(id).unwrap_or_default()),
                        existing_stream: stream.to_string(),
                    })
                }
                other => Err(StoreError::Corrupt(format!("append_batch status {other}"))),
            };
            results[i] = Some(result);
        }
        self.stats.appends.fetch_add(appended, Ordering::Relaxed);
        self.stats.events.fetch_add(appended_events, Ordering::Relaxed);
        for (r, result) in batch.drain(..).zip(results) {
            let _ = r.reply.send(result.unwrap_or_else(|| {
                Err(StoreError::Corrupt("append_batch skipped an append".into()))
            }));
        }
    }
}
