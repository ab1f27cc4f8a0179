//! `runnel schema snapshot|check|asyncapi` on files: a catalog as `GET /catalog` returns
//! it, the snapshot written from it, and the check's exit codes and listing.

use assert_cmd::Command;
use serde_json::{json, Value};

const EXIT_BAD_INPUT: i32 = 2;
const EXIT_INCOMPATIBLE: i32 = 6;

fn runnel() -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin!("runnel"));
    cmd.env_remove("RUNNEL_STORE")
        .env_remove("RUNNEL_DB")
        .env_remove("RUNNEL_BUS")
        .timeout(std::time::Duration::from_secs(120));
    cmd
}

/// A catalog with one event type, `OrderPlaced` at `version`, whose payload has `fields`
/// (name, JSON type, required).
fn catalog(version: u32, fields: &[(&str, &str, bool)]) -> Value {
    let properties: serde_json::Map<String, Value> = fields
        .iter()
        .map(|(name, ty, _)| (name.to_string(), json!({ "type": ty })))
        .collect();
    let required: Vec<&str> = fields.iter().filter(|f| f.2).map(|f| f.0).collect();
    json!({
        "events": [{
            "event_type": "OrderPlaced",
            "category": "Order",
            "schema_version": version,
            "schema": { "type": "object", "properties": properties, "required": required },
            "rust_type": "app::OrderEvent",
        }],
        "commands": [],
        "queries": [],
        "topics": [{
            "topic": "Order",
            "event_types": ["OrderPlaced"],
            "receivers": [{ "group": "billing", "kind": "consumer" }],
            "publishers": [{ "name": "event-store-relay:r", "kind": "event_store_relay" }],
        }],
    })
}

fn write(dir: &std::path::Path, name: &str, value: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn schema_check_rejects_removed_field() {
    let dir = tempfile::tempdir().unwrap();
    let before = write(
        dir.path(),
        "before.json",
        &catalog(
            1,
            &[("customer_id", "string", true), ("total", "integer", true)],
        ),
    );
    let snapshot = dir.path().join("snapshot.json");
    let snapshot = snapshot.to_str().unwrap();
    runnel()
        .args([
            "schema",
            "snapshot",
            "--catalog",
            &before,
            "--out",
            snapshot,
        ])
        .assert()
        .success();
    let written: Value = serde_json::from_slice(&std::fs::read(snapshot).unwrap()).unwrap();
    assert_eq!(written["format"], "runnel-schema-snapshot/1");
    assert_eq!(written["events"]["OrderPlaced"]["schema_version"], 1);

    let after = write(
        dir.path(),
        "after.json",
        &catalog(1, &[("customer_id", "string", true)]),
    );
    let out = runnel()
        .args([
            "schema",
            "check",
            "--current",
            &after,
            "--snapshot",
            snapshot,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(EXIT_INCOMPATIBLE), "{stdout}");
    assert!(
        stdout.contains("incompatible: OrderPlaced $.total: field removed"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 backward-incompatible schema change"),
        "{out:?}"
    );
}

#[test]
fn schema_check_passes_compatible_changes_and_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    let before = write(
        dir.path(),
        "before.json",
        &catalog(1, &[("customer_id", "string", true)]),
    );
    let after = write(
        dir.path(),
        "after.json",
        &catalog(
            1,
            &[("customer_id", "string", true), ("note", "string", false)],
        ),
    );
    let out = runnel()
        .args([
            "schema",
            "check",
            "--current",
            &after,
            "--snapshot",
            &before,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("compatible: OrderPlaced $.note: optional field added"),
        "{stdout}"
    );
    assert!(stdout.contains("schema check passed"), "{stdout}");
}

#[test]
fn schema_check_rejects_type_change_required_field_and_version_without_upcaster() {
    let dir = tempfile::tempdir().unwrap();
    let before = write(
        dir.path(),
        "before.json",
        &catalog(
            1,
            &[("customer_id", "string", true), ("total", "integer", true)],
        ),
    );
    let after = write(
        dir.path(),
        "after.json",
        &catalog(
            1,
            &[
                ("customer_id", "string", true),
                ("total", "string", true),
                ("currency", "string", true),
            ],
        ),
    );
    let out = runnel()
        .args([
            "schema",
            "check",
            "--current",
            &after,
            "--snapshot",
            &before,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(EXIT_INCOMPATIBLE), "{stdout}");
    assert!(
        stdout.contains("OrderPlaced $.total: type changed from integer to string"),
        "{stdout}"
    );
    assert!(
        stdout.contains("OrderPlaced $.currency: required field added"),
        "{stdout}"
    );
    let bumped = write(
        dir.path(),
        "bumped.json",
        &catalog(2, &[("customer_id", "string", true)]),
    );
    let out = runnel()
        .args([
            "schema",
            "check",
            "--current",
            &bumped,
            "--snapshot",
            &before,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(EXIT_INCOMPATIBLE), "{stdout}");
    assert!(
        stdout.contains("raised from 1 to 2 without an upcaster chain from 1"),
        "{stdout}"
    );
    // With an upcaster chain from version 1 the new shape is accepted.
    let mut upcast = catalog(2, &[("customer_id", "string", true)]);
    upcast["events"][0]["upcast_from"] = json!(1);
    let upcast = write(dir.path(), "upcast.json", &upcast);
    runnel()
        .args([
            "schema",
            "check",
            "--current",
            &upcast,
            "--snapshot",
            &before,
        ])
        .assert()
        .success();
}

#[test]
fn schema_commands_refuse_files_that_are_not_catalogs() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.json", &catalog(1, &[]));
    let bad = write(dir.path(), "bad.json", &json!({"events": 5}));
    let out = runnel()
        .args(["schema", "check", "--current", &good, "--snapshot", &bad])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("neither a schema snapshot"),
        "{out:?}"
    );
    let out = runnel()
        .args(["schema", "asyncapi", "--catalog", &bad])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT), "{out:?}");
    let missing = dir.path().join("missing.json");
    let out = runnel()
        .args(["schema", "check", "--current", &good, "--snapshot"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[test]
fn schema_asyncapi_prints_a_document_of_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "catalog.json",
        &catalog(1, &[("customer_id", "string", true)]),
    );
    let out = runnel()
        .args([
            "schema",
            "asyncapi",
            "--catalog",
            &file,
            "--title",
            "Orders",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], "Orders");
    assert_eq!(doc["channels"]["Order"]["address"], "Order");
    assert_eq!(
        doc["operations"]["receive.Order.billing"]["action"],
        "receive"
    );
}
