//! `runnel-bench saga --memory`: does a long-running saga runtime keep its memory flat as
//! finished instances pile up? One runtime with retention off (finished instances stay in
//! the store) completes instances up to each checkpoint (10,000, 100,000, …, the total),
//! stops there, and the process's resident set is read once the runtime is idle.

use std::sync::Arc;
use std::time::Duration;

use runnel_core::processor::ProcessorStore;

use super::runtime::{verify_completed, Driver};
use super::Settings;
use crate::rss;
use crate::scenario::counted;

/// How long the runtime idles after a checkpoint before its memory is read (in-flight
/// buffers freed, the allocator settled).
pub const SETTLE: Duration = Duration::from_millis(500);
/// The first checkpoint of a full run: the issue compares the resident set after this
/// many finished instances with the one after the total.
pub const FIRST_CHECKPOINT: u64 = 10_000;

/// What the process looked like at one checkpoint.
pub struct Point {
    /// Finished instances in the store.
    pub finished: u64,
    /// Completed instances per second since the previous checkpoint.
    pub rate: f64,
    pub rss: Option<u64>,
    pub anon_rss: Option<u64>,
    /// Peak resident set since the previous checkpoint.
    pub peak: Option<u64>,
    /// Bytes SQLite's allocator holds (page caches, statements), on SQLite.
    pub sqlite_heap: Option<u64>,
}

/// The checkpoints from `first` to `total`: `first`, ten times that, …, then `total`.
pub fn checkpoints(first: u64, total: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut c = first.min(total);
    while c < total {
        out.push(c);
        c = c.saturating_mul(10);
    }
    out.push(total);
    out
}

/// Bytes held by SQLite's allocator in this process.
pub fn sqlite_heap_bytes() -> u64 {
    // SAFETY: sqlite3_memory_used takes no arguments and only reads SQLite's allocator
    // statistics, which SQLite guards with its own mutex.
    let used = unsafe { runnel_sqlite::rusqlite::ffi::sqlite3_memory_used() };
    used.max(0) as u64
}

/// Runs the checkpoints on `store` with the run's clients and runtimes. `sqlite`: also
/// read SQLite's heap.
pub async fn run(
    label: &str,
    store: Arc<dyn ProcessorStore>,
    checkpoints: &[u64],
    settings: &Settings,
    sqlite: bool,
) -> anyhow::Result<Vec<Point>> {
    let clients = settings.clients;
    let driver = Driver::start(Arc::clone(&store), settings.runtimes, clients)?;
    let mut points = Vec::with_capacity(checkpoints.len());
    let mut from = 0;
    for &to in checkpoints {
        rss::reset_peak();
        let (elapsed, _) = counted(
            &format!("{label}: memory run to {to} finished instances"),
            "instances",
            |count| driver.complete("m", from, to, clients, count),
        )
        .await?;
        verify_completed(&*store, to).await?;
        tokio::time::sleep(SETTLE).await;
        points.push(Point {
            finished: to,
            rate: (to - from) as f64 / elapsed.as_secs_f64().max(1e-9),
            rss: rss::rss_bytes(),
            anon_rss: rss::anon_rss_bytes(),
            peak: rss::peak_rss_bytes(),
            sqlite_heap: sqlite.then(sqlite_heap_bytes),
        });
        from = to;
    }
    driver.stop().await?;
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_grow_tenfold_up_to_the_total() {
        assert_eq!(
            checkpoints(10_000, 1_000_000),
            vec![10_000, 100_000, 1_000_000]
        );
        assert_eq!(checkpoints(10_000, 250_000), vec![10_000, 100_000, 250_000]);
        assert_eq!(checkpoints(10_000, 10_000), vec![10_000]);
        assert_eq!(checkpoints(500, 200), vec![200]);
    }
}
