//! The repository: load, execute, metadata, retries, snapshots and upcasting, against the
//! in-memory store with injected races and failures.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use runnel::core::{
    CodecError, EventStore, NewEvent, Snapshot, SnapshotStore, StoreError, StreamName,
};
use runnel::{CommandEnvelope, Repository, RepositoryError, RetryPolicy};
use runnel_testkit::InMemoryStore;
use support::*;

fn repo(store: &InMemoryStore) -> Repository<Counter> {
    Repository::new(Arc::new(store.clone()))
        .with_upcasters(Arc::new(counter_upcasters()))
        .with_retry_policy(RetryPolicy::immediate(5))
}

fn add(n: u64) -> CommandEnvelope<CounterCommand> {
    CommandEnvelope::new(CounterCommand::Add(n))
}

#[tokio::test]
async fn execute_appends_events_and_load_folds_them() {
    let store = InMemoryStore::new();
    let repo = repo(&store);
    let first = repo.execute("a", add(2)).await.unwrap();
    assert_eq!(first.revision, Some(1));
    assert_eq!(first.events, vec![CounterEvent::Added { amount: 2 }]);
    assert_eq!(first.attempts, 1);
    assert!(first.position.is_some());
    let second = repo.execute("a", add(3)).await.unwrap();
    assert_eq!(second.revision, Some(2));
    assert!(second.position > first.position);
    assert_eq!(second.stream.as_str(), "Counter-a");

    let loaded = repo.load("a").await.unwrap();
    assert_eq!(loaded.state.value, 5);
    assert_eq!(loaded.revision, Some(2));
    let events = stored(&store, "Counter-a").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].event_type, "Added");
    assert_eq!(events[0].schema_version, 2);
}

#[tokio::test]
async fn missing_aggregate_loads_as_default_without_revision() {
    let store = InMemoryStore::new();
    let loaded = repo(&store).load("nobody").await.unwrap();
    assert_eq!(loaded.state, Counter::default());
    assert_eq!(loaded.revision, None);
    assert!(!loaded.exists());
}

#[tokio::test]
async fn command_without_events_appends_nothing() {
    let store = InMemoryStore::new();
    let repo = repo(&store);
    let outcome = repo.execute("a", add(0)).await.unwrap();
    assert!(!outcome.appended());
    assert_eq!(outcome.revision, None);
    assert_eq!(outcome.position, None);
    let stream = StreamName::new("Counter-a").unwrap();
    assert_eq!(store.stream_revision(&stream).await.unwrap(), None);

    repo.execute("a", add(1)).await.unwrap();
    let outcome = repo.execute("a", add(0)).await.unwrap();
    assert_eq!(outcome.revision, Some(1));
    assert_eq!(store.stream_revision(&stream).await.unwrap(), Some(1));
}

#[tokio::test]
async fn domain_rejection_is_typed_and_writes_nothing() {
    let store = InMemoryStore::new();
    let repo = repo(&store);
    let err = repo
        .execute("a", CommandEnvelope::new(CounterCommand::Refuse))
        .await
        .unwrap_err();
    assert!(err.is_domain());
    assert_eq!(err.domain(), Some(&Refused));
    assert_eq!(err.to_string(), "the counter refuses");
    assert!(stored(&store, "Counter-a").await.is_empty());
}

