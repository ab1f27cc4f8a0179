//! Interoperability tests drive a plain client of a broker — one that knows nothing of
//! Runnel — from a small Python script, with the official CloudEvents SDK. The Python and
//! its packages live in the project's venv, which `scripts/services.sh python` installs
//! on first use (pinned in `scripts/python-requirements.txt`) and prints.
//!
//! ```no_run
//! # async fn demo() {
//! use runnel_testkit::interop::{run_script, venv_python};
//! let Some(python) = venv_python().await else { return }; // SKIPPED
//! let script = std::path::Path::new("tests/interop/nats_cloudevents.py");
//! let stdout = run_script(&python, script, &["consume", "nats://127.0.0.1:4222"]).await;
//! # let _ = stdout;
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::REQUIRE_SERVICES_ENV;

/// Longest an interop script may run (a plain client connecting, publishing or reading a
/// handful of messages).
pub const SCRIPT_DEADLINE: Duration = Duration::from_secs(90);
/// Longest `scripts/services.sh python` may take: the first call builds the venv.
pub const VENV_DEADLINE: Duration = Duration::from_secs(600);

/// The repository's root (where `scripts/` is).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's Python, or `None` after a loud SKIPPED when the project script cannot
/// provide it — a failure instead when `RUNNEL_REQUIRE_SERVICES=1`.
pub async fn venv_python() -> Option<PathBuf> {
    let out = tokio::process::Command::new("bash")
        .arg(workspace_root().join("scripts/services.sh"))
        .arg("python")
        .kill_on_drop(true)
        .output();
    let found = match tokio::time::timeout(VENV_DEADLINE, out).await {
        Ok(Ok(o)) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .map(|l| PathBuf::from(l.trim()))
            .filter(|p| !p.as_os_str().is_empty()),
        _ => None,
    };
    if found.is_none() {
        assert!(
            std::env::var(REQUIRE_SERVICES_ENV).as_deref() != Ok("1"),
            "{REQUIRE_SERVICES_ENV}=1 but the Python venv (scripts/services.sh python) is not available"
        );
        eprintln!("SKIPPED: the Python venv (scripts/services.sh python) is not available");
    }
    found
}

/// Runs `python script args…` within [`SCRIPT_DEADLINE`] and returns what it printed;
/// fails the test, with the script's stderr, if it fails or overruns.
pub async fn run_script(python: &Path, script: &Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new(python)
        .arg(script)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SCRIPT_DEADLINE, out)
        .await
        .unwrap_or_else(|_| panic!("{} overran {SCRIPT_DEADLINE:?}", script.display()))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}): {}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The message shapes `scripts/interop/shapes.py` publishes from plain clients.
pub const SHAPES: [&str; 3] = ["structured", "json-event", "outbox-record"];

/// The envelope a subscription reads `shape` with.
pub fn envelope_for(shape: &str) -> runnel_core::envelope::Envelope {
    use runnel_core::envelope::{Envelope, Mapping};
    match shape {
        "structured" => Envelope::CloudEvents,
        "json-event" => Envelope::Mapped(Mapping::json_event().into()),
        "outbox-record" => Envelope::Mapped(Mapping::outbox_record().into()),
        other => panic!("no shape {other:?} in scripts/interop/shapes.py"),
    }
}

