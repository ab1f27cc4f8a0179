//! Runnel's read scenarios: `$all` in pages and one long stream in pages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel_core::{EventFilter, EventStore, Position, ReadStream, StreamName};

use super::workload::ReadRun;

/// Reads all of `$all` with `read_all(after, all, page)`, in passes until `duration` has
/// passed (at least one pass).
pub async fn read_all(
    store: &dyn EventStore,
    page: usize,
    duration: Duration,
    read: Arc<AtomicU64>,
) -> anyhow::Result<ReadRun> {
    let filter = EventFilter::all();
    let mut events = 0u64;
    let start = Instant::now();
    loop {
        let mut after = Position::START;
        loop {
            let batch = store.read_all(after, &filter, page).await?;
            let Some(last) = batch.last() else { break };
            after = last.position;
            events += batch.len() as u64;
            read.store(events, Ordering::Relaxed);
        }
        if start.elapsed() >= duration {
            break;
        }
    }
    Ok(ReadRun {
        events,
        elapsed: start.elapsed(),
    })
}

/// Reads `stream` forward in pages of `page`, in passes until `duration` has passed (at
/// least one pass).
pub async fn read_stream(
    store: &dyn EventStore,
    stream: &StreamName,
    page: usize,
    duration: Duration,
    read: Arc<AtomicU64>,
) -> anyhow::Result<ReadRun> {
    let mut events = 0u64;
    let start = Instant::now();
    loop {
        let mut from = 1u64;
        loop {
            let batch = store
                .read_stream(stream, ReadStream::forward(page).from(from))
                .await?;
            let Some(last) = batch.last() else { break };
            from = last.revision + 1;
            events += batch.len() as u64;
            read.store(events, Ordering::Relaxed);
            if batch.len() < page {
                break;
            }
        }
        if start.elapsed() >= duration {
            break;
        }
    }
    Ok(ReadRun {
        events,
        elapsed: start.elapsed(),
    })
}
