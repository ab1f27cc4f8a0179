//! The PostgreSQL outbox: the shared conformance suite, and the application's rows and the
//! outbox rows committing together in the caller's transaction. Every test runs in a fresh
//! schema, dropped when the test's outbox is dropped.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use runnel_core::async_trait;
use runnel_core::outbox::{
    FailureAction, OutboxMessage, OutboxRecord, OutboxStatus, OutboxStore, TopicRouting,
};
use runnel_core::{Message, StoreError, TopicName};
use runnel_postgres::sqlx::{self, AssertSqlSafe, Connection};
use runnel_postgres::{PostgresOptions, PostgresOutbox, PostgresStore};

/// An outbox in a fresh schema that drops the schema when the last handle goes.
struct SchemaOutbox {
    outbox: PostgresOutbox,
    url: String,
    schema: String,
}

impl Drop for SchemaOutbox {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Drop runs inside the test's runtime: drop the schema from a thread of its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
                sqlx::query(AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE"
                )))
                .execute(&mut conn)
                .await
                .expect("drop the test schema");
            });
        });
        let _ = done.join();
    }
}

async fn schema_outbox() -> Option<Arc<SchemaOutbox>> {
    let url = common::postgres_url()?;
    let schema = common::fresh_schema();
    let store = PostgresStore::connect_with(
        PostgresOptions::new(url.clone())
            .schema(schema.clone())
            .pool_size(8),
    )
    .await
    .expect("connect to the test PostgreSQL");
    let outbox = PostgresOutbox::new(store).await.expect("outbox");
    Some(Arc::new(SchemaOutbox {
        outbox,
        url,
        schema,
    }))
}

#[async_trait]
impl OutboxStore for SchemaOutbox {
    async fn enqueue(&self, messages: Vec<OutboxMessage>) -> Result<(), StoreError> {
        self.outbox.enqueue(messages).await
    }
    async fn claim(
        &self,
        relay: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        self.outbox.claim(relay, lease, limit).await
    }
    async fn mark_published(&self, seqs: &[u64]) -> Result<(), StoreError> {
        self.outbox.mark_published(seqs).await
    }
    async fn record_failure(
        &self,
        seqs: &[u64],
        error: &str,
        action: FailureAction,
    ) -> Result<(), StoreError> {
        self.outbox.record_failure(seqs, error, action).await
    }
    async fn release(&self, relay: &str) -> Result<u64, StoreError> {
        self.outbox.release(relay).await
    }
    async fn purge_published(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.outbox.purge_published(before, limit).await
    }
    async fn status(&self) -> Result<OutboxStatus, StoreError> {
        self.outbox.status().await
    }
    async fn retry_parked(&self, topic: Option<&TopicName>) -> Result<u64, StoreError> {
        self.outbox.retry_parked(topic).await
    }
    async fn wait_for_messages(&self, max_wait: Duration) -> Result<(), StoreError> {
        self.outbox.wait_for_messages(max_wait).await
    }
}

runnel_testkit::outbox_store_conformance!(schema_outbox);

fn order_message(n: u32) -> OutboxMessage {
    let m = Message::json("OrderPlaced", &serde_json::json!({ "order": n }));
    OutboxMessage::for_aggregate(&TopicRouting::default(), "Order", &n.to_string(), m)
        .expect("valid routing")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_row_and_outbox_commit_atomically() {
    let Some(t) = schema_outbox().await else {
        return;
    };
    let store = t.outbox.store().clone();
    let orders = format!("{}.orders", t.schema);
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {orders} (id bigint PRIMARY KEY)"
    )))
    .execute(store.pool())
    .await
    .expect("create the app table");

    // Committed: the order row and its message, together.
    let mut tx = store.pool().begin().await.expect("begin");
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {orders} (id) VALUES (1)"
    )))
    .execute(&mut *tx)
    .await
    .expect("insert");
    t.outbox
        .enqueue_in(&mut tx, &[order_message(1)])
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    // Rolled back after writing both: neither stays.
    let mut tx = store.pool().begin().await.expect("begin");
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {orders} (id) VALUES (2)"
    )))
    .execute(&mut *tx)
    .await
    .expect("insert");
    t.outbox
        .enqueue_in(&mut tx, &[order_message(2)])
        .await
        .expect("enqueue");
    tx.rollback().await.expect("rollback");

    // Dropped without commit (the application returned early with an error): same.
    {
        let mut tx = store.pool().begin().await.expect("begin");
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {orders} (id) VALUES (3)"
        )))
        .execute(&mut *tx)
        .await
        .expect("insert");
        t.outbox
            .enqueue_in(&mut tx, &[order_message(3)])
            .await
            .expect("enqueue");
    }

    let count: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {orders}")))
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(count, 1, "only the committed order row");
    let status = t.outbox.status().await.expect("status");
    assert_eq!(status.pending, 1, "only the committed message");
    let rows = t
        .outbox
        .claim("r", Duration::from_secs(30), 10)
        .await
        .expect("claim");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].message.key.as_deref(), Some("Order-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_wakes_a_waiting_relay_through_notify() {
    let Some(t) = schema_outbox().await else {
        return;
    };
    // A second handle, as another relay process would have: it hears the NOTIFY.
    let other = PostgresOutbox::new(t.outbox.store().clone())
        .await
        .expect("outbox");
    let waiter = tokio::spawn(async move {
        let started = std::time::Instant::now();
        other
            .wait_for_messages(Duration::from_secs(30))
            .await
            .expect("wait");
        started.elapsed()
    });
    // The second handle listens from `new` on, so this NOTIFY reaches it whether or not the
    // waiter has begun waiting yet; without it the waiter would sleep its whole 30 s.
    t.outbox
        .enqueue(vec![order_message(1)])
        .await
        .expect("enqueue");
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken well before the 30 s poll")
        .expect("join");
    assert!(
        waited < Duration::from_secs(10),
        "woken by NOTIFY, not the poll"
    );
}
