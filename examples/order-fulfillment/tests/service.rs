//! The reference service as a newcomer runs it: `order-fulfillment run` on the embedded
//! default registers customers and products and places orders through the command bus,
//! and the read model's projections show each order shipped, with its customer's and
//! product's names; the process stops cleanly on SIGTERM. The same binary runs on
//! PostgreSQL by configuration alone.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_order-fulfillment");
const DEADLINE: Duration = Duration::from_secs(90);

fn service(args: &[&str], dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("RUNNEL_STORE")
        .env_remove("RUNNEL_DB")
        .env_remove("RUNNEL_BUS")
        .env("RUST_LOG", "warn");
    cmd
}

/// Runs to completion with a deadline; returns (success, stdout, stderr).
fn run_to_end(mut cmd: Command) -> (bool, String, String) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the service binary starts");
    let output = wait_with_deadline(child, "the service to finish");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Waits for `child` to exit (on a thread that blocks in `wait`), up to [`DEADLINE`]; past
/// it the child is killed by its own PID and the test fails.
fn wait_with_deadline(child: std::process::Child, what: &str) -> std::process::Output {
    let pid = child.id();
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    match done.recv_timeout(DEADLINE) {
        Ok(output) => output.expect("waiting for the service"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("timed out after {DEADLINE:?} waiting for {what}");
        }
    }
}

fn simulated_orders_reach_the_read_model(store_args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = store_args.to_vec();
    args.extend(["run", "--simulate", "5", "--exit-after-simulation"]);
    let (ok, _, stderr) = run_to_end(service(&args, dir.path()));
    assert!(ok, "the simulation failed: {stderr}");
    assert!(
        stderr.contains("simulated 5 orders") && stderr.contains("all shipped in the read model"),
        "{stderr}"
    );

    // Separate processes: a service runs, another process places an order, a third
    // reads it from the read model once the service has applied it.
    let mut run = store_args.to_vec();
    run.push("run");
    let (server, lines) = spawn_until_running(service(&run, dir.path()));
    let mut place = store_args.to_vec();
    place.extend(["place", "o-1", "--customer", "c-1", "--item", "p-1:2:1250"]);
    let (ok, stdout, stderr) = run_to_end(service(&place, dir.path()));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("placed o-1"), "{stdout}");
    let mut show = store_args.to_vec();
    show.extend(["show", "o-1", "--wait", "60"]);
    let (ok, stdout, stderr) = run_to_end(service(&show, dir.path()));
    assert!(ok, "{stderr}");
    let mut row: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    // The running service drives the order through the fulfillment saga (no failures
    // are injected), which ends by confirming it: the first read may show it pending or
    // already confirmed, never anything else, and it must end up confirmed.
    let until = Instant::now() + DEADLINE;
    loop {
        let status = row["status"].as_str().unwrap_or_default().to_owned();
        assert!(
            ["pending", "confirmed"].contains(&status.as_str()),
            "unexpected status: {row}"
        );
        if status == "confirmed" {
            break;
        }
        assert!(Instant::now() < until, "o-1 was never confirmed: {row}");
        let (ok, stdout, stderr) = run_to_end(service(&show, dir.path()));
        assert!(ok, "{stderr}");
        row = serde_json::from_str(stdout.trim()).unwrap();
    }
    assert_eq!(row["total_cents"], 2500);
    assert_eq!(row["item_count"], 2);
    // The simulation registered c-1 and p-1 (and read them back) before o-1 was placed.
    assert_eq!(row["customer_name"], "Grace Hopper");
    assert_eq!(row["lines"][0]["product_name"], "Teapot");
    stop_with_sigterm(server, lines);
}

/// Starts a service and waits (with a deadline) until it says it runs.
fn spawn_until_running(
    mut cmd: Command,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let until = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let Ok(line) = lines.recv_timeout(until.saturating_duration_since(Instant::now())) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the service never said it runs: {seen:?}");
        };
        let running = line.contains("order service running");
        seen.push(line);
        if running {
            return (child, lines);
        }
    }
}

/// Sends SIGTERM to this child by its own PID; it must exit successfully, in time,
/// saying it stopped.
fn stop_with_sigterm(child: std::process::Child, lines: std::sync::mpsc::Receiver<String>) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = wait_with_deadline(child, "the service to stop after SIGTERM");
    assert!(
        output.status.success(),
        "exit after SIGTERM: {}",
        output.status
    );
    // The process has exited: its stderr ends, and so does the reader thread.
    let rest: Vec<String> = lines.iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("order service stopped")),
        "{rest:?}"
    );
}

#[test]
fn the_service_runs_on_the_embedded_default() {
    simulated_orders_reach_the_read_model(&[]);
}

#[test]
fn the_same_binary_runs_on_postgres() {
    let Ok(url) = std::env::var("RUNNEL_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "RUNNEL_TEST_POSTGRES_URL is not set but RUNNEL_REQUIRE_SERVICES=1"
        );
        eprintln!("SKIPPED the_same_binary_runs_on_postgres: RUNNEL_TEST_POSTGRES_URL is not set");
        return;
    };
    let schema = format!("e2e_{}", uuid::Uuid::now_v7().simple());
    let separator = if url.contains('?') { '&' } else { '?' };
    let store = format!("{url}{separator}schema={schema}");
    simulated_orders_reach_the_read_model(&["--store", &store]);
}

#[test]
fn sigterm_stops_the_service_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = spawn_until_running(service(&["run"], dir.path()));
    stop_with_sigterm(child, lines);
}

/// Commands and queries by name from the command line, each in its own process: a
/// customer and a product registered with `send`, an order placed, a service run that
/// applies them, and `query GetOrderSummary` showing the order with both names. A name or
/// payload the buses do not know is bad input (exit 2) and runs nothing.
#[test]
fn the_cli_sends_commands_and_queries_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &[
            "send",
            "RegisterCustomer",
            r#"{"customer_id":"c-9","name":"Ada Lovelace"}"#,
        ][..],
        &[
            "send",
            "AddProduct",
            r#"{"sku":"p-9","name":"Teacup","unit_price_cents":700}"#,
        ],
        &["place", "o-9", "--customer", "c-9", "--item", "p-9:1:700"],
    ] {
        let (ok, _, stderr) = run_to_end(service(args, dir.path()));
        assert!(ok, "{args:?}: {stderr}");
    }
    // The simulation reads its own writes, which come after ours: once it is done, the
    // read model has o-9 too.
    let (ok, _, stderr) = run_to_end(service(
        &["run", "--simulate", "1", "--exit-after-simulation"],
        dir.path(),
    ));
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = run_to_end(service(
        &["query", "GetOrderSummary", r#"{"order_id":"o-9"}"#],
        dir.path(),
    ));
    assert!(ok, "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["customer_name"], "Ada Lovelace");
    assert_eq!(summary["lines"][0]["product_name"], "Teacup");

    for args in [
        &["query", "GetOrderSumary", r#"{"order_id":"o-9"}"#][..],
        &["query", "GetOrderSummary", r#"{"order":"o-9"}"#],
        &["send", "RenameCustomer", "not json"],
    ] {
        let child = service(args, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = wait_with_deadline(child, "the refused command");
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
