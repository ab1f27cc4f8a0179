//! Interoperability with plain clients: a Python script using boto3 and the official
//! CloudEvents SDK (tests/interop/sqs_cloudevents.py) reads what Runnel publishes (binary
//! and structured mode), and Runnel consumes a CloudEvent the script publishes.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use runnel_core::bus::{Publisher, StartPosition, SubscribeOptions, Subscriber};
use runnel_core::{GroupName, Message, TopicName};

const SCRIPT_DEADLINE: Duration = Duration::from_secs(90);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv Python that `scripts/services.sh python` prints (installing it if needed).
async fn venv_python() -> String {
    let out = tokio::time::timeout(
        SCRIPT_DEADLINE,
        tokio::process::Command::new("bash")
            .arg(repo_root().join("scripts/services.sh"))
            .arg("python")
            .output(),
    )
    .await
    .expect("services.sh python in time")
    .expect("run services.sh python");
    assert!(out.status.success(), "services.sh python failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("a python path")
        .trim()
        .to_string()
}

async fn run_script(args: &[&str]) -> String {
    let python = venv_python().await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sqs_cloudevents.py");
    let out = tokio::time::timeout(
        SCRIPT_DEADLINE,
        tokio::process::Command::new(python)
            .arg(script)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the interop script finished in time")
    .expect("run the interop script");
    assert!(
        out.status.success(),
        "interop script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
