//! Durability settings: full (fsync before acknowledging) by default, relaxed only when asked.

use runnel_core::{EventStore, ExpectedRevision, NewEvent, ReadStream, StoreError, StreamName};
use runnel_sqlite::{Durability, SqliteOptions, SqliteStore};
use serde_json::json;

/// `PRAGMA synchronous` of the writer connection: 2 = FULL, 1 = NORMAL.
async fn writer_synchronous(store: &SqliteStore) -> i64 {
    store
        .unit_of_work(|uow| -> Result<i64, StoreError> {
            uow.connection()
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .map_err(|e| StoreError::Backend(e.to_string()))
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn default_durability_fsyncs_every_commit_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("d.db")).unwrap();
    assert_eq!(
        writer_synchronous(&store).await,
        2,
        "synchronous=FULL by default"
    );
    let mode: String = store
        .unit_of_work(|uow| -> Result<String, StoreError> {
            uow.connection()
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .map_err(|e| StoreError::Backend(e.to_string()))
        })
        .await
        .unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
}

#[tokio::test]
async fn relaxed_durability_is_opt_in_and_keeps_data_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let options = SqliteOptions {
        durability: Durability::Relaxed,
        ..SqliteOptions::default()
    };
    let stream = StreamName::new("Relaxed-1").unwrap();
    {
        let store = SqliteStore::open_with(&path, options).unwrap();
        assert_eq!(writer_synchronous(&store).await, 1, "synchronous=NORMAL");
        store
            .append(
                &stream,
                ExpectedRevision::NoStream,
                vec![NewEvent::json("Kept", &json!({"n": 1}))],
            )
            .await
            .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let events = store
        .read_stream(&stream, ReadStream::forward(10))
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "Kept");
}
