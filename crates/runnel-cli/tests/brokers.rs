//! `runnel --bus <broker URL> publish | consume` against each real broker: the same commands
//! as on the embedded bus, chosen by configuration alone.

mod common;

use std::io::Read;
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use common::Scratch;

/// How long the consumer may take to get its message (group creation included).
const CONSUME_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between publishes while the consumer is not done yet.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);

/// The broker URL built from the test environment, or `None` (skipped, or a failure when
/// `RUNNEL_REQUIRE_SERVICES=1`).
fn broker_url(env: &str, to_url: impl Fn(&str) -> String) -> Option<String> {
    match std::env::var(env) {
        Ok(v) if !v.trim().is_empty() => Some(to_url(v.trim())),
        _ => {
            assert!(
                std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{env} is not set but RUNNEL_REQUIRE_SERVICES=1"
            );
            eprintln!("SKIPPED: {env} is not set");
            None
        }
    }
}

/// Starts `consume --count 1` for a fresh topic and group (starting at the latest message,
/// which every broker supports), publishes keyed messages until the consumer has printed
/// one and exited, and checks it printed one of them.
fn publish_and_consume_through(bus: &str) {
    let scratch = Scratch::new();
    let topic = format!("cli-{}", uuid::Uuid::now_v7().simple());
    let mut consumer = StdCommand::new(cargo_bin!("runnel"))
        .current_dir(scratch.path())
        .env_remove("RUNNEL_STORE")
        .env_remove("RUNNEL_BUS")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .args(["--bus", bus, "--json"])
        .args(["consume", &topic, "--group", "cli-test", "--from", "latest"])
        .args(["--count", "1", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start runnel consume");

    let deadline = Instant::now() + CONSUME_DEADLINE;
    let mut published = Vec::new();
    let status = loop {
        if let Some(status) = consumer.try_wait().expect("poll the consumer") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer got nothing within {CONSUME_DEADLINE:?} on {bus}"
        );
        let out = scratch
            .runnel()
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .args(["--bus", bus, "--json", "publish", &topic])
            .args(["--type", "OrderPlaced", "--key", "Order-1"])
            .args(["--data", &format!("{{\"n\": {}}}", published.len())])
            .output()
            .expect("run runnel publish");
        assert!(
            out.status.success(),
            "publish to {bus} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        published.push(String::from_utf8_lossy(&out.stdout).to_string());
        std::thread::sleep(PUBLISH_INTERVAL);
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    consumer
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    consumer
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "consume on {bus} failed: {stderr}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("consume printed {stdout:?}: {e}"));
    assert_eq!(line["event_type"], "OrderPlaced", "{line}");
    assert_eq!(line["key"], "Order-1", "{line}");
    let id = line["id"].as_str().expect("an id").to_string();
    assert!(
        published.iter().any(|p| p.contains(&id)),
        "consumed {id}, which is not one of the published {published:?}"
    );
}

#[test]
fn publish_and_consume_over_nats() {
    if let Some(url) = broker_url("RUNNEL_TEST_NATS_URL", |v| v.to_string()) {
        publish_and_consume_through(&url);
    }
}

#[test]
fn publish_and_consume_over_rabbitmq() {
    if let Some(url) = broker_url("RUNNEL_TEST_AMQP_URL", |v| v.to_string()) {
        publish_and_consume_through(&url);
    }
}

#[test]
fn publish_and_consume_over_kafka() {
    if let Some(url) = broker_url("RUNNEL_TEST_KAFKA_BROKERS", |v| format!("kafka://{v}")) {
        publish_and_consume_through(&url);
    }
}

#[test]
fn publish_and_consume_over_sqs() {
    if let Some(url) = broker_url("RUNNEL_TEST_SQS_ENDPOINT", |v| {
        format!("sqs://us-east-1?endpoint={v}")
    }) {
        publish_and_consume_through(&url);
    }
}

/// A broker carries the messages and keeps its own dead letters, so publishing and
/// consuming through one needs no store: on a fresh machine (an empty directory, no
/// runnel.toml, no store configured) both work and leave no runnel.db behind.
#[test]
fn publish_and_consume_on_a_broker_need_no_store() {
    let Some(url) = broker_url("RUNNEL_TEST_NATS_URL", str::to_string) else {
        return;
    };
    let scratch = Scratch::new();
    let topic = format!("cli-nostore-{}", uuid::Uuid::now_v7().simple());
    let published = scratch
        .runnel_bare()
        .args(["--bus", &url, "--json", "publish", &topic])
        .args([
            "--type",
            "OrderPlaced",
            "--key",
            "Order-1",
            "--data",
            r#"{"n": 1}"#,
        ])
        .output()
        .expect("run runnel publish");
    assert!(
        published.status.success(),
        "publish without a store failed: {}",
        String::from_utf8_lossy(&published.stderr)
    );
    let published: serde_json::Value =
        serde_json::from_slice(&published.stdout).expect("publish prints JSON");

    let consumed = scratch
        .runnel_bare()
        .args(["--bus", &url, "--json", "consume", &topic])
        .args([
            "--group",
            "fresh-machine",
            "--from",
            "earliest",
            "--count",
            "1",
        ])
        .args(["--wait", "30s"])
        .output()
        .expect("run runnel consume");
    assert!(
        consumed.status.success(),
        "consume without a store failed: {}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_slice(&consumed.stdout).expect("consume prints one JSON line");
    assert_eq!(line["id"], published["id"], "{line}");
    assert_eq!(line["payload"]["n"], 1, "{line}");

    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("list the directory")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "a store was created: {left:?}");
}

/// A new SQS group starts at its earliest messages only by SNS message replay: moto does
/// not implement it, and `retention=off` switches the topic archive off anywhere. Then
/// `--from earliest`, the default, is refused with a one-line bad-input error that says
/// why and to pass `--from latest`, which works.
#[test]
fn consume_from_earliest_on_sqs_without_replay_says_to_pass_from_latest() {
    let Some(url) = broker_url("RUNNEL_TEST_SQS_ENDPOINT", |v| {
        format!("sqs://us-east-1?endpoint={v}")
    }) else {
        return;
    };
    let scratch = Scratch::new();
    let topic = format!("cli-earliest-{}", uuid::Uuid::now_v7().simple());
    for (bus, why) in [
        (url.clone(), "refused to replay"),
        (format!("{url}&retention=off"), "retention=off"),
    ] {
        let group = format!("g{}", uuid::Uuid::now_v7().simple());
        let sqs = |from: Option<&str>| {
            let mut cmd = scratch.runnel_bare();
            cmd.env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .args(["--bus", &bus, "consume", &topic, "--group", &group])
                .args(["--wait", "1s"]);
            if let Some(from) = from {
                cmd.args(["--from", from]);
            }
            cmd.output().expect("run runnel consume")
        };
        let refused = sqs(None);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{bus}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
        for expected in ["--from earliest (the default)", why, "pass --from latest"] {
            assert!(
                stderr.contains(expected),
                "{bus}: no {expected:?} in {stderr}"
            );
        }
        assert!(!stderr.contains("StartPosition"), "library terms: {stderr}");

        let latest = sqs(Some("latest"));
        assert!(
            latest.status.success(),
            "{bus}: --from latest failed: {}",
            String::from_utf8_lossy(&latest.stderr)
        );
    }
}

#[test]
fn an_unknown_bus_scheme_is_bad_input() {
    let scratch = Scratch::new();
    let out = scratch
        .runnel()
        .args(["--bus", "mqtt://user:secret@127.0.0.1", "publish", "orders"])
        .args(["--type", "OrderPlaced", "--data", "{}"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "bad input exits with 2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unsupported bus"), "{stderr}");
    assert!(!stderr.contains("secret"), "credentials leaked: {stderr}");
}

#[test]
fn dlq_drain_needs_a_broker_bus() {
    let scratch = Scratch::new();
    let out = scratch
        .runnel()
        .args(["dlq", "drain", "--topic", "orders", "--group", "billing"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "bad input exits with 2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no dead-letter queue of its own") && stderr.contains("--bus"),
        "{stderr}"
    );
}

#[test]
fn dlq_drain_over_nats_reports_what_it_moved() {
    let Some(url) = broker_url("RUNNEL_TEST_NATS_URL", str::to_string) else {
        return;
    };
    let scratch = Scratch::new();
    let group = format!("g{}", uuid::Uuid::now_v7().simple());
    let out = scratch
        .runnel()
        .args(["--bus", &url, "--json", "dlq", "drain"])
        .args(["--topic", "orders", "--group", &group, "--max", "10"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        line["drained"], 0,
        "a fresh group has nothing dead-lettered"
    );
    assert_eq!(line["group"], group.as_str());
}
