//! Idempotency on PostgreSQL: the transactional inbox gives exactly-once effects for
//! handlers whose rows live in the same database (also across processes sharing it), and
//! the dedup window passes the shared conformance suite from runnel-testkit. Every test
//! runs in its own schema.

mod common;

use std::sync::Arc;
use std::time::Duration;

use runnel_core::idempotency::{DedupClaim, DedupStore};
use runnel_core::StoreError;
use runnel_postgres::idempotency::{InboxOutcome, PostgresDedupStore, PostgresInbox};
use runnel_postgres::{PostgresOptions, PostgresStore};

runnel_testkit::dedup_store_conformance!(async {
    let store = common::fresh_store().await?;
    Some(Arc::new(PostgresDedupStore::new(&store)))
});

/// Deliveries of one message racing each other.
const CONCURRENT_DELIVERIES: usize = 8;
/// Distinct messages in the concurrent check.
const CONCURRENT_MESSAGES: usize = 4;

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

fn sql_error(e: sqlx::Error) -> HandlerError {
    HandlerError::Store(StoreError::Backend(e.to_string()))
}

/// The schema's store plus the application's own table, deliberately without a unique
/// constraint: only the inbox stands between a redelivery and a second row.
struct App {
    store: Arc<PostgresStore>,
    inbox: PostgresInbox,
    effects_table: Arc<str>,
}

async fn app() -> Option<App> {
    let store = common::fresh_store().await?;
    let effects_table: Arc<str> = format!("{}.effects", store.schema()).into();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {effects_table} (handler text NOT NULL, message_id text NOT NULL)"
    )))
    .execute(store.pool())
    .await
    .expect("create the application's table");
    Some(App {
        inbox: PostgresInbox::new(&store),
        store,
        effects_table,
    })
}

impl App {
    /// The same schema through a second store, as a second process would see it.
    async fn second_process(&self) -> App {
        let url = common::postgres_url().expect("configured");
        let store = PostgresStore::connect_with(
            PostgresOptions::new(url).schema(self.store.schema().to_string()),
        )
        .await
        .expect("connect a second store");
        App {
            inbox: PostgresInbox::new(&store),
            store: Arc::new(store),
            effects_table: Arc::clone(&self.effects_table),
        }
    }

    /// Delivers `message_id` to `handler`, whose effect is one row in its own table.
    async fn deliver(&self, handler: &'static str, message_id: &str) -> InboxOutcome<()> {
        self.try_deliver(handler, message_id, None)
            .await
            .expect("delivery")
    }

    /// Like `deliver`, but the handler fails with `fail` after writing its row.
    async fn try_deliver(
        &self,
        handler: &'static str,
        message_id: &str,
        fail: Option<&'static str>,
    ) -> Result<InboxOutcome<()>, HandlerError> {
        let sql = format!(
            "INSERT INTO {} (handler, message_id) VALUES ($1, $2)",
            self.effects_table
        );
        let id = message_id.to_owned();
        self.inbox
            .process(handler, message_id, move |tx| {
                Box::pin(async move {
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(handler)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(sql_error)?;
                    match fail {
                        Some(reason) => Err(HandlerError::Declined(reason)),
                        None => Ok(()),
                    }
                })
            })
            .await
    }

