//! `runnel sagas …` end to end: each test writes saga instances into a fresh store through
//! the processor store (commits of `Transition`s, as the runtime makes them), runs the real
//! binary, and checks its output, exit code and what the store holds afterwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use runnel::retry::RetryPolicy;
use runnel::saga::{SagaDefinition, SagaRuntime, StepContext, StepError};
use runnel_core::processor::{
    CancelTimers, CommitOutcome, ExpectedInstance, HistoryLine, InstanceRecord, InstanceStatus,
    ProcessorStore, TimerRecord, TimerSpec, Transition,
};
use runnel_sqlite::{SqliteProcessorStore, SqliteStore};
use serde_json::Value;

mod common;
use common::Scratch;

const EXIT_FAILURE: i32 = 1;
const EXIT_BAD_INPUT: i32 = 2;
const EXIT_NOT_FOUND: i32 = 4;

const CHECKOUT: &str = "saga:checkout";
const SHIPPING: &str = "process:shipping";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn line(step: Option<&str>, what: &str, detail: Option<&str>) -> HistoryLine {
    HistoryLine {
        step: step.map(String::from),
        what: what.into(),
        detail: detail.map(String::from),
    }
}

/// One commit of an instance: what it becomes.
struct Step<'a> {
    status: InstanceStatus,
    state: &'a str,
    last_error: Option<&'a str>,
    history: Vec<HistoryLine>,
    timers: Vec<&'a str>,
}

fn step(status: InstanceStatus, state: &str) -> Step<'_> {
    Step {
        status,
        state,
        last_error: None,
        history: vec![],
        timers: vec![],
    }
}

/// Creates instance `kind`/`id` (running, history `started`), then commits each step.
async fn put_instance(store: &dyn ProcessorStore, kind: &str, id: &str, steps: Vec<Step<'_>>) {
    let mut expected = ExpectedInstance::New;
    let first = Step {
        history: vec![line(None, "started", None)],
        ..step(InstanceStatus::Running, "new")
    };
    for s in std::iter::once(first).chain(steps) {
        let t = Transition {
            kind: kind.into(),
            id: id.into(),
            expected,
            definition_version: 1,
            correlation: Some(format!("corr-{id}")),
            state: s.state.into(),
            status: s.status,
            progress: b"{}".to_vec(),
            data: serde_json::to_vec(&serde_json::json!({"order": id, "total": 42})).unwrap(),
            last_error: s.last_error.map(String::from),
            outbox: vec![],
            cancel_timers: CancelTimers::None,
            schedule: s
                .timers
                .iter()
                .map(|name| TimerSpec {
                    name: name.to_string(),
                    due: Utc::now() + chrono::TimeDelta::hours(1),
                    payload: b"{}".to_vec(),
                    leased_to: None,
                })
                .collect(),
            fired_timer: None,
            inbox: None,
            history: s.history,
        };
        match store.commit(t).await.unwrap() {
            CommitOutcome::Committed { version } => expected = ExpectedInstance::Version(version),
            other => panic!("{kind}/{id}: {other:?}"),
        }
    }
}

impl Scratch {
    fn processors(&self) -> SqliteProcessorStore {
        SqliteProcessorStore::new(SqliteStore::open(self.db()).expect("open the test store"))
    }

