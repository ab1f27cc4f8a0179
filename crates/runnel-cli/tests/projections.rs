//! `runnel projections …` end to end: each test appends events to a fresh store, runs a
//! projection in this process as a service would (the `counts` read model: events per
//! stream), runs the real binary, and checks its output, exit code and what the store
//! holds afterwards.

use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel::app::ShutdownTrigger;
use runnel::core::projection::{Dialect, ProjectionStatus, ProjectionStore, VersionRole};
use runnel::core::{
    EventFilter, EventStore, ExpectedRevision, NewEvent, RecordedEvent, StreamName,
};
use runnel::projection::{
    OnFailure, Projection, ProjectionError, ProjectionRunner, RunnerOptions, Writes,
};
use runnel::retry::RetryPolicy;
use runnel_sqlite::{SqliteProjectionStore, SqliteStore};
use serde_json::Value;

mod common;
use common::Scratch;

const EXIT_BAD_INPUT: i32 = 2;
const EXIT_NOT_FOUND: i32 = 4;
const EXIT_WRONG_STATE: i32 = 5;
const EXIT_INTERRUPTED: i32 = 130;
const NAME: &str = "counts";
const DEADLINE: Duration = Duration::from_secs(60);

/// Events per stream; `Poison` events fail while `poison_fails` is set.
struct Counts {
    poison_fails: Arc<AtomicBool>,
}

impl Projection for Counts {
    fn name(&self) -> &str {
        NAME
    }
    fn tables(&self) -> Vec<String> {
        vec!["counts".into()]
    }
    fn schema(&self, _: Dialect) -> Vec<String> {
        vec!["CREATE TABLE {counts} (stream TEXT PRIMARY KEY, n BIGINT NOT NULL)".into()]
    }
    fn filter(&self) -> EventFilter {
        EventFilter::all()
    }
    fn apply(&self, event: &RecordedEvent, out: &mut Writes) -> Result<(), ProjectionError> {
        if event.event_type == "Poison" && self.poison_fails.load(Ordering::SeqCst) {
            return Err(ProjectionError::Failed("poison refused".into()));
        }
        out.execute(
            "INSERT INTO {counts} (stream, n) VALUES ($1, 1) \
             ON CONFLICT (stream) DO UPDATE SET n = {counts}.n + 1",
            vec![event.stream.to_string().into()],
        );
        Ok(())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A store, the projection and a way to run it, as a service would.
struct Service {
    rt: tokio::runtime::Runtime,
    store: SqliteStore,
    poison_fails: Arc<AtomicBool>,
}

impl Service {
    fn new(s: &Scratch) -> Service {
        Service {
            rt: runtime(),
            store: SqliteStore::open(s.db()).expect("open the test store"),
            poison_fails: Arc::new(AtomicBool::new(false)),
        }
    }

    fn projections(&self) -> Arc<dyn ProjectionStore> {
        Arc::new(SqliteProjectionStore::new(self.store.clone()))
    }

    fn runner(&self) -> ProjectionRunner {
        ProjectionRunner::new(
            Arc::new(Counts {
                poison_fails: self.poison_fails.clone(),
            }),
            self.projections(),
            Arc::new(self.store.clone()),
            RunnerOptions {
                batch_events: 50,
                retry: RetryPolicy {
                    max_attempts: 2,
                    base_delay: Duration::from_millis(1),
                    max_delay: Duration::from_millis(1),
                },
                on_failure: OnFailure::Pause,
                ..RunnerOptions::default()
            },
        )
    }

    fn append(&self, stream: &str, event_type: &str, n: usize) {
        self.rt.block_on(async {
            let stream = StreamName::new(stream).unwrap();
            let events = (0..n)
                .map(|i| NewEvent::json(event_type, &serde_json::json!({ "i": i })))
                .collect();
            self.store
                .append(&stream, ExpectedRevision::Any, events)
                .await
                .unwrap();
        });
    }

    fn catch_up(&self) -> u64 {
        self.rt.block_on(self.runner().catch_up()).unwrap()
    }

    /// Runs the projection in the background until the returned trigger fires.
    fn run_in_background(&self) -> (ShutdownTrigger, tokio::task::JoinHandle<()>) {
        let (trigger, shutdown) = ShutdownTrigger::new();
        let runner = self.runner();
        let task = self.rt.spawn(async move {
            runner.run(shutdown).await.unwrap();
        });
        (trigger, task)
    }

    fn stop(&self, (trigger, task): (ShutdownTrigger, tokio::task::JoinHandle<()>)) {
        trigger.fire();
        self.rt.block_on(task).unwrap();
    }

    fn states(&self) -> Vec<(u32, VersionRole, ProjectionStatus, u64)> {
        let store = self.projections();
        self.rt.block_on(async {
            store
                .states(Some(NAME))
                .await
                .unwrap()
                .into_iter()
                .map(|s| (s.version, s.role, s.status, s.checkpoint.get()))
                .collect()
        })
    }

    fn total(&self) -> i64 {
        self.rt
            .block_on(self.store.read_with(|c| {
                c.query_row("SELECT coalesce(sum(n), 0) FROM counts", [], |r| r.get(0))
                    .map_err(|e| runnel::core::StoreError::Backend(e.to_string()))
            }))
            .unwrap()
    }
}

fn json_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn fails(s: &Scratch, args: &[&str], code: i32) -> String {
    let out = s.runnel().args(args).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(stderr.starts_with("error: "), "{stderr:?}");
    stderr
}

fn run_json(s: &Scratch, args: &[&str]) -> Vec<Value> {
    json_lines(&s.runnel().arg("--json").args(args).output().expect("run"))
}

#[test]
fn projections_list_and_status_show_generations_checkpoints_and_lag() {
    let s = Scratch::new();
    let svc = Service::new(&s);
    svc.append("Order-1", "OrderPlaced", 3);
    svc.append("Order-2", "OrderPlaced", 2);
    assert_eq!(svc.catch_up(), 5);
    svc.append("Order-3", "OrderPlaced", 4);

    let list = run_json(&s, &["projections", "list"]);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], NAME);
    assert_eq!(list[0]["version"], 1);
    assert_eq!(list[0]["status"], "running");
    assert_eq!(list[0]["checkpoint"], 5);
    assert_eq!(
        list[0]["lag_events"], 4,
        "four events appended after the catch-up"
    );
    assert!(list[0]["rebuilding"].is_null());