    async fn effects(&self, handler: &str, message_id: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {} WHERE handler = $1 AND message_id = $2",
            self.effects_table
        )))
        .bind(handler)
        .bind(message_id)
        .fetch_one(self.store.pool())
        .await
        .expect("count effects")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_delivery_has_single_effect() {
    let Some(app) = app().await else { return };
    let other = app.second_process().await;

    // Sequential redelivery, also through the second process.
    assert_eq!(
        app.deliver("billing", "m-1").await,
        InboxOutcome::Processed(())
    );
    assert_eq!(app.deliver("billing", "m-1").await, InboxOutcome::Duplicate);
    assert_eq!(
        other.deliver("billing", "m-1").await,
        InboxOutcome::Duplicate
    );
    assert_eq!(app.effects("billing", "m-1").await, 1);

    // Concurrent redeliveries of several messages through both processes.
    let (app, other) = (Arc::new(app), Arc::new(other));
    let mut tasks = Vec::new();
    for m in 0..CONCURRENT_MESSAGES {
        for d in 0..CONCURRENT_DELIVERIES {
            let target = Arc::clone(if d % 2 == 0 { &app } else { &other });
            tasks.push(tokio::spawn(async move {
                (m, target.deliver("billing", &format!("c-{m}")).await)
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
        let id = format!("c-{m}");
        assert_eq!(app.effects("billing", &id).await, 1);
        assert!(app.inbox.is_processed("billing", &id).await.unwrap());
    }
}

#[tokio::test]
async fn failed_handler_leaves_no_inbox_mark() {
    let Some(app) = app().await else { return };
    let failed = app
        .try_deliver("billing", "m-1", Some("card declined"))
        .await;
    assert_eq!(failed, Err(HandlerError::Declined("card declined")));
    assert!(!app.inbox.is_processed("billing", "m-1").await.unwrap());
    assert_eq!(
        app.effects("billing", "m-1").await,
        0,
        "the effect rolled back too"
    );

    // The retry runs the handler again and sticks.
    assert_eq!(
        app.deliver("billing", "m-1").await,
        InboxOutcome::Processed(())
    );
    assert_eq!(app.deliver("billing", "m-1").await, InboxOutcome::Duplicate);
    assert_eq!(app.effects("billing", "m-1").await, 1);
}

#[tokio::test]
async fn handler_that_swallows_a_failed_statement_commits_nothing() {
    let Some(app) = app().await else { return };
    let outcome = app
        .inbox
        .process("billing", "m-1", |tx| {
            Box::pin(async move {
                // The statement fails and aborts the transaction; the handler ignores it.
                let _ = sqlx::query("SELECT * FROM no_such_table")
                    .execute(&mut *tx)
                    .await;
                Ok::<_, StoreError>(())
            })
        })
        .await;
    assert!(
        outcome.is_err(),
        "an aborted transaction is not Processed: {outcome:?}"
    );
    assert!(!app.inbox.is_processed("billing", "m-1").await.unwrap());
    assert_eq!(
        app.deliver("billing", "m-1").await,
        InboxOutcome::Processed(())
    );
}

#[tokio::test]
async fn different_handlers_track_ids_separately() {
    let Some(app) = app().await else { return };
    assert_eq!(
        app.deliver("billing", "m-1").await,
        InboxOutcome::Processed(())
    );
    assert_eq!(
        app.deliver("shipping", "m-1").await,
        InboxOutcome::Processed(())
    );
    assert_eq!(app.deliver("billing", "m-1").await, InboxOutcome::Duplicate);
    assert_eq!(
        app.deliver("shipping", "m-1").await,
        InboxOutcome::Duplicate
    );
    assert_eq!(app.effects("billing", "m-1").await, 1);
    assert_eq!(app.effects("shipping", "m-1").await, 1);
    assert!(!app.inbox.is_processed("audit", "m-1").await.unwrap());
}

#[tokio::test]
async fn mark_processed_in_joins_the_callers_transaction() {
    let Some(app) = app().await else { return };
    let mut tx = app.store.pool().begin().await.unwrap();
    assert!(app
        .inbox
        .mark_processed_in(&mut tx, "projection", "m-1")
        .await
        .unwrap());
    assert!(
        !app.inbox.is_processed("projection", "m-1").await.unwrap(),
        "uncommitted marks are invisible"
    );
    tx.commit().await.unwrap();
    assert!(app.inbox.is_processed("projection", "m-1").await.unwrap());

    let mut tx = app.store.pool().begin().await.unwrap();
    assert!(!app
        .inbox
        .mark_processed_in(&mut tx, "projection", "m-1")
        .await
        .unwrap());
    assert!(app
        .inbox
        .mark_processed_in(&mut tx, "projection", "m-2")
        .await
        .unwrap());
    tx.rollback().await.unwrap();
    assert!(!app.inbox.is_processed("projection", "m-2").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn begin_waits_for_a_concurrent_holder_and_follows_its_outcome() {
    let Some(app) = app().await else { return };
    let other = Arc::new(app.second_process().await);
    /// How long the waiting `begin` is watched for finishing early (it must not).
    const QUIET_WINDOW: Duration = Duration::from_millis(300);

    // The holder rolls back: the waiter then gets the message.
    let held = app
        .inbox
        .begin("billing", "m-1")
        .await
        .unwrap()
        .expect("new");
    let waiter = {
        let other = Arc::clone(&other);
        tokio::spawn(async move { other.inbox.begin("billing", "m-1").await })
    };
    tokio::time::sleep(QUIET_WINDOW).await;
    assert!(
        !waiter.is_finished(),
        "a concurrent begin waits for the holder"
    );
    held.rollback().await;
    let mut retry = waiter
        .await
        .unwrap()
        .unwrap()
        .expect("the rolled-back mark is free");

    // The new holder commits: a waiter then sees the message as processed.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {} (handler, message_id) VALUES ('billing', 'm-1')",
        app.effects_table
    )))
    .execute(retry.connection())
    .await
    .unwrap();
    let waiter = {
        let other = Arc::clone(&other);
        tokio::spawn(async move { other.inbox.begin("billing", "m-1").await })
    };
    tokio::time::sleep(QUIET_WINDOW).await;
    assert!(
        !waiter.is_finished(),
        "a concurrent begin waits for the holder"
    );
    retry.commit().await.unwrap();
    assert!(waiter.await.unwrap().unwrap().is_none(), "processed once");
    assert_eq!(app.effects("billing", "m-1").await, 1);

    // Dropping an open transaction rolls it back.
    drop(
        app.inbox
            .begin("billing", "m-2")
            .await
            .unwrap()
            .expect("new"),
    );
    assert!(app.inbox.begin("billing", "m-2").await.unwrap().is_some());
}

#[tokio::test]
async fn invalid_inbox_entries_are_rejected_without_running_the_handler() {
    let Some(app) = app().await else { return };
    let too_long = "m".repeat(runnel_core::idempotency::MESSAGE_ID_LEN_MAX + 1);
    for (handler, id) in [("", "m-1"), ("billing", ""), ("billing", too_long.as_str())] {
        let outcome = app
            .inbox
            .process(
                handler,
                id,
                |_| -> futures_util::future::BoxFuture<'_, Result<(), StoreError>> {
                    panic!("the handler must not run for invalid input")
                },
            )
            .await;
        assert!(
            matches!(outcome, Err(StoreError::InvalidArgument(_))),
            "{handler:?}/{id:?}: {outcome:?}"
        );
    }
}

#[tokio::test]
async fn purge_older_than_forgets_old_marks_only() {
    let Some(app) = app().await else { return };
    app.deliver("billing", "old").await;
    let soon = runnel_core::chrono::Utc::now() + runnel_core::chrono::Duration::seconds(5);
    assert_eq!(
        app.inbox
            .purge_older_than(soon - runnel_core::chrono::Duration::hours(1))
            .await
            .unwrap(),
        0,
        "nothing is an hour old"
    );
    assert_eq!(app.inbox.purge_older_than(soon).await.unwrap(), 1);
    assert!(!app.inbox.is_processed("billing", "old").await.unwrap());
    // Past retention a redelivery is processed again: that is what retention means.
    assert_eq!(
        app.deliver("billing", "old").await,
        InboxOutcome::Processed(())
    );
}

#[tokio::test]
async fn purge_expired_deletes_only_expired_dedup_rows() {
    let Some(store) = common::fresh_store().await else {
        return;
    };
    let dedup = PostgresDedupStore::new(&store);
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
    // Poll until the 1 ms lock has expired by the database's clock.
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
