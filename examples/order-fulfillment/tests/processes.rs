//! The order service as processes: `run --http` serves the order API and says where; the
//! services run in a process of their own (`run --parts inventory,payments,shipping`)
//! while the demo's process runs only the order service (`demo --parts orders`), over one
//! PostgreSQL store and one NATS server.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{assert_fixed_mix_of_60, demo_summary, nats_bus_of_its_own, service_url};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);

/// A child process, stopped by its own PID when dropped (also when the test fails).
struct Running {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_order-fulfillment"))
            .args(args)
            .env_remove("RUNNEL_STORE")
            .env_remove("RUNNEL_DB")
            .env_remove("RUNNEL_BUS")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, stderr: rx }
    }

    /// Waits for a stderr line containing `needle`; returns it.
    fn line_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!(
                    "no line with {needle:?} in time; stderr so far:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    /// SIGTERM, then the exit status (within the deadline).
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the service did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_the_order_api_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("svc.db");
    let service = Running::start(&[
        "--db",
        db.to_str().unwrap(),
        "run",
        "--http",
        "127.0.0.1:0",
        "--decline-above",
        "10000",
    ]);
    let line = service.line_with("listening on http://");
    let base = line
        .split("listening on ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let http = reqwest::Client::new();
    let faults: Value = http
        .get(format!("{base}/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults["decline_above_cents"], 10000, "the flag is in force");
    let place = |cents: i64| {
        http.post(format!("{base}/orders"))
            .json(&json!({
                "customer_id": "c-1",
                "items": [{"product_id": "p-1", "quantity": 1, "unit_price_cents": cents}],
                "shipping_address": "1 Main St",
            }))
            .send()
    };
    let ok: Value = place(500).await.unwrap().json().await.unwrap();
    let declined: Value = place(50_000).await.unwrap().json().await.unwrap();
    for (accepted, want) in [(&ok, "confirmed"), (&declined, "cancelled")] {
        let id = accepted["order_id"].as_str().unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let response = http
                .get(format!("{base}/orders/{id}"))
                .send()
                .await
                .unwrap();
            if response.status() == 200 {
                let summary: Value = response.json().await.unwrap();
                if summary["status"] == want {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "order {id} never became {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let status = service.terminate();
    assert!(status.success(), "a clean stop on SIGTERM: {status:?}");
}

#[test]
fn run_refuses_bad_parts_and_faults_before_opening_anything() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["run", "--parts", "orders,warehouse"][..],
        &["run", "--slow", "warehouse=1s"],
        &["run", "--slow", "payments"],
        &["run", "--service-delay", "soon"],
        &["run", "--reply-deadline", "0s"],
        &["run", "--http", "0.0.0.0:0"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_order-fulfillment"))
            .current_dir(dir.path())
            .args(args)
            .env_remove("RUNNEL_STORE")
            .env_remove("RUNNEL_DB")
            .env_remove("RUNNEL_BUS")
            .env_remove("RUNNEL_API_KEYS")
            .env_remove("RUNNEL_API_KEYS_FILE")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert!(written.is_empty(), "nothing is written: {written:?}");
}

/// `runnel demo` as separate processes: the demo runs the order service (commands, read
/// model, relay, saga) and the inventory, payment and shipping services run in another
/// process; they share only PostgreSQL and NATS.
#[test]
fn services_run_in_a_separate_process() {
    let (Some(pg), Some(nats)) = (
        service_url("RUNNEL_TEST_POSTGRES_URL"),
        service_url("RUNNEL_TEST_NATS_URL"),
    ) else {
        return;
    };
    let schema = format!("procs_{}", uuid::Uuid::now_v7().simple());
    let sep = if pg.contains('?') { '&' } else { '?' };
    let store = format!("{pg}{sep}schema={schema}");
    let bus = nats_bus_of_its_own(&nats, "procs");

    let services = Running::start(&[
        "--store",
        &store,
        "--bus",
        &bus,
        "run",
        "--parts",
        "inventory,payments,shipping",
        // The demo's failures, injected where the services run.
        "--out-of-stock",
        "p-sold-out",
        "--decline-above",
        "50000",
        "--poison-address",
        "POISON",
    ]);
    services.line_with("order service running");
    let out = Command::new(env!("CARGO_BIN_EXE_order-fulfillment"))
        .args([
            "--store",
            &store,
            "--bus",
            &bus,
            "demo",
            "--parts",
            "orders",
            "--json",
            "--orders",
            "60",
            "--clients",
            "8",
        ])
        .env_remove("RUNNEL_STORE")
        .env_remove("RUNNEL_DB")
        .env_remove("RUNNEL_BUS")
        .output()
        .unwrap();
    assert_fixed_mix_of_60(&demo_summary(&out));
    let status = services.terminate();
    assert!(status.success(), "{status:?}");
}
