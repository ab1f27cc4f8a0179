//! The hand-written loop on PostgreSQL: one connection (sqlx, `synchronous_commit = on`)
//! in the store's schema, reading `$all` straight from the store's `events` and `streams`
//! tables and writing its own table and checkpoint row — one transaction per page: read
//! the page, upsert each event's row (one prepared statement, one round trip each, as
//! Runnel sends them), save the checkpoint, commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use runnel_postgres::sqlx::{self, AssertSqlSafe, Connection as _, PgConnection, Row as _};

use super::workload::{amount_in, create_table_sql, upsert_sql, Totals, CATEGORY};

/// The baseline's checkpoints (one row per run).
const CHECKPOINTS: &str = "raw_checkpoints";

/// Rebuilds `schema.table` from the start of `$all` in pages of `page` events on a
/// connection to `url`; returns the events applied and the transactions committed. `done`
/// counts applied events as it goes.
pub async fn rebuild(
    url: &str,
    schema: &str,
    table: &str,
    page: usize,
    done: Arc<AtomicU64>,
) -> anyhow::Result<(u64, u64)> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("connect for the baseline")?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SET search_path = {schema}; SET synchronous_commit = on; \
         CREATE TABLE IF NOT EXISTS {CHECKPOINTS} (name text PRIMARY KEY, position bigint NOT NULL); \
         {}; INSERT INTO {CHECKPOINTS} (name, position) VALUES ('{table}', 0);",
        create_table_sql(table)
    )))
    .execute(&mut conn)
    .await
    .context("create the baseline's table")?;
    let read = "SELECT e.position, s.name, e.data FROM events e \
         JOIN streams s ON s.stream_id = e.stream_id \
         WHERE e.position > $1 AND e.category = $2 ORDER BY e.position LIMIT $3";
    let upsert = upsert_sql(table);
    let save = format!("UPDATE {CHECKPOINTS} SET position = $1 WHERE name = $2");
    let (mut applied, mut commits) = (0u64, 0u64);
    let mut checkpoint: i64 = 0;
    loop {
        let mut tx = conn.begin().await?;
        let rows = sqlx::query(read)
            .bind(checkpoint)
            .bind(CATEGORY)
            .bind(page as i64)
            .fetch_all(&mut *tx)
            .await?;
        let Some(last) = rows.last().map(|r| r.try_get::<i64, _>(0)).transpose()? else {
            tx.commit().await?;
            break;
        };
        for row in &rows {
            let position: i64 = row.try_get(0)?;
            let stream: &str = row.try_get(1)?;
            let data: &[u8] = row.try_get(2)?;
            let amount = amount_in(data).context("decode an event")?;
            sqlx::query(AssertSqlSafe(upsert.as_str()))
                .bind(stream)
                .bind(amount)
                .bind(position)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(AssertSqlSafe(save.as_str()))
            .bind(last)
            .bind(table)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        applied += rows.len() as u64;
        commits += 1;
        checkpoint = last;
        done.store(applied, Ordering::Relaxed);
    }
    let _ = conn.close().await;
    Ok((applied, commits))
}

/// The totals in `schema.table` (Runnel's view or the baseline's table).
pub async fn totals(url: &str, schema: &str, table: &str) -> anyhow::Result<Totals> {
    let mut conn = PgConnection::connect(url).await?;
    let row = sqlx::query(AssertSqlSafe(Totals::query(&format!("{schema}.{table}"))))
        .fetch_one(&mut conn)
        .await?;
    let _ = conn.close().await;
    Ok(Totals {
        rows: row.try_get(0)?,
        events: row.try_get(1)?,
        amount: row.try_get(2)?,
    })
}