    /// The four instances most tests work on:
    /// * `saga:checkout` `o-run`: running, a `deadline` timer pending, version 2;
    /// * `saga:checkout` `o-parked`: compensation-failed, version 3;
    /// * `saga:checkout` `o-done`: completed, version 2;
    /// * `process:shipping` `s-1`: running, version 1.
    fn seed(&self) {
        let store = self.processors();
        runtime().block_on(async {
            put_instance(
                &store,
                CHECKOUT,
                "o-run",
                vec![Step {
                    history: vec![line(Some("reserve"), "step-succeeded", None)],
                    timers: vec!["deadline"],
                    ..step(InstanceStatus::Running, "running charge (attempt 1)")
                }],
            )
            .await;
            put_instance(
                &store,
                CHECKOUT,
                "o-parked",
                vec![
                    Step {
                        history: vec![line(Some("charge"), "step-failed", Some("card declined"))],
                        ..step(
                            InstanceStatus::Compensating,
                            "compensating reserve (attempt 1)",
                        )
                    },
                    Step {
                        last_error: Some("refund refused: warehouse offline"),
                        history: vec![line(
                            Some("reserve"),
                            "compensation-failed",
                            Some("refund refused: warehouse offline"),
                        )],
                        ..step(
                            InstanceStatus::CompensationFailed,
                            "compensation of reserve failed",
                        )
                    },
                ],
            )
            .await;
            put_instance(
                &store,
                CHECKOUT,
                "o-done",
                vec![Step {
                    history: vec![
                        line(Some("reserve"), "step-succeeded", None),
                        line(Some("charge"), "step-succeeded", None),
                    ],
                    ..step(InstanceStatus::Completed, "completed")
                }],
            )
            .await;
            put_instance(&store, SHIPPING, "s-1", vec![]).await;
        });
    }

    fn load(&self, kind: &str, id: &str) -> Option<InstanceRecord> {
        let store = self.processors();
        runtime().block_on(async { store.load(kind, id).await.unwrap() })
    }

    fn timers(&self, kind: &str, id: &str) -> Vec<TimerRecord> {
        let store = self.processors();
        runtime().block_on(async { store.timers(kind, id).await.unwrap() })
    }

