//! The baselines: plain rusqlite doing the same work by hand, on the same disk.
//!
//! Writes go into a table with the same columns, the same unique constraints (event id;
//! stream and revision) and the same secondary indexes as Runnel's `events` table, at
//! `synchronous=FULL` in WAL mode, with explicit batching: one transaction per N rows.
//! Reads run the plain SELECT a hand-written store would run, on Runnel's own file.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use runnel_core::CONTENT_TYPE_JSON;
use runnel_sqlite::rusqlite::{self, params, Connection, OpenFlags};

use super::workload::{Budget, ReadRun, WriteRun, CATEGORY, EVENT_TYPE, PAYLOAD};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY,
    event_id       BLOB    NOT NULL UNIQUE,
    stream_id      INTEGER NOT NULL,
    revision       INTEGER NOT NULL,
    category       TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    content_type   TEXT    NOT NULL,
    data           BLOB    NOT NULL,
    metadata       TEXT,
    recorded_at    INTEGER NOT NULL,
    UNIQUE (stream_id, revision)
);
CREATE INDEX IF NOT EXISTS events_by_category ON events (category, position);
CREATE INDEX IF NOT EXISTS events_by_type ON events (event_type, position);
";

/// The shape of a raw write run.
#[derive(Clone, Copy, Debug)]
pub struct RawShape {
    /// Rows per transaction.
    pub rows_per_tx: usize,
    /// Streams each transaction writes to (rows are spread evenly over them): 64 for
    /// "64 writers, one event each", 1 for "one writer, 100 events per append".
    pub streams_per_tx: usize,
    /// A stream slot moves on to a new stream once it holds this many events.
    pub stream_len_max: u64,
    /// The first stream id this run uses (runs on one file use disjoint ranges).
    pub first_stream_id: i64,
}

fn open_durable(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    anyhow::ensure!(
        mode.eq_ignore_ascii_case("wal"),
        "{} refused WAL mode",
        path.display()
    );
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Inserts rows in transactions of `shape.rows_per_tx` until the budget is spent (the
/// table is created if missing, so several runs can share one file).
pub fn writes(
    path: &Path,
    shape: RawShape,
    budget: Budget,
    written: Arc<AtomicU64>,
) -> anyhow::Result<WriteRun> {
    anyhow::ensure!(
        shape.streams_per_tx > 0 && shape.rows_per_tx % shape.streams_per_tx == 0,
        "rows per transaction must spread evenly over the streams"
    );
    let mut conn = open_durable(path)?;
    conn.execute_batch(SCHEMA)
        .context("cannot create the baseline table")?;
    let rows_per_stream = (shape.rows_per_tx / shape.streams_per_tx) as u64;
    // (stream id, revision) per slot.
    let mut slots: Vec<(i64, u64)> = (0..shape.streams_per_tx as i64)
        .map(|s| (shape.first_stream_id + s, 0))
        .collect();
    let mut next_stream_id = shape.first_stream_id + shape.streams_per_tx as i64;
    let mut events = 0u64;
    let mut commits = 0u64;
    let start = Instant::now();
    loop {
        if start.elapsed() >= budget.duration && events >= budget.events_min {
            break;
        }
        if events + shape.rows_per_tx as u64 > budget.events_max {
            break;
        }
        let now_micros = chrono::Utc::now().timestamp_micros();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (event_id, stream_id, revision, category, event_type, \
                 schema_version, content_type, data, metadata, recorded_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for slot in slots.iter_mut() {
                if slot.1 + rows_per_stream > shape.stream_len_max {
                    *slot = (next_stream_id, 0);
                    next_stream_id += 1;
                }
                for _ in 0..rows_per_stream {
                    slot.1 += 1;
                    let id = uuid::Uuid::now_v7();
                    insert.execute(params![
                        id.as_bytes().as_slice(),
                        slot.0,
                        slot.1 as i64,
                        CATEGORY,
                        EVENT_TYPE,
                        1i64,
                        CONTENT_TYPE_JSON,
                        PAYLOAD,
                        Option::<String>::None,
                        now_micros,
                    ])?;
                }
            }
        }
        tx.commit()?;
        commits += 1;
        events += shape.rows_per_tx as u64;
        written.store(events, Ordering::Relaxed);
    }
    Ok(WriteRun {
        events,
        elapsed: start.elapsed(),
        commits,
    })
}

/// One row as a hand-written reader would hold it: every column, owned.
#[allow(dead_code)] // The fields are read only through black_box.
struct RawRow {
    position: i64,
    event_id: Vec<u8>,
    stream_id: i64,
    revision: i64,
    category: String,
    event_type: String,
    schema_version: i64,
    content_type: String,
    data: Vec<u8>,
    metadata: Option<String>,
    recorded_at: i64,
}

const RAW_COLUMNS: &str = "position, event_id, stream_id, revision, category, event_type, \
     schema_version, content_type, data, metadata, recorded_at";

fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        position: r.get(0)?,
        event_id: r.get(1)?,
        stream_id: r.get(2)?,
        revision: r.get(3)?,
        category: r.get(4)?,
        event_type: r.get(5)?,
        schema_version: r.get(6)?,
        content_type: r.get(7)?,
        data: r.get(8)?,
        metadata: r.get(9)?,
        recorded_at: r.get(10)?,
    })
}

fn open_reader(path: &Path) -> anyhow::Result<Connection> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {} to read", path.display()))
}

/// Reads Runnel's whole `events` table in position order, `page` rows per query, in passes
/// until `duration` has passed (at least one pass).
pub fn read_all(
    path: &Path,
    page: usize,
    duration: Duration,
    read: Arc<AtomicU64>,
) -> anyhow::Result<ReadRun> {
    let conn = open_reader(path)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {RAW_COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
    ))?;
    let mut events = 0u64;
    let start = Instant::now();
    loop {
        let mut after = 0i64;
        loop {
            let rows: Vec<RawRow> = stmt
                .query_map(params![after, page as i64], raw_row)?
                .collect::<Result<_, _>>()?;
            let Some(last) = rows.last() else { break };
            after = last.position;
            events += rows.len() as u64;
            read.store(events, Ordering::Relaxed);
            std::hint::black_box(&rows);
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

/// Reads one stream of Runnel's file forward, `page` rows per query, in passes until
/// `duration` has passed (at least one pass).
pub fn read_stream(
    path: &Path,
    stream: &str,
    page: usize,
    duration: Duration,
    read: Arc<AtomicU64>,
) -> anyhow::Result<ReadRun> {
    let conn = open_reader(path)?;
    let stream_id: i64 = conn
        .query_row(
            "SELECT stream_id FROM streams WHERE name = ?1",
            [stream],
            |r| r.get(0),
        )
        .with_context(|| format!("stream {stream} is missing from {}", path.display()))?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {RAW_COLUMNS} FROM events WHERE stream_id = ?1 AND revision >= ?2 \
         ORDER BY revision LIMIT ?3"
    ))?;
    let mut events = 0u64;
    let start = Instant::now();
    loop {
        let mut from = 1i64;
        loop {
            let rows: Vec<RawRow> = stmt
                .query_map(params![stream_id, from, page as i64], raw_row)?
                .collect::<Result<_, _>>()?;
            let Some(last) = rows.last() else { break };
            from = last.revision + 1;
            events += rows.len() as u64;
            read.store(events, Ordering::Relaxed);
            let full = rows.len() == page;
            std::hint::black_box(&rows);
            if !full {
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
