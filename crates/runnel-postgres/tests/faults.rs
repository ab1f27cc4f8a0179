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
    let mut holder = hold_append_lock(&store, &url).await;
    let appending = {
        let (store, stream, events) = (store.clone(), stream.clone(), events.clone());
        tokio::spawn(async move {
            store
                .append(&stream, ExpectedRevision::NoStream, events)
                .await
        })
    };
    let pid = common::append_waiting_on_the_lock(&store).await;
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
    release_append_lock(&mut holder, &store).await;

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

/// A lone append runs on its caller's task; if the caller gives up (drops the future) while
/// the append waits in PostgreSQL, appends queued behind it must still run, and later ones
/// too: the turn passes on even when its holder is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_lone_append_does_not_stall_the_appends_behind_it() {
    let Some(store) = common::fresh_store().await else {
        return;
    };
    let url = common::postgres_url().unwrap();
    let mut holder = hold_append_lock(&store, &url).await;

    // The first append takes the turn and blocks on the lock inside PostgreSQL.
    let first = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(
                    &StreamName::new("Cancelled-1").unwrap(),
                    ExpectedRevision::Any,
                    vec![NewEvent::json("Abandoned", &json!({}))],
                )
                .await
        })
    };
    common::append_waiting_on_the_lock(&store).await;
    // Two more queue behind it; then its caller gives up.
    let queued: Vec<_> = (0..2)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(
                        &StreamName::new(format!("Queued-{i}")).unwrap(),
                        ExpectedRevision::NoStream,
                        vec![NewEvent::json("Queued", &json!({"i": i}))],
                    )
                    .await
            })
        })
        .collect();
    wait_for_queued_appends(&store, 2).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());

    release_append_lock(&mut holder, &store).await;
    for q in queued {
        let appended = tokio::time::timeout(Duration::from_secs(20), q)
            .await
            .expect("a queued append stalled behind the cancelled one")
            .unwrap();
        assert_eq!(appended.unwrap().next_expected_revision, 1);
    }
    // And the appender still takes new work, alone or not.
    let later = tokio::time::timeout(
        Duration::from_secs(20),
        store.append(
            &StreamName::new("Later-1").unwrap(),
            ExpectedRevision::NoStream,
            vec![NewEvent::json("Later", &json!({}))],
        ),
    )
    .await
    .expect("an append after the cancelled one stalled");
    assert_eq!(later.unwrap().next_expected_revision, 1);
}

/// Waits until `n` appends sit in the store's queue (their callers are parked on it).
async fn wait_for_queued_appends(store: &PostgresStore, n: usize) {
    runnel_testkit::harness::wait_until(Duration::from_secs(20), "appends to queue up", || {
        let queued = store.queued_appends();
        async move { queued >= n }
    })
    .await;
}

/// A connection holding the store's append lock: appends then wait inside PostgreSQL.
async fn hold_append_lock(store: &PostgresStore, url: &str) -> sqlx::PgConnection {
    let mut holder = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(store.append_lock_key())
        .execute(&mut holder)
        .await
        .unwrap();
    holder
}

async fn release_append_lock(holder: &mut sqlx::PgConnection, store: &PostgresStore) {
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(store.append_lock_key())
        .execute(holder)
        .await
        .unwrap();
}
