//! Connection faults and refused connections give typed errors; an append whose connection
//! dies is safe to retry.

mod common;

use std::time::Duration;

use runnel_core::{EventStore, ExpectedRevision, NewEvent, ReadStream, StoreError, StreamName};
use runnel_postgres::{PostgresOptions, PostgresStore};
use serde_json::json;
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_killed_mid_append_then_retry_writes_exactly_once() {
    let Some(store) = common::fresh_store().await else {
        return;
    };
    let url = common::postgres_url().unwrap();
    let stream = StreamName::new("Killed-1").unwrap();
    let events = vec![
        NewEvent::json("First", &json!({"n": 1})),
        NewEvent::json("Second", &json!({"n": 2})),
    ];

    // Hold the store's append lock so the append is provably in flight inside PostgreSQL.
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(store.append_lock_key())
        .execute(&mut holder)
        .await
        .unwrap();
    let appending = {
        let (store, stream, events) = (store.clone(), stream.clone(), events.clone());
        tokio::spawn(async move {
            store
                .append(&stream, ExpectedRevision::NoStream, events)
                .await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let pid: i32 = loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '%append_batch%' AND datname = current_database() LIMIT 1",
        )
        .fetch_optional(&mut holder)
        .await
        .unwrap();
        if let Some(pid) = pid {
            break pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the append never reached the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut holder)
        .await
        .unwrap();
    assert!(killed);
    let outcome = tokio::time::timeout(Duration::from_secs(20), appending)
        .await
        .expect("the append returned after its connection died")
        .unwrap();
    assert!(
        matches!(outcome, Err(StoreError::Unavailable(_))),
        "a lost connection is Unavailable (retry is safe): {outcome:?}"
    );
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(store.append_lock_key())
        .execute(&mut holder)
        .await
        .unwrap();

    // Retry the very same append (same event ids): written once.
    let first = store
        .append(&stream, ExpectedRevision::NoStream, events.clone())
        .await
        .expect("retry after the lost connection");
    assert_eq!(first.next_expected_revision, 2);
    // A client that never saw that answer retries again: idempotent, same result.
    let again = store
        .append(&stream, ExpectedRevision::NoStream, events.clone())
        .await
        .expect("second retry is idempotent");
    assert_eq!(again, first);
    let stored = store
        .read_stream(&stream, ReadStream::forward(10))
        .await
        .unwrap();
    let ids: Vec<_> = stored.iter().map(|e| e.id).collect();
    assert_eq!(ids, events.iter().map(|e| e.id).collect::<Vec<_>>());
}

#[tokio::test]
async fn unreachable_database_is_unavailable() {
    if common::postgres_url().is_none() {
        return;
    }
    let mut options = PostgresOptions::new("postgres://postgres@127.0.0.1:1/postgres");
    options.connect_timeout = Duration::from_secs(2);
    let err = PostgresStore::connect_with(options)
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn unknown_user_is_an_authentication_error() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let base = url.split('@').nth(1).expect("URL with a host part");
    let err = PostgresStore::connect(&format!("postgres://runnel_no_such_user@{base}"))
        .await
        .err()
        .expect("must fail");
    assert!(
        matches!(err, StoreError::AuthenticationFailed(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn user_without_rights_gets_permission_denied() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    // Idempotent: the role may exist from an earlier run.
    sqlx::raw_sql(
        "DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'runnel_no_rights') THEN
                CREATE ROLE runnel_no_rights LOGIN;
            END IF;
         END $$;
         REVOKE CREATE ON DATABASE postgres FROM runnel_no_rights;",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let base = url.split('@').nth(1).expect("URL with a host part");
    let options = PostgresOptions::new(format!("postgres://runnel_no_rights@{base}"))
        .schema(common::fresh_schema());
    let err = PostgresStore::connect_with(options)
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, StoreError::PermissionDenied(_)), "{err:?}");
}

#[tokio::test]
async fn two_processes_migrating_at_once_both_succeed() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let a = PostgresStore::connect_with(PostgresOptions::new(&url).schema(&schema));
    let b = PostgresStore::connect_with(PostgresOptions::new(&url).schema(&schema));
    let (a, b) = tokio::join!(a, b);
    let (a, b) = (a.unwrap(), b.unwrap());
    let stream = StreamName::new("Both-1").unwrap();
    a.append(
        &stream,
        ExpectedRevision::NoStream,
        vec![NewEvent::json("A", &json!({}))],
    )
    .await
    .unwrap();
    assert_eq!(b.stream_revision(&stream).await.unwrap(), Some(1));
}

#[tokio::test]
async fn invalid_options_are_rejected_before_connecting() {
    let bad_schema = PostgresOptions::new("postgres://x@127.0.0.1/x").schema("Robert'); DROP");
    assert!(matches!(
        PostgresStore::connect_with(bad_schema).await.err(),
        Some(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        PostgresStore::connect("not a url").await.err(),
        Some(StoreError::InvalidArgument(_))
    ));
}