#[tokio::test]
async fn invalid_aggregate_id_is_a_typed_store_error() {
    let store = InMemoryStore::new();
    let err = repo(&store).execute("has space", add(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            RepositoryError::Store(StoreError::InvalidStreamName { .. })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn events_carry_correlation_causation_and_user_of_the_command() {
    let store = InMemoryStore::new();
    let envelope = add(1)
        .with_correlation_id("corr-7")
        .with_user_id("alice")
        .with_header("tenant", "t1");
    let command_id = envelope.command_id.clone();
    repo(&store).execute("a", envelope).await.unwrap();
    let events = stored(&store, "Counter-a").await;
    let meta = &events[0].metadata;
    assert_eq!(meta.correlation_id.as_deref(), Some("corr-7"));
    assert_eq!(meta.causation_id.as_deref(), Some(command_id.as_str()));
    assert_eq!(meta.user_id.as_deref(), Some("alice"));
}

#[tokio::test]
async fn correlation_starts_from_the_command_id_when_none_is_given() {
    let store = InMemoryStore::new();
    let envelope = add(1);
    let command_id = envelope.command_id.clone();
    repo(&store).execute("a", envelope).await.unwrap();
    let meta = stored(&store, "Counter-a").await[0].metadata.clone();
    assert_eq!(meta.correlation_id.as_deref(), Some(command_id.as_str()));
    assert_eq!(meta.causation_id.as_deref(), Some(command_id.as_str()));
}

#[tokio::test]
async fn conflict_is_retried_by_reloading_and_handling_again() {
    let store = disturbed_store();
    let repo = Repository::<Counter>::new(Arc::new(store.clone()))
        .with_retry_policy(RetryPolicy::immediate(5));
    repo.execute("a", add(1)).await.unwrap();
    store.hook().race_next(2);
    let outcome = repo.execute("a", add(5)).await.unwrap();
    assert_eq!(outcome.attempts, 3);
    // 1, two rival writes, then this command's event on top of them.
    assert_eq!(outcome.revision, Some(4));
    let loaded = repo.load("a").await.unwrap();
    assert_eq!(loaded.state.value, 1 + 2 * RIVAL_AMOUNT + 5);
    // Each retry is a new decision, so it carries new event ids.
    let calls = store.hook().append_calls();
    assert_eq!(calls.len(), 4);
    assert_ne!(calls[1], calls[2]);
}

#[tokio::test]
async fn conflict_retries_exhaust_after_max_attempts_and_write_nothing() {
    let store = disturbed_store();
    let repo = Repository::<Counter>::new(Arc::new(store.clone()))
        .with_retry_policy(RetryPolicy::immediate(3));
    store.hook().race_next(u32::MAX);
    let err = repo.execute("a", add(5)).await.unwrap_err();
    match &err {
        RepositoryError::ConflictRetriesExhausted { attempts, last } => {
            assert_eq!(*attempts, 3);
            assert!(last.is_conflict(), "{last:?}");
        }
        other => panic!("expected exhausted retries, got {other:?}"),
    }
    assert!(err.is_conflict());
    assert!(err.to_string().contains("max_attempts"), "{err}");
    let events = stored(&**store.inner(), "Counter-a").await;
    assert_eq!(events.len(), 3, "only the rivals' events are stored");
}

#[tokio::test]
async fn lost_ack_is_retried_with_the_same_event_ids_and_stores_once() {
    let store = disturbed_store();
    let repo = Repository::<Counter>::new(Arc::new(store.clone()))
        .with_retry_policy(RetryPolicy::immediate(5));
    store.hook().lose_ack_next(1);
    let outcome = repo.execute("a", add(4)).await.unwrap();
    assert_eq!(
        outcome.attempts, 1,
        "a transient error is not a new decision"
    );
    assert_eq!(outcome.revision, Some(1));
    let calls = store.hook().append_calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0], calls[1],
        "the retry must resend the same event ids"
    );
    assert_eq!(stored(&**store.inner(), "Counter-a").await.len(), 1);
}

#[tokio::test]
async fn transient_failure_is_retried_until_the_append_lands() {
    let store = disturbed_store();
    let repo = Repository::<Counter>::new(Arc::new(store.clone()))
        .with_retry_policy(RetryPolicy::immediate(5));
    store.hook().fail_next(3);
    let outcome = repo.execute("a", add(4)).await.unwrap();
    assert_eq!(outcome.revision, Some(1));
    assert_eq!(store.hook().append_calls().len(), 4);
    assert_eq!(stored(&**store.inner(), "Counter-a").await.len(), 1);
}

#[tokio::test]
async fn transient_failure_beyond_the_policy_is_a_store_error() {
    let store = disturbed_store();
    let repo = Repository::<Counter>::new(Arc::new(store.clone()))
        .with_retry_policy(RetryPolicy::immediate(2));
    store.hook().fail_next(u32::MAX);
    let err = repo.execute("a", add(4)).await.unwrap_err();
    assert!(
        matches!(err, RepositoryError::Store(StoreError::Unavailable(_))),
        "{err:?}"
    );
    assert_eq!(store.hook().append_calls().len(), 2);
    assert!(stored(&**store.inner(), "Counter-a").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_all_succeed_through_conflict_retries() {
    const WRITERS: u64 = 8;
    let store = InMemoryStore::new();
    let repo = Repository::<Counter>::new(Arc::new(store.clone())).with_retry_policy(RetryPolicy {
        max_attempts: 100,
        base_delay: Duration::from_micros(100),
        max_delay: Duration::from_millis(5),
    });
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS as usize));
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (repo, barrier) = (repo.clone(), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            repo.execute("shared", add(1)).await
        }));
    }
    let deadline = Duration::from_secs(30);
    for task in tasks {
        let outcome = tokio::time::timeout(deadline, task)
            .await
            .expect("writer finished within the deadline")
            .unwrap()
            .unwrap();
        assert!(outcome.attempts >= 1);
    }
    let loaded = repo.load("shared").await.unwrap();
    assert_eq!(loaded.state.value, WRITERS);
    assert_eq!(loaded.revision, Some(WRITERS));
}