/// Checks that `message` carries what `scripts/interop/shapes.py` put into `shape`: its
/// type, id, key and data intact. `broker_key` is the key the broker itself carries for a
/// plain event (a Kafka record key, an SQS message group), `None` where it has none.
pub fn assert_shape(shape: &str, message: &runnel_core::Message, broker_key: Option<&str>) {
    let data = message
        .payload_json()
        .unwrap_or_else(|e| panic!("{shape}: the data is not JSON: {e}"));
    let time = message.time.map(|t| t.to_rfc3339());
    match shape {
        "structured" => {
            assert_eq!(message.id, "interop-structured-1", "{shape}");
            assert_eq!(message.event_type, "com.example.PythonSaidHello", "{shape}");
            assert_eq!(message.source, "/interop/python", "{shape}");
            assert_eq!(message.subject.as_deref(), Some("Greeting-1"), "{shape}");
            assert_eq!(message.key.as_deref(), Some("Greeting-1"), "{shape}");
            assert_eq!(
                message.correlation_id.as_deref(),
                Some("corr-py"),
                "{shape}"
            );
            assert_eq!(
                data,
                serde_json::json!({"hello": "structured", "n": 7}),
                "{shape}"
            );
        }
        "json-event" => {
            assert_eq!(message.id, "interop-json-event-1", "{shape}");
            assert_eq!(message.event_type, "order.created", "{shape}");
            assert_eq!(message.source, "order-service", "{shape}");
            assert_eq!(
                time.as_deref(),
                Some("2026-12-06T10:00:00+00:00"),
                "{shape}"
            );
            assert_eq!(message.key.as_deref(), broker_key, "{shape}");
            assert_eq!(
                data,
                serde_json::json!({"id": "ord-1", "total": 99.99}),
                "{shape}"
            );
        }
        "outbox-record" => {
            assert_eq!(message.id, "interop-outbox-1", "{shape}");
            assert_eq!(message.event_type, "OrderPlaced", "{shape}");
            assert_eq!(message.key.as_deref(), Some("ord-2"), "{shape}");
            assert_eq!(message.subject.as_deref(), Some("ord-2"), "{shape}");
            assert_eq!(
                time.as_deref(),
                Some("2026-12-06T10:00:01+00:00"),
                "{shape}"
            );
            assert_eq!(
                data,
                serde_json::json!({"orderId": "ord-2", "total": 12.5}),
                "{shape}"
            );
        }
        other => panic!("no shape {other:?} in scripts/interop/shapes.py"),
    }
    assert_eq!(message.content_type, "application/json", "{shape}");
}

/// A message Runnel publishes in the `json-event` shape, and the check of what a plain
/// client printed for it (`read-plain`: its headers and its body parsed as JSON).
pub fn json_event_sample() -> runnel_core::Message {
    let mut m = runnel_core::Message::json(
        "order.shipped",
        &serde_json::json!({"id": "ord-9", "carrier": "ACME"}),
    )
    .with_key("ord-9");
    m.source = "runnel-order-service".into();
    m
}

/// Checks a plain client's `read-plain` line for [`json_event_sample`] `sent`.
pub fn assert_plain_json_event(line: &str, sent: &runnel_core::Message) {
    let seen: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let body = &seen["body"];
    assert_eq!(body["type"], "order.shipped", "{line}");
    assert_eq!(body["id"], sent.id.as_str(), "{line}");
    assert_eq!(body["source"], "runnel-order-service", "{line}");
    assert_eq!(
        body["data"],
        serde_json::json!({"id": "ord-9", "carrier": "ACME"}),
        "{line}"
    );
    assert!(
        body["timestamp"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{line}"
    );
    let headers = seen["headers"].as_object().expect("headers");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str().unwrap_or_default().to_string())
    };
    assert_eq!(
        header("event-type").as_deref(),
        Some("order.shipped"),
        "{line}"
    );
    assert!(
        header("ce-specversion").is_none() && header("ce_specversion").is_none(),
        "a mapped shape carries no CloudEvents attributes: {line}"
    );
}

/// Drains `topic`/`group`'s native dead letters into an in-memory store until one arrives
/// (within `deadline`), failing the test if `deliveries` hands anything to the consumer
/// meanwhile: a message no envelope reads must be dead-lettered, never delivered. Returns
/// the dead letters stored.
pub async fn dead_lettered_not_delivered(
    drain: &dyn runnel_core::bus::DeadLetterDrain,
    topic: &runnel_core::TopicName,
    group: &runnel_core::GroupName,
    deliveries: &mut runnel_core::bus::DeliveryStream,
    deadline: Duration,
) -> Vec<runnel_core::dead_letter::DeadLetter> {
    use futures_util::StreamExt;
    use runnel_core::dead_letter::{DeadLetterFilter, DeadLetterStore};
    let store = crate::dead_letters::InMemoryDeadLetters::new();
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_millis(200), deliveries.next()).await
        {
            panic!(
                "delivered instead of dead-lettered: {:?}",
                item.map(|d| d.message)
            );
        }
        let moved = drain
            .drain_dead_letters(topic, group, &store, 10)
            .await
            .expect("drain");
        if moved > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "nothing reached the dead letters within {deadline:?}"
        );
    }
    store
        .list(&DeadLetterFilter::default(), None, 10)
        .await
        .expect("list")
}
