//! The reference service's catalog: its events, commands, queries and topics; its
//! AsyncAPI 3.0 document accepted by the official parser (npm `@asyncapi/parser`, which
//! `scripts/node-tools.sh` installs outside the clone), a broken document refused by the
//! same validator; and `order-fulfillment schema check` against the committed snapshot.
//!
//! Without Node the AsyncAPI tests print `SKIPPED` and pass, unless
//! `RUNNEL_REQUIRE_SERVICES=1` (CI), where a missing Node fails them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use order_fulfillment::service;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_order-fulfillment");
const DEADLINE: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `cmd` to its end, killing it (by its own PID) past [`DEADLINE`].
fn run(mut cmd: Command, what: &str) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} starts: {e}"));
    let started = Instant::now();
    loop {
        if child.try_wait().expect("waitable").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The installed parser's directory, or `None` (after a loud `SKIPPED`) when this machine
/// has no Node and services are not required.
fn node_tools(test: &str) -> Option<PathBuf> {
    let has_node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let required = std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() == Ok("1");
    if !has_node {
        assert!(
            !required,
            "{test}: node is not installed, and RUNNEL_REQUIRE_SERVICES=1 requires it"
        );
        eprintln!("SKIPPED {test}: node is not installed (the AsyncAPI parser runs on Node)");
        return None;
    }
    let mut install = Command::new("bash");
    install
        .arg(repo_root().join("scripts/node-tools.sh"))
        .arg("install");
    let out = run(install, "scripts/node-tools.sh install");
    // Exit 3: node without npm.
    if out.status.code() == Some(3) && !required {
        eprintln!("SKIPPED {test}: npm is not installed (it installs the AsyncAPI parser)");
        return None;
    }
    assert!(
        out.status.success(),
        "{test}: installing the AsyncAPI parser failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Runs the official parser on `doc`; returns (valid, its report).
fn validate(tools: &Path, doc: &Value) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("asyncapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let mut node = Command::new("node");
    node.arg(repo_root().join("scripts/asyncapi-validate.mjs"))
        .arg(&file)
        .env("RUNNEL_NODE_TOOLS", tools);
    let out = run(node, "the AsyncAPI validator");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => (true, report),
        Some(1) => (false, report),
        other => panic!("the validator could not run ({other:?}): {report}"),
    }
}

async fn asyncapi() -> Value {
    service::catalog()
        .await
        .unwrap()
        .asyncapi("order-fulfillment", "0.1.0")
}

#[tokio::test]
async fn the_catalog_lists_the_services_events_requests_and_topics() {
    let catalog = service::catalog().await.unwrap();
    let placed = catalog.event("OrderPlaced").unwrap();
    assert_eq!(placed.schema_version, 3);
    assert_eq!(placed.upcast_from, Some(1), "the v1 -> v3 upcaster chain");
    assert_eq!(placed.category.as_deref(), Some("Order"));
    assert_eq!(
        placed.schema["properties"]["items"]["items"]["required"],
        json!(["product_id", "quantity", "unit_price_cents"])
    );
    for event_type in ["CustomerRegistered", "ProductAdded", "OrderShipped"] {
        assert!(catalog.event(event_type).is_some(), "{event_type}");
    }
    let place = catalog
        .commands
        .iter()
        .find(|c| c.name == "PlaceOrder")
        .unwrap();
    assert!(place.schema.is_some());
    assert!(catalog.queries.iter().any(|q| q.name == "GetOrderSummary"));
    let order = catalog.topic("Order").unwrap();
    assert!(order.event_types.contains(&"OrderPlaced".to_string()));
    assert!(order.receivers.iter().any(|r| r.group == "fulfillment"));
    assert_eq!(
        order.publishers[0].name,
        "event-store-relay:order-service-relay"
    );
    let inventory = catalog.topic("inventory.commands").unwrap();
    assert_eq!(inventory.receivers[0].group, "inventory");
    assert_eq!(inventory.publishers[0].name, "saga:order-fulfillment");
    let replies = catalog.topic("sagas.order-fulfillment.replies").unwrap();
    assert!(replies.publishers.iter().any(|p| p.name == "payments"));
    assert!(replies
        .receivers
        .iter()
        .any(|r| r.group == "saga-order-fulfillment"));
}

#[tokio::test]
async fn asyncapi_document_passes_the_official_parser() {
    let test = "asyncapi_document_passes_the_official_parser";
    let doc = asyncapi().await;
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["channels"]["Order"]["address"], "Order");
    assert!(doc["operations"]["receive.Order.fulfillment"].is_object());
    let Some(tools) = node_tools(test) else {
        return;
    };
    let (valid, report) = validate(&tools, &doc);
    assert!(valid, "the parser refused the document:\n{report}");
    assert!(report.contains("valid AsyncAPI 3.0.0"), "{report}");
}

#[tokio::test]
async fn asyncapi_validator_rejects_a_broken_document() {
    let test = "asyncapi_validator_rejects_a_broken_document";
    let mut doc = asyncapi().await;
    // An operation on a channel that does not exist, and a channel address that is not a
    // string.
    doc["operations"]["receive.Order.fulfillment"]["channel"]["$ref"] =
        json!("#/channels/NoSuchChannel");
    doc["channels"]["Order"]["address"] = json!(42);
    let Some(tools) = node_tools(test) else {
        return;
    };
    let (valid, report) = validate(&tools, &doc);
    assert!(!valid, "the parser accepted a broken document:\n{report}");
    assert!(report.contains("INVALID"), "{report}");
    assert!(report.contains("address"), "{report}");
}

fn schema_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("schema")
        .args(args)
        .env_remove("RUNNEL_STORE")
        .env_remove("RUNNEL_DB")
        .env_remove("RUNNEL_BUS")
        .env("RUST_LOG", "warn");
    cmd
}

#[test]
fn the_committed_snapshot_matches_the_service() {
    let snapshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema-snapshot.json");
    let snapshot = snapshot.to_str().unwrap();
    let out = run(
        schema_cmd(&["check", "--snapshot", snapshot]),
        "schema check",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schema check failed (run `cargo run -p order-fulfillment -- schema snapshot --out \
         examples/order-fulfillment/schema-snapshot.json` after a compatible change):\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("schema check passed"), "{stdout}");
}

#[test]
fn schema_check_fails_when_the_snapshot_has_a_field_the_service_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot.json");
    let out = run(
        schema_cmd(&["snapshot", "--out", path.to_str().unwrap()]),
        "schema snapshot",
    );
    assert!(out.status.success(), "{out:?}");
    // The committed contract had a `gift_message` field the code no longer has.
    let mut snapshot: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    snapshot["events"]["OrderConfirmed"]["schema"]["properties"]["gift_message"] =
        json!({"type": "string"});
    std::fs::write(&path, serde_json::to_vec(&snapshot).unwrap()).unwrap();
    let out = run(
        schema_cmd(&["check", "--snapshot", path.to_str().unwrap()]),
        "schema check",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "{stdout}");
    assert!(
        stdout.contains("incompatible: OrderConfirmed $.gift_message: field removed"),
        "{stdout}"
    );
    // A file that is not a snapshot is bad input.
    std::fs::write(&path, b"[]").unwrap();
    let out = run(
        schema_cmd(&["check", "--snapshot", path.to_str().unwrap()]),
        "schema check",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
