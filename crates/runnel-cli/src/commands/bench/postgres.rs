//! The PostgreSQL scenarios of `runnel bench store --store postgres://…`: Runnel's appends
//! beside raw INSERTs of the same rows through the same driver (sqlx), at the same
//! durability (`synchronous_commit = on`), one transaction per append.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use runnel_core::{
    EventFilter, EventStore, ExpectedRevision, NewEvent, Position, StreamName, CONTENT_TYPE_JSON,
};
use runnel_postgres::sqlx::{self, Connection as _, PgConnection};
use runnel_postgres::PostgresStore;

use super::workload::{stream_name, Budget, ReadRun, WriteRun, CATEGORY, EVENT_TYPE, PAYLOAD};

/// The shape of a write scenario.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub writers: usize,
    pub events_per_append: usize,
    pub stream_len_max: u64,
}

/// Runnel appends through `store` (its batcher combines concurrent appends).
pub async fn runnel_writes(
    store: &PostgresStore,
    shape: Shape,
    budget: Budget,
    written: Arc<AtomicU64>,
) -> anyhow::Result<WriteRun> {
    let before = store.batch_stats();
    let reserved = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(shape.writers);
    for writer in 0..shape.writers {
        let store = store.clone();
        let (reserved, written) = (Arc::clone(&reserved), Arc::clone(&written));
        tasks.push(tokio::spawn(async move {
            let per_append = shape.events_per_append as u64;
            let mut index = 0u64;
            let mut stream = StreamName::new(stream_name(writer, index))?;
            let mut revision = 0u64;
            loop {
                if !keep_going(&budget, start, &reserved, &written, per_append) {
                    return anyhow::Ok(());
                }
                if revision + per_append > shape.stream_len_max {
                    index += 1;
                    stream = StreamName::new(stream_name(writer, index))?;
                    revision = 0;
                }
                let events: Vec<NewEvent> = (0..shape.events_per_append)
                    .map(|_| NewEvent::bytes(EVENT_TYPE, CONTENT_TYPE_JSON, PAYLOAD.to_vec()))
                    .collect();
                let expected = ExpectedRevision::from_current((revision > 0).then_some(revision));
                let r = store
                    .append(&stream, expected, events)
                    .await
                    .with_context(|| format!("benchmark append to {stream} failed"))?;
                revision = r.next_expected_revision;
                written.fetch_add(per_append, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.context("a benchmark writer panicked")??;
    }
    let after = store.batch_stats();
    Ok(WriteRun {
        events: written.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        commits: after.round_trips - before.round_trips,
    })
}

fn keep_going(
    budget: &Budget,
    start: Instant,
    reserved: &AtomicU64,
    written: &AtomicU64,
    per_append: u64,
) -> bool {
    if start.elapsed() >= budget.duration && written.load(Ordering::Relaxed) >= budget.events_min {
        return false;
    }
    reserved.fetch_add(per_append, Ordering::Relaxed) + per_append <= budget.events_max
}

/// The raw baseline's table: the same columns and unique constraints as Runnel's events.
pub async fn create_raw_table(url: &str, schema: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(url).await.context("connect for the raw baseline")?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
         CREATE TABLE {schema}.raw_events (
            position bigserial PRIMARY KEY, event_id uuid NOT NULL UNIQUE,
            stream text NOT NULL, revision bigint NOT NULL, event_type text NOT NULL,
            data bytea NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (stream, revision))"
    )))
    .execute(&mut conn)
    .await
    .context("create the raw baseline table")?;
    Ok(())
}

/// Raw INSERTs: each writer on its own connection, one transaction per append of
/// `events_per_append` rows (one multi-row INSERT), `synchronous_commit = on`.
pub async fn raw_writes(
    url: &str,
    schema: &str,
    shape: Shape,
    budget: Budget,
    written: Arc<AtomicU64>,
) -> anyhow::Result<WriteRun> {
    let reserved = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let commits = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(shape.writers);
    for writer in 0..shape.writers {
        let url = url.to_string();
        let sql = format!(
            "INSERT INTO {schema}.raw_events (event_id, stream, revision, event_type, data) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::bytea[])"
        );
        let (reserved, written, commits) =
            (Arc::clone(&reserved), Arc::clone(&written), Arc::clone(&commits));
        tasks.push(tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await?;
            sqlx::query("SET synchronous_commit = on").execute(&mut conn).await?;
            let per_append = shape.events_per_append as u64;
            let mut index = 0u64;
            let mut revision = 0u64;
            loop {
                if !keep_going(&budget, start, &reserved, &written, per_append) {
                    return anyhow::Ok(());
                }
                if revision + per_append > shape.stream_len_max {
                    index += 1;
                    revision = 0;
                }
                let stream = stream_name(writer, index);
                let n = shape.events_per_append;
                let ids: Vec<runnel_core::uuid::Uuid> =
                    (0..n).map(|_| runnel_core::uuid::Uuid::now_v7()).collect();
                let streams = vec![stream; n];
                let revisions: Vec<i64> = (1..=n as i64).map(|k| revision as i64 + k).collect();
                let types = vec![EVENT_TYPE.to_string(); n];
                let datas = vec![PAYLOAD.to_vec(); n];
                let mut tx = conn.begin().await?;
                sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(&ids)
                    .bind(&streams)
                    .bind(&revisions)
                    .bind(&types)
                    .bind(&datas)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                commits.fetch_add(1, Ordering::Relaxed);
                revision += per_append;
                written.fetch_add(per_append, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.context("a raw writer panicked")??;
    }
    Ok(WriteRun {
        events: written.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        commits: commits.load(Ordering::Relaxed),
    })
}

/// Reads all of `$all` in pages of 1,000.
pub async fn read_all(store: &PostgresStore, read: Arc<AtomicU64>) -> anyhow::Result<ReadRun> {
    let start = Instant::now();
    let mut after = Position::START;
    let filter = EventFilter::categories([CATEGORY]);
    loop {
        let page = store.read_all(after, &filter, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        read.fetch_add(page.len() as u64, Ordering::Relaxed);
    }
    Ok(ReadRun {
        events: read.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    })
}
