//! Interoperability with plain clients: a Python script using boto3 and the official
//! CloudEvents SDK (tests/interop/sqs_cloudevents.py) reads what Runnel publishes (binary
//! and structured mode), and Runnel consumes a CloudEvent the script publishes.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use runnel_core::bus::{Publisher, StartPosition, SubscribeOptions, Subscriber};
use runnel_core::{GroupName, Message, TopicName};

/// Runs the plain client's script with the project venv's Python.
async fn run_script(args: &[&str]) -> String {
    let python = runnel_testkit::interop::venv_python()
        .await
        .expect("the Python venv (scripts/services.sh python)");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sqs_cloudevents.py");
    runnel_testkit::interop::run_script(&python, &script, args).await
}

fn fresh(what: &str) -> (TopicName, GroupName) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    (
        TopicName::new(format!("interop.{what}.{id}")).expect("topic"),
        GroupName::new(format!("{what}-{id}")).expect("group"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_boto3_client_reads_runnel_messages_as_cloudevents() {
    let Some(endpoint) =
        common::endpoint("plain_boto3_client_reads_runnel_messages_as_cloudevents")
    else {
        return;
    };
    let bus = common::bus(&endpoint);
    let (topic, group) = fresh("toPython");
    let queue_url = bus
        .provision_group(&topic, &group, StartPosition::Latest)
        .await
        .expect("provision the group the plain client reads");

    let mut binary = Message::json("OrderPlaced", &serde_json::json!({"order": 7}))
        .with_key("Order-7")
        .with_subject("Order-7");
    binary.correlation_id = Some("corr-1".into());
    // Over ten attributes: goes in structured mode.
    let mut rich = Message::json("OrderShipped", &serde_json::json!({"order": 8}))
        .with_key("Order-8")
        .with_subject("Order-8")
        .with_header("tenant", "acme")
        .with_header("x-app-header", "v");
    rich.correlation_id = Some("corr-2".into());
    rich.causation_id = Some("cmd-2".into());
    rich.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    bus.publish(&topic, vec![binary.clone(), rich.clone()])
        .await
        .expect("publish");

    let out = run_script(&["read", &endpoint, &queue_url, "2"]).await;
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(events.len(), 2, "{out}");
    let by_id = |id: &str| {
        events
            .iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("event {id} not read: {out}"))
            .clone()
    };
    let b = by_id(&binary.id);
    assert_eq!(b["mode"], "binary");
    assert_eq!(b["type"], "OrderPlaced");
    assert_eq!(b["source"], binary.source);
    assert_eq!(b["specversion"], "1.0");
    assert_eq!(b["subject"], "Order-7");
    assert_eq!(b["partitionkey"], "Order-7");
    assert_eq!(b["correlationid"], "corr-1");
    assert_eq!(b["data"], serde_json::json!({"order": 7}));
    let r = by_id(&rich.id);
    assert_eq!(r["mode"], "structured");
    assert_eq!(r["type"], "OrderShipped");
    assert_eq!(r["partitionkey"], "Order-8");
    assert_eq!(r["tenant"], "acme");
    assert_eq!(r["data"], serde_json::json!({"order": 8}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runnel_consumes_a_cloudevent_published_by_boto3() {
    let Some(endpoint) = common::endpoint("runnel_consumes_a_cloudevent_published_by_boto3") else {
        return;
    };
    let bus = common::bus(&endpoint);
    let (topic, group) = fresh("fromPython");
    let mut stream = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let topic_arn = bus.ensure_topic(&topic).await.expect("topic ARN");
    let event_id = uuid::Uuid::new_v4().to_string();
    run_script(&["publish", &endpoint, &topic_arn, &event_id]).await;

    let d = tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("the Python event in time")
        .expect("stream open")
        .expect("a delivery");
    assert_eq!(d.message.id, event_id);
    assert_eq!(d.message.event_type, "com.example.PaymentCaptured");
    assert_eq!(d.message.source, "urn:python:interop");
    assert_eq!(d.message.subject.as_deref(), Some("Payment-9"));
    assert_eq!(d.message.key.as_deref(), Some("Payment-9"));
    assert_eq!(d.message.content_type, "application/json");
    assert_eq!(
        d.message.payload_json().expect("JSON data"),
        serde_json::json!({"amount": 42, "currency": "EUR"})
    );
    assert_eq!(d.attempt, 1);
    d.ack().await.expect("ack");
}

/// A plain client publishes a structured-mode CloudEvent, the plain `Event` JSON and an
/// outbox relay's record; Runnel reads each, with the subscription's envelope, with type,
/// id, key (the message group) and data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_boto3_publishes_is_read_intact() {
    let Some(endpoint) = common::endpoint("every_shape_boto3_publishes_is_read_intact") else {
        return;
    };
    let bus = common::bus(&endpoint);
    for shape in runnel_testkit::interop::SHAPES {
        let (topic, group) = fresh("shapeFromPython");
        let mut stream = bus
            .subscribe(
                &topic,
                &group,
                SubscribeOptions {
                    envelope: Some(runnel_testkit::interop::envelope_for(shape)),
                    ..SubscribeOptions::default()
                },
            )
            .await
            .expect("subscribe");
        let topic_arn = bus.ensure_topic(&topic).await.expect("topic ARN");
        run_script(&["publish-shape", &endpoint, &topic_arn, shape]).await;
        let d = tokio::time::timeout(Duration::from_secs(15), stream.next())
            .await
            .unwrap_or_else(|_| panic!("{shape}: a delivery within the deadline"))
            .expect("stream open")
            .unwrap_or_else(|e| panic!("{shape}: readable: {e}"));
        runnel_testkit::interop::assert_shape(shape, &d.message, Some("ord-1"));
        assert_eq!(d.attempt, 1);
        d.ack().await.expect("ack");
    }
}

/// Runnel publishes in the plain `Event` JSON shape (`envelope=json-event`), which a
/// consumer that knows nothing of CloudEvents parses as it always did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_reads_the_json_event_shape_runnel_publishes() {
    let Some(endpoint) = common::endpoint("boto3_reads_the_json_event_shape_runnel_publishes")
    else {
        return;
    };
    let bus = runnel_sqs::connect(&common::url(&endpoint, "&wait=0s&envelope=json-event"))
        .expect("connect");
    let (topic, group) = fresh("plainToPython");
    let queue_url = bus
        .provision_group(&topic, &group, StartPosition::Latest)
        .await
        .expect("provision the group the plain client reads");
    let sent = runnel_testkit::interop::json_event_sample();
    bus.publish(&topic, vec![sent.clone()])
        .await
        .expect("publish");
    let out = run_script(&["read-plain", &endpoint, &queue_url]).await;
    let line = out.lines().last().expect("a line from the script");
    runnel_testkit::interop::assert_plain_json_event(line, &sent);
}
