//! How a SQLite store is opened.

use runnel_core::StoreLimits;

/// Jobs (appends, snapshot and checkpoint writes, units of work) that may wait for the
/// writer before callers feel back-pressure.
pub const WRITER_QUEUE_JOBS_MAX: usize = 4096;
/// Most jobs the writer commits in one transaction (one fsync).
pub const BATCH_JOBS_MAX: usize = 1024;
/// Most events the writer commits in one transaction; a batch closes early past this.
pub const BATCH_EVENTS_MAX: usize = 20_000;
/// Default number of read connections.
pub const READ_CONNECTIONS_DEFAULT: usize = 4;
/// Upper bound for read connections.
pub const READ_CONNECTIONS_MAX: usize = 64;
/// How long a connection waits for another process's lock on the file before failing.
pub const BUSY_TIMEOUT_MS: u64 = 5_000;

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// The default: every commit fsyncs the write-ahead log before any append in it is
    /// acknowledged (`synchronous=FULL`). Acknowledged appends survive `kill -9` and power
    /// loss.
    #[default]
    Full,
    /// Opt-in: commits are not fsynced (`synchronous=NORMAL`); the log is synced at WAL
    /// checkpoints. Acknowledged appends survive a process crash (`kill -9`) but the last
    /// commits may be lost on power loss or an OS crash. The database is never corrupted.
    Relaxed,
}

/// Options for [`crate::SqliteStore::open_with`].
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    pub durability: Durability,
    pub limits: StoreLimits,
    /// Read connections (reads run on these, never behind the writer).
    pub read_connections: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::Full,
            limits: StoreLimits::default(),
            read_connections: READ_CONNECTIONS_DEFAULT,
        }
    }
}
