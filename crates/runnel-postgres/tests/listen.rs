//! A store listens for appends only once something waits for events. Whatever committed
//! before its LISTEN took effect was announced to nobody, so the first wait must still see it.

mod common;

use std::time::Duration;

use runnel_core::{EventStore, ExpectedRevision, NewEvent, Position, StreamName};
use runnel_postgres::{PostgresOptions, PostgresStore};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_wait_sees_an_append_committed_before_listening_began() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let reader = PostgresStore::connect_with(PostgresOptions::new(url.clone()).schema(&schema))
        .await
        .unwrap();
    // Another process appends after the reader opened (its head is still 0) and before the
    // reader listens: no notification reaches the reader.
    let writer = PostgresStore::connect_with(PostgresOptions::new(url).schema(&schema))
        .await
        .unwrap();
    writer
        .append(
            &StreamName::new("Before-1").unwrap(),
            ExpectedRevision::NoStream,
            vec![NewEvent::json("Happened", &json!({}))],
        )
        .await
        .unwrap();
    // The wait may last up to a minute; it must return at once, the event being there.
    tokio::time::timeout(
        Duration::from_secs(10),
        reader.wait_for_events(Position(0), Duration::from_secs(60)),
    )
    .await
    .expect("the first wait missed an append committed before LISTEN")
    .unwrap();
}

/// Backends of this schema's LISTEN connection (its last statement was the LISTEN).
async fn listeners(schema: &str) -> i64 {
    let pool = runnel_postgres::sqlx::PgPool::connect(&common::postgres_url().unwrap())
        .await
        .unwrap();
    let n: i64 = runnel_postgres::sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE $1",
    )
    .bind(format!("LISTEN%runnel_{schema}%"))
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_only_writes_does_not_listen() {
    let Some(store) = common::fresh_store().await else {
        return;
    };
    for n in 0..3 {
        store
            .append(
                &StreamName::new("Writes-1").unwrap(),
                ExpectedRevision::Any,
                vec![NewEvent::json("Happened", &json!({ "n": n }))],
            )
            .await
            .unwrap();
    }
    assert_eq!(
        listeners(store.schema()).await,
        0,
        "no LISTEN before any wait"
    );
    store
        .wait_for_events(Position(0), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        listeners(store.schema()).await,
        1,
        "one LISTEN once something waits"
    );
}
