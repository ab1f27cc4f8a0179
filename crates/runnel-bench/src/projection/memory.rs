//! `runnel-bench projection --memory`: does a rebuild's memory stay flat as the history
//! grows? Events are appended over a fixed set of streams up to each checkpoint (100,000,
//! then ten times as many, …, the total), and at each a fresh projection rebuilds from the
//! start of `$all`; the peak resident set during the rebuild and the resident set after
//! it are read. The read model has the same rows at every checkpoint (every stream has an
//! event by the first), so only the history's length changes.

use std::time::Duration;

use serde_json::json;

use super::backend::{Backend, SideRun};
use super::workload::Totals;
use super::Settings;
use crate::progress::group_digits;
use crate::rss;

/// How long the process idles after a rebuild before its memory is read (buffers freed,
/// the allocator settled).
pub const SETTLE: Duration = Duration::from_millis(500);
/// The first checkpoint of a full run: the issue compares the resident set of a rebuild
/// of this many events with that of the total.
pub const FIRST_CHECKPOINT: u64 = 100_000;

/// One checkpoint.
pub struct Point {
    /// Events in `$all`.
    pub events: u64,
    /// Rows of the read model.
    pub rows: u64,
    /// Runnel's rebuild (its peak RSS is the peak during the rebuild).
    pub runnel: SideRun,
    /// The loop's rebuild of the same history (none with `--runnel-only`).
    pub baseline: Option<SideRun>,
    /// RSS just before Runnel's rebuild (what the appends before it left).
    pub rss_before: Option<u64>,
    /// Anonymous RSS (heap, stacks) just before the rebuild and at its end.
    pub anon_before: Option<u64>,
    pub anon_after: Option<u64>,
    /// RSS after Runnel's rebuild, once settled.
    pub rss_after: Option<u64>,
    /// Bytes SQLite's allocator holds after the rebuild (on SQLite).
    pub sqlite_heap: Option<u64>,
}

impl Point {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "events": self.events,
            "rows": self.rows,
            "runnel_seconds": self.runnel.elapsed.as_secs_f64(),
            "runnel_events_per_second": self.runnel.per_second(),
            "baseline_events_per_second": self.baseline.as_ref().map(SideRun::per_second),
            "rss_before_bytes": self.rss_before,
            "peak_rss_bytes": self.runnel.peak_rss_bytes,
            "rebuild_growth_bytes": self.growth(),
            "anon_rss_before_bytes": self.anon_before,
            "anon_rss_after_bytes": self.anon_after,
            "rss_after_bytes": self.rss_after,
            "sqlite_heap_bytes": self.sqlite_heap,
        })
    }
}

impl Point {
    /// How far the rebuild raised the resident set above where it started.
    pub fn growth(&self) -> Option<u64> {
        Some(self.runnel.peak_rss_bytes?.saturating_sub(self.rss_before?))
    }
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

/// Runs the checkpoints on `backend`.
pub async fn run(
    label: &str,
    backend: &Backend,
    checkpoints: &[u64],
    s: &Settings,
) -> anyhow::Result<Vec<Point>> {
    let mut points = Vec::with_capacity(checkpoints.len());
    let mut appended = 0;
    for (i, &to) in checkpoints.iter().enumerate() {
        backend
            .seed(
                appended,
                to,
                s.memory_streams,
                &format!(
                    "{label}: appending up to {} events",
                    group_digits(to as f64)
                ),
            )
            .await?;
        appended = to;
        backend.warm_up().await?;
        let expected = Totals::expected(to, s.memory_streams);
        let name = format!("bench_memory_{}", i + 1);
        tokio::time::sleep(SETTLE).await;
        let (rss_before, anon_before) = (rss::rss_bytes(), rss::anon_rss_bytes());
        let runnel = backend
            .runnel_rebuild(
                &name,
                s.batch,
                to,
                &format!(
                    "{label}: Runnel rebuilds {} events",
                    group_digits(to as f64)
                ),
            )
            .await?;
        backend.check(&name, expected, "Runnel").await?;
        let anon_after = rss::anon_rss_bytes();
        tokio::time::sleep(SETTLE).await;
        let rss_after = rss::rss_bytes();
        let sqlite_heap = backend
            .sqlite_store()
            .map(|_| crate::saga::sqlite_heap_bytes());
        let baseline = if s.runnel_only {
            None
        } else {
            let table = format!("raw_memory_{}", i + 1);
            let run = backend
                .raw_rebuild(
                    &table,
                    s.batch,
                    to,
                    &format!(
                        "{label}: the loop rebuilds {} events",
                        group_digits(to as f64)
                    ),
                )
                .await?;
            backend.check(&table, expected, "the loop").await?;
            Some(run)
        };
        points.push(Point {
            events: to,
            rows: expected.rows as u64,
            runnel,
            baseline,
            rss_before,
            anon_before,
            anon_after,
            rss_after,
            sqlite_heap,
        });
    }
    Ok(points)
}

/// Whether the last rebuild raised the resident set further than the first did, beyond
/// the noise allowance (`None` when RSS is not readable here).
pub fn grew(points: &[Point]) -> Option<bool> {
    let first = points.first()?.growth()?;
    let last = points.last()?.growth()?;
    Some(exceeds(first, last))
}

/// Allowance for the allocator's and the page cache's noise: 10% or 4 MiB, whichever is
/// larger. A leak proportional to the history (ten times the events) is far above it.
fn exceeds(first: u64, last: u64) -> bool {
    let allowance = (first / 10).max(4 << 20);
    last > first + allowance
}

/// The verdict line: how far the last rebuild raised the resident set against the first,
/// and the peaks themselves.
pub fn verdict(store: &str, points: &[Point]) -> String {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return format!("{store}: no checkpoint");
    };
    let (Some(a), Some(b), Some(peak_a), Some(peak_b)) = (
        first.growth(),
        last.growth(),
        first.runnel.peak_rss_bytes,
        last.runnel.peak_rss_bytes,
    ) else {
        return format!("{store}: the resident set is not readable here (no /proc/self/status)");
    };
    let verdict = if exceeds(a, b) {
        "grew with the history ❌"
    } else {
        "flat (within 10% or 4 MiB) ✅"
    };
    format!(
        "{store}: the rebuild of {} events raised RSS by {} (peak {}), the rebuild of {} by {} \
         (peak {}): {verdict}",
        group_digits(last.events as f64),
        rss::mib(b),
        rss::mib(peak_b),
        group_digits(first.events as f64),
        rss::mib(a),
        rss::mib(peak_a),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_grow_tenfold_up_to_the_total() {
        assert_eq!(checkpoints(100_000, 1_000_000), vec![100_000, 1_000_000]);
        assert_eq!(
            checkpoints(100_000, 2_500_000),
            vec![100_000, 1_000_000, 2_500_000]
        );
        assert_eq!(checkpoints(1_000, 1_000), vec![1_000]);
        assert_eq!(checkpoints(500, 200), vec![200]);
    }

    #[test]
    fn growth_beyond_the_allowance_is_reported() {
        let mib = |n: u64| n << 20;
        assert!(!exceeds(mib(30), mib(30)));
        assert!(!exceeds(mib(30), mib(33)), "within 4 MiB");
        assert!(!exceeds(mib(100), mib(109)), "within 10%");
        assert!(exceeds(mib(30), mib(40)));
        assert!(!exceeds(mib(40), mib(30)), "shrinking is fine");
    }
}
