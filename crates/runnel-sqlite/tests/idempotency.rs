//! Idempotency on SQLite: the transactional inbox gives exactly-once effects for handlers
//! whose rows live in the same file, and the dedup window passes the shared conformance
//! suite from runnel-testkit.

use std::sync::Arc;
use std::time::Duration;

use runnel_core::idempotency::{DedupClaim, DedupStore};
use runnel_core::StoreError;
use runnel_sqlite::idempotency::{mark_processed_in, InboxOutcome, SqliteDedupStore, SqliteInbox};
use runnel_sqlite::{SqliteStore, UnitOfWork};

runnel_testkit::dedup_store_conformance!(async {
    Arc::new(SqliteDedupStore::new(
        SqliteStore::open_temporary().expect("open a temporary store"),
    ))
});

/// Deliveries of one message racing each other.
const CONCURRENT_DELIVERIES: usize = 16;
/// Distinct messages in the concurrent check.
const CONCURRENT_MESSAGES: usize = 8;

/// A handler's own error type: the inbox only needs `From<StoreError>`.
#[derive(Debug, PartialEq)]
enum HandlerError {
    Store(StoreError),
    Declined(&'static str),
}

impl From<StoreError> for HandlerError {
    fn from(e: StoreError) -> Self {
        HandlerError::Store(e)
    }
}

fn sql_error(e: runnel_sqlite::rusqlite::Error) -> HandlerError {
    HandlerError::Store(StoreError::Backend(e.to_string()))
}

/// A store with the application's own table (deliberately without a unique constraint:
/// only the inbox stands between a redelivery and a second row).
async fn store_with_effects_table() -> SqliteStore {
    let store = SqliteStore::open_temporary().expect("open a temporary store");
    store
        .unit_of_work(|uow| {
            uow.connection()
                .execute_batch(
                    "CREATE TABLE effects (message_id TEXT NOT NULL, handler TEXT NOT NULL)",
                )
                .map_err(sql_error)
        })
        .await
        .expect("create the application's table");
    store
}

/// The handler's effect: one row in its own table.
fn insert_effect(
    uow: &UnitOfWork<'_>,
    handler: &str,
    message_id: &str,
) -> Result<(), HandlerError> {
    uow.connection()
        .execute(
            "INSERT INTO effects (message_id, handler) VALUES (?1, ?2)",
            [message_id, handler],
        )
        .map_err(sql_error)?;
    Ok(())
}

async fn deliver(inbox: &SqliteInbox, handler: &'static str, message_id: &str) -> InboxOutcome<()> {
    let id = message_id.to_owned();
    inbox
        .process(handler, message_id, move |uow| {
            insert_effect(uow, handler, &id)
        })
        .await
        .expect("delivery")
}

async fn effects(store: &SqliteStore, handler: &str, message_id: &str) -> i64 {
    let (handler, message_id) = (handler.to_owned(), message_id.to_owned());
    // Read on the writer's connection inside a unit of work: it sees every commit.
    store
        .unit_of_work(move |uow| {
            uow.connection()
                .query_row(
                    "SELECT count(*) FROM effects WHERE handler = ?1 AND message_id = ?2",
                    [handler, message_id],
                    |r| r.get(0),
                )
                .map_err(sql_error)
        })
        .await
        .expect("count effects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_delivery_has_single_effect() {
    let store = store_with_effects_table().await;
    let inbox = SqliteInbox::new(store.clone());

    // Sequential redelivery.
    assert_eq!(
        deliver(&inbox, "billing", "m-1").await,
        InboxOutcome::Processed(())
    );
    assert_eq!(
        deliver(&inbox, "billing", "m-1").await,
        InboxOutcome::Duplicate
    );
    assert_eq!(effects(&store, "billing", "m-1").await, 1);

    // Concurrent redeliveries of several messages.
    let mut tasks = Vec::new();
    for m in 0..CONCURRENT_MESSAGES {
        for _ in 0..CONCURRENT_DELIVERIES {
            let inbox = inbox.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("c-{m}");
                (m, deliver(&inbox, "billing", &id).await)
            }));
        }
    }
    let mut processed = [0usize; CONCURRENT_MESSAGES];
    for t in tasks {
        let (m, outcome) = t.await.expect("delivery task");
        if !outcome.is_duplicate() {
            processed[m] += 1;
        }
    }
    assert_eq!(
        processed, [1; CONCURRENT_MESSAGES],
        "each message is processed once"
    );
    for m in 0..CONCURRENT_MESSAGES {
        assert_eq!(effects(&store, "billing", &format!("c-{m}")).await, 1);
        assert!(inbox
            .is_processed("billing", &format!("c-{m}"))
            .await
            .unwrap());
    }
}

#[tokio::test]
async fn failed_handler_leaves_no_inbox_mark() {
    let store = store_with_effects_table().await;
    let inbox = SqliteInbox::new(store.clone());

    let failed = inbox
        .process("billing", "m-1", |uow| {
            insert_effect(uow, "billing", "m-1")?;
            Err::<(), _>(HandlerError::Declined("card declined"))
        })
        .await;
    assert_eq!(failed, Err(HandlerError::Declined("card declined")));
    assert!(!inbox.is_processed("billing", "m-1").await.unwrap());
    assert_eq!(
        effects(&store, "billing", "m-1").await,
        0,
        "the effect rolled back too"
    );

    // The retry runs the handler again and sticks.
    assert_eq!(
        deliver(&inbox, "billing", "m-1").await,
        InboxOutcome::Processed(())
    );
    assert_eq!(
        deliver(&inbox, "billing", "m-1").await,
        InboxOutcome::Duplicate
    );
    assert_eq!(effects(&store, "billing", "m-1").await, 1);
}