    fn last_history(&self, kind: &str, id: &str) -> HistoryLine {
        let store = self.processors();
        runtime().block_on(async {
            let lines = store.history(kind, id, 0, 1000).await.unwrap();
            lines.last().expect("a history").line.clone()
        })
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

    /// Runs `runnel <args>`, asserts success, returns (stdout, stderr).
    fn human(&self, args: &[&str]) -> (String, String) {
        let out = self.runnel().args(args).output().expect("run");
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// Runs `runnel <args>`, expecting it to fail with `code` and one `error:` line.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.runnel().args(args).output().expect("run");
        assert_one_line_error(&out, code)
    }
}

fn parse_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn ids_of(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect()
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
fn sagas_list_prints_every_instance_and_filters_by_type_and_status() {
    let s = Scratch::new();
    s.seed();
    // (kind, id) order: process:… sorts before saga:….
    assert_eq!(
        ids_of(&s.json_lines(&["sagas", "list"])),
        ["s-1", "o-done", "o-parked", "o-run"]
    );
    assert_eq!(
        ids_of(&s.json_lines(&["sagas", "list", "--type", "checkout"])),
        ["o-done", "o-parked", "o-run"]
    );
    assert_eq!(
        ids_of(&s.json_lines(&["sagas", "list", "--type", "process:shipping"])),
        ["s-1"]
    );
    assert_eq!(
        ids_of(&s.json_lines(&["sagas", "list", "--status", "running"])),
        ["s-1", "o-run"]
    );
    assert_eq!(
        ids_of(&s.json_lines(&["sagas", "list", "--limit", "2"])),
        ["s-1", "o-done"]
    );
    assert!(s
        .json_lines(&["sagas", "list", "--type", "refunds"])
        .is_empty());

    let parked = s.json_lines(&["sagas", "list", "--status", "compensation-failed"]);
    assert_eq!(ids_of(&parked), ["o-parked"]);
    assert_eq!(parked[0]["kind"], CHECKOUT);
    assert_eq!(parked[0]["status"], "compensation-failed");
    assert_eq!(parked[0]["state"], "compensation of reserve failed");
    assert_eq!(parked[0]["version"], 3);
    assert_eq!(parked[0]["definition_version"], 1);
    assert_eq!(parked[0]["correlation"], "corr-o-parked");
    assert_eq!(parked[0]["last_error"], "refund refused: warehouse offline");

    let (out, err) = s.human(&["sagas", "list"]);
    assert_eq!(out.lines().count(), 4, "{out}");
    let parked_line = out.lines().find(|l| l.starts_with("o-parked")).unwrap();
    for part in [
        CHECKOUT,
        "compensation-failed",
        "compensation of reserve failed",
        "v3",
        "refund refused: warehouse offline",
    ] {
        assert!(
            parked_line.contains(part),
            "{part:?} not in {parked_line:?}"
        );
    }
    assert!(
        err.contains("4 instances")
            && err.contains("saga:checkout running 1, completed 1, compensation-failed 1")
            && err.contains("process:shipping running 1"),
        "summary: {err:?}"
    );
    // A filtered listing has no summary.
    let (_, err) = s.human(&["sagas", "list", "--type", "checkout"]);
    assert!(!err.contains("instances:"), "{err:?}");
}

#[test]
fn sagas_list_refuses_an_unknown_status_naming_the_valid_ones() {
    let s = Scratch::new();
    let message = s.fails(&["sagas", "list", "--status", "paused"], EXIT_BAD_INPUT);
    for valid in [
        "running",
        "compensating",
        "completed",
        "compensated",
        "compensation-failed",
        "needs-attention",
    ] {
        assert!(message.contains(valid), "{message}");
    }
    // Refused before the store is opened (or created).
    assert!(!s.db().exists());
    let message = s.fails(&["sagas", "list", "--limit", "0"], EXIT_BAD_INPUT);
    assert!(message.contains("--limit"), "{message}");
}

#[test]
fn sagas_show_prints_data_history_and_timers() {
    let s = Scratch::new();
    s.seed();
    let (out, _) = s.human(&["sagas", "show", "o-run"]);
    for part in [
        "saga:checkout instance o-run",
        "running charge (attempt 1)",
        "corr-o-run",
        "\"total\": 42",
        "started",
        "step-succeeded  reserve",
        "deadline",
        "not leased",
    ] {
        assert!(out.contains(part), "{part:?} not in:\n{out}");
    }

    let shown = &s.json_lines(&["sagas", "show", "o-parked", "--type", "checkout"])[0];
    assert_eq!(shown["kind"], CHECKOUT);
    assert_eq!(shown["status"], "compensation-failed");
    assert_eq!(shown["data"]["order"], "o-parked");
    let what: Vec<&str> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["what"].as_str().unwrap())
        .collect();
    assert_eq!(what, ["started", "step-failed", "compensation-failed"]);
    assert_eq!(shown["history"][1]["detail"], "card declined");
    assert_eq!(shown["history"][2]["step"], "reserve");
    assert!(shown["timers"].as_array().unwrap().is_empty());

    let run = &s.json_lines(&["sagas", "show", "o-run"])[0];
    assert_eq!(run["timers"][0]["name"], "deadline");
    assert!(run["timers"][0]["leased_to"].is_null());

    // A process manager's instance is found by its id too.
    assert_eq!(s.json_lines(&["sagas", "show", "s-1"])[0]["kind"], SHIPPING);
}

#[test]
fn sagas_show_of_an_unknown_id_is_not_found() {
    let s = Scratch::new();
    s.seed();
    let message = s.fails(&["sagas", "show", "o-nope"], EXIT_NOT_FOUND);
    assert!(message.contains("no saga instance \"o-nope\""), "{message}");
    let message = s.fails(
        &["sagas", "show", "s-1", "--type", "checkout"],
        EXIT_NOT_FOUND,
    );
    assert!(message.contains("no saga:checkout instance"), "{message}");
    s.fails(&["sagas", "retry", "o-nope"], EXIT_NOT_FOUND);
}

#[test]
fn sagas_show_asks_for_the_type_when_two_kinds_share_an_id() {
    let s = Scratch::new();
    let store = s.processors();
    runtime().block_on(async {
        put_instance(&store, CHECKOUT, "x-1", vec![]).await;
        put_instance(&store, SHIPPING, "x-1", vec![]).await;
    });
    drop(store);
    let message = s.fails(&["sagas", "show", "x-1"], EXIT_BAD_INPUT);
    assert!(
        message.contains("--type") && message.contains(CHECKOUT) && message.contains(SHIPPING),
        "{message}"
    );
    let shown = &s.json_lines(&["sagas", "show", "x-1", "--type", "process:shipping"])[0];
    assert_eq!(shown["kind"], SHIPPING);
}

#[test]
fn sagas_retry_records_a_request_on_a_parked_instance() {
    let s = Scratch::new();
    s.seed();
    let (out, _) = s.human(&["sagas", "retry", "o-parked"]);
    assert!(
        out.contains("recorded the retry request")
            && out.contains("the service running saga checkout"),
        "{out}"
    );
    let after = s.load(CHECKOUT, "o-parked").unwrap();
    assert_eq!(after.version, 4);
    // The request changes nothing but adds the request: same status, state, error.
    assert_eq!(after.status, InstanceStatus::CompensationFailed);
    assert_eq!(
        after.last_error.as_deref(),
        Some("refund refused: warehouse offline")
    );
    let timers = s.timers(CHECKOUT, "o-parked");
    assert_eq!(timers.len(), 1, "{timers:?}");
    assert_eq!(timers[0].name, "operator");
    assert!(timers[0].due <= Utc::now());
    assert_eq!(
        s.last_history(CHECKOUT, "o-parked").what,
        "operator-requested-retry"
    );

    let json = &s.json_lines(&["sagas", "retry", "o-parked", "--type", "checkout"])[0];
    assert_eq!(json["action"], "retry");
    assert_eq!(json["status"], "compensation-failed");
    assert_eq!(json["requested_at_version"], 5);
    assert!(json["applied"].is_null());
}

#[test]
fn sagas_retry_of_a_completed_instance_fails_and_changes_nothing() {
    let s = Scratch::new();
    s.seed();
    let message = s.fails(&["sagas", "retry", "o-done"], EXIT_BAD_INPUT);
    assert!(
        message.contains("completed") && message.contains("only a parked instance"),
        "{message}"
    );
    let after = s.load(CHECKOUT, "o-done").unwrap();
    assert_eq!(after.version, 2);
    assert!(s.timers(CHECKOUT, "o-done").is_empty());
    assert_eq!(s.last_history(CHECKOUT, "o-done").what, "step-succeeded");
    // Retry of a running instance is refused the same way.
    s.fails(&["sagas", "retry", "o-run"], EXIT_BAD_INPUT);
    assert_eq!(s.load(CHECKOUT, "o-run").unwrap().version, 2);
}

#[test]
fn sagas_skip_step_and_compensate_record_their_requests() {
    let s = Scratch::new();
    s.seed();
    s.human(&["sagas", "skip-step", "o-parked"]);
    assert_eq!(
        s.last_history(CHECKOUT, "o-parked").what,
        "operator-requested-skip-step"
    );
    assert_eq!(s.load(CHECKOUT, "o-parked").unwrap().version, 4);

    let json = &s.json_lines(&["sagas", "compensate", "o-run"])[0];
    assert_eq!(json["action"], "compensate");
    assert_eq!(json["status"], "running");
    assert_eq!(
        s.last_history(CHECKOUT, "o-run").what,
        "operator-requested-compensate"
    );
    let names: Vec<String> = s
        .timers(CHECKOUT, "o-run")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(names.contains(&"operator".to_string()), "{names:?}");
    assert!(names.contains(&"deadline".to_string()), "{names:?}");

    // Compensating what finished, or what compensates already, is refused.
    let message = s.fails(&["sagas", "compensate", "o-done"], EXIT_BAD_INPUT);
    assert!(message.contains("finished"), "{message}");
    s.fails(&["sagas", "compensate", "o-parked"], EXIT_BAD_INPUT);
    assert_eq!(s.load(CHECKOUT, "o-parked").unwrap().version, 4);
}

#[test]
fn sagas_actions_refuse_process_managers() {
    let s = Scratch::new();
    s.seed();
    let message = s.fails(&["sagas", "compensate", "s-1"], EXIT_BAD_INPUT);
    assert!(message.contains("not a saga"), "{message}");
    s.fails(
        &["sagas", "retry", "s-1", "--type", "process:shipping"],
        EXIT_BAD_INPUT,
    );
    assert_eq!(s.load(SHIPPING, "s-1").unwrap().version, 1);
}

#[test]
fn sagas_purge_deletes_only_instances_finished_before_the_time() {
    let s = Scratch::new();
    s.seed();
    let store = s.processors();
    runtime().block_on(async {
        put_instance(
            &store,
            "saga:refunds",
            "r-1",
            vec![step(InstanceStatus::Compensated, "compensated")],
        )
        .await;
    });
    drop(store);
    // Finished just now: not before an hour ago.
    assert_eq!(
        s.json_lines(&["sagas", "purge", "--finished-before", "1h"])[0]["purged"],
        0
    );
    assert_eq!(
        s.json_lines(&[
            "sagas",
            "purge",
            "--finished-before",
            "2099-01-01T00:00:00Z",
            "--type",
            "refunds"
        ])[0]["purged"],
        1
    );
    assert!(s.load("saga:refunds", "r-1").is_none());
    let (out, _) = s.human(&["sagas", "purge", "--finished-before", "0s"]);
    assert!(out.contains("purged 1 finished instances"), "{out}");
    assert!(s.load(CHECKOUT, "o-done").is_none());
    // Running and parked instances stay, whatever the time.
    s.json_lines(&[
        "sagas",
        "purge",
        "--finished-before",
        "2099-01-01T00:00:00Z",
    ]);
    assert_eq!(
        ids_of(&s.json_lines(&["sagas", "list"])),
        ["s-1", "o-parked", "o-run"]
    );
    let message = s.fails(
        &["sagas", "purge", "--finished-before", "last week"],
        EXIT_BAD_INPUT,
    );
    assert!(message.contains("--finished-before"), "{message}");
}

#[test]
fn sagas_wait_times_out_when_no_service_runs_the_saga() {
    let s = Scratch::new();
    s.seed();
    let started = Instant::now();
    let out = s
        .runnel()
        .args(["sagas", "retry", "o-parked", "--wait", "1s"])
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_FAILURE), "{stderr}");
    assert!(
        stderr.contains("within 1s") && stderr.contains("may be down"),
        "{stderr}"
    );
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    // The request itself was recorded, and stays for when the service runs.
    assert!(String::from_utf8_lossy(&out.stdout).contains("recorded the retry request"));
    assert_eq!(s.timers(CHECKOUT, "o-parked")[0].name, "operator");
    let message = s.fails(
        &["sagas", "retry", "o-parked", "--wait", "soon"],
        EXIT_BAD_INPUT,
    );
    assert!(message.contains("--wait"), "{message}");
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Order {
    total: u32,
}

