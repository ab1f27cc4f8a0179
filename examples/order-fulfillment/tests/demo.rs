//! `order-fulfillment demo` end to end: the real binary runs the whole order flow (HTTP
//! clients, the saga, the services, injected failures) or, with `--race`, drives many
//! concurrent clients against the aggregate; prints a summary that adds up, and leaves the
//! orders in the store it names, or in its own recreated runnel-demo.db, never in the
//! store runnel.toml configures.

mod common;

use std::path::Path;
use std::time::Duration;

use assert_cmd::Command;
use common::{
    assert_fixed_mix_of_60, demo_summary, nats_bus_of_its_own, service_url, success_stdout,
};
use runnel::connect::{open_stores, OpenMode, StoreUrl};

/// Longest one demo run may take (a debug build on a busy machine).
const RUN_DEADLINE: Duration = Duration::from_secs(120);
const EXIT_BAD_INPUT: i32 = 2;

/// `order-fulfillment` in `dir`, with no store or bus configuration from the environment.
fn order_fulfillment(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_order-fulfillment"));
    cmd.current_dir(dir)
        .env_remove("RUNNEL_STORE")
        .env_remove("RUNNEL_DB")
        .env_remove("RUNNEL_BUS")
        .env_remove("RUST_LOG")
        .timeout(RUN_DEADLINE);
    cmd
}

/// The Order streams in the SQLite store at `path` (the tests make at most a few dozen).
fn order_streams(path: &Path) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stores = open_stores(&StoreUrl::sqlite(path), OpenMode::MustExist)
            .await
            .unwrap();
        stores
            .events
            .list_streams(Some("Order"), None, 1000)
            .await
            .unwrap()
            .len()
    })
}

/// The PostgreSQL test server with a fresh schema for one test, or `None` (skipped loudly;
/// a failure when `RUNNEL_REQUIRE_SERVICES=1`).
fn postgres_store_url() -> Option<String> {
    match std::env::var("RUNNEL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            let schema = format!("demo_{}", uuid::Uuid::now_v7().simple());
            let sep = if url.contains('?') { '&' } else { '?' };
            Some(format!("{url}{sep}schema={schema}"))
        }
        _ => {
            assert!(
                std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "RUNNEL_TEST_POSTGRES_URL is not set but RUNNEL_REQUIRE_SERVICES=1"
            );
            eprintln!("SKIPPED: RUNNEL_TEST_POSTGRES_URL is not set");
            None
        }
    }
}

#[test]
fn demo_has_help_with_an_example() {
    let dir = tempfile::tempdir().unwrap();
    let out = order_fulfillment(dir.path())
        .args(["demo", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Examples"), "{help}");
    for flag in ["--orders", "--serve", "--race", "--no-failures", "--parts"] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
}

#[test]
fn demo_runs_the_whole_order_flow_and_prints_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("test.db");
    let out = order_fulfillment(dir.path())
        .args(["demo", "--orders", "100", "--clients", "8", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let summary = success_stdout(&out);
    for needle in [
        "100 orders by 8 HTTP clients",
        "placed         100",
        "confirmed      94",
        "compensated    5 (3 card declined, 2 out of stock",
        "dead-lettered  1",
        "POST→confirmed p50",
        "per commit",
        "verified       100 orders",
        "sagas list",
        "dead-letters list",
        "dashboard",
    ] {
        assert!(
            summary.contains(needle),
            "missing {needle:?} in:\n{summary}"
        );
    }
    assert_eq!(order_streams(&db), 100);
}

#[test]
fn demo_flow_summary_as_json_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = order_fulfillment(dir.path())
        .args([
            "--db",
            "test.db",
            "demo",
            "--json",
            "--orders",
            "200",
            "--clients",
            "16",
        ])
        .output()
        .unwrap();
    let v = demo_summary(&out);
    let n = |key: &str| {
        v[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} missing in {v}"))
    };
    assert_eq!(n("placed"), 200);
    assert_eq!(n("confirmed") + n("compensated") + n("dead_lettered"), 200);
    assert_eq!(n("compensated"), 10, "{v}");
    assert_eq!(v["compensated_by_reason"]["out of stock"], 4, "{v}");
    assert_eq!(v["compensated_by_reason"]["card declined"], 6, "{v}");
    assert_eq!(n("dead_lettered"), 2, "{v}");
    assert_eq!(n("verified"), 200);
    assert!(v["events_per_commit"].as_f64().unwrap() >= 1.0, "{v}");
    let p50 = v["confirm_latency_p50_ms"].as_f64().unwrap();
    assert!(
        p50 > 0.0 && v["confirm_latency_p99_ms"].as_f64().unwrap() >= p50,
        "{v}"
    );
}

#[test]
fn demo_without_failures_confirms_every_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = order_fulfillment(dir.path())
        .args([
            "demo",
            "--json",
            "--orders",
            "60",
            "--clients",
            "4",
            "--no-failures",
        ])
        .output()
        .unwrap();
    let v = demo_summary(&out);
    assert_eq!(v["confirmed"], 60, "{v}");
    assert_eq!(v["compensated"], 0, "{v}");
    assert_eq!(v["dead_lettered"], 0, "{v}");
}

#[test]
fn race_demo_with_small_numbers_prints_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("test.db");
    let out = order_fulfillment(dir.path())
        .args(["demo", "--race", "--orders", "50", "--clients", "4", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let summary = success_stdout(&out);
    for needle in [
        "50 orders by 4 concurrent clients",
        "rejected by invariants",
        "retried by the repository",
        "events/s",
        "p50",
        "p99",
        "events per commit",
        "verified",
    ] {
        assert!(
            summary.contains(needle),
            "missing {needle:?} in:\n{summary}"
        );
    }
    // The orders are really in the store.
    assert_eq!(order_streams(&db), 50);
}

#[test]
fn race_demo_summary_as_json_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = order_fulfillment(dir.path())
        .args([
            "--db",
            "test.db",
            "demo",
            "--race",
            "--json",
            "--orders",
            "60",
            "--clients",
            "6",
        ])
        .output()
        .unwrap();
    let v = demo_summary(&out);
    let n = |key: &str| {
        v[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} missing in {v}"))
    };
    assert_eq!(n("orders"), 60);
    assert_eq!(n("events"), n("events_verified"));
    assert_eq!(
        n("commands"),
        n("accepted") + n("rejected_by_invariants") + n("gave_up_after_retries")
    );
    // Each accepted order command appends exactly one event.
    assert_eq!(n("events"), n("accepted"));
    // Scripted refusals: 6 cancelled-then-shipped orders, 9 ship/cancel races and 3 double
    // confirmations among 60 orders each refuse exactly one command (unless it gave up).
    assert!(
        n("rejected_by_invariants") + n("gave_up_after_retries") >= 18,
        "{v}"
    );
    assert_eq!(v["final_states"]["delivered"], 6, "{v}");
    assert!(v["events_per_commit"].as_f64().unwrap() >= 1.0);
    assert!(v["latency_p99_ms"].as_f64().unwrap() >= v["latency_p50_ms"].as_f64().unwrap());
}

#[test]
fn demo_without_a_store_flag_or_env_recreates_its_own_file_ignoring_runnel_toml() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("runnel.toml"),
        "store = \"sqlite:configured.db\"\n",
    )
    .unwrap();
    for _ in 0..2 {
        order_fulfillment(dir.path())
            .args(["demo", "--orders", "20", "--clients", "2"])
            .assert()
            .success();
    }
    assert!(
        !dir.path().join("configured.db").exists(),
        "the demo wrote into the store runnel.toml configures"
    );
    assert_eq!(
        order_streams(&dir.path().join("runnel-demo.db")),
        20,
        "the second run did not start afresh"
    );
}

