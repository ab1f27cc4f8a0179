//! The SQLite processor store: the shared conformance suite, and a transition's outbox
//! rows committing (or not) with it.

use std::sync::Arc;

use runnel_core::outbox::OutboxMessage;
use runnel_core::processor::{CommitOutcome, ExpectedInstance, ProcessorStore};
use runnel_core::{Message, TopicName};
use runnel_sqlite::{SqliteProcessorStore, SqliteStore};
use runnel_testkit::processors::transition;

runnel_testkit::processor_store_conformance!(async {
    Arc::new(SqliteProcessorStore::new(
        SqliteStore::open_temporary().expect("a temporary store"),
    ))
});

fn outbox_rows(store: &SqliteStore) -> i64 {
    let conn = rusqlite::Connection::open(store.path()).expect("open the file");
    conn.query_row("SELECT count(*) FROM outbox_messages", [], |r| r.get(0))
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_messages_commit_with_the_transition_or_not_at_all() {
    let store = SqliteStore::open_temporary().expect("store");
    let processors = SqliteProcessorStore::new(store.clone());
    let send = OutboxMessage::new(
        TopicName::new("payments.commands").unwrap(),
        Message::json("ChargePayment", &serde_json::json!({"amount": 3})),
    );
    let mut t = transition("i", ExpectedInstance::New, 0);
    t.outbox = vec![send.clone()];
    assert_eq!(
        processors.commit(t).await.unwrap(),
        CommitOutcome::Committed { version: 1 }
    );
    assert_eq!(outbox_rows(&store), 1);
    let mut stale = transition("i", ExpectedInstance::Version(5), 1);
    stale.outbox = vec![send];
    assert_eq!(
        processors.commit(stale).await.unwrap(),
        CommitOutcome::Conflict { actual: Some(1) }
    );
    assert_eq!(outbox_rows(&store), 1, "a refused transition sends nothing");
}