/// The saga the service in `sagas_wait_reports_the_status_once_the_service_applied_it`
/// runs: `reserve`, whose compensation fails until `refund_works`, then `charge`, which
/// always fails. One compensation attempt, so an instance parks at once.
fn checkout(refund_works: Arc<AtomicBool>) -> SagaDefinition<Order> {
    SagaDefinition::<Order>::builder("checkout", 1)
        .local("reserve", |ctx: StepContext<Order>| async move {
            Ok::<_, StepError>(ctx.data)
        })
        .compensate_local(move |ctx: StepContext<Order>| {
            let works = refund_works.load(Ordering::SeqCst);
            async move {
                if works {
                    Ok(ctx.data)
                } else {
                    Err(StepError::failed("warehouse offline"))
                }
            }
        })
        .local("charge", |_ctx: StepContext<Order>| async move {
            Err::<Order, _>(StepError::failed("card declined"))
        })
        .compensation_retry(RetryPolicy {
            max_attempts: 1,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
        })
        .build()
        .unwrap()
}

#[test]
fn sagas_wait_reports_the_status_once_the_service_applied_it() {
    let s = Scratch::new();
    let refund_works = Arc::new(AtomicBool::new(false));
    let rt = runtime();
    let service = rt.block_on(async {
        let service = SagaRuntime::new(
            checkout(refund_works.clone()),
            Arc::new(s.processors()) as Arc<dyn ProcessorStore>,
        );
        service.start("o-1", Order { total: 30 }).await.unwrap();
        service.tick().await.unwrap();
        service
    });
    let parked = s.load(CHECKOUT, "o-1").unwrap();
    assert_eq!(parked.status, InstanceStatus::CompensationFailed);

    refund_works.store(true, Ordering::SeqCst);
    let mut cli = s.runnel();
    cli.args(["sagas", "retry", "o-1", "--wait", "30s"]);
    let operator = std::thread::spawn(move || cli.output().unwrap());
    // The service: claims due timers (the operator request among them) until the CLI is
    // done waiting.
    rt.block_on(async {
        while !operator.is_finished() {
            service.tick().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let out = operator.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("applied") && stdout.contains("is now compensated"),
        "{stdout}"
    );
    let after = s.load(CHECKOUT, "o-1").unwrap();
    assert_eq!(after.status, InstanceStatus::Compensated);
    assert!(s.timers(CHECKOUT, "o-1").is_empty());
}

#[test]
fn every_sagas_command_has_help_with_an_example() {
    let s = Scratch::new();
    for command in ["list", "show", "retry", "skip-step", "compensate", "purge"] {
        let out = s
            .runnel_bare()
            .args(["sagas", command, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Examples:") && help.contains(&format!("runnel sagas {command}")),
            "{command} has no example:\n{help}"
        );
    }
}

/// The PostgreSQL test server with a fresh schema, or `None` (skipped loudly; a failure
/// when `RUNNEL_REQUIRE_SERVICES=1`).
fn postgres_store_url() -> Option<String> {
    match std::env::var("RUNNEL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            let schema = format!("cli_sg_{}", uuid::Uuid::now_v7().simple());
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
fn sagas_list_and_retry_work_against_postgres() {
    let Some(url) = postgres_store_url() else {
        return;
    };
    let rt = runtime();
    let store: Arc<dyn ProcessorStore> = rt.block_on(async {
        let options = runnel_postgres::PostgresOptions::from_url(&url).unwrap();
        let store = runnel_postgres::PostgresStore::connect_with(options)
            .await
            .unwrap();
        let processors: Arc<dyn ProcessorStore> =
            Arc::new(runnel_postgres::PostgresProcessorStore::new(store));
        put_instance(
            &*processors,
            CHECKOUT,
            "pg-parked",
            vec![Step {
                last_error: Some("step outcome unknown"),
                ..step(InstanceStatus::NeedsAttention, "needs attention at charge")
            }],
        )
        .await;
        put_instance(&*processors, CHECKOUT, "pg-run", vec![]).await;
        processors
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
    assert_eq!(ids_of(&run(&["sagas", "list"])), ["pg-parked", "pg-run"]);
    assert_eq!(
        ids_of(&run(&["sagas", "list", "--status", "needs-attention"])),
        ["pg-parked"]
    );
    let json = &run(&["sagas", "retry", "pg-parked"])[0];
    assert_eq!(json["requested_at_version"], 3);
    rt.block_on(async {
        let timers = store.timers(CHECKOUT, "pg-parked").await.unwrap();
        assert_eq!(timers.len(), 1);
        assert_eq!(timers[0].name, "operator");
        let history = store.history(CHECKOUT, "pg-parked", 0, 100).await.unwrap();
        assert_eq!(
            history.last().unwrap().line.what,
            "operator-requested-retry"
        );
    });
    let refused = s
        .runnel_bare()
        .env("RUNNEL_STORE", &url)
        .args(["sagas", "retry", "pg-run"])
        .output()
        .unwrap();
    assert_one_line_error(&refused, EXIT_BAD_INPUT);
    let after = rt.block_on(async { store.load(CHECKOUT, "pg-run").await.unwrap().unwrap() });
    assert_eq!(after.version, 1);
}
