//! The disk's fsync rate: the physical limit for serial durable commits.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Bytes written before each fdatasync (one SQLite page on most systems).
pub const FSYNC_WRITE_BYTES: usize = 4096;
/// The probe file's size. Writes cycle through it, overwriting allocated blocks as SQLite
/// does with its reused write-ahead log, so each fdatasync flushes data only (appending
/// would also flush the file's growing size, a second journal write per sync).
const PROBE_FILE_BYTES: u64 = 1024 * 1024;

/// Fsyncs done and the time they took.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsyncRun {
    pub syncs: u64,
    pub elapsed: Duration,
}

impl FsyncRun {
    pub fn per_second(&self) -> f64 {
        self.syncs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Two runs as one.
    pub fn plus(self, other: FsyncRun) -> FsyncRun {
        FsyncRun {
            syncs: self.syncs + other.syncs,
            elapsed: self.elapsed + other.elapsed,
        }
    }
}

/// Overwrites 4 KiB and calls `sync_data` (fdatasync) in a loop for `duration`. `count`
/// tracks progress.
pub fn fsync_rate(
    dir: &Path,
    duration: Duration,
    count: Arc<AtomicU64>,
) -> anyhow::Result<FsyncRun> {
    let path = dir.join("fsync-probe.bin");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let io = |e: std::io::Error| {
        anyhow::Error::new(e).context(format!("cannot write and sync {}", path.display()))
    };
    // Allocate every block first, durably.
    file.write_all_at(&vec![0u8; PROBE_FILE_BYTES as usize], 0)
        .map_err(io)?;
    file.sync_all().map_err(io)?;
    let block = vec![0x5au8; FSYNC_WRITE_BYTES];
    let mut offset = 0u64;
    let mut syncs = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        file.write_all_at(&block, offset).map_err(io)?;
        file.sync_data().map_err(io)?;
        offset = (offset + FSYNC_WRITE_BYTES as u64) % PROBE_FILE_BYTES;
        syncs += 1;
        count.store(syncs, Ordering::Relaxed);
    }
    let elapsed = start.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(FsyncRun { syncs, elapsed })
}

/// Runs the fsync probe for `duration` under a spinner.
pub async fn probe(dir: &Path, duration: Duration) -> anyhow::Result<FsyncRun> {
    let dir = dir.to_path_buf();
    crate::scenario::blocking("disk fsync rate", "fsyncs", move |count| {
        fsync_rate(&dir, duration, count)
    })
    .await
}
