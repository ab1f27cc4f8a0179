//! Interoperability with a plain Kafka client that knows nothing of Runnel: Python's
//! confluent-kafka plus the official CloudEvents SDK (tests/interop/kafka_cloudevents.py,
//! run with the services script's venv).

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use runnel_core::bus::{Publisher, StartPosition, SubscribeOptions, Subscriber};
use runnel_core::chrono::{DateTime, Utc};
use runnel_core::Message;
use runnel_kafka::{KafkaBus, KafkaOptions};
use serde_json::{json, Value};

/// Longest wait for Runnel to receive the plain client's event.
const RECEIVE_DEADLINE: Duration = Duration::from_secs(30);

/// Runs the plain client's script with the project venv's Python.
async fn run_script(args: &[&str]) -> String {
    let python = runnel_testkit::interop::venv_python()
        .await
        .expect("the Python venv (scripts/services.sh python)");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/kafka_cloudevents.py");
    runnel_testkit::interop::run_script(&python, &script, args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_reads_runnel_messages_as_cloudevents() {
    let Some(brokers) = support::brokers("python_client_reads_runnel_messages_as_cloudevents")
    else {
        return;
    };
    let bus = KafkaBus::new(KafkaOptions::new(&brokers)).expect("bus");
    let topic = support::fresh_topic("interop-out");
    let time: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123456Z")
        .expect("time")
        .with_timezone(&Utc);
    let mut placed = Message::json("OrderPlaced", &json!({"order": 7, "note": "ünï"}))
        .with_key("Order-7")
        .with_subject("Order-7");
    placed.source = "urn:runnel:interop".into();
    placed.time = Some(time);
    placed.correlation_id = Some("corr-7".into());
    let mut paid =
        Message::json("OrderPaid", &json!({"order": 7, "amount": 12.5})).with_key("Order-7");
    paid.time = None;
    bus.publish(&topic, vec![placed.clone(), paid.clone()])
        .await
        .expect("publish");

    let group = support::fresh_group("py-reader");
    let out = run_script(&["read", &brokers, topic.as_str(), group.as_str(), "2"]).await;
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}")))
        .collect();
    assert_eq!(events.len(), 2, "{out}");
    let first = &events[0];
    assert_eq!(first["id"], placed.id.as_str());
    assert_eq!(first["type"], "OrderPlaced");
    assert_eq!(first["source"], "urn:runnel:interop");
    assert_eq!(first["specversion"], "1.0");
    assert_eq!(first["subject"], "Order-7");
    assert_eq!(first["datacontenttype"], "application/json");
    assert_eq!(first["partitionkey"], "Order-7");
    assert_eq!(first["record_key"], "Order-7");
    assert_eq!(first["correlationid"], "corr-7");
    assert_eq!(first["data"], json!({"order": 7, "note": "ünï"}));
    let parsed_time = DateTime::parse_from_rfc3339(first["time"].as_str().expect("time"))
        .expect("an RFC 3339 time")
        .with_timezone(&Utc);
    assert_eq!(parsed_time, time);
    let second = &events[1];
    assert_eq!(
        second["id"],
        paid.id.as_str(),
        "same key: publish order kept"
    );
    assert_eq!(second["type"], "OrderPaid");
    assert_eq!(second["data"], json!({"order": 7, "amount": 12.5}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runnel_consumes_a_cloudevent_from_the_python_client() {
    let Some(brokers) = support::brokers("runnel_consumes_a_cloudevent_from_the_python_client")
    else {
        return;
    };
    let bus = KafkaBus::new(KafkaOptions::new(&brokers)).expect("bus");
    let topic = support::fresh_topic("interop-in");
    let group = support::fresh_group("runnel-reader");
    let mut deliveries = bus
        .subscribe(
            &topic,
            &group,
            SubscribeOptions {
                start: StartPosition::Latest,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    let id = format!("py-{}", uuid::Uuid::now_v7().simple());
    let out = run_script(&["write", &brokers, topic.as_str(), &id, "greeting-key"]).await;
    assert!(out.contains("sent"), "{out}");

    let delivery = tokio::time::timeout(RECEIVE_DEADLINE, deliveries.next())
        .await
        .expect("the plain client's event arrives")
        .expect("the subscription is open")
        .expect("a delivery");
    let m = &delivery.message;
    assert_eq!(m.id, id);
    assert_eq!(m.event_type, "com.example.PlainClientSaidHello");
    assert_eq!(m.source, "urn:example:python");
    assert_eq!(m.subject.as_deref(), Some("greeting-1"));
    assert_eq!(m.content_type, "application/json");
    assert_eq!(m.key.as_deref(), Some("greeting-key"));
    assert_eq!(m.correlation_id.as_deref(), Some("corr-py"));
    assert_eq!(
        m.payload_json().expect("JSON data"),
        json!({"hello": "from python", "n": 7})
    );
    assert_eq!(delivery.attempt, 1);
    delivery.ack().await.expect("ack");
}
