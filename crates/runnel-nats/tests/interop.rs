//! Interoperability with a plain NATS client that knows nothing of Runnel: nats-py plus
//! the official CloudEvents SDK in `tests/interop/nats_cloudevents.py`, run with the
//! project's Python venv (`scripts/services.sh python`).

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use runnel_core::bus::{Publisher, StartPosition, SubscribeOptions, Subscriber};
use runnel_core::{GroupName, Message, TopicName};
use runnel_testkit::interop::{run_script, venv_python};

fn require_services() -> bool {
    std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() == Ok("1")
}

fn nats_url() -> Option<String> {
    match std::env::var("RUNNEL_TEST_NATS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                !require_services(),
                "RUNNEL_REQUIRE_SERVICES=1 but RUNNEL_TEST_NATS_URL is not set"
            );
            eprintln!("SKIPPED: RUNNEL_TEST_NATS_URL is not set");
            None
        }
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/nats_cloudevents.py")
}

fn fresh() -> (TopicName, GroupName) {
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    (
        TopicName::new(format!("interop.{suffix}")).expect("topic"),
        GroupName::new(format!("interop-{suffix}")).expect("group"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runnel_publishes_a_cloudevent_a_plain_nats_py_client_parses_with_the_sdk() {
    let Some(url) = nats_url() else { return };
    let Some(python) = venv_python().await else {
        return;
    };
    let bus = runnel_nats::connect(&url).await.expect("connect");
    let (topic, _) = fresh();
    let mut published = Message::json(
        "OrderPlaced",
        &serde_json::json!({"order": 7, "note": "ünï"}),
    )
    .with_key("Order-7")
    .with_subject("Order-7")
    .with_header("tenant", "acme");
    published.correlation_id = Some("corr-1".into());
    bus.publish(&topic, vec![published.clone()])
        .await
        .expect("publish");

    let stdout = run_script(
        &python,
        &script(),
        &[
            "consume",
            &url,
            &bus.stream_name(&topic),
            &bus.subject(&topic),
        ],
    )
    .await;
    let line = stdout.lines().last().expect("a line from the script");
    let event: serde_json::Value = serde_json::from_str(line).expect("JSON from the script");
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
    assert_eq!(
        event["nats_msg_id"],
        published.id.as_str(),
        "Nats-Msg-Id carries the message id"
    );
    assert!(event["time"].as_str().is_some_and(|t| t.starts_with("20")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloudevent_published_by_plain_nats_py_with_the_sdk_is_consumed_by_runnel() {
    let Some(url) = nats_url() else { return };
    let Some(python) = venv_python().await else {
        return;
    };
    let bus = runnel_nats::connect(&url).await.expect("connect");
    let (topic, group) = fresh();
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
    run_script(&python, &script(), &["publish", &url, &bus.subject(&topic)]).await;

    let d = tokio::time::timeout(Duration::from_secs(15), deliveries.next())
        .await
        .expect("a delivery within the deadline")
        .expect("the subscription is open")
        .expect("a readable CloudEvent");
    let m = &d.message;
    assert_eq!(m.id, "interop-from-python-1");
    assert_eq!(m.event_type, "com.example.PythonSaidHello");
    assert_eq!(m.source, "/interop/nats-py");
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

/// `url` with one more query parameter.
fn with_param(url: &str, param: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{param}")
}

/// A plain client publishes a structured-mode CloudEvent, the plain `Event` JSON and an
/// outbox relay's record; Runnel reads each, with the subscription's envelope, with type,
/// id, key and data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_a_plain_nats_py_client_publishes_is_read_intact() {
    let Some(url) = nats_url() else { return };
    let Some(python) = venv_python().await else {
        return;
    };
    let bus = runnel_nats::connect(&url).await.expect("connect");
    for shape in runnel_testkit::interop::SHAPES {
        let (topic, group) = fresh();
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
        run_script(
            &python,
            &script(),
            &["publish-shape", &url, &bus.subject(&topic), shape],
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
async fn a_plain_nats_py_client_reads_the_json_event_shape_runnel_publishes() {
    let Some(url) = nats_url() else { return };
    let Some(python) = venv_python().await else {
        return;
    };
    let bus = runnel_nats::connect(&with_param(&url, "envelope=json-event"))
        .await
        .expect("connect");
    let (topic, _) = fresh();
    let sent = runnel_testkit::interop::json_event_sample();
    bus.publish(&topic, vec![sent.clone()])
        .await
        .expect("publish");
    let stdout = run_script(
        &python,
        &script(),
        &[
            "read-plain",
            &url,
            &bus.stream_name(&topic),
            &bus.subject(&topic),
        ],
    )
    .await;
    let line = stdout.lines().last().expect("a line from the script");
    runnel_testkit::interop::assert_plain_json_event(line, &sent);
}

/// Without an envelope a plain JSON event is not a CloudEvent: it is dead-lettered with
/// an error that names the option, never handed to a handler half-read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_json_event_without_an_envelope_is_dead_lettered_naming_the_option() {
    let Some(url) = nats_url() else { return };
    let Some(python) = venv_python().await else {
        return;
    };
    let bus = runnel_nats::connect(&url).await.expect("connect");
    let (topic, group) = fresh();
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
    run_script(
        &python,
        &script(),
        &["publish-shape", &url, &bus.subject(&topic), "json-event"],
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
    let failure = &listed[0].failures[0].error;
    assert!(failure.contains("envelope=json-event"), "{failure}");
    assert!(
        listed[0]
            .message
            .payload
            .windows(13)
            .any(|w| w == b"order.created"),
        "the body is kept whole"
    );
}
