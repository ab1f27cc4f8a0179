//! The `runnel-bench` binary end to end: each benchmark in `--quick` mode prints every
//! scenario of its table and leaves no file behind.

use std::path::Path;
use std::time::Duration;

use assert_cmd::Command;

/// Longest a `--quick` run may take (a debug build on a busy machine).
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// `runnel-bench` in `dir`, with no store configuration leaking in from the environment.
fn bench(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runnel-bench"));
    cmd.current_dir(dir)
        .env_remove("RUNNEL_STORE")
        .env_remove("RUNNEL_DB")
        .env_remove("RUST_LOG")
        .timeout(RUN_DEADLINE);
    cmd
}

/// The PostgreSQL test server, or `None` (skipped loudly; a failure when
/// `RUNNEL_REQUIRE_SERVICES=1`).
fn postgres_url() -> Option<String> {
    match std::env::var("RUNNEL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
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

fn assert_no_leftovers(dir: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn every_command_has_help_with_an_example() {
    let dir = tempfile::tempdir().unwrap();
    for command in [
        &["--help"][..],
        &["store", "--help"],
        &["bus", "--help"],
        &["outbox", "--help"],
        &["saga", "--help"],
        &["projection", "--help"],
        &["http", "--help"],
        &["nexmark", "--help"],
    ] {
        let out = bench(dir.path()).args(command).output().unwrap();
        assert!(out.status.success(), "{command:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Example"),
            "{command:?} has no example:\n{help}"
        );
    }
}

#[test]
fn out_of_range_flags_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path())
        .args(["bus", "--seconds", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end(), "error: --seconds must be in (0, 600]");
    assert!(out.stdout.is_empty());
}

#[test]
fn bench_store_quick_prints_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path())
        .args([
            "store",
            "--quick",
            "--writers",
            "8",
            "--store",
            "sqlite:ignored.db",
        ])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for needle in [
        "| scenario | Runnel | baseline | ratio | target |",
        "fdatasync",
        "1 writer, 1 event/append",
        "8 writers, 1 event/append",
        "100 events/append",
        "read $all",
        "Peak RSS",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    // A SQLite --store is not what bench store measures: it says so and leaves it alone.
    assert!(
        stderr.contains(
            "note: bench store measures fresh SQLite files under --dir; --store is ignored"
        ),
        "{stderr}"
    );
    // The temporary files are gone.
    assert_no_leftovers(dir.path());
}

#[test]
fn bench_store_commands_on_postgres_print_execute_beside_raw() {
    let Some(url) = postgres_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path())
        // Few connections: the test server's 100 are shared with other tests.
        .args([
            "store",
            "--quick",
            "--commands-only",
            "--writers",
            "8",
            "--store",
            &url,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "`Repository::execute`, 1 writer, 1 event/command",
        "`Repository::execute`, state cache, 1 writer",
        "8 writers, each on its own aggregate",
        "16 writers on one aggregate",
        "vs raw INSERT … SELECT, 8 conn",
        "Peak RSS",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    let ratios = stdout
        .lines()
        .filter(|l| l.starts_with("| `Repository::execute`") && l.contains("× |"))
        .count();
    assert_eq!(ratios, 6, "{stdout}");
    // Only the append rows are left out.
    assert!(!stdout.contains("event/append"), "{stdout}");
    assert!(!stdout.contains(" NaN"), "{stdout}");
}

#[test]
fn bench_bus_quick_prints_every_scenario_beside_its_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path())
        .args(["bus", "--quick", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "| scenario | Runnel | baseline | ratio | target |",
        "Load average",
        "fdatasync",
        "publish, 1 publisher × 1 msg/call",
        "publish, 64 publishers × 1 msg/call",
        "publish, 1 publisher × 100 msg/call",
        "vs bare tokio mpsc pipeline",
        "vs raw SQLite insert + select + delete",
        "through the default layers vs direct call",
        "whole consumer",
        "p99",
        "Peak RSS",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    // Every scenario line has a ratio.
    let ratios = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains(" vs "))
        .filter(|l| l.contains("× |"))
        .count();
    assert_eq!(ratios, 7, "{stdout}");
    assert_no_leftovers(dir.path());
}

#[test]
fn bench_bus_quick_on_postgres_prints_every_scenario_beside_its_baseline() {
    let Some(url) = postgres_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path())
        .args(["bus", "--quick", "--store", &url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "synchronous_commit=on",
        "PostgreSQL publish, 1 publisher × 1 msg/call vs raw INSERT 1 msg/tx",
        "PostgreSQL publish, 64 publishers × 1 msg/call vs raw INSERT 64 msg/tx",
        "on 16 connections",
        "PostgreSQL publish, 1 publisher × 100 msg/call",
        "vs raw INSERT + SELECT + DELETE",
        "Peak RSS",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    assert!(!stdout.contains(" NaN"), "{stdout}");
}

#[test]
fn bench_outbox_quick_prints_every_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path())
        .args(["outbox", "--quick", "--dir"])
        .arg(dir.path())
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(text.contains("| SQLite | drain"), "{text}");
    assert!(text.contains("| SQLite | 8 producers"), "{text}");
    assert!(text.contains("peak RSS"), "{text}");
    assert_no_leftovers(dir.path());
}

