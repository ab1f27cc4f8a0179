//! `runnel dlq …`, `runnel publish` and `runnel consume` end to end: each test fills a
//! fresh store through the library, runs the real binary, and checks its output, exit code
//! and what the store holds afterwards.

use std::sync::Arc;

use runnel_core::dead_letter::{
    DeadLetterFilter, DeadLetterId, DeadLetterStore, FailureRecord, NewDeadLetter,
};
use runnel_core::{GroupName, Message, TopicName};
use serde_json::Value;

mod common;
use common::Scratch;

const EXIT_BAD_INPUT: i32 = 2;
const EXIT_NOT_FOUND: i32 = 4;

/// One dead letter to store: topic, group, error text, payload size in bytes.
struct Letter<'a> {
    topic: &'a str,
    group: &'a str,
    error: &'a str,
    payload_bytes: usize,
}

fn letter<'a>(topic: &'a str, group: &'a str, error: &'a str) -> Letter<'a> {
    Letter {
        topic,
        group,
        error,
        payload_bytes: 16,
    }
}

fn new_dead_letter(l: &Letter<'_>) -> NewDeadLetter {
    let mut message =
        Message::json("OrderPlaced", &serde_json::json!({})).with_key(format!("{}-key", l.topic));
    message.payload = format!("\"{}\"", "x".repeat(l.payload_bytes.saturating_sub(2))).into_bytes();
    NewDeadLetter {
        topic: TopicName::new(l.topic).unwrap(),
        group: GroupName::new(l.group).unwrap(),
        message,
        failures: vec![
            FailureRecord {
                attempt: 1,
                at: chrono::Utc::now(),
                error: "first try failed".into(),
                permanent: false,
            },
            FailureRecord {
                attempt: 2,
                at: chrono::Utc::now(),
                error: l.error.into(),
                permanent: true,
            },
        ],
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

impl Scratch {
    /// The store's dead letters, through the library.
    fn dead_letters(&self) -> runnel_sqlite::SqliteDeadLetters {
        let store = runnel_sqlite::SqliteStore::open(self.db()).expect("open the test store");
        runnel_sqlite::SqliteDeadLetters::new(store)
    }

    /// Stores dead letters through the library; returns their ids.
    fn put(&self, letters: &[Letter<'_>]) -> Vec<u64> {
        let store = self.dead_letters();
        runtime().block_on(async {
            let mut ids = Vec::new();
            for l in letters {
                ids.push(store.put(new_dead_letter(l)).await.unwrap().0);
            }
            ids
        })
    }

    fn pending(&self) -> u64 {
        let store = self.dead_letters();
        runtime().block_on(async { store.count(&DeadLetterFilter::pending()).await.unwrap() })
    }

    /// Runs `runnel --json <args>`, asserts success, parses each stdout line.
    fn json_lines(&self, args: &[&str]) -> Vec<Value> {
        let out = self
            .runnel()
            .arg("--json")
            .args(args)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_lines(&out.stdout)
    }

    fn stdout(&self, args: &[&str]) -> String {
        let out = self.runnel().args(args).output().expect("run");
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

fn parse_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn ids_of(lines: &[Value]) -> Vec<u64> {
    lines.iter().map(|l| l["id"].as_u64().unwrap()).collect()
}

fn assert_one_line_error(output: &std::process::Output, expected_code: i32) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(
        output.status.code(),
        Some(expected_code),
        "stderr: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(stderr.starts_with("error: "), "{stderr:?}");
    assert!(
        output.stdout.is_empty(),
        "stdout: {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    stderr.trim_end().to_string()
}

#[test]
fn dlq_list_filters_by_topic_group_error_and_time() {
    let s = Scratch::new();
    let ids = s.put(&[
        letter("orders", "billing", "Card DECLINED"),
        letter("orders", "shipping", "timeout talking to carrier"),
        letter("payments", "billing", "ledger timeout"),
    ]);
    assert_eq!(ids_of(&s.json_lines(&["dlq", "list"])), ids);
    assert_eq!(
        ids_of(&s.json_lines(&["dlq", "list", "--topic", "orders"])),
        ids[..2]
    );
    assert_eq!(
        ids_of(&s.json_lines(&["dlq", "list", "--group", "billing"])),
        vec![ids[0], ids[2]]
    );
    assert_eq!(
        ids_of(&s.json_lines(&["dlq", "list", "--error", "TIMEOUT"])),
        ids[1..]
    );
    assert_eq!(
        ids_of(&s.json_lines(&["dlq", "list", "--error", "declined", "--topic", "orders"])),
        vec![ids[0]]
    );
    assert_eq!(
        ids_of(&s.json_lines(&["dlq", "list", "--since", "1h"])),
        ids
    );
    assert!(s
        .json_lines(&["dlq", "list", "--since", "2099-01-01T00:00:00Z"])
        .is_empty());
    assert_eq!(
        ids_of(&s.json_lines(&["dlq", "list", "--limit", "2"])),
        ids[..2]
    );

    let first = &s.json_lines(&["dlq", "list", "--limit", "1"])[0];
    assert_eq!(first["topic"], "orders");
    assert_eq!(first["group"], "billing");
    assert_eq!(first["attempts"], 2);
    assert_eq!(first["last_error"], "Card DECLINED");
    assert_eq!(first["permanent"], true);

    let human = s.stdout(&["dlq", "list", "--topic", "payments"]);
    assert_eq!(human.lines().count(), 1, "{human}");
    assert!(
        human.contains("payments/billing") && human.contains("ledger timeout"),
        "{human}"
    );
}

#[test]
fn dlq_show_prints_the_message_and_every_failure() {
    let s = Scratch::new();
    let ids = s.put(&[letter(
        "orders",
        "billing",
        "card declined\n  at payments.rs:42",
    )]);
    let id = ids[0].to_string();
    let human = s.stdout(&["dlq", "show", &id]);
    for expected in [
        "orders",
        "billing",
        "OrderPlaced",
        "orders-key",
        "first try failed",
        "card declined",
        "at payments.rs:42",
        "permanent",
    ] {
        assert!(
            human.contains(expected),
            "{expected:?} missing from:\n{human}"
        );
    }
    let json = s.json_lines(&["dlq", "show", &id]);
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["failures"].as_array().unwrap().len(), 2);
    assert_eq!(json[0]["message"]["event_type"], "OrderPlaced");

    let out = s.runnel().args(["dlq", "show", "999"]).output().unwrap();
    let message = assert_one_line_error(&out, EXIT_NOT_FOUND);
    assert!(message.contains("999"), "{message}");
}

#[test]
fn dlq_replay_one_republishes_the_same_message_and_marks_it_replayed() {
    let s = Scratch::new();
    let ids = s.put(&[
        letter("orders", "billing", "boom"),
        letter("orders", "billing", "boom"),
    ]);
    let stored = {
        let store = s.dead_letters();
        runtime().block_on(async { store.get(DeadLetterId(ids[0])).await.unwrap().unwrap() })
    };
    let out = s.stdout(&["dlq", "replay", &ids[0].to_string()]);
    assert_eq!(out.trim(), "replayed 1, skipped 0");
    assert_eq!(s.pending(), 1, "only the named dead letter is replayed");

    let consumed = s.json_lines(&["consume", "orders", "--group", "billing", "--count", "1"]);
    assert_eq!(consumed.len(), 1);
    assert_eq!(
        consumed[0]["id"],
        stored.message.id.as_str(),
        "same message id"
    );
    assert_eq!(consumed[0]["headers"]["runnelreplayof"], ids[0].to_string());

    let all = s.json_lines(&["dlq", "list", "--include-replayed"]);
    assert_eq!(all[0]["replay_count"], 1);
    assert_eq!(all[1]["replay_count"], 0);
}

#[test]
fn dlq_bulk_replay_prints_replayed_and_skipped_counts() {
    let s = Scratch::new();
    let ids = s.put(&[
        letter("orders", "billing", "timeout"),
        Letter {
            payload_bytes: 2 * 1024 * 1024, // over the embedded bus's 1 MiB limit
            ..letter("orders", "billing", "timeout")
        },
        letter("orders", "shipping", "timeout"),
        letter("payments", "billing", "timeout"),
    ]);
    let out = s
        .runnel()
        .args(["dlq", "replay", "--topic", "orders"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), "replayed 2, skipped 1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("skipped dead letter {}", ids[1]))
            && stderr.contains("claim-check"),
        "{stderr}"
    );
    // The skipped one and the other topic's stay pending.
    assert_eq!(
        ids_of(&s.json_lines(&["dlq", "list"])),
        vec![ids[1], ids[3]]
    );

    let report = s.json_lines(&["dlq", "replay", "--all"]);
    assert_eq!(report.len(), 1);
    assert_eq!(
        (report[0]["total"].as_u64(), report[0]["replayed"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(report[0]["skipped"], 1);
    assert_eq!(report[0]["skipped_details"][0]["id"], ids[1]);
    assert_eq!(s.pending(), 1);
}

#[test]
fn dlq_replay_to_one_group_is_skipped_by_other_groups() {
    let s = Scratch::new();
    let ids = s.put(&[letter("orders", "billing", "boom")]);
    let out = s.stdout(&[
        "dlq",
        "replay",
        &ids[0].to_string(),
        "--to-group",
        "billing",
    ]);
    assert_eq!(out.trim(), "replayed 1, skipped 0");
    // A marker after the replay: audit must print it, and only it.
    s.stdout(&["publish", "orders", "--type", "Marker", "--data", "{}"]);
    let audit = s.json_lines(&["consume", "orders", "--group", "audit", "--count", "1"]);
    assert_eq!(audit.len(), 1);
    assert_eq!(
        audit[0]["event_type"], "Marker",
        "audit skipped the replay meant for billing"
    );
    let billing = s.json_lines(&["consume", "orders", "--group", "billing", "--count", "1"]);
    assert_eq!(billing[0]["event_type"], "OrderPlaced");
    assert_eq!(billing[0]["headers"]["runnelreplaygroup"], "billing");
}

#[test]
fn dlq_purge_deletes_only_what_is_older_and_matches() {
    let s = Scratch::new();
    let ids = s.put(&[
        letter("orders", "billing", "x"),
        letter("payments", "billing", "x"),
    ]);
    assert_eq!(
        s.stdout(&["dlq", "purge", "--older-than", "1d"])
            .trim()
            .split(' ')
            .nth(1),
        Some("0")
    );
    let dry = s.json_lines(&["dlq", "purge", "--older-than", "0s", "--dry-run"]);
    assert_eq!(dry[0]["purged"], 2);
    assert_eq!(dry[0]["dry_run"], true);
    assert_eq!(s.pending(), 2, "a dry run deletes nothing");
    let purged = s.json_lines(&["dlq", "purge", "--older-than", "0s", "--topic", "orders"]);
    assert_eq!(purged[0]["purged"], 1);
    assert_eq!(ids_of(&s.json_lines(&["dlq", "list"])), vec![ids[1]]);
}

#[test]
fn publish_then_consume_round_trip_acks_what_it_prints() {
    let s = Scratch::new();
    let published = s.json_lines(&[
        "publish",
        "orders",
        "--type",
        "OrderPlaced",
        "--data",
        r#"{"order": 1}"#,
        "--key",
        "Order-1",
        "--header",
        "tenant=acme",
        "--header",
        "correlationid=c-9",
    ]);
    let id = published[0]["id"].as_str().unwrap().to_string();
    s.stdout(&[
        "publish",
        "orders",
        "--type",
        "OrderPlaced",
        "--data",
        r#"{"order": 2}"#,
    ]);
    let got = s.json_lines(&["consume", "orders", "--group", "billing", "--count", "2"]);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["id"], id.as_str());
    assert_eq!(got[0]["key"], "Order-1");
    assert_eq!(got[0]["headers"]["tenant"], "acme");
    assert_eq!(got[0]["correlation_id"], "c-9");
    assert_eq!(got[0]["payload"]["order"], 1);
    assert_eq!(got[1]["payload"]["order"], 2);
    // Both were acked: the group's next message is a new one.
    s.stdout(&[
        "publish",
        "orders",
        "--type",
        "OrderPlaced",
        "--data",
        r#"{"order": 3}"#,
    ]);
    let next = s.json_lines(&["consume", "orders", "--group", "billing", "--count", "1"]);
    assert_eq!(next[0]["payload"]["order"], 3);
    // Another group sees everything from the earliest message.
    let audit = s.json_lines(&["consume", "orders", "--group", "audit", "--count", "3"]);
    assert_eq!(audit.len(), 3);
}

#[test]
fn bad_dlq_and_bus_input_is_one_line_exit_2() {
    let s = Scratch::new();
    s.put(&[letter("orders", "billing", "x")]);
    for args in [
        &["dlq", "list", "--since", "last tuesday"][..],
        &["dlq", "list", "--topic", "no spaces"],
        &["dlq", "replay", "1", "--all"],
        &["dlq", "replay"],
        &["dlq", "purge", "--older-than", "5 parsecs"],
        &["publish", "orders", "--type", "T", "--data", "{nope"],
        &["publish", "bad topic", "--type", "T", "--data", "{}"],
        &["consume", "orders", "--group", "g", "--from", "middle"],
    ] {
        let out = s.runnel().args(args).output().unwrap();
        assert_one_line_error(&out, EXIT_BAD_INPUT);
    }
    let out = s
        .runnel()
        .env("RUNNEL_BUS", "mqtt://broker:1883")
        .args(["publish", "orders", "--type", "T", "--data", "{}"])
        .output()
        .unwrap();
    let message = assert_one_line_error(&out, EXIT_BAD_INPUT);
    assert!(
        message.contains("RUNNEL_BUS") && message.contains("unsupported bus"),
        "{message}"
    );
    assert_eq!(s.pending(), 1, "nothing changed");
}

#[test]
fn bus_comes_from_runnel_toml() {
    let s = Scratch::new();
    std::fs::write(
        s.path().join("runnel.toml"),
        "store = \"sqlite:toml.db\"\nbus = \"mqtt://localhost:1883\"\n",
    )
    .unwrap();
    let out = s
        .runnel_bare()
        .args(["publish", "orders", "--type", "T", "--data", "{}"])
        .output()
        .unwrap();
    let message = assert_one_line_error(&out, EXIT_BAD_INPUT);
    assert!(
        message.contains("runnel.toml") && message.contains("unsupported bus"),
        "{message}"
    );
    s.runnel_bare()
        .args([
            "--bus", "embedded", "publish", "orders", "--type", "T", "--data", "{}",
        ])
        .assert()
        .success();
    assert!(s.path().join("toml.db").exists());
}

#[test]
fn dlq_publish_and_consume_have_help_with_an_example() {
    let s = Scratch::new();
    for command in [
        &["dlq", "list", "--help"][..],
        &["dlq", "show", "--help"],
        &["dlq", "replay", "--help"],
        &["dlq", "purge", "--help"],
        &["publish", "--help"],
        &["consume", "--help"],
    ] {
        let out = s.runnel_bare().args(command).output().unwrap();
        assert!(out.status.success(), "{command:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Example"),
            "{command:?} has no example:\n{help}"
        );
    }
}

/// The PostgreSQL test server with a fresh schema, or `None` (skipped loudly; a failure
/// when `RUNNEL_REQUIRE_SERVICES=1`).
fn postgres_store_url() -> Option<String> {
    match std::env::var("RUNNEL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            let schema = format!("cli_dlq_{}", uuid::Uuid::now_v7().simple());
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
fn dlq_commands_work_against_postgres() {
    let Some(url) = postgres_store_url() else {
        return;
    };
    let ids = runtime().block_on(async {
        let options = runnel_postgres::PostgresOptions::from_url(&url).unwrap();
        let store = runnel_postgres::PostgresStore::connect_with(options)
            .await
            .unwrap();
        let dead_letters: Arc<dyn DeadLetterStore> =
            Arc::new(runnel_postgres::PostgresDeadLetters::new(store));
        let mut ids = Vec::new();
        for l in [
            letter("orders", "billing", "Timeout"),
            letter("orders", "audit", "crash"),
        ] {
            ids.push(dead_letters.put(new_dead_letter(&l)).await.unwrap().0);
        }
        ids
    });
    let s = Scratch::new();
    let run = |args: &[&str]| {
        let out = s
            .runnel_bare()
            .env("RUNNEL_STORE", &url)
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_lines(&out.stdout)
    };
    assert_eq!(
        ids_of(&run(&["dlq", "list", "--error", "timeout"])),
        vec![ids[0]]
    );
    assert_eq!(
        run(&["dlq", "show", &ids[1].to_string()])[0]["group"],
        "audit"
    );
    let report = run(&["dlq", "replay", "--group", "billing", "--to-own-group"]);
    assert_eq!(report[0]["replayed"], 1);
    let consumed = run(&["consume", "orders", "--group", "billing", "--count", "1"]);
    assert_eq!(consumed[0]["headers"]["runnelreplaygroup"], "billing");
    assert_eq!(ids_of(&run(&["dlq", "list"])), vec![ids[1]]);
    assert_eq!(run(&["dlq", "purge", "--older-than", "0s"])[0]["purged"], 2);
}
