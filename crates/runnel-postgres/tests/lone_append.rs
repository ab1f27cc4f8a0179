//! An append that waits for the append lock must see whatever the lock's holder committed
//! meanwhile, as if it had started after it: a stream the holder created, a revision it
//! moved, an id it stored. (A one-statement lone append, whose snapshot would predate the
//! wait, was tried against these; `append_one` reads after taking the lock.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use runnel_core::{
    AppendResult, EventStore, ExpectedRevision, NewEvent, ReadStream, StoreError, StreamName,
};
use runnel_postgres::sqlx::{Connection as _, PgConnection};
use runnel_postgres::PostgresStore;
use serde_json::json;

/// Runs `first` through `append_in` in a transaction that holds the append lock, starts a
/// lone `store.append` of `second` (which then waits on the lock inside PostgreSQL),
/// commits the first, and returns the second's outcome.
async fn append_behind_a_commit(
    store: &Arc<PostgresStore>,
    first: (&str, ExpectedRevision, Vec<NewEvent>),
    second: (&str, ExpectedRevision, Vec<NewEvent>),
) -> Result<AppendResult, StoreError> {
    let url = common::postgres_url().unwrap();
    let mut holder = PgConnection::connect(&url).await.unwrap();
    let mut tx = holder.begin().await.unwrap();
    store
        .append_in(
            &mut tx,
            &StreamName::new(first.0).unwrap(),
            first.1,
            first.2,
        )
        .await
        .expect("the first append");
    let waiting = {
        let store = store.clone();
        let (name, expected, events) = (second.0.to_string(), second.1, second.2);
        tokio::spawn(async move {
            store
                .append(&StreamName::new(name).unwrap(), expected, events)
                .await
        })
    };
    common::append_waiting_on_the_lock(store).await;
    tx.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting append finished")
        .unwrap()
}

fn event(n: u32) -> NewEvent {
    NewEvent::json("Happened", &json!({ "n": n }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_append_is_one_round_trip() {
    let Some(store) = common::fresh_store().await else {
        return;
    };
    let stream = StreamName::new("Lone-1").unwrap();
    store
        .append(&stream, ExpectedRevision::NoStream, vec![event(1)])
        .await
        .unwrap();
    let before = store.batch_stats();
    let r = store
        .append(
            &stream,
            ExpectedRevision::Exact(1),
            vec![event(2), event(3)],
        )
        .await
        .unwrap();
    assert_eq!(r.next_expected_revision, 3);
    let after = store.batch_stats();
    assert_eq!(after.round_trips - before.round_trips, 1);
    let read = store
        .read_stream(&stream, ReadStream::forward(100))
        .await
        .unwrap();
    let revisions: Vec<u64> = read.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, vec![1, 2, 3]);
    assert!(read.windows(2).all(|w| w[0].position < w[1].position));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_created_while_waiting_is_seen_by_exact_and_any() {
    let Some(store) = common::fresh_store().await else {
        return;
    };
    let exact = append_behind_a_commit(
        &store,
        ("Created-1", ExpectedRevision::NoStream, vec![event(1)]),
        ("Created-1", ExpectedRevision::Exact(1), vec![event(2)]),
    )
    .await
    .expect("Exact(1) after the stream's creation committed");
    assert_eq!(exact.next_expected_revision, 2);

    let any = append_behind_a_commit(
        &store,
        ("Created-2", ExpectedRevision::NoStream, vec![event(1)]),
        ("Created-2", ExpectedRevision::Any, vec![event(2)]),
    )
    .await
    .expect("Any after the stream's creation committed");
    assert_eq!(any.next_expected_revision, 2);

    let exists = append_behind_a_commit(
        &store,
        ("Created-3", ExpectedRevision::NoStream, vec![event(1)]),
        ("Created-3", ExpectedRevision::StreamExists, vec![event(2)]),
    )
    .await
    .expect("StreamExists after the stream's creation committed");
    assert_eq!(exists.next_expected_revision, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_moved_while_waiting_makes_a_stale_expectation_conflict() {
    let Some(store) = common::fresh_store().await else {
        return;
    };
    let stream = StreamName::new("Moved-1").unwrap();
    store
        .append(&stream, ExpectedRevision::NoStream, vec![event(1)])
        .await
        .unwrap();
    let stale = append_behind_a_commit(
        &store,
        ("Moved-1", ExpectedRevision::Exact(1), vec![event(2)]),
        ("Moved-1", ExpectedRevision::Exact(1), vec![event(3)]),
    )
    .await;
    match stale {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, Some(2)),
        other => panic!("expected a conflict with the actual revision 2, got {other:?}"),
    }
    let created = append_behind_a_commit(
        &store,
        ("Moved-2", ExpectedRevision::NoStream, vec![event(1)]),
        ("Moved-2", ExpectedRevision::NoStream, vec![event(2)]),
    )
    .await;
    match created {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, Some(1)),
        other => panic!("expected NoStream to conflict with revision 1, got {other:?}"),
    }
    let read = store
        .read_stream(&stream, ReadStream::forward(100))
        .await
        .unwrap();
    assert_eq!(read.len(), 2, "the stale append wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_stored_while_waiting_is_a_retry_or_a_duplicate() {
    let Some(store) = common::fresh_store().await else {
        return;
    };
    // The same append again: an idempotent retry, answered with the original result.
    let same = event(1);
    let retried = append_behind_a_commit(
        &store,
        ("Retry-1", ExpectedRevision::NoStream, vec![same.clone()]),
        ("Retry-1", ExpectedRevision::NoStream, vec![same]),
    )
    .await
    .expect("a retry of a committed append succeeds");
    assert_eq!(retried.next_expected_revision, 1);
    let read = store
        .read_stream(
            &StreamName::new("Retry-1").unwrap(),
            ReadStream::forward(100),
        )
        .await
        .unwrap();
    assert_eq!(read.len(), 1, "the retry wrote nothing");

    // The same id into another stream: a duplicate, and nothing written there.
    let shared = event(2);
    let duplicate = append_behind_a_commit(
        &store,
        ("Dup-1", ExpectedRevision::NoStream, vec![shared.clone()]),
        ("Dup-2", ExpectedRevision::NoStream, vec![shared]),
    )
    .await;
    match duplicate {
        Err(StoreError::DuplicateEventId {
            existing_stream, ..
        }) => assert_eq!(existing_stream, "Dup-1"),
        other => panic!("expected a duplicate id error, got {other:?}"),
    }
    let dup2 = store
        .read_stream(&StreamName::new("Dup-2").unwrap(), ReadStream::forward(100))
        .await
        .unwrap();
    assert!(dup2.is_empty());
    // Positions stay gap-tolerant and ordered: one more append lands after everything.
    let last = store
        .append(
            &StreamName::new("Dup-2").unwrap(),
            ExpectedRevision::NoStream,
            vec![event(3)],
        )
        .await
        .unwrap();
    assert!(last.position.0 >= 3);
}
