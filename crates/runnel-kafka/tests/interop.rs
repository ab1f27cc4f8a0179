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

/// A plain client produces a structured-mode CloudEvent, the plain `Event` JSON with
/// `event-type` / `event-source` headers and an outbox relay's record; Runnel reads each,
/// with the subscription's envelope, with type, id, key and data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_the_python_client_produces_is_read_intact() {
    let Some(brokers) = support::brokers("every_shape_the_python_client_produces_is_read_intact")
    else {
        return;
    };
    let bus = KafkaBus::new(KafkaOptions::new(&brokers)).expect("bus");
    for shape in runnel_testkit::interop::SHAPES {
        let topic = support::fresh_topic("interop-shape");
        let group = support::fresh_group("runnel-shape-reader");
        let mut deliveries = bus
            .subscribe(
                &topic,
                &group,
                SubscribeOptions {
                    start: StartPosition::Earliest,
                    envelope: Some(runnel_testkit::interop::envelope_for(shape)),
                    ..SubscribeOptions::default()
                },
            )
            .await
            .expect("subscribe");
        let out = run_script(&["write-shape", &brokers, topic.as_str(), shape]).await;
        assert!(out.contains("sent"), "{out}");
        let d = tokio::time::timeout(RECEIVE_DEADLINE, deliveries.next())
            .await
            .unwrap_or_else(|_| panic!("{shape}: a delivery within the deadline"))
            .expect("the subscription is open")
            .unwrap_or_else(|e| panic!("{shape}: readable: {e}"));
        // A plain event's key is the record key the producer chose.
        runnel_testkit::interop::assert_shape(shape, &d.message, Some("ord-1"));
        assert_eq!(d.attempt, 1);
        d.ack().await.expect("ack");
    }
}

/// Runnel produces in the plain `Event` JSON shape (`envelope=json-event`), which a
/// consumer that knows nothing of CloudEvents parses as it always did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_reads_the_json_event_shape_runnel_produces() {
    let Some(brokers) =
        support::brokers("the_python_client_reads_the_json_event_shape_runnel_produces")
    else {
        return;
    };
    let bus = KafkaBus::new(
        KafkaOptions::from_url(&format!("kafka://{brokers}?envelope=json-event")).expect("url"),
    )
    .expect("bus");
    let topic = support::fresh_topic("interop-plain-out");
    let group = support::fresh_group("python-plain-reader");
    let sent = runnel_testkit::interop::json_event_sample();
    bus.publish(&topic, vec![sent.clone()])
        .await
        .expect("publish");
    let out = run_script(&["read-plain", &brokers, topic.as_str(), group.as_str()]).await;
    let line = out.lines().last().expect("a line from the script");
    runnel_testkit::interop::assert_plain_json_event(line, &sent);
    let seen: Value = serde_json::from_str(line).expect("JSON");
    assert_eq!(seen["headers"]["event-id"], sent.id.as_str());
}

/// Without an envelope a plain record is not a CloudEvent: the transport moves it to the
/// dead-letter topic at once (no handler sees it), and the drain stores it whole with an
/// error naming the option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_record_without_an_envelope_is_dead_lettered_naming_the_option() {
    let Some(brokers) =
        support::brokers("a_plain_record_without_an_envelope_is_dead_lettered_naming_the_option")
    else {
        return;
    };
    let bus = KafkaBus::new(KafkaOptions::new(&brokers)).expect("bus");
    let topic = support::fresh_topic("interop-plain-in");
    let group = support::fresh_group("runnel-strict-reader");
    let mut deliveries = bus
        .subscribe(
            &topic,
            &group,
            SubscribeOptions {
                start: StartPosition::Earliest,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    let out = run_script(&["write-shape", &brokers, topic.as_str(), "json-event"]).await;
    assert!(out.contains("sent"), "{out}");
    let listed = runnel_testkit::interop::dead_lettered_not_delivered(
        &bus,
        &topic,
        &group,
        &mut deliveries,
        RECEIVE_DEADLINE,
    )
    .await;
    assert_eq!(listed.len(), 1);
    let failure = &listed[0].failures[0].error;
    assert!(failure.contains("envelope=json-event"), "{failure}");
    let kept = &listed[0].message;
    assert_eq!(kept.key.as_deref(), Some("ord-1"));
    assert!(
        kept.payload.windows(13).any(|w| w == b"order.created"),
        "the value is kept whole"
    );
}
