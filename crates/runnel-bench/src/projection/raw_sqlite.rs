//! The hand-written loop on SQLite: a connection of its own (rusqlite) to the store's
//! file, at the store's durability (WAL, `synchronous=FULL`), reading `$all` straight
//! from the store's `events` and `streams` tables and writing its own table and
//! checkpoint row — one transaction per page: read the page, upsert each event's row,
//! save the checkpoint, commit.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use runnel_sqlite::rusqlite::{params, Connection, OpenFlags, TransactionBehavior};
use runnel_sqlite::SqliteStore;

use super::workload::{amount_in, create_table_sql, upsert_sql, Totals, CATEGORY};

/// As long as the store's own connections wait for the file's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The baseline's checkpoints (one row per run).
const CHECKPOINTS: &str = "raw_checkpoints";

/// The events of one page the loop needs: the position, the stream's name, the payload.
const PAGE_SQL: &str = "SELECT e.position, s.name, e.data FROM events e \
     JOIN streams s ON s.stream_id = e.stream_id \
     WHERE e.position > ?1 AND e.category = ?2 ORDER BY e.position LIMIT ?3";

/// Opens `path` as the store opens it: WAL, `synchronous=FULL`, a busy timeout.
pub fn open(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("open {} for the baseline", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    anyhow::ensure!(
        mode.eq_ignore_ascii_case("wal"),
        "{} is not in WAL mode",
        path.display()
    );
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Rebuilds `table` from the start of `$all` in pages of `page` events; returns the events
/// applied and the transactions committed. `done` counts applied events as it goes.
pub fn rebuild(
    path: &Path,
    table: &str,
    page: usize,
    done: Arc<AtomicU64>,
) -> anyhow::Result<(u64, u64)> {
    let mut conn = open(path)?;
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {CHECKPOINTS} (name TEXT PRIMARY KEY, position BIGINT NOT NULL); \
         {}; INSERT INTO {CHECKPOINTS} (name, position) VALUES ('{table}', 0);",
        create_table_sql(table)
    ))
    .context("create the baseline's table")?;
    // rusqlite reads `?n`; the projection's SQL is written with `$n`, which SQLite reads
    // as named parameters bound by position in the same order.
    let upsert = upsert_sql(table);
    let save = format!("UPDATE {CHECKPOINTS} SET position = ?1 WHERE name = ?2");
    let (mut applied, mut commits) = (0u64, 0u64);
    let mut checkpoint: i64 = 0;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut last = None;
        {
            let mut read = tx.prepare_cached(PAGE_SQL)?;
            let mut write = tx.prepare_cached(&upsert)?;
            let mut rows = read.query(params![checkpoint, CATEGORY, page as i64])?;
            while let Some(row) = rows.next()? {
                let position: i64 = row.get(0)?;
                let stream: String = row.get(1)?;
                let data = row.get_ref(2)?.as_blob()?;
                let amount = amount_in(data).context("decode an event")?;
                write.execute(params![stream, amount, position])?;
                last = Some(position);
                applied += 1;
            }
        }
        let Some(last) = last else {
            // Nothing left: the (empty) transaction ends without a write.
            tx.commit()?;
            break;
        };
        tx.prepare_cached(&save)?.execute(params![last, table])?;
        tx.commit()?;
        commits += 1;
        checkpoint = last;
        done.store(applied, Ordering::Relaxed);
    }
    Ok((applied, commits))
}

/// The totals in `table` of the SQLite file `store` (Runnel's view or the baseline's table).
pub async fn totals(store: &SqliteStore, table: &str) -> anyhow::Result<Totals> {
    let sql = Totals::query(table);
    let totals = store
        .read_with(move |conn| {
            conn.query_row(&sql, [], |r| {
                Ok(Totals {
                    rows: r.get(0)?,
                    events: r.get(1)?,
                    amount: r.get(2)?,
                })
            })
            .map_err(|e| runnel_core::StoreError::Backend(e.to_string()))
        })
        .await?;
    Ok(totals)
}