fn snapshotting(store: &InMemoryStore, every: u64) -> Repository<Counter> {
    repo(store)
        .with_snapshot_store(Arc::new(store.clone()))
        .with_snapshot_every(every)
}

async fn snapshot_of(store: &InMemoryStore, stream: &str) -> Option<Snapshot> {
    store
        .load_snapshot(&StreamName::new(stream).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn snapshot_is_saved_when_the_revision_crosses_the_interval() {
    let store = InMemoryStore::new();
    let repo = snapshotting(&store, 3);
    repo.execute("a", add(1)).await.unwrap();
    repo.execute("a", add(2)).await.unwrap();
    assert_eq!(snapshot_of(&store, "Counter-a").await, None);
    repo.execute("a", add(3)).await.unwrap();
    let snapshot = snapshot_of(&store, "Counter-a").await.expect("a snapshot");
    assert_eq!(snapshot.revision, 3);
    assert_eq!(snapshot.schema_version, 1);
    let state: Counter = serde_json::from_slice(&snapshot.data).unwrap();
    assert_eq!(state.value, 6);
}

#[tokio::test]
async fn load_starts_from_the_snapshot_and_folds_later_events() {
    let store = InMemoryStore::new();
    let repo = snapshotting(&store, 1000);
    repo.execute("a", add(1)).await.unwrap();
    repo.execute("a", add(2)).await.unwrap();
    // A snapshot whose state differs from the events' fold proves it was used.
    store
        .save_snapshot(Snapshot {
            stream: StreamName::new("Counter-a").unwrap(),
            revision: 2,
            schema_version: 1,
            data: br#"{"value": 1000}"#.to_vec(),
            taken_at: Utc::now(),
        })
        .await
        .unwrap();
    repo.execute("a", add(4)).await.unwrap();
    let loaded = repo.load("a").await.unwrap();
    assert_eq!(loaded.state.value, 1004);
    assert_eq!(loaded.revision, Some(3));
}

#[tokio::test]
async fn snapshot_round_trip_matches_a_full_replay() {
    let store = InMemoryStore::new();
    let repo = snapshotting(&store, 2);
    for n in 1..=5 {
        repo.execute("a", add(n)).await.unwrap();
    }
    assert_eq!(snapshot_of(&store, "Counter-a").await.unwrap().revision, 4);
    let with_snapshot = repo.load("a").await.unwrap();
    let replayed = self::repo(&store).load("a").await.unwrap();
    assert_eq!(with_snapshot, replayed);
    assert_eq!(with_snapshot.state.value, 15);
}

#[tokio::test]
async fn snapshot_of_another_state_version_is_ignored() {
    let store = InMemoryStore::new();
    let repo = snapshotting(&store, 1000);
    repo.execute("a", add(7)).await.unwrap();
    store
        .save_snapshot(Snapshot {
            stream: StreamName::new("Counter-a").unwrap(),
            revision: 1,
            schema_version: 99,
            data: br#"{"value": 1000}"#.to_vec(),
            taken_at: Utc::now(),
        })
        .await
        .unwrap();
    assert_eq!(repo.load("a").await.unwrap().state.value, 7);
}

#[tokio::test]
async fn undecodable_snapshot_is_ignored() {
    let store = InMemoryStore::new();
    let repo = snapshotting(&store, 1000);
    repo.execute("a", add(7)).await.unwrap();
    store
        .save_snapshot(Snapshot {
            stream: StreamName::new("Counter-a").unwrap(),
            revision: 1,
            schema_version: 1,
            data: br#"{"value": "not a number"}"#.to_vec(),
            taken_at: Utc::now(),
        })
        .await
        .unwrap();
    let loaded = repo.load("a").await.unwrap();
    assert_eq!(loaded.state.value, 7);
    assert_eq!(loaded.revision, Some(1));
}

#[tokio::test]
async fn failing_snapshot_store_does_not_fail_commands() {
    let store = InMemoryStore::new();
    let repo = repo(&store)
        .with_snapshot_store(Arc::new(BrokenSnapshots))
        .with_snapshot_every(1);
    let outcome = repo.execute("a", add(3)).await.unwrap();
    assert_eq!(outcome.revision, Some(1));
    assert_eq!(repo.load("a").await.unwrap().state.value, 3);
}

#[tokio::test]
async fn old_schema_events_are_upcast_on_load() {
    let store = InMemoryStore::new();
    let stream = StreamName::new("Counter-old").unwrap();
    let v1 = NewEvent::json("Added", &serde_json::json!({"n": 40}));
    store
        .append(&stream, runnel::core::ExpectedRevision::NoStream, vec![v1])
        .await
        .unwrap();
    let repo = repo(&store);
    assert_eq!(repo.load("old").await.unwrap().state.value, 40);
    // New events land on top of upcast old ones.
    repo.execute("old", add(2)).await.unwrap();
    assert_eq!(repo.load("old").await.unwrap().state.value, 42);
}

#[tokio::test]
async fn old_schema_event_without_upcaster_is_unsupported_schema_version() {
    let store = InMemoryStore::new();
    let stream = StreamName::new("Counter-old").unwrap();
    let v1 = NewEvent::json("Added", &serde_json::json!({"n": 40}));
    store
        .append(&stream, runnel::core::ExpectedRevision::NoStream, vec![v1])
        .await
        .unwrap();
    let repo = Repository::<Counter>::new(Arc::new(store.clone()));
    let err = repo.load("old").await.unwrap_err();
    assert!(
        matches!(
            err,
            RepositoryError::Codec(CodecError::UnsupportedSchemaVersion {
                found: 1,
                expected: 2,
                ..
            })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn long_streams_load_across_pages() {
    let store = InMemoryStore::new();
    let stream = StreamName::new("Counter-long").unwrap();
    let total = runnel::aggregate::LOAD_PAGE_EVENTS as u64 + 5;
    let mut written = 0u64;
    while written < total {
        let batch: Vec<NewEvent> = (0..500.min(total - written)).map(|_| added(1)).collect();
        written += batch.len() as u64;
        store
            .append(&stream, runnel::core::ExpectedRevision::Any, batch)
            .await
            .unwrap();
    }
    let loaded = repo(&store).load("long").await.unwrap();
    assert_eq!(loaded.state.value, total);
    assert_eq!(loaded.revision, Some(total));
}

#[test]
fn default_retry_policy_retries_a_few_times_with_backoff() {
    let p = RetryPolicy::default();
    assert_eq!(p.max_attempts, 5);
    assert!(p.base_delay > Duration::ZERO && p.max_delay >= p.base_delay);
}

struct FixedClock(chrono::DateTime<Utc>);

impl runnel::core::Clock for FixedClock {
    fn now(&self) -> chrono::DateTime<Utc> {
        self.0
    }
}

#[tokio::test]
async fn snapshots_are_stamped_by_the_injected_clock() {
    let store = InMemoryStore::new();
    let at = chrono::DateTime::parse_from_rfc3339("2030-01-02T03:04:05Z")
        .unwrap()
        .with_timezone(&Utc);
    let repo = snapshotting(&store, 1).with_clock(Arc::new(FixedClock(at)));
    repo.execute("a", add(1)).await.unwrap();
    assert_eq!(snapshot_of(&store, "Counter-a").await.unwrap().taken_at, at);
}

#[tokio::test]
async fn snapshot_ahead_of_its_stream_is_ignored() {
    let store = InMemoryStore::new();
    let repo = snapshotting(&store, 1000);
    repo.execute("a", add(2)).await.unwrap();
    store
        .save_snapshot(Snapshot {
            stream: StreamName::new("Counter-a").unwrap(),
            revision: 9,
            schema_version: 1,
            data: br#"{"value": 1000}"#.to_vec(),
            taken_at: Utc::now(),
        })
        .await
        .unwrap();
    let loaded = repo.load("a").await.unwrap();
    assert_eq!((loaded.state.value, loaded.revision), (2, Some(1)));
    // And commands still append instead of conflicting forever.
    let outcome = repo.execute("a", add(1)).await.unwrap();
    assert_eq!(outcome.revision, Some(2));
}

/// A load reads the stream in pages of `LOAD_PAGE_EVENTS`, the next page while it folds
/// the last: every length around the page boundaries folds every event once, in order,
/// and a load that fails part way (an event it cannot decode in the second page) reports
/// that event's error rather than a state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_across_page_boundaries_fold_every_event_once() {
    use runnel::aggregate::LOAD_PAGE_EVENTS;
    let store = InMemoryStore::new();
    let repo = repo(&store);
    let page = LOAD_PAGE_EVENTS as u64;
    for (i, len) in [page - 1, page, page + 1, 2 * page, 2 * page + 7]
        .into_iter()
        .enumerate()
    {
        let stream = StreamName::new(format!("Counter-p{i}")).unwrap();
        let mut appended = 0u64;
        while appended < len {
            let batch = (len - appended).min(500);
            let events = (appended + 1..=appended + batch).map(added).collect();
            store
                .append(&stream, runnel::core::ExpectedRevision::Any, events)
                .await
                .unwrap();
            appended += batch;
        }
        let loaded = repo.load(&format!("p{i}")).await.unwrap();
        assert_eq!(loaded.revision, Some(len), "stream of {len}");
        assert_eq!(loaded.state.value, len * (len + 1) / 2, "stream of {len}");
    }

    // An undecodable event in the second page: the load fails on it.
    let stream = StreamName::new("Counter-bad").unwrap();
    for events in [
        (1..=500).map(added).collect(),
        (501..=page + 3).map(added).collect(),
    ] {
        store
            .append(&stream, runnel::core::ExpectedRevision::Any, events)
            .await
            .unwrap();
    }
    let mut bad = added(1);
    bad.data = b"{\"amount\": \"not a number\"}".to_vec();
    store
        .append(&stream, runnel::core::ExpectedRevision::Any, vec![bad])
        .await
        .unwrap();
    let err = repo.load("bad").await.unwrap_err();
    assert!(matches!(err, RepositoryError::Codec(_)), "{err:?}");
}
