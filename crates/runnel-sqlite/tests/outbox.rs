//! The SQLite outbox: the shared conformance suite, and the application's rows and the
//! outbox rows committing together in one unit of work.

use std::sync::Arc;
use std::time::Duration;

use runnel_core::outbox::{OutboxMessage, OutboxStore, TopicRouting};
use runnel_core::{Message, StoreError};
use runnel_sqlite::{SqliteOutbox, SqliteStore};

runnel_testkit::outbox_store_conformance!(async {
    Arc::new(SqliteOutbox::new(
        SqliteStore::open_temporary().expect("a temporary store"),
    ))
});

/// The same suite with claims that commit without an fsync of their own (the relay
/// publishes to the bus on this file).
mod with_the_publisher_in_this_file {
    use std::sync::Arc;

    use runnel_sqlite::{SqliteOutbox, SqliteStore};

    runnel_testkit::outbox_store_conformance!(async {
        Arc::new(
            SqliteOutbox::new(SqliteStore::open_temporary().expect("a temporary store"))
                .with_publisher_in_this_file(),
        )
    });
}

/// A claim (alone or with the marks before it) is an fsynced commit, unless the relay's
/// publisher commits to this file: then its publish, an fsynced commit after the claim,
/// makes the claim durable, and the claim commits without an fsync of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_fsynced_unless_the_publisher_commits_to_this_file() {
    for (publisher_in_this_file, fsyncs) in [(false, 2), (true, 0)] {
        let store = SqliteStore::open_temporary().expect("store");
        let mut outbox = SqliteOutbox::new(store.clone());
        if publisher_in_this_file {
            outbox = outbox.with_publisher_in_this_file();
        }
        outbox
            .enqueue(vec![order_message(1), order_message(2)])
            .await
            .expect("enqueue");
        let before = store.writer_stats();
        let lease = Duration::from_secs(30);
        let rows = outbox.claim("r1", lease, 10).await.expect("claim");
        assert_eq!(rows.len(), 2);
        let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
        let rest = outbox
            .mark_published_and_claim(&seqs, "r1", lease, 10)
            .await
            .expect("mark and claim");
        assert!(rest.is_empty());
        let after = store.writer_stats();
        assert_eq!(
            (
                after.commits - before.commits,
                after.synced_commits - before.synced_commits
            ),
            (2, fsyncs),
            "commits and fsyncs of a claim and a mark-and-claim, publisher in this file: \
             {publisher_in_this_file}"
        );
        assert_eq!(outbox.status().await.expect("status").pending, 0);
    }
}

fn order_message(n: u32) -> OutboxMessage {
    let m = Message::json("OrderPlaced", &serde_json::json!({ "order": n }));
    OutboxMessage::for_aggregate(&TopicRouting::default(), "Order", &n.to_string(), m)
        .expect("valid routing")
}

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("the order is invalid")]
    Invalid,
}

async fn count_orders(store: &SqliteStore) -> i64 {
    let path = store.path().to_path_buf();
    let conn = rusqlite::Connection::open(path).expect("open the file");
    conn.query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
        .expect("count orders")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_row_and_outbox_commit_atomically() {
    let store = SqliteStore::open_temporary().expect("store");
    let outbox = SqliteOutbox::new(store.clone());
    store
        .unit_of_work(|uow| -> Result<(), StoreError> {
            uow.connection()
                .execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
                .map_err(|e| StoreError::Backend(e.to_string()))
        })
        .await
        .expect("create the app table");

    // Committed: the order row and its message, together.
    let inner = outbox.clone();
    outbox
        .unit_of_work(move |uow| -> Result<(), AppError> {
            uow.connection()
                .execute("INSERT INTO orders (id) VALUES (1)", [])
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            inner.enqueue_in(uow, &[order_message(1)])?;
            Ok(())
        })
        .await
        .expect("the first unit commits");

    // Rolled back: the application fails after writing both — neither stays.
    let inner = outbox.clone();
    let failed = outbox
        .unit_of_work(move |uow| -> Result<(), AppError> {
            uow.connection()
                .execute("INSERT INTO orders (id) VALUES (2)", [])
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            inner.enqueue_in(uow, &[order_message(2)])?;
            Err(AppError::Invalid)
        })
        .await;
    assert!(matches!(failed, Err(AppError::Invalid)));

    // Rolled back: the outbox refuses a message (oversized) after the row was written.
    let inner = outbox.clone();
    let refused = outbox
        .unit_of_work(move |uow| -> Result<(), AppError> {
            uow.connection()
                .execute("INSERT INTO orders (id) VALUES (3)", [])
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            let mut big = order_message(3);
            big.message.payload = vec![b'x'; 2 * 1024 * 1024];
            inner.enqueue_in(uow, &[big])?;
            Ok(())
        })
        .await;
    assert!(matches!(refused, Err(AppError::Store(_))), "{refused:?}");

    assert_eq!(
        count_orders(&store).await,
        1,
        "only the committed order row"
    );
    let status = outbox.status().await.expect("status");
    assert_eq!(status.pending, 1, "only the committed message");
    let rows = outbox
        .claim("r", std::time::Duration::from_secs(30), 10)
        .await
        .expect("claim");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].topic.as_str(), "Order.OrderPlaced");
    assert_eq!(rows[0].message.key.as_deref(), Some("Order-1"));
}
