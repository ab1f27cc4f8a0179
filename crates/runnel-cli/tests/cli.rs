//! The `runnel` binary end to end: each test runs the real executable in a fresh
//! directory and checks its output, exit code and what the store holds afterwards.

use std::io::{BufRead as _, BufReader};

use std::process::{Child, Command as StdCommand, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use assert_cmd::Command;
use serde_json::Value;

mod common;
use common::Scratch;

const EXIT_BAD_INPUT: i32 = 2;
const EXIT_CONFLICT: i32 = 3;

/// Longest wait for a follower to print a line it must print.
const FOLLOW_DEADLINE: Duration = Duration::from_secs(30);

impl Scratch {
    fn append(&self, stream: &str, event_type: &str, data: &str, expected: &str) {
        self.runnel()
            .args([
                "streams", "append", stream, "--type", event_type, "--data", data,
            ])
            .args(["--expected", expected])
            .assert()
            .success();
    }

    /// Runs `runnel --json <args>` and parses each stdout line as JSON.
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
}

fn parse_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// Asserts a failed run printed exactly one line, `error: …`, and nothing on stdout.
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
fn append_read_and_list_round_trip_as_json() {
    let s = Scratch::new();
    let appended = s.json_lines(&[
        "streams",
        "append",
        "Order-1",
        "--type",
        "OrderPlaced",
        "--data",
        r#"{"total": 42, "items": ["a", "b"]}"#,
        "--expected",
        "no-stream",
        "--metadata",
        r#"{"correlation_id": "corr-1", "user_id": "alice", "headers": {"source": "test"}}"#,
    ]);
    assert_eq!(appended.len(), 1);
    assert_eq!(appended[0]["stream"], "Order-1");
    assert_eq!(appended[0]["revision"], 1);
    s.append("Order-1", "OrderConfirmed", "{}", "1");
    s.append("Cart-7", "ItemAdded", r#"{"sku": "A-1"}"#, "any");

    let events = s.json_lines(&["streams", "read", "Order-1"]);
    assert_eq!(events.len(), 2);
    let first = &events[0];
    assert_eq!(first["stream"], "Order-1");
    assert_eq!(first["revision"], 1);
    assert_eq!(first["event_type"], "OrderPlaced");
    assert_eq!(
        first["data"],
        serde_json::json!({"total": 42, "items": ["a", "b"]})
    );
    assert_eq!(first["metadata"]["correlation_id"], "corr-1");
    assert_eq!(first["metadata"]["user_id"], "alice");
    assert_eq!(first["metadata"]["headers"]["source"], "test");
    assert!(first["position"].as_u64().unwrap() >= 1);
    assert!(first["recorded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(events[1]["event_type"], "OrderConfirmed");
    assert!(events[1]["position"].as_u64() > first["position"].as_u64());

    let backward = s.json_lines(&["streams", "read", "Order-1", "--backward", "--limit", "1"]);
    assert_eq!(backward.len(), 1);
    assert_eq!(backward[0]["revision"], 2);
    let from_two = s.json_lines(&["streams", "read", "Order-1", "--from", "2"]);
    assert_eq!(from_two.len(), 1);
    assert_eq!(from_two[0]["event_type"], "OrderConfirmed");

    let streams = s.json_lines(&["streams", "list"]);
    let names: Vec<&str> = streams
        .iter()
        .map(|v| v["stream"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Cart-7", "Order-1"]);
    assert_eq!(streams[1]["revision"], 2);
    let orders = s.json_lines(&["streams", "list", "--category", "Order"]);
    assert_eq!(orders.len(), 1);

    // Human output: one line per event.
    let human = s
        .runnel()
        .args(["streams", "read", "Order-1"])
        .output()
        .unwrap();
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains("Order-1@1") && text.contains("OrderPlaced"),
        "{text}"
    );
}

#[test]
fn conflicting_append_exits_3_with_one_line_and_writes_nothing() {
    let s = Scratch::new();
    s.append("Order-1", "OrderPlaced", "{}", "no-stream");
    s.append("Order-1", "OrderConfirmed", "{}", "1");

    let out = s
        .runnel()
        .args([
            "streams",
            "append",
            "Order-1",
            "--type",
            "OrderShipped",
            "--data",
            "{}",
        ])
        .args(["--expected", "1"])
        .output()
        .unwrap();
    let message = assert_one_line_error(&out, EXIT_CONFLICT);
    assert_eq!(
        message,
        "error: conflict on stream Order-1: expected revision 1, but the stream is at revision 2"
    );
    let events = s.json_lines(&["streams", "read", "Order-1"]);
    assert_eq!(events.len(), 2, "the conflicting event was written");
    assert!(events.iter().all(|e| e["event_type"] != "OrderShipped"));
}

#[test]
fn invalid_stream_name_exits_2_with_one_line() {
    let s = Scratch::new();
    let out = s
        .runnel()
        .args([
            "streams",
            "append",
            "Order 1",
            "--type",
            "OrderPlaced",
            "--data",
            "{}",
        ])
        .output()
        .unwrap();
    let message = assert_one_line_error(&out, EXIT_BAD_INPUT);
    assert!(message.contains("invalid stream name"), "{message}");
}

#[test]
fn malformed_json_data_exits_2_with_one_line_and_writes_nothing() {
    let s = Scratch::new();
    s.append("Order-1", "OrderPlaced", "{}", "no-stream");
    let out = s
        .runnel()
        .args([
            "streams",
            "append",
            "Order-2",
            "--type",
            "OrderPlaced",
            "--data",
            "{total: 42",
        ])
        .output()
        .unwrap();
    let message = assert_one_line_error(&out, EXIT_BAD_INPUT);
    assert!(message.contains("--data is not valid JSON"), "{message}");

    let out = s
        .runnel()
        .args([
            "streams",
            "append",
            "Order-2",
            "--type",
            "OrderPlaced",
            "--data",
            "{}",
        ])
        .args(["--metadata", r#"{"tenant": "x"}"#])
        .output()
        .unwrap();
    let message = assert_one_line_error(&out, EXIT_BAD_INPUT);
    assert!(message.contains("unknown field"), "{message}");

    let streams = s.json_lines(&["streams", "list"]);
    assert_eq!(
        streams.len(),
        1,
        "a rejected append created a stream: {streams:?}"
    );
}

/// Bytes a payload must exceed so it could not be given inline: Linux caps one argument at
/// 128 KiB (MAX_ARG_STRLEN).
const ARGUMENT_BYTES_MAX: usize = 128 * 1024;

/// A JSON payload of about `bytes` bytes.
fn big_payload(bytes: usize) -> String {
    let filler: String = (0..bytes)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    serde_json::json!({ "order": "Order-big", "blob": filler }).to_string()
}

/// A payload over the argument limit and under the store's (data plus metadata), so only
/// a file or standard input can carry it.
fn payload_over_the_argument_limit() -> String {
    let payload = big_payload(runnel_core::limits::PAYLOAD_BYTES_MAX_DEFAULT - 64 * 1024);
    assert!(payload.len() > ARGUMENT_BYTES_MAX);
    assert!(payload.len() < runnel_core::limits::PAYLOAD_BYTES_MAX_DEFAULT);
    payload
}

#[test]
fn data_from_a_file_or_stdin_appends_a_payload_over_the_argument_limit() {
    let s = Scratch::new();
    let payload = payload_over_the_argument_limit();
    let expected: Value = serde_json::from_str(&payload).unwrap();
    let file = s.path().join("order.json");
    std::fs::write(&file, &payload).unwrap();
    let data_arg = format!("@{}", file.display());

    let from_file = s.json_lines(&[
        "streams",
        "append",
        "Order-1",
        "--type",
        "OrderPlaced",
        "--data",
        &data_arg,
    ]);
    assert_eq!(from_file[0]["revision"], 1);
    let out = s
        .runnel()
        .args([
            "--json",
            "streams",
            "append",
            "Order-2",
            "--type",
            "OrderPlaced",
        ])
        .args(["--data", "-"])
        .write_stdin(payload.clone())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stdin append failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    for stream in ["Order-1", "Order-2"] {
        let events = s.json_lines(&["streams", "read", stream]);
        assert_eq!(events.len(), 1, "{stream}");
        assert_eq!(
            events[0]["data"], expected,
            "{stream} holds another payload"
        );
    }
}

#[test]
fn metadata_from_a_file_and_a_quoted_at_string_as_data() {
    let s = Scratch::new();
    let metadata = s.path().join("metadata.json");
    std::fs::write(&metadata, r#"{"correlation_id": "corr-file"}"#).unwrap();
    let metadata_arg = format!("@{}", metadata.display());
    s.json_lines(&[
        "streams",
        "append",
        "Note-1",
        "--type",
        "Noted",
        "--data",
        r#""@home""#,
        "--metadata",
        &metadata_arg,
    ]);
    let events = s.json_lines(&["streams", "read", "Note-1"]);
    assert_eq!(
        events[0]["data"], "@home",
        "a quoted @ string is JSON, not a file"
    );
    assert_eq!(events[0]["metadata"]["correlation_id"], "corr-file");
}

#[test]
fn publish_reads_data_over_the_argument_limit_from_a_file_and_stdin() {
    let s = Scratch::new();
    let payload = payload_over_the_argument_limit();
    let expected: Value = serde_json::from_str(&payload).unwrap();
    let file = s.path().join("order.json");
    std::fs::write(&file, &payload).unwrap();
    let data_arg = format!("@{}", file.display());
    let from_file = s.json_lines(&[
        "publish",
        "orders",
        "--type",
        "OrderPlaced",
        "--data",
        &data_arg,
    ]);
    let out = s
        .runnel()
        .args([
            "--json",
            "publish",
            "orders",
            "--type",
            "OrderPlaced",
            "--data",
            "-",
        ])
        .write_stdin(payload.clone())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stdin publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_stdin = parse_lines(&out.stdout);

    let consumed = s.json_lines(&[
        "consume", "orders", "--group", "big", "--from", "earliest", "--count", "2",
    ]);
    let ids: Vec<&Value> = consumed.iter().map(|line| &line["id"]).collect();
    assert_eq!(ids, [&from_file[0]["id"], &from_stdin[0]["id"]]);
    for line in &consumed {
        assert_eq!(line["payload"], expected, "{}", line["id"]);
    }
}

#[test]
fn bad_data_sources_exit_2_with_one_line_and_create_nothing() {
    let s = Scratch::new();
    let broken = s.path().join("broken.json");
    std::fs::write(&broken, "{total: 42").unwrap();
    let broken_arg = format!("@{}", broken.display());
    let missing_arg = format!("@{}", s.path().join("missing.json").display());
    let cases: [(&[&str], &str, &str); 5] = [
        (&["--data", "@"], "", "no file name after @"),
        (&["--data", &missing_arg], "", "cannot open the file"),
        (&["--data", &broken_arg], "", "is not valid JSON"),
        (
            &["--data", "-"],
            "{total: 42",
            "--data - (standard input) is not valid JSON",
        ),
        (
            &["--data", "-", "--metadata", "-"],
            "{}",
            "can be read only once",
        ),
    ];
    for (args, stdin, expected) in cases {
        let out = s
            .runnel()
            .args(["streams", "append", "Order-1", "--type", "OrderPlaced"])
            .args(args)
            .write_stdin(stdin)
            .output()
            .unwrap();
        let message = assert_one_line_error(&out, EXIT_BAD_INPUT);
        assert!(message.contains(expected), "{args:?}: {message}");
    }
    let out = s
        .runnel()
        .args([
            "publish",
            "orders",
            "--type",
            "OrderPlaced",
            "--data",
            &missing_arg,
        ])
        .output()
        .unwrap();
    let message = assert_one_line_error(&out, EXIT_BAD_INPUT);
    assert!(message.contains("cannot open the file"), "{message}");
    assert!(!s.db().exists(), "refused input created the store");
}

#[test]
fn usage_errors_are_one_line_too() {
    let s = Scratch::new();
    let out = s
        .runnel()
        .args(["streams", "append", "Order-1", "--type", "OrderPlaced"])
        .output()
        .unwrap();
    let message = assert_one_line_error(&out, EXIT_BAD_INPUT);
    assert!(message.contains("--data"), "{message}");
    let out = s
        .runnel()
        .args([
            "streams",
            "append",
            "Order-1",
            "--type",
            "T",
            "--data",
            "{}",
            "--expected",
            "soon",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, EXIT_BAD_INPUT);
}

#[test]
fn events_tail_from_a_position_prints_that_event_and_later_ones() {
    let s = Scratch::new();
    for i in 1..=5 {
        s.append(
            &format!("Order-{i}"),
            "OrderPlaced",
            &format!(r#"{{"n": {i}}}"#),
            "no-stream",
        );
    }
    s.append("Cart-1", "ItemAdded", "{}", "no-stream");
    let all = s.json_lines(&["events", "tail"]);
    assert_eq!(all.len(), 6);
    let third = all[2]["position"].as_u64().unwrap();

    let tail = s.json_lines(&["events", "tail", "--from", &third.to_string()]);
    let positions: Vec<u64> = tail
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = all[2..]
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, expected);

    let orders = s.json_lines(&[
        "events",
        "tail",
        "--from",
        &third.to_string(),
        "--category",
        "Order",
    ]);
    assert_eq!(orders.len(), 3);
    assert!(orders
        .iter()
        .all(|e| e["stream"].as_str().unwrap().starts_with("Order-")));
    let carts = s.json_lines(&["events", "tail", "--type", "ItemAdded"]);
    assert_eq!(carts.len(), 1);
    let limited = s.json_lines(&["events", "tail", "--limit", "2"]);
    assert_eq!(limited.len(), 2);
}

/// Kills the child when the test ends, pass or fail.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the follower prints a line for which `want` holds.
fn wait_for_line(
    lines: &mpsc::Receiver<String>,
    deadline: Instant,
    want: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
                if want(&v) {
                    return v;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the follower did not print the event in time")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the follower exited early"),
        }
    }
}

#[test]
fn events_tail_follow_sees_an_event_appended_by_another_process() {
    let s = Scratch::new();
    s.append("Order-1", "OrderPlaced", "{}", "no-stream");

    let child = StdCommand::new(cargo_bin!("runnel"))
        .current_dir(s.path())
        .env_remove("RUNNEL_STORE")
        .env_remove("RUNNEL_DB")
        .arg("--db")
        .arg(s.db())
        .args(["--json", "events", "tail", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn follower");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + FOLLOW_DEADLINE;
    // Caught up: it has printed the event that existed before it started.
    wait_for_line(&lines, deadline, |v| v["event_type"] == "OrderPlaced");
    // Live: an append by another process reaches it.
    s.append("Order-1", "OrderShipped", r#"{"carrier": "ups"}"#, "1");
    let shipped = wait_for_line(&lines, deadline, |v| v["event_type"] == "OrderShipped");
    assert_eq!(shipped["stream"], "Order-1");
    assert_eq!(shipped["revision"], 2);
    assert_eq!(shipped["data"]["carrier"], "ups");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the follower stopped by itself"
    );
}

#[test]
fn store_comes_from_flag_then_env_then_runnel_toml() {
    let s = Scratch::new();
    std::fs::write(
        s.path().join("runnel.toml"),
        "store = \"sqlite:from-toml.db\"\n",
    )
    .unwrap();
    let append = |cmd: &mut Command, stream: &str| {
        cmd.args(["streams", "append", stream, "--type", "T", "--data", "{}"])
            .assert()
            .success();
    };
    append(&mut s.runnel_bare(), "Toml-1");
    assert!(s.path().join("from-toml.db").exists());
    append(s.runnel_bare().env("RUNNEL_DB", "from-env.db"), "Env-1");
    assert!(s.path().join("from-env.db").exists());
    append(
        s.runnel_bare()
            .env("RUNNEL_STORE", "sqlite:from-env.db")
            .args(["--store", "sqlite:from-flag.db"]),
        "Flag-1",
    );
    assert!(s.path().join("from-flag.db").exists());

    let names = |db: &str| -> Vec<String> {
        let out = s
            .runnel_bare()
            .args(["--db", db, "--json", "streams", "list"])
            .output()
            .unwrap();
        parse_lines(&out.stdout)
            .iter()
            .map(|v| v["stream"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("from-toml.db"), ["Toml-1"]);
    assert_eq!(names("from-env.db"), ["Env-1"]);
    assert_eq!(names("from-flag.db"), ["Flag-1"]);
}

#[test]
fn unreachable_postgres_store_is_one_line_without_the_password() {
    let s = Scratch::new();
    let out = s
        .runnel_bare()
        .args([
            "--store",
            "postgres://runnel:secret@127.0.0.1:1/runnel?connect_timeout=2s",
            "streams",
            "list",
        ])
        .output()
        .unwrap();
    let message = assert_one_line_error(&out, 1);
    assert!(message.contains("PostgreSQL"), "{message}");
    assert!(
        !message.contains("secret"),
        "the password leaked: {message}"
    );
}

/// The PostgreSQL test server with a fresh schema for one test, or `None` (skipped loudly;
/// a failure when `RUNNEL_REQUIRE_SERVICES=1`).
fn postgres_store_url() -> Option<String> {
    match std::env::var("RUNNEL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            let schema = format!("cli_{}", uuid::Uuid::now_v7().simple());
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
fn streams_commands_work_against_postgres_from_runnel_store() {
    let Some(url) = postgres_store_url() else {
        return;
    };
    let s = Scratch::new();
    let run = |args: &[&str]| {
        let out = s
            .runnel_bare()
            .env("RUNNEL_STORE", &url)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    run(&[
        "streams",
        "append",
        "Order-pg1",
        "--type",
        "OrderPlaced",
        "--data",
        r#"{"n":1}"#,
    ]);
    run(&[
        "streams",
        "append",
        "Order-pg1",
        "--type",
        "OrderShipped",
        "--data",
        r#"{"n":2}"#,
        "--expected",
        "1",
    ]);
    let read = run(&["--json", "streams", "read", "Order-pg1"]);
    let lines: Vec<serde_json::Value> = read
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["event_type"], "OrderShipped");
    assert_eq!(lines[1]["revision"], 2);
    assert!(run(&["streams", "list"]).contains("Order-pg1"));
    let out = s
        .runnel_bare()
        .env("RUNNEL_STORE", &url)
        .args([
            "streams",
            "append",
            "Order-pg1",
            "--type",
            "X",
            "--data",
            "{}",
            "--expected",
            "1",
        ])
        .output()
        .unwrap();
    let message = assert_one_line_error(&out, 3);
    assert!(message.contains("conflict"), "{message}");
}

#[test]
fn reading_a_missing_store_fails_without_creating_it() {
    let s = Scratch::new();
    let out = s.runnel().args(["streams", "list"]).output().unwrap();
    let message = assert_one_line_error(&out, 1);
    assert!(message.contains("no store at"), "{message}");
    assert!(!s.db().exists());
}

#[test]
fn every_command_has_help_with_an_example() {
    let s = Scratch::new();
    for command in [
        &["--help"][..],
        &["streams", "append", "--help"],
        &["streams", "read", "--help"],
        &["streams", "list", "--help"],
        &["events", "tail", "--help"],
    ] {
        let out = s.runnel_bare().args(command).output().unwrap();
        assert!(out.status.success(), "{command:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Example"),
            "{command:?} has no example:\n{help}"
        );
    }
    let root = s.runnel_bare().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&root.stdout);
    assert!(
        help.contains("Exit codes") && help.contains("RUNNEL_STORE"),
        "{help}"
    );
}