#[test]
fn bench_saga_quick_prints_runnel_beside_both_sqlite_baselines() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path())
        .args(["saga", "--quick", "--clients", "8", "--dir"])
        .arg(dir.path())
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    for needle in [
        "| store | scenario | Runnel instances/s | baseline instances/s | ratio | target |",
        "| SQLite | vs hand-written SQL, 1 transaction per transition",
        "| SQLite | vs the same SQL with group commit",
        "≥ 0.7×",
        "write transactions per instance",
        "Runnel's store calls per instance: commits 4.00",
        "Runnel's `run` loop",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains("NaN"), "{text}");
    assert_no_leftovers(dir.path());
}

#[test]
fn bench_saga_memory_quick_reports_rss_at_each_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path())
        .args(["saga", "--memory", "--quick", "--clients", "8", "--dir"])
        .arg(dir.path())
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(text.contains("| SQLite | 200 |"), "{text}");
    assert!(text.contains("| SQLite | 1,000 |"), "{text}");
    assert!(
        text.contains("SQLite: RSS after 1,000 finished instances"),
        "{text}"
    );
    assert_no_leftovers(dir.path());
}

#[test]
fn bench_saga_quick_on_postgres_adds_its_row_and_drops_its_schemas() {
    let Some(url) = postgres_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path())
        .args([
            "saga",
            "--quick",
            "--clients",
            "8",
            "--store",
            &url,
            "--dir",
        ])
        .arg(dir.path())
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(
        text.contains(
            "| PostgreSQL | vs hand-written SQL, 1 transaction per transition, 8 connections"
        ),
        "{text}"
    );
    assert!(
        text.contains("PostgreSQL, Runnel's store calls per instance"),
        "{text}"
    );
    assert_no_leftovers(dir.path());
}

#[test]
fn bench_projection_quick_prints_runnel_beside_the_hand_written_loop() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path())
        .args(["projection", "--quick", "--dir"])
        .arg(dir.path())
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    for needle in [
        "| store | scenario | Runnel events/s | baseline events/s | ratio | target |",
        "| SQLite | upsert 1 row per event, 500 events per transaction |",
        "≥ 0.8×",
        "Baseline: a hand-written loop",
        "SQLite: write transactions Runnel",
        "Load average",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains("NaN"), "{text}");
    assert_no_leftovers(dir.path());
}

#[test]
fn bench_projection_json_is_one_document_with_the_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path())
        .args(["projection", "--quick", "--json", "--batch", "100", "--dir"])
        .arg(dir.path())
        .assert()
        .success();
    let doc: serde_json::Value =
        serde_json::from_slice(&out.get_output().stdout).expect("stdout is one JSON document");
    assert_eq!(doc["bench"], "projection");
    assert_eq!(doc["batch"], 100);
    let sqlite = &doc["results"][0];
    assert_eq!(sqlite["store"], "SQLite");
    assert_eq!(
        sqlite["runnel"]["events"], 6_000,
        "3 rebuilds of 2,000 events"
    );
    assert_eq!(sqlite["baseline"]["events"], 6_000);
    assert!(sqlite["ratio"].as_f64().unwrap() > 0.0, "{doc}");
    assert_eq!(sqlite["target"], 0.8);
    assert_no_leftovers(dir.path());
}

#[test]
fn bench_projection_memory_quick_reports_rss_at_each_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path())
        .args(["projection", "--memory", "--quick", "--dir"])
        .arg(dir.path())
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(text.contains("| SQLite | 1,000 | 500 |"), "{text}");
    assert!(text.contains("| SQLite | 3,000 | 500 |"), "{text}");
    assert!(
        text.contains("SQLite: the rebuild of 3,000 events raised RSS by"),
        "{text}"
    );
    assert_no_leftovers(dir.path());
}

#[test]
fn bench_projection_quick_on_postgres_adds_its_row() {
    let Some(url) = postgres_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path())
        .args(["projection", "--quick", "--store", &url, "--dir"])
        .arg(dir.path())
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(
        text.contains("| PostgreSQL | upsert 1 row per event, 500 events per transaction |"),
        "{text}"
    );
    assert!(
        text.contains("PostgreSQL: write transactions Runnel"),
        "{text}"
    );
    assert_no_leftovers(dir.path());
}

#[test]
fn bench_http_quick_prints_appends_and_fan_out_beside_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path())
        .args(["http", "--quick", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "| scenario | Runnel | baseline | ratio | target |",
        "SQLite: appends",
        "events/s over HTTP",
        "events/s in process",
        "SQLite: SSE fan-out",
        "(+1 stalled)",
        "p99",
        "Peak RSS, SQLite",
        "≥ 0.6×",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    assert_no_leftovers(dir.path());
    let out = bench(dir.path())
        .args(["http", "--clients", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "error: --clients must be in 1..=1024"
    );
}

#[test]
fn bench_nexmark_quick_prints_every_query_in_both_tiers_beside_flink() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path())
        .args(["nexmark", "--quick", "--dir"])
        .arg(dir.path())
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    for needle in [
        "| query | tier | events | Runnel events/s per core | Runnel events/s wall | peak RSS | raw loop per core | Runnel / raw | Flink 1.13 per core | Runnel / Flink |",
        "| q1 currency conversion | engine | 20,000 |",
        "| q5 hot items | engine | 20,000 |",
        "| q7 highest bid | engine | 20,000 |",
        "| q8 new users | engine | 20,000 |",
        "| q1 currency conversion | store | 20,000 |",
        "| q8 new users | store | 20,000 |",
        "| 157,900 |",
        "| 22,100 |",
        "Load average",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains("NaN"), "{text}");
    assert_no_leftovers(dir.path());
}