    let status = run_json(&s, &["projections", "status", NAME, "--sample", "0"]);
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0]["role"], "current");
    assert_eq!(status[0]["code_version"], 1);
    assert_eq!(status[0]["events_applied"], 5);
    assert_eq!(status[0]["lag_events"], 4);
    assert!(status[0]["lag_seconds"].as_f64().unwrap() >= 0.0);
    assert!(status[0]["events_per_second"].is_null(), "not measured");

    assert_eq!(svc.catch_up(), 4);
    let status = run_json(&s, &["projections", "status", "--sample", "200ms"]);
    assert_eq!(status[0]["lag_events"], 0);
    assert_eq!(status[0]["lag_seconds"], 0.0);
    assert_eq!(status[0]["events_per_second"], 0.0, "idle");

    let out = s
        .runnel()
        .args(["projections", "status", NAME, "--sample", "0"])
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains(NAME) && human.contains("current") && human.contains("lag 0 events"),
        "{human}"
    );

    fails(
        &s,
        &["projections", "status", "nothing_here"],
        EXIT_NOT_FOUND,
    );
    fails(&s, &["projections", "status", "Not A Name"], EXIT_BAD_INPUT);
}

#[test]
fn projections_pause_resume_retry_and_skip_change_state_or_refuse_and_change_nothing() {
    let s = Scratch::new();
    let svc = Service::new(&s);
    svc.append("Order-1", "OrderPlaced", 2);
    svc.catch_up();

    run_json(&s, &["projections", "pause", NAME]);
    assert_eq!(svc.states()[0].2, ProjectionStatus::Paused);
    let e = fails(&s, &["projections", "pause", NAME], EXIT_WRONG_STATE);
    assert!(e.contains("paused"), "{e}");
    svc.append("Order-1", "OrderPlaced", 1);
    assert_eq!(svc.catch_up(), 0, "a paused projection applies nothing");
    fails(&s, &["projections", "retry", NAME], EXIT_WRONG_STATE);
    fails(&s, &["projections", "skip", NAME], EXIT_WRONG_STATE);
    run_json(&s, &["projections", "resume", NAME]);
    fails(&s, &["projections", "resume", NAME], EXIT_WRONG_STATE);
    assert_eq!(svc.catch_up(), 1);

    // A poison event faults the projection; retry applies it again (it still fails).
    svc.poison_fails.store(true, Ordering::SeqCst);
    svc.append("Order-9", "Poison", 1);
    svc.append("Order-1", "OrderPlaced", 1);
    svc.catch_up();
    let (_, _, status, checkpoint) = svc.states()[0];
    assert_eq!(status, ProjectionStatus::Faulted);
    assert_eq!(checkpoint, 3, "stopped before the poison event");
    let listed = run_json(&s, &["projections", "list"]);
    assert_eq!(listed[0]["status"], "faulted");
    assert!(listed[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("poison refused"));
    fails(&s, &["projections", "resume", NAME], EXIT_WRONG_STATE);
    run_json(&s, &["projections", "retry", NAME]);
    assert_eq!(svc.states()[0].2, ProjectionStatus::Running);
    svc.catch_up();
    assert_eq!(svc.states()[0].2, ProjectionStatus::Faulted, "fails again");

    let skipped = run_json(&s, &["projections", "skip", NAME]);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0]["position"], 4, "the poison event");
    assert!(skipped[0]["error"]
        .as_str()
        .unwrap()
        .contains("poison refused"));
    assert_eq!(svc.catch_up(), 1, "the event after the poison one");
    assert_eq!(svc.total(), 4, "every event but the skipped one");

    fails(
        &s,
        &["projections", "pause", "nothing_here"],
        EXIT_NOT_FOUND,
    );
    fails(&s, &["projections", "drop-old", NAME], EXIT_WRONG_STATE);
    fails(&s, &["projections", "skip", "Bad-Name"], EXIT_BAD_INPUT);
    assert_eq!(svc.states().len(), 1, "refusals change nothing");
}

