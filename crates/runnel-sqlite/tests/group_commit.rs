//! The group-commit writer batches concurrent jobs into one transaction, and a failing job
//! in a batch fails alone.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use runnel_core::{EventStore, ExpectedRevision, NewEvent, StoreError, StreamName};
use runnel_sqlite::SqliteStore;
use serde_json::json;

fn event(i: usize) -> NewEvent {
    NewEvent::json("Tested", &json!({ "i": i }))
}

/// Blocks the writer with a unit of work until `release` is sent, so the test can queue
/// jobs behind it deterministically. Returns once the writer is inside the blocker.
async fn block_writer(store: &SqliteStore) -> (std_mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
    let (release, wait) = std_mpsc::channel::<()>();
    let (started_tx, started_rx) = std_mpsc::channel::<()>();
    let blocker = store.clone();
    let handle = tokio::spawn(async move {
        blocker
            .unit_of_work(move |_uow| -> Result<(), StoreError> {
                let _ = started_tx.send(());
                // Bounded: a broken test fails instead of hanging.
                let _ = wait.recv_timeout(Duration::from_secs(30));
                Ok(())
            })
            .await
            .expect("blocking unit of work");
    });
    tokio::task::spawn_blocking(move || started_rx.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the writer never started the blocking unit of work");
    (release, handle)
}

async fn wait_for_queue(store: &SqliteStore, len: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.writer_queue_len() < len {
        assert!(
            Instant::now() < deadline,
            "jobs never queued up: {}",
            store.writer_queue_len()
        );
        // Polling a condition with a deadline, not sleeping to hope.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("s.db")).unwrap();
    let (release, blocker) = block_writer(&store).await;
    let before = store.writer_stats();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = StreamName::new(format!("Batch-{i}")).unwrap();
            s.append(&stream, ExpectedRevision::NoStream, vec![event(i)])
                .await
        }));
    }
    wait_for_queue(&store, 64).await;
    release.send(()).unwrap();
    for t in tasks {
        t.await.unwrap().expect("append");
    }
    blocker.await.unwrap();
    let after = store.writer_stats();
    // One commit for the blocker's batch, one for all 64 appends.
    assert_eq!(after.commits - before.commits, 2, "{before:?} -> {after:?}");
    assert_eq!(after.events - before.events, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conflicting_append_fails_alone_in_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("s.db")).unwrap();
    let shared = StreamName::new("Shared-1").unwrap();
    let (release, blocker) = block_writer(&store).await;
    let before = store.writer_stats();
    // 16 appends race for the same new stream; 16 others go to their own streams.
    let mut racing = Vec::new();
    let mut independent = Vec::new();
    for i in 0..16 {
        let (s, stream) = (store.clone(), shared.clone());
        racing.push(tokio::spawn(async move {
            s.append(&stream, ExpectedRevision::NoStream, vec![event(i)])
                .await
        }));
        let s = store.clone();
        independent.push(tokio::spawn(async move {
            let stream = StreamName::new(format!("Own-{i}")).unwrap();
            s.append(&stream, ExpectedRevision::NoStream, vec![event(i)])
                .await
        }));
    }
    wait_for_queue(&store, 32).await;
    release.send(()).unwrap();
    let mut wins = 0;
    for t in racing {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, Some(1)),
            Err(e) => panic!("unexpected {e}"),
        }
    }
    for t in independent {
        t.await
            .unwrap()
            .expect("independent append commits despite conflicts in its batch");
    }
    blocker.await.unwrap();
    assert_eq!(wins, 1);
    assert_eq!(store.stream_revision(&shared).await.unwrap(), Some(1));
    assert_eq!(store.writer_stats().commits - before.commits, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unit_of_work_commits_own_rows_and_events_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("s.db")).unwrap();
    store
        .unit_of_work(|uow| -> Result<(), StoreError> {
            uow.connection()
                .execute_batch("CREATE TABLE app_rows (v INTEGER)")
                .map_err(|e| StoreError::Backend(e.to_string()))
        })
        .await
        .unwrap();
    let stream = StreamName::new("Uow-1").unwrap();

    #[derive(Debug)]
    enum AppError {
        Store(StoreError),
        Refused,
    }
    impl From<StoreError> for AppError {
        fn from(e: StoreError) -> Self {
            AppError::Store(e)
        }
    }

    let s = stream.clone();
    let failed = store
        .unit_of_work(move |uow| -> Result<(), AppError> {
            uow.connection()
                .execute("INSERT INTO app_rows (v) VALUES (1)", [])
                .map_err(|e| AppError::Store(StoreError::Backend(e.to_string())))?;
            uow.append(&s, ExpectedRevision::NoStream, &[event(1)])?;
            Err(AppError::Refused)
        })
        .await;
    match failed {
        Err(AppError::Refused) => {}
        Err(AppError::Store(e)) => panic!("unexpected store error {e}"),
        Ok(()) => panic!("the unit of work should have failed"),
    }
    assert_eq!(store.stream_revision(&stream).await.unwrap(), None);

    let s = stream.clone();
    store
        .unit_of_work(move |uow| -> Result<(), AppError> {
            uow.connection()
                .execute("INSERT INTO app_rows (v) VALUES (2)", [])
                .map_err(|e| AppError::Store(StoreError::Backend(e.to_string())))?;
            uow.append(&s, ExpectedRevision::NoStream, &[event(2)])?;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(store.stream_revision(&stream).await.unwrap(), Some(1));
    let conn = runnel_sqlite::rusqlite::Connection::open(store.path()).unwrap();
    let rows: Vec<i64> = conn
        .prepare("SELECT v FROM app_rows")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, vec![2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_unit_of_work_rolls_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("s.db")).unwrap();
    let stream = StreamName::new("Panic-1").unwrap();
    let s = stream.clone();
    let r = store
        .unit_of_work(move |uow| -> Result<(), StoreError> {
            uow.append(&s, ExpectedRevision::NoStream, &[event(1)])?;
            panic!("handler bug");
        })
        .await;
    assert!(r.is_err());
    assert_eq!(store.stream_revision(&stream).await.unwrap(), None);
    // The writer survived and keeps working.
    store
        .append(&stream, ExpectedRevision::NoStream, vec![event(2)])
        .await
        .unwrap();
}
