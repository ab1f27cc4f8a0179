//! `append_batch` keeps using the indexes after the store grows: its plans are generic
//! (made once per connection), and a plan made while the tables were empty must not keep
//! scanning them whole as history accumulates (append latency would grow with history).

mod common;

use runnel_core::{ExpectedRevision, NewEvent, StreamName};
use runnel_postgres::sqlx::{self, Connection as _, PgConnection};
use runnel_postgres::{PostgresOptions, PostgresStore};
use serde_json::json;

/// Calls `append_batch` as the batcher does for two waiting appends, to new or existing
/// streams (expected revision "any"), and checks both were appended.
async fn two_appends_in_one_call(
    conn: &mut PgConnection,
    schema: &str,
    store: &PostgresStore,
    streams: [&str; 2],
) {
    let rows: Vec<(i32, i16)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT idx, status FROM {schema}.append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    )))
    .bind(store.append_lock_key())
    .bind(format!("runnel_{schema}"))
    .bind(streams.map(String::from).to_vec())
    .bind(streams.map(|s| s.split('-').next().unwrap().to_string()).to_vec())
    .bind(vec![0i16, 0])
    .bind(vec![0i64, 0])
    .bind(vec![1i32, 1])
    .bind(vec![runnel_core::EventId::new().0, runnel_core::EventId::new().0])
    .bind(vec!["Happened".to_string(); 2])
    .bind(vec![1i32, 1])
    .bind(vec!["application/json".to_string(); 2])
    .bind(vec![b"{}".to_vec(); 2])
    .bind(vec![None::<serde_json::Value>; 2])
    .fetch_all(conn)
    .await
    .expect("append_batch with two appends");
    assert_eq!(
        rows,
        vec![(1, 0), (2, 0)],
        "both appends of the batch were written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_use_indexes_after_the_store_grows_from_empty() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let store = PostgresStore::connect_with(PostgresOptions::new(url.clone()).schema(&schema))
        .await
        .expect("connect");
    let mut conn = PgConnection::connect(&url).await.expect("connect");

    // First call on this connection while the tables are empty: its plans are made now.
    let first = StreamName::new("Plan-first").unwrap();
    store
        .append_in(
            &mut conn,
            &first,
            ExpectedRevision::NoStream,
            vec![NewEvent::json("Happened", &json!({"n": 0}))],
        )
        .await
        .expect("first append");

    // And the shared round trip's set-based path (several appends in one call).
    two_appends_in_one_call(&mut conn, &schema, &store, ["Plan-batch-1", "Plan-batch-2"]).await;

    // The store grows behind the cached plans' back (positions 1-3 are taken above).
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}.streams (name, category, revision, last_position, created_at, updated_at)
           SELECT 'Bulk-' || g, 'Bulk', 1, g + 3, now(), now() FROM generate_series(1, 20000) g;
         INSERT INTO {schema}.events (position, event_id, stream_id, revision, category, event_type,
                                      schema_version, content_type, data, metadata, recorded_at)
           SELECT g + 3, gen_random_uuid(), s.stream_id, 1, 'Bulk', 'BulkHappened', 1,
                  'application/json', '\\x7b7d'::bytea, NULL, now()
             FROM generate_series(1, 20000) g JOIN {schema}.streams s ON s.name = 'Bulk-' || g;
         SELECT setval('{schema}.event_position', 20003);"
    )))
    .execute(&mut conn)
    .await
    .expect("bulk load");

    // Appends through the same connection (same cached plans), in one transaction whose
    // scan counters we can read: a new stream, an existing stream, and an idempotent retry.
    let mut tx = conn.begin().await.expect("begin");
    // The counters may still hold earlier transactions' scans (they are flushed lazily):
    // compare before and after, inside this one transaction.
    let events_before =
        common::seq_scans_in_transaction(&mut tx, &format!("{schema}.events")).await;
    let streams_before =
        common::seq_scans_in_transaction(&mut tx, &format!("{schema}.streams")).await;
    let new_stream_events = vec![
        NewEvent::json("Happened", &json!({"n": 1})),
        NewEvent::json("Happened", &json!({"n": 2})),
    ];
    for (stream, expected, events) in [
        (
            "Plan-new",
            ExpectedRevision::NoStream,
            new_stream_events.clone(),
        ),
        (
            "Plan-first",
            ExpectedRevision::Exact(1),
            vec![NewEvent::json("Happened", &json!({"n": 3}))],
        ),
        (
            "Bulk-7",
            ExpectedRevision::Exact(1),
            vec![NewEvent::json("Happened", &json!({"n": 4}))],
        ),
        // The same events again: an idempotent retry (the append-by-append path).
        ("Plan-new", ExpectedRevision::NoStream, new_stream_events),
    ] {
        store
            .append_in(&mut tx, &StreamName::new(stream).unwrap(), expected, events)
            .await
            .unwrap_or_else(|e| panic!("append to {stream}: {e}"));
    }
    two_appends_in_one_call(&mut tx, &schema, &store, ["Plan-batch-3", "Bulk-9"]).await;
    let events_scans = common::seq_scans_in_transaction(&mut tx, &format!("{schema}.events")).await
        - events_before;
    let streams_scans = common::seq_scans_in_transaction(&mut tx, &format!("{schema}.streams"))
        .await
        - streams_before;
    tx.commit().await.expect("commit");
    assert_eq!(
        (events_scans, streams_scans),
        (0, 0),
        "appends after the store grew scanned whole tables (events, streams)"
    );

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut conn)
        .await
        .expect("drop the test schema");
}
