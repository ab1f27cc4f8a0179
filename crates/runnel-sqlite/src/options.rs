//! How a SQLite store is opened, and the `sqlite:PATH?…` URL that says so.

use std::path::PathBuf;

use runnel_core::config::{shared, split_query, ConfigError, UrlQuery};
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
/// Largest event payload limit accepted for `max_payload_bytes`.
pub const PAYLOAD_BYTES_MAX: usize = 256 * 1024 * 1024;
/// The URL scheme (and the name in configuration errors).
const SCHEME: &str = "sqlite";

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

impl SqliteOptions {
    /// Reads a store URL: `sqlite:PATH` or `sqlite://PATH` (so `sqlite:///abs/path` is an
    /// absolute path), optionally followed by `?` and parameters:
    ///
    /// | parameter | meaning | default |
    /// |---|---|---|
    /// | `durability` | `full` (fsync before every acknowledgement) or `relaxed` (survives `kill -9`, may lose the last commits on power loss) | `full` |
    /// | `read_connections` | read connections, 1..=64 | 4 |
    /// | `max_payload_bytes` | largest payload of one event | 1 MiB |
    ///
    /// The path is taken as written (no percent-decoding). `:memory:` and an empty path are
    /// refused: the store needs a file its writer and readers share. Unknown parameters are
    /// refused with the list of valid ones (see `docs/configuration.md`).
    ///
    /// ```
    /// use std::path::PathBuf;
    /// use runnel_sqlite::{Durability, SqliteOptions};
    ///
    /// let (path, options) = SqliteOptions::from_url("sqlite:data/app.db?durability=relaxed")?;
    /// assert_eq!(path, PathBuf::from("data/app.db"));
    /// assert_eq!(options.durability, Durability::Relaxed);
    /// assert!(SqliteOptions::from_url("sqlite::memory:").is_err());
    /// # Ok::<(), runnel_core::ConfigError>(())
    /// ```
    pub fn from_url(url: &str) -> Result<(PathBuf, SqliteOptions), ConfigError> {
        let url = url.trim();
        let rest = url.strip_prefix("sqlite:").ok_or_else(|| {
            ConfigError::invalid_url(
                SCHEME,
                "a SQLite store URL starts with sqlite: (sqlite:PATH)",
            )
        })?;
        let (path, query) = split_query(rest);
        // `sqlite:///abs/path` and `sqlite://rel/path` are common spellings too.
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(ConfigError::invalid_url(
                SCHEME,
                "the URL names no file; expected sqlite:PATH, e.g. sqlite:runnel.db",
            ));
        }
        if path == ":memory:" {
            return Err(ConfigError::invalid_url(
                SCHEME,
                "sqlite::memory: is not supported: the store needs a file that its writer and \
                 readers share; use sqlite:PATH",
            ));
        }
        let mut options = SqliteOptions::default();
        let mut q = UrlQuery::parse(SCHEME, query)?;
        let durabilities = [("full", Durability::Full), ("relaxed", Durability::Relaxed)];
        if let Some(d) = q.choice("durability", &durabilities)? {
            options.durability = d;
        }
        if let Some(n) = q.integer("read_connections", 1..=READ_CONNECTIONS_MAX)? {
            options.read_connections = n;
        }
        if let Some(n) = q.integer(shared::MAX_PAYLOAD_BYTES, 1..=PAYLOAD_BYTES_MAX)? {
            options.limits.max_payload_bytes = n;
        }
        q.finish()?;
        Ok((PathBuf::from(path), options))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_parse_to_paths_and_options() {
        for (url, path) in [
            ("sqlite:runnel.db", "runnel.db"),
            ("sqlite:///tmp/x.db", "/tmp/x.db"),
            ("sqlite://data/x.db", "data/x.db"),
            (" sqlite:a.db ", "a.db"),
        ] {
            let (p, o) = SqliteOptions::from_url(url).expect(url);
            assert_eq!(p, PathBuf::from(path), "{url}");
            assert_eq!(o.durability, Durability::Full);
        }
        let (p, o) = SqliteOptions::from_url(
            "sqlite:///var/lib/app.db?durability=relaxed&read_connections=8&max_payload_bytes=4096",
        )
        .expect("valid");
        assert_eq!(p, PathBuf::from("/var/lib/app.db"));
        assert_eq!(o.durability, Durability::Relaxed);
        assert_eq!(o.read_connections, 8);
        assert_eq!(o.limits.max_payload_bytes, 4096);
    }

    #[test]
    fn memory_empty_and_foreign_urls_are_refused() {
        for bad in [
            "sqlite:",
            "sqlite://",
            "sqlite:?durability=full",
            "sqlite::memory:",
            "sqlite://:memory:",
            "postgres://h/db",
            "runnel.db",
        ] {
            assert!(
                matches!(
                    SqliteOptions::from_url(bad),
                    Err(ConfigError::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_parameters_are_refused_with_the_valid_ones() {
        let err = SqliteOptions::from_url("sqlite:a.db?mode=rwc").unwrap_err();
        assert_eq!(
            err,
            ConfigError::UnknownParameter {
                scheme: "sqlite",
                name: "mode".into(),
                valid: vec![
                    "durability".into(),
                    "max_payload_bytes".into(),
                    "read_connections".into()
                ],
            }
        );
        for bad in [
            "sqlite:a.db?durability=normal",
            "sqlite:a.db?read_connections=0",
            "sqlite:a.db?read_connections=65",
            "sqlite:a.db?durability=full&durability=relaxed",
        ] {
            assert!(SqliteOptions::from_url(bad).is_err(), "{bad}");
        }
    }
}