#[tokio::test]
async fn panicking_handler_leaves_no_inbox_mark() {
    let store = store_with_effects_table().await;
    let inbox = SqliteInbox::new(store.clone());
    let outcome = inbox
        .process("billing", "m-1", |uow| -> Result<(), HandlerError> {
            insert_effect(uow, "billing", "m-1")?;
            panic!("handler bug");
        })
        .await;
    assert!(
        matches!(outcome, Err(HandlerError::Store(_))),
        "{outcome:?}"
    );
    assert!(!inbox.is_processed("billing", "m-1").await.unwrap());
    assert_eq!(effects(&store, "billing", "m-1").await, 0);
    assert_eq!(
        deliver(&inbox, "billing", "m-1").await,
        InboxOutcome::Processed(())
    );
}

#[tokio::test]
async fn different_handlers_track_ids_separately() {
    let store = store_with_effects_table().await;
    let inbox = SqliteInbox::new(store.clone());
    assert_eq!(
        deliver(&inbox, "billing", "m-1").await,
        InboxOutcome::Processed(())
    );
    assert_eq!(
        deliver(&inbox, "shipping", "m-1").await,
        InboxOutcome::Processed(())
    );
    assert_eq!(
        deliver(&inbox, "billing", "m-1").await,
        InboxOutcome::Duplicate
    );
    assert_eq!(
        deliver(&inbox, "shipping", "m-1").await,
        InboxOutcome::Duplicate
    );
    assert_eq!(effects(&store, "billing", "m-1").await, 1);
    assert_eq!(effects(&store, "shipping", "m-1").await, 1);
    assert!(!inbox.is_processed("audit", "m-1").await.unwrap());
}

#[tokio::test]
async fn inbox_marks_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inbox.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        let inbox = SqliteInbox::new(store);
        let outcome = inbox
            .process("billing", "m-1", |_| Ok::<_, StoreError>(7))
            .await
            .unwrap();
        assert_eq!(outcome, InboxOutcome::Processed(7));
    }
    let inbox = SqliteInbox::new(SqliteStore::open(&path).unwrap());
    let outcome = inbox
        .process("billing", "m-1", |_| -> Result<i32, StoreError> {
            panic!("a processed message must not run again after a restart")
        })
        .await
        .unwrap();
    assert_eq!(outcome, InboxOutcome::Duplicate);
}

#[tokio::test]
async fn mark_processed_in_joins_the_callers_unit_of_work() {
    let store = store_with_effects_table().await;
    let inbox = SqliteInbox::new(store.clone());
    let first = store
        .unit_of_work(|uow| {
            if !mark_processed_in(uow, "projection", "m-1")? {
                return Ok::<_, HandlerError>(false);
            }
            insert_effect(uow, "projection", "m-1")?;
            Ok(true)
        })
        .await
        .unwrap();
    assert!(first);
    assert!(inbox.is_processed("projection", "m-1").await.unwrap());
    // A unit of work that marks and then fails leaves no mark.
    let failed = store
        .unit_of_work(|uow| {
            assert!(mark_processed_in(uow, "projection", "m-2")?);
            Err::<(), _>(HandlerError::Declined("later step failed"))
        })
        .await;
    assert!(failed.is_err());
    assert!(!inbox.is_processed("projection", "m-2").await.unwrap());
}

#[tokio::test]
async fn invalid_inbox_entries_are_rejected_without_running_the_handler() {
    let store = store_with_effects_table().await;
    let inbox = SqliteInbox::new(store.clone());
    let too_long = "m".repeat(runnel_core::idempotency::MESSAGE_ID_LEN_MAX + 1);
    for (handler, id) in [("", "m-1"), ("billing", ""), ("billing", too_long.as_str())] {
        let outcome = inbox
            .process(handler, id, |_| -> Result<(), StoreError> {
                panic!("the handler must not run for invalid input")
            })
            .await;
        assert!(
            matches!(outcome, Err(StoreError::InvalidArgument(_))),
            "{handler:?}/{id:?}: {outcome:?}"
        );
    }
}

#[tokio::test]
async fn purge_older_than_forgets_old_marks_only() {
    let store = store_with_effects_table().await;
    let inbox = SqliteInbox::new(store.clone());
    deliver(&inbox, "billing", "old").await;
    let before_purge = runnel_core::chrono::Utc::now() + runnel_core::chrono::Duration::seconds(1);
    assert_eq!(
        inbox
            .purge_older_than(before_purge - runnel_core::chrono::Duration::hours(1))
            .await
            .unwrap(),
        0,
        "nothing is an hour old"
    );
    assert_eq!(inbox.purge_older_than(before_purge).await.unwrap(), 1);
    assert!(!inbox.is_processed("billing", "old").await.unwrap());
    // Past retention a redelivery is processed again: that is what retention means.
    assert_eq!(
        deliver(&inbox, "billing", "old").await,
        InboxOutcome::Processed(())
    );
}

#[tokio::test]
async fn purge_expired_deletes_only_expired_dedup_rows() {
    let dedup = SqliteDedupStore::new(SqliteStore::open_temporary().unwrap());
    let DedupClaim::Acquired { token: short } = dedup
        .claim("short", Duration::from_millis(1))
        .await
        .unwrap()
    else {
        panic!("first claim acquires")
    };
    let DedupClaim::Acquired { token: long } =
        dedup.claim("long", Duration::from_secs(60)).await.unwrap()
    else {
        panic!("first claim acquires")
    };
    // Poll until the 1 ms lock has expired by the writer's clock.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut purged = 0;
    while purged == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the 1 ms lock never expired"
        );
        purged = dedup.purge_expired().await.unwrap();
    }
    assert_eq!(purged, 1);
    assert!(dedup.release("short", &short).await.is_err());
    dedup.release("long", &long).await.unwrap();
}