/// Waits for the child, failing the test after `DEADLINE` (the child is killed by PID).
fn wait_output(mut child: Child) -> Output {
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("the CLI did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn projections_rebuild_builds_a_new_generation_while_the_service_keeps_serving() {
    let s = Scratch::new();
    let svc = Service::new(&s);
    for i in 0..20 {
        svc.append(&format!("Order-{i}"), "OrderPlaced", 10);
    }
    svc.catch_up();
    assert_eq!(svc.total(), 200);
    let service = svc.run_in_background();

    let out = s
        .runnel()
        .args(["--json", "projections", "rebuild", NAME])
        .output()
        .unwrap();
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["state"], "current");
    assert_eq!(lines[0]["version"], 2);
    assert_eq!(lines[0]["code_version"], 1);
    svc.stop(service);

    let states = svc.states();
    assert_eq!(
        states,
        vec![
            (1, VersionRole::Retired, ProjectionStatus::Running, 200),
            (2, VersionRole::Current, ProjectionStatus::Running, 200),
        ]
    );
    assert_eq!(
        svc.total(),
        200,
        "the rebuilt generation counts every event once"
    );

    let dropped = run_json(&s, &["projections", "drop-old", NAME]);
    assert_eq!(dropped[0]["dropped"], serde_json::json!([1]));
    assert_eq!(svc.states().len(), 1);
    fails(&s, &["projections", "drop-old", NAME], EXIT_WRONG_STATE);
    assert_eq!(svc.total(), 200);
}

