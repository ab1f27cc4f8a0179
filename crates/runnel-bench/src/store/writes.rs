//! Runnel's write scenarios: N concurrent writers, each appending K events per append to
//! its own streams.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use runnel_core::{EventStore, ExpectedRevision, NewEvent, StreamName, CONTENT_TYPE_JSON};
use runnel_sqlite::SqliteStore;

use super::workload::{stream_name, Budget, WriteRun, EVENT_TYPE, PAYLOAD};

/// The shape of a write scenario.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub writers: usize,
    pub events_per_append: usize,
    /// A writer moves on to a new stream once its stream holds this many events.
    pub stream_len_max: u64,
    /// Each writer's first stream index (rounds of one scenario use disjoint streams).
    pub first_stream_index: u64,
}

/// Runs the scenario on `store`; `written` tracks progress.
pub async fn run(
    store: &SqliteStore,
    shape: Shape,
    budget: Budget,
    written: Arc<AtomicU64>,
) -> anyhow::Result<WriteRun> {
    let before = store.writer_stats();
    let reserved = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(shape.writers);
    for writer in 0..shape.writers {
        let store = store.clone();
        let reserved = Arc::clone(&reserved);
        let written = Arc::clone(&written);
        tasks.push(tokio::spawn(async move {
            writer_loop(store, writer, shape, budget, start, reserved, written).await
        }));
    }
    for task in tasks {
        task.await.context("a benchmark writer panicked")??;
    }
    let elapsed = start.elapsed();
    let after = store.writer_stats();
    Ok(WriteRun {
        events: written.load(Ordering::Relaxed),
        elapsed,
        commits: after.commits - before.commits,
    })
}

async fn writer_loop(
    store: SqliteStore,
    writer: usize,
    shape: Shape,
    budget: Budget,
    start: Instant,
    reserved: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let per_append = shape.events_per_append as u64;
    let mut stream_index = shape.first_stream_index;
    let mut stream = StreamName::new(stream_name(writer, stream_index))?;
    let mut revision = 0u64;
    loop {
        if start.elapsed() >= budget.duration
            && written.load(Ordering::Relaxed) >= budget.events_min
        {
            return Ok(());
        }
        if reserved.fetch_add(per_append, Ordering::Relaxed) + per_append > budget.events_max {
            return Ok(());
        }
        if revision + per_append > shape.stream_len_max {
            stream_index += 1;
            stream = StreamName::new(stream_name(writer, stream_index))?;
            revision = 0;
        }
        let events: Vec<NewEvent> = (0..shape.events_per_append)
            .map(|_| NewEvent::bytes(EVENT_TYPE, CONTENT_TYPE_JSON, PAYLOAD.to_vec()))
            .collect();
        let expected = ExpectedRevision::from_current((revision > 0).then_some(revision));
        let result = store
            .append(&stream, expected, events)
            .await
            .with_context(|| format!("benchmark append to {stream} failed"))?;
        revision = result.next_expected_revision;
        written.fetch_add(per_append, Ordering::Relaxed);
    }
}
