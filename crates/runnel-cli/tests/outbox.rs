//! `runnel outbox status | retry` end to end: the outbox is filled through the library,
//! the real binary reports and retries it.

use std::time::Duration;

use runnel_core::outbox::{FailureAction, OutboxMessage, OutboxStore};
use runnel_core::{Message, TopicName};
use runnel_sqlite::{SqliteOutbox, SqliteStore};
use serde_json::Value;

mod common;
use common::Scratch;

fn message(topic: &str, key: &str) -> OutboxMessage {
    OutboxMessage::new(
        TopicName::new(topic).unwrap(),
        Message::json("Tested", &serde_json::json!({})).with_key(key),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_status_reports_the_backlog_and_retry_unparks() {
    let scratch = Scratch::new();
    {
        let outbox = SqliteOutbox::new(SqliteStore::open(scratch.db()).unwrap());
        outbox
            .enqueue(vec![
                message("orders", "a"),
                message("orders", "b"),
                message("payments", "c"),
            ])
            .await
            .unwrap();
        let rows = outbox
            .claim("r", Duration::from_secs(60), 10)
            .await
            .unwrap();
        let payments: Vec<u64> = rows
            .iter()
            .filter(|r| r.topic.as_str() == "payments")
            .map(|r| r.seq)
            .collect();
        outbox
            .record_failure(&payments, "refused", FailureAction::Park)
            .await
            .unwrap();
    }

    let out = scratch
        .runnel()
        .args(["--json", "outbox", "status"])
        .assert()
        .success();
    let line: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(line["pending"], 3);
    assert_eq!(line["parked"], 1);
    assert!(line["oldest_pending_age_seconds"].as_f64().unwrap() >= 0.0);
    let topics = line["topics"].as_array().unwrap();
    assert_eq!(topics.len(), 2);
    assert_eq!(topics[0]["topic"], "orders");
    assert_eq!(topics[0]["pending"], 2);
    assert_eq!(topics[1]["parked"], 1);

    let out = scratch
        .runnel()
        .args(["outbox", "status"])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(
        text.contains("pending 3") && text.contains("parked 1"),
        "{text}"
    );
    assert!(text.contains("payments"), "{text}");

    scratch
        .runnel()
        .args(["outbox", "retry", "--topic", "bad topic"])
        .assert()
        .code(2);
    let out = scratch
        .runnel()
        .args(["--json", "outbox", "retry", "--topic", "payments"])
        .assert()
        .success();
    let line: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(line["retried"], 1);
    let out = scratch
        .runnel()
        .args(["--json", "outbox", "status"])
        .assert()
        .success();
    let line: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(line["parked"], 0);
}

#[test]
fn outbox_status_refuses_a_missing_store() {
    let scratch = Scratch::new();
    scratch
        .runnel()
        .args(["outbox", "status"])
        .assert()
        .failure();
    assert!(!scratch.db().exists(), "no empty file left behind");
}