#[test]
fn demo_refuses_out_of_range_flags_and_two_stores_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["demo", "--orders", "0"][..],
        &["demo", "--clients", "5000"],
        &["--store", "sqlite:a.db", "--db", "b.db", "demo"],
        &["demo", "--parts", "inventory,payments"],
        &["demo", "--parts", "orders,warehouse"],
        &["demo", "--http", "0.0.0.0:0"],
        &["demo", "--race", "--orders", "2000000"],
    ] {
        let out = order_fulfillment(dir.path()).args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(EXIT_BAD_INPUT),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert!(written.is_empty(), "nothing is written: {written:?}");
}

#[test]
fn demo_works_against_postgres_from_runnel_store() {
    let Some(url) = postgres_store_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = order_fulfillment(dir.path())
        .env("RUNNEL_STORE", &url)
        .args(["demo", "--orders", "40", "--clients", "4"])
        .output()
        .unwrap();
    let summary = success_stdout(&out);
    assert!(summary.contains("40 orders by 4 HTTP clients"), "{summary}");
    assert!(summary.contains("verified"), "{summary}");
    assert!(
        !dir.path().join("runnel-demo.db").exists(),
        "the demo used PostgreSQL"
    );
}

/// The same demo, distributed by configuration alone: PostgreSQL and NATS.
#[test]
fn demo_runs_distributed_on_postgres_and_nats() {
    let Some(url) = postgres_store_url() else {
        return;
    };
    let Some(nats) = service_url("RUNNEL_TEST_NATS_URL") else {
        return;
    };
    let bus = nats_bus_of_its_own(&nats, "demo");
    let dir = tempfile::tempdir().unwrap();
    let out = order_fulfillment(dir.path())
        .args([
            "--store",
            &url,
            "--bus",
            &bus,
            "demo",
            "--json",
            "--orders",
            "60",
            "--clients",
            "8",
        ])
        .output()
        .unwrap();
    let v = demo_summary(&out);
    assert_fixed_mix_of_60(&v);
    assert!(v["bus"].as_str().unwrap().starts_with("nats://"), "{v}");
}

/// The demo over `bus` on a fresh PostgreSQL schema: 60 orders, each settled as its fate
/// says (the counts are the fixed mix's for orders 0..60).
fn demo_distributed_over(bus: &str) {
    let Some(url) = postgres_store_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = order_fulfillment(dir.path())
        .args([
            "--store",
            &url,
            "--bus",
            bus,
            "demo",
            "--json",
            "--orders",
            "60",
            "--clients",
            "8",
        ])
        .output()
        .unwrap();
    assert_fixed_mix_of_60(&demo_summary(&out));
}

#[test]
fn demo_runs_distributed_on_postgres_and_rabbitmq() {
    if let Some(url) = service_url("RUNNEL_TEST_AMQP_URL") {
        demo_distributed_over(&url);
    }
}

#[test]
fn demo_runs_distributed_on_postgres_and_kafka() {
    if let Some(brokers) = service_url("RUNNEL_TEST_KAFKA_BROKERS") {
        // Topics and groups of this run's own: an earlier run's members on the shared
        // broker never hold this run's partitions.
        let prefix = format!("demo{}", uuid::Uuid::now_v7().simple());
        demo_distributed_over(&format!("kafka://{brokers}?prefix={prefix}"));
    }
}
