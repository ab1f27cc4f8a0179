//! Where a lone append's time goes, in microseconds per append (8 interleaved rounds of 500):
//!
//! - A: `BEGIN` / one-row `INSERT` / `COMMIT` on a plain connection
//! - B: the same `INSERT` in autocommit (one round trip)
//! - C: `append_one` called directly (`append_in` on a dedicated connection)
//! - D: `EventStore::append` (the appender: turn-taking, its own connection)
//! - E: the `runnel-bench store` raw baseline (an `unnest` INSERT into a table shaped like
//!   `events`, one transaction per append)
//!
//! ```text
//! cargo run --release -p runnel-postgres --example append_anatomy -- postgres://postgres@127.0.0.1/postgres
//! ```
//! Everything runs in a throwaway schema, dropped at the end.
use std::time::Instant;

use runnel_core::{EventStore, ExpectedRevision, NewEvent, StreamName};
use runnel_postgres::{PostgresOptions, PostgresStore};
use sqlx::{Connection, PgConnection};

const PAYLOAD: &[u8] =
    b"{\"n\":12345678901234567890,\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}";

fn event() -> NewEvent {
    NewEvent::bytes("Happened", "application/json", PAYLOAD.to_vec())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // On a worker thread, as application tasks and the benchmark's writers run.
    tokio::spawn(body()).await?
}

async fn body() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("RUNNEL_TEST_POSTGRES_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let schema = format!("anat_{}", std::process::id());
    let store = PostgresStore::connect_with(PostgresOptions::new(&url).schema(&schema)).await?;
    let mut raw = PgConnection::connect(&url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {schema}.raw (position bigserial primary key, event_id uuid not null unique, \
         stream text not null, revision bigint not null, data bytea not null, unique(stream, revision))"
    )))
    .execute(&mut raw)
    .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {schema}.raw_events (
            position bigserial PRIMARY KEY, event_id uuid NOT NULL UNIQUE,
            stream text NOT NULL, revision bigint NOT NULL, category text NOT NULL,
            event_type text NOT NULL, data bytea NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (stream, revision));
         CREATE INDEX ON {schema}.raw_events (category, position);
         CREATE INDEX ON {schema}.raw_events (event_type, position);
         CREATE INDEX ON {schema}.raw_events USING brin (recorded_at)"
    )))
    .execute(&mut raw)
    .await?;
    let uns = format!(
        "INSERT INTO {schema}.raw_events (event_id, stream, revision, category, event_type, data) \
         SELECT u.id, u.stream, u.revision, 'Bench', u.event_type, u.data \
         FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::bytea[]) \
         AS u(id, stream, revision, event_type, data)"
    );
    let mut direct = PgConnection::connect(&url).await?;
    let ins = format!(
        "INSERT INTO {schema}.raw (event_id, stream, revision, data) VALUES ($1, $2, $3, $4)"
    );
    let n = 500;
    let mut totals = [0f64; 5];
    let mut rev = [0i64; 5];
    for round in 0..8 {
        // A: BEGIN / INSERT / COMMIT
        let t = Instant::now();
        for _ in 0..n {
            rev[0] += 1;
            let mut tx = raw.begin().await?;
            sqlx::query(sqlx::AssertSqlSafe(ins.as_str()))
                .bind(runnel_core::EventId::new().0)
                .bind("a-1")
                .bind(rev[0])
                .bind(PAYLOAD)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        totals[0] += t.elapsed().as_secs_f64();
        // B: autocommit INSERT
        let t = Instant::now();
        for _ in 0..n {
            rev[1] += 1;
            sqlx::query(sqlx::AssertSqlSafe(ins.as_str()))
                .bind(runnel_core::EventId::new().0)
                .bind("b-1")
                .bind(rev[1])
                .bind(PAYLOAD)
                .execute(&mut raw)
                .await?;
        }
        totals[1] += t.elapsed().as_secs_f64();
        // C: append function on a dedicated connection
        let s = StreamName::new("c-1")?;
        let t = Instant::now();
        for _ in 0..n {
            store
                .append_in(&mut direct, &s, ExpectedRevision::Any, vec![event()])
                .await?;
        }
        totals[2] += t.elapsed().as_secs_f64();
        // D: through the store (batcher + pool)
        let s = StreamName::new("d-1")?;
        let t = Instant::now();
        for _ in 0..n {
            store
                .append(&s, ExpectedRevision::Any, vec![event()])
                .await?;
        }
        totals[3] += t.elapsed().as_secs_f64();
        // E: the bench's raw baseline
        let t = Instant::now();
        for _ in 0..n {
            rev[4] += 1;
            let mut tx = raw.begin().await?;
            sqlx::query(sqlx::AssertSqlSafe(uns.as_str()))
                .bind(vec![runnel_core::EventId::new().0])
                .bind(vec!["e-1".to_string()])
                .bind(vec![rev[4]])
                .bind(vec!["Happened".to_string()])
                .bind(vec![PAYLOAD.to_vec()])
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        totals[4] += t.elapsed().as_secs_f64();
        let _ = round;
    }
    let per = |i: usize| totals[i] / (8 * n) as f64 * 1e6;
    println!("A begin/insert/commit  {:7.1} us", per(0));
    println!("B autocommit insert    {:7.1} us", per(1));
    println!("C append fn, direct    {:7.1} us", per(2));
    println!("D store.append         {:7.1} us", per(3));
    println!("E bench raw (unnest)   {:7.1} us", per(4));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut raw)
        .await?;
    Ok(())
}