#[test]
fn projections_rebuild_pauses_when_interrupted_or_stalled_and_resumes_where_it_was() {
    let s = Scratch::new();
    let svc = Service::new(&s);
    svc.append("Order-1", "OrderPlaced", 30);
    svc.catch_up();

    // No service runs the projection: the rebuild stalls, is paused, and says so.
    let out = s
        .runnel()
        .args(["projections", "rebuild", NAME, "--stall-timeout", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("no service moved the rebuild"),
        "{stderr}"
    );
    assert_eq!(
        svc.states()[1],
        (2, VersionRole::Building, ProjectionStatus::Paused, 0)
    );

    // Interrupted (SIGINT to its PID): paused again where it was, exit code 130.
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin!("runnel"))
        .current_dir(s.path())
        .env_remove("RUNNEL_STORE")
        .env_remove("RUNNEL_DB")
        .env_remove("RUST_LOG")
        .arg("--db")
        .arg(s.db())
        .args(["projections", "rebuild", NAME])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while svc.states()[1].2 != ProjectionStatus::Running {
        assert!(started.elapsed() < DEADLINE, "the rebuild was not resumed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = wait_output(child);
    assert_eq!(
        out.status.code(),
        Some(EXIT_INTERRUPTED),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuild paused"));
    assert_eq!(svc.states()[1].2, ProjectionStatus::Paused);

    // With the service running, the rebuild resumes and finishes.
    let service = svc.run_in_background();
    let out = s
        .runnel()
        .args(["--json", "projections", "rebuild", NAME])
        .output()
        .unwrap();
    let lines = json_lines(&out);
    assert_eq!(lines.last().unwrap()["state"], "current");
    svc.stop(service);
    assert_eq!(svc.states()[1].1, VersionRole::Current);
    assert_eq!(svc.total(), 30);
}

#[test]
fn every_projections_command_has_help_with_an_example() {
    let s = Scratch::new();
    for command in [
        "list", "status", "rebuild", "pause", "resume", "retry", "skip", "drop-old",
    ] {
        let out = s
            .runnel_bare()
            .args(["projections", command, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Examples:") && help.contains(&format!("runnel projections {command}")),
            "{command} has no example:\n{help}"
        );
    }
}

#[test]
fn projections_commands_work_against_postgres() {
    let url = match std::env::var("RUNNEL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "RUNNEL_TEST_POSTGRES_URL is not set but RUNNEL_REQUIRE_SERVICES=1"
            );
            eprintln!("SKIPPED: RUNNEL_TEST_POSTGRES_URL is not set");
            return;
        }
    };
    let schema = format!("cli_pj_{}", uuid::Uuid::now_v7().simple());
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}schema={schema}");
    let s = Scratch::new();
    let rt = runtime();
    let (events, projections) = rt.block_on(async {
        let options = runnel_postgres::PostgresOptions::from_url(&url).unwrap();
        let store = runnel_postgres::PostgresStore::connect_with(options)
            .await
            .unwrap();
        let projections: Arc<dyn ProjectionStore> =
            Arc::new(runnel_postgres::PostgresProjectionStore::new(store.clone()));
        let events: Arc<dyn EventStore> = Arc::new(store);
        for i in 0..10 {
            events
                .append(
                    &StreamName::new(format!("Order-{i}")).unwrap(),
                    ExpectedRevision::Any,
                    vec![NewEvent::json("OrderPlaced", &serde_json::json!({}))],
                )
                .await
                .unwrap();
        }
        (events, projections)
    });
    let runner = || {
        ProjectionRunner::new(
            Arc::new(Counts {
                poison_fails: Arc::new(AtomicBool::new(false)),
            }),
            projections.clone(),
            events.clone(),
            RunnerOptions::default(),
        )
    };
    rt.block_on(runner().catch_up()).unwrap();
    let pg = |args: &[&str]| -> Vec<Value> {
        json_lines(
            &s.runnel_bare()
                .args(["--store", &url, "--json"])
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let list = pg(&["projections", "list"]);
    assert_eq!(list[0]["checkpoint"], 10);
    assert_eq!(list[0]["lag_events"], 0);

    let (trigger, shutdown) = ShutdownTrigger::new();
    let service = runner();
    let task = rt.spawn(async move { service.run(shutdown).await.unwrap() });
    let rebuilt = pg(&["projections", "rebuild", NAME]);
    assert_eq!(rebuilt.last().unwrap()["state"], "current");
    trigger.fire();
    rt.block_on(task).unwrap();
    pg(&["projections", "pause", NAME]);
    let status = pg(&["projections", "status", NAME, "--sample", "0"]);
    let roles: Vec<(&str, &str)> = status
        .iter()
        .map(|g| (g["role"].as_str().unwrap(), g["status"].as_str().unwrap()))
        .collect();
    assert_eq!(roles, vec![("retired", "running"), ("current", "paused")]);
    assert_eq!(
        pg(&["projections", "drop-old", NAME])[0]["dropped"],
        serde_json::json!([1])
    );
    let _ = rt.block_on(async {
        let pool = runnel_postgres::sqlx::PgPool::connect(
            &std::env::var("RUNNEL_TEST_POSTGRES_URL").unwrap(),
        )
        .await?;
        runnel_postgres::sqlx::query(runnel_postgres::sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .execute(&pool)
        .await
    });
}

/// Shipments by order, from a bus topic.
struct Shipments;

impl runnel::projection::TopicProjection for Shipments {
    fn name(&self) -> &str {
        "shipments"
    }
    fn tables(&self) -> Vec<String> {
        vec!["shipments".into()]
    }
    fn schema(&self, _: Dialect) -> Vec<String> {
        vec!["CREATE TABLE {shipments} (order_id TEXT PRIMARY KEY)".into()]
    }
    fn topic(&self) -> runnel::core::TopicName {
        runnel::core::TopicName::new("shipping.ShipmentCreated").unwrap()
    }
    fn apply(
        &self,
        message: &runnel::core::Message,
        out: &mut Writes,
    ) -> Result<(), ProjectionError> {
        out.execute(
            "INSERT INTO {shipments} (order_id) VALUES ($1)",
            vec![message.id.clone().into()],
        );
        Ok(())
    }
}

#[test]
fn projections_show_a_topic_projection_without_position_and_refuse_to_rebuild_it() {
    let s = Scratch::new();
    let svc = Service::new(&s);
    let projections = svc.projections();
    svc.rt.block_on(async {
        let generation = runnel::projection::register_topic_projection(&Shipments, &*projections)
            .await
            .unwrap();
        for id in ["m-1", "m-2"] {
            let outcome = projections
                .commit_message(runnel::core::projection::MessageCommit {
                    name: "shipments".into(),
                    version: generation,
                    message_id: id.into(),
                    statements: vec![runnel::core::projection::Statement {
                        sql: "INSERT INTO {shipments} (order_id) VALUES ($1)".into(),
                        params: vec![id.into()],
                    }],
                    outbox: vec![],
                    inbox_keep: 10,
                })
                .await
                .unwrap();
            assert_eq!(outcome, runnel::core::projection::MessageOutcome::Committed);
        }
    });
    let list = run_json(&s, &["projections", "list"]);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["topic"], "shipping.ShipmentCreated");
    let status = run_json(&s, &["projections", "status", "shipments", "--sample", "0"]);
    assert_eq!(status[0]["topic"], "shipping.ShipmentCreated");
    assert_eq!(status[0]["events_applied"], 2);
    assert_eq!(
        (&status[0]["checkpoint"], &status[0]["lag_events"]),
        (&0.into(), &0.into())
    );
    let out = s
        .runnel()
        .args(["projections", "status", "shipments", "--sample", "0"])
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains("topic shipping.ShipmentCreated")
            && human.contains("lag n/a")
            && human.contains("2 messages applied"),
        "{human}"
    );
    for verb in ["rebuild", "pause", "skip", "retry"] {
        let stderr = fails(&s, &["projections", verb, "shipments"], EXIT_WRONG_STATE);
        assert!(
            stderr.contains("shipping.ShipmentCreated"),
            "{verb}: {stderr}"
        );
    }
    let states = svc
        .rt
        .block_on(projections.states(Some("shipments")))
        .unwrap();
    assert_eq!(states.len(), 1, "no generation was created: {states:?}");
}
