//! Interoperability with a plain AMQP client that knows nothing of Runnel: pika plus the
//! official CloudEvents SDK (its AMQP binding) in `tests/interop/amqp_cloudevents.py`,
//! run with the project's Python venv (`scripts/services.sh python`).

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use runnel::core::bus::{Publisher, SubscribeOptions, Subscriber};
use runnel::core::{GroupName, Message, TopicName};
use runnel_rabbitmq::topology::exchange_name;
use runnel_rabbitmq::RabbitBus;
use runnel_testkit::interop::{run_script, venv_python};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const SCRIPT_DEADLINE: Duration = Duration::from_secs(60);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/amqp_cloudevents.py")
}

fn fresh() -> (TopicName, GroupName) {
    let suffix = runnel::core::uuid::Uuid::now_v7().simple().to_string();
    (
        TopicName::new(format!("interop.{suffix}")).expect("topic"),
        GroupName::new(format!("interop-{suffix}")).expect("group"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runnel_publishes_a_cloudevent_a_plain_pika_client_parses_with_the_sdk() {
    let Some(url) = common::test_url() else {
        return;
    };
    let Some(python) = venv_python().await else {
        return;
    };
    let bus = RabbitBus::connect(common::options_for(&url))
        .await
        .expect("connect");
    let (topic, _) = fresh();
    let mut published = Message::json(
        "OrderPlaced",
        &serde_json::json!({"order": 7, "note": "ünï"}),
    )
    .with_key("Order-7")
    .with_subject("Order-7")
    .with_header("tenant", "acme");
    published.correlation_id = Some("corr-1".into());
    // The topic's exchange must exist before the script binds to it.
    bus.publish(
        &topic,
        vec![Message::json("Warmup", &serde_json::json!({}))],
    )
    .await
    .expect("declare the topic");

    let mut child = Command::new(&python)
        .arg(script())
        .args(["consume", &url, &exchange_name(&topic)])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run the script");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let run = async {
        let ready = lines.next_line().await.expect("read").expect("a line");
        assert_eq!(ready, "READY");
        bus.publish(&topic, vec![published.clone()])
            .await
            .expect("publish");
        let line = lines.next_line().await.expect("read").expect("the event");
        let status = child.wait().await.expect("wait");
        assert!(status.success(), "the script failed: {status}");
        line
    };
    let line = tokio::time::timeout(SCRIPT_DEADLINE, run)
        .await
        .expect("the script within its deadline");
    let event: serde_json::Value = serde_json::from_str(&line).expect("JSON from the script");
    assert_eq!(event["id"], published.id.as_str());
    assert_eq!(event["type"], "OrderPlaced");
    assert_eq!(event["source"], "urn:runnel");
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["subject"], "Order-7");
    assert_eq!(event["datacontenttype"], "application/json");
    assert_eq!(event["partitionkey"], "Order-7");
    assert_eq!(event["correlationid"], "corr-1");
    assert_eq!(event["tenant"], "acme");
    assert_eq!(
        event["data"],
        serde_json::json!({"order": 7, "note": "ünï"})
    );
    assert_eq!(event["delivery_mode"], 2, "persistent");
    assert!(event["time"].as_str().is_some_and(|t| t.starts_with("20")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloudevent_published_by_plain_pika_with_the_sdk_is_consumed_by_runnel() {
    let Some(url) = common::test_url() else {
        return;
    };
    let Some(python) = venv_python().await else {
        return;
    };
    let bus = RabbitBus::connect(common::options_for(&url))
        .await
        .expect("connect");
    let (topic, group) = fresh();
    let mut deliveries = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .expect("subscribe");
    run_script(
        &python,
        &script(),
        &["publish", &url, &exchange_name(&topic)],
    )
    .await;

    let d = tokio::time::timeout(Duration::from_secs(15), deliveries.next())
        .await
        .expect("a delivery within the deadline")
        .expect("the subscription is open")
        .expect("a readable CloudEvent");
    let m = &d.message;
    assert_eq!(m.id, "interop-from-python-1");
    assert_eq!(m.event_type, "com.example.PythonSaidHello");
    assert_eq!(m.source, "/interop/pika");
    assert_eq!(m.subject.as_deref(), Some("Greeting-1"));
    assert_eq!(m.key.as_deref(), Some("Greeting-1"));
    assert_eq!(m.correlation_id.as_deref(), Some("corr-py"));
    assert_eq!(m.content_type, "application/json");
    assert!(m.time.is_some(), "the SDK's time attribute is read");
    assert_eq!(
        m.payload_json().expect("JSON data"),
        serde_json::json!({"hello": "from python", "n": 7})
    );
    assert_eq!(d.attempt, 1);
    d.ack().await.expect("ack");
}

/// A plain client publishes a structured-mode CloudEvent, the plain `Event` JSON and an
/// outbox relay's record; Runnel reads each, with the subscription's envelope, with type,
/// id, key and data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_a_plain_pika_client_publishes_is_read_intact() {
    let Some(url) = common::test_url() else {
        return;
    };
    let Some(python) = venv_python().await else {
        return;
    };
    let bus = RabbitBus::connect(common::options_for(&url))
        .await
        .expect("connect");
    for shape in runnel_testkit::interop::SHAPES {
        let (topic, group) = fresh();
        let mut deliveries = bus
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
        run_script(
            &python,
            &script(),
            &["publish-shape", &url, &exchange_name(&topic), shape],
        )
        .await;
        let d = tokio::time::timeout(Duration::from_secs(15), deliveries.next())
            .await
            .unwrap_or_else(|_| panic!("{shape}: a delivery within the deadline"))
            .expect("the subscription is open")
            .unwrap_or_else(|e| panic!("{shape}: readable: {e}"));
        runnel_testkit::interop::assert_shape(shape, &d.message, None);
        assert_eq!(d.attempt, 1);
        d.ack().await.expect("ack");
    }
}

/// Runnel publishes in the plain `Event` JSON shape (`envelope=json-event` on the bus
/// URL), which a consumer that knows nothing of CloudEvents parses as it always did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_pika_client_reads_the_json_event_shape_runnel_publishes() {
    let Some(url) = common::test_url() else {
        return;
    };
    let Some(python) = venv_python().await else {
        return;
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let bus = RabbitBus::connect(common::options_for(&format!(
        "{url}{sep}envelope=json-event"
    )))
    .await
    .expect("connect");
    let (topic, _) = fresh();
    bus.publish(
        &topic,
        vec![Message::json("Warmup", &serde_json::json!({}))],
    )
    .await
    .expect("declare the topic");
    let sent = runnel_testkit::interop::json_event_sample();
    let mut child = Command::new(&python)
        .arg(script())
        .args(["read-plain", &url, &exchange_name(&topic)])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run the script");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let run = async {
        let ready = lines.next_line().await.expect("read").expect("a line");
        assert_eq!(ready, "READY");
        bus.publish(&topic, vec![sent.clone()])
            .await
            .expect("publish");
        let line = lines.next_line().await.expect("read").expect("the message");
        let status = child.wait().await.expect("wait");
        assert!(status.success(), "the script failed: {status}");
        line
    };
    let line = tokio::time::timeout(SCRIPT_DEADLINE, run)
        .await
        .expect("the script within its deadline");
    runnel_testkit::interop::assert_plain_json_event(&line, &sent);
}

/// Without an envelope a plain JSON event is not a CloudEvent: it goes to the group's
/// dead-letter queue, and the drain keeps it whole with an error naming the option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_json_event_without_an_envelope_is_dead_lettered_naming_the_option() {
    let Some(url) = common::test_url() else {
        return;
    };
    let Some(python) = venv_python().await else {
        return;
    };
    let bus = RabbitBus::connect(common::options_for(&url))
        .await
        .expect("connect");
    let (topic, group) = fresh();
    let mut deliveries = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .expect("subscribe");
    run_script(
        &python,
        &script(),
        &["publish-shape", &url, &exchange_name(&topic), "json-event"],
    )
    .await;
    let listed = runnel_testkit::interop::dead_lettered_not_delivered(
        &*bus,
        &topic,
        &group,
        &mut deliveries,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(listed.len(), 1);
    let why = listed[0]
        .message
        .headers
        .get("runnelreaderror")
        .cloned()
        .unwrap_or_default();
    assert!(why.contains("envelope=json-event"), "{why}");
    assert!(
        listed[0]
            .message
            .payload
            .windows(13)
            .any(|w| w == b"order.created"),
        "the body is kept whole"
    );
}
