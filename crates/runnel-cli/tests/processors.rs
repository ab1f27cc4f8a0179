//! `runnel processors …` end to end: each test appends events to a fresh store, runs a real
//! stream job in this process as a service would (`revenue`: cents per product per minute
//! of event time, into its results table), runs the real binary, and checks its output
//! (human and `--json`), exit code, and what the store holds afterwards. The same scenario
//! runs on a SQLite file and on PostgreSQL.

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use runnel::connect::{open_stores, OpenMode, StoreUrl, Stores};
use runnel::core::clock::VirtualClock;
use runnel::core::projection::VersionRole;
use runnel::core::{EventFilter, ExpectedRevision, NewEvent, StreamName};
use runnel::stream::{Agg, Emit, Job, JobBuilder, RunOptions, Sink, StreamJob, WindowSpec};
use serde_json::{json, Value};

mod common;
use common::Scratch;

const EXIT_BAD_INPUT: i32 = 2;
const EXIT_NOT_FOUND: i32 = 4;
const JOB: &str = "revenue";

/// The first event's time: a whole minute, so windows are easy to read.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

/// Cents per product per minute of the events' own time (`at`, ms), final results only.
fn job() -> Job {
    let mut job = JobBuilder::new(JOB);
    job.events(EventFilter::event_types(["OrderPaid"]))
        .event_time(|e| {
            let at = serde_json::from_slice::<Value>(&e.data)
                .ok()
                .and_then(|v| v["at"].as_i64())
                .unwrap_or_default();
            DateTime::from_timestamp_millis(at).unwrap_or_default()
        })
        .key_by(|e| {
            serde_json::from_slice::<Value>(&e.data).unwrap_or_default()["product"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .window(WindowSpec::tumbling(Duration::from_secs(60)).grace(Duration::ZERO))
        .aggregate(Agg::sum(|e: &runnel::stream::SourceEvent| {
            serde_json::from_slice::<Value>(&e.data).unwrap_or_default()["cents"]
                .as_i64()
                .unwrap_or_default()
        }))
        .emit(Emit::OnClose)
        .to(Sink::table());
    job.build().unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The job as a service runs it; its clock stands still, so sources never count as idle
/// and the watermark comes from the events alone.
fn stream_job(stores: &Stores) -> StreamJob {
    StreamJob::on(
        stores,
        job(),
        RunOptions {
            clock: Arc::new(VirtualClock::at(t0())),
            ..RunOptions::default()
        },
    )
}

async fn paid(stores: &Stores, order: u32, product: &str, cents: i64, seconds: i64) {
    let at = (t0() + chrono::Duration::seconds(seconds)).timestamp_millis();
    stores
        .events
        .append(
            &StreamName::new(format!("Order-{order}")).unwrap(),
            ExpectedRevision::Any,
            vec![NewEvent::json(
                "OrderPaid",
                &json!({"product": product, "cents": cents, "at": at}),
            )],
        )
        .await
        .unwrap();
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_lines(out: &Output) -> Vec<Value> {
    stdout_of(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// The binary pointed at one store.
struct Cli<'a> {
    scratch: &'a Scratch,
    store: Vec<String>,
}

impl Cli<'_> {
    fn output(&self, args: &[&str]) -> Output {
        self.scratch
            .runnel_bare()
            .args(&self.store)
            .args(args)
            .output()
            .expect("run runnel")
    }

    fn human(&self, args: &[&str]) -> String {
        stdout_of(&self.output(args))
    }

    fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        json_lines(&self.output(&all))
    }

    /// Runs a command that must fail with `code` and one `error: …` line.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.output(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
        assert!(stderr.starts_with("error: "), "{stderr:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
        stderr
    }
}

/// Generations of the job's projection: (version, role).
async fn generations(stores: &Stores) -> Vec<(u32, VersionRole)> {
    stores
        .projections
        .states(Some(&format!("{}{JOB}", runnel::stream::JOB_PREFIX)))
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.version, s.role))
        .collect()
}

/// The whole scenario on one store: run the job, then list, status, reset and the
/// unknown-name refusals through the binary.
fn list_status_and_reset(rt: &tokio::runtime::Runtime, stores: &Stores, cli: &Cli) {
    // Before any job ran: an empty list, and the names are unknown.
    assert!(cli.json(&["processors", "list"]).is_empty());

    // Minute 0: tea 300 + 200; minute 2 moves the watermark past minute 0's end (grace 0),
    // so minute 0 closes with 500. Then a record for minute 0 arrives: late.
    rt.block_on(async {
        paid(stores, 1, "tea", 300, 0).await;
        paid(stores, 2, "tea", 200, 30).await;
        paid(stores, 3, "tea", 700, 130).await;
        assert_eq!(stream_job(stores).catch_up().await.unwrap(), 3);
        paid(stores, 4, "tea", 50, 10).await;
        assert_eq!(stream_job(stores).catch_up().await.unwrap(), 1);
    });
    let watermark = "2026-01-01T00:02:10.000Z";
    let watermark_ms = (t0() + chrono::Duration::seconds(130)).timestamp_millis();

    let list = cli.json(&["processors", "list"]);
    assert_eq!(list.len(), 1, "{list:?}");
    let line = &list[0];
    assert_eq!(line["name"], JOB);
    assert_eq!(line["version"], 1);
    assert_eq!(line["status"], "running");
    // Four payments, then the late record appended to `StreamLate-revenue`.
    assert_eq!(line["head"], 5);
    assert_eq!(line["position"], line["head"]);
    assert_eq!(line["lag_events"], 0);
    assert_eq!(line["watermark"], watermark);
    assert_eq!(line["watermark_ms"], watermark_ms);
    assert_eq!(line["late"], 1);
    // Minute 2's window is open: its sum is state.
    assert!(line["state_rows"].as_u64().unwrap() >= 1, "{line}");

    let human = cli.human(&["processors", "list"]);
    assert_eq!(human.lines().count(), 1, "{human}");
    for part in [
        JOB,
        "gen 1",
        "running",
        "lag 0 events",
        &format!("watermark {watermark}"),
        "late 1",
        "rows",
    ] {
        assert!(human.contains(part), "{part:?} missing from {human:?}");
    }

    let status = cli.json(&["processors", "status", JOB]);
    assert_eq!(status.len(), 1);
    let st = &status[0];
    assert_eq!(st["name"], JOB);
    assert_eq!(st["position"], 5);
    assert_eq!(st["head"], 5);
    assert_eq!(st["records"], 4);
    assert_eq!(st["outputs"], 1);
    assert_eq!(st["late"], 1);
    assert_eq!(st["watermark"], watermark);
    assert_eq!(st["source_times"], json!([watermark]));
    assert_eq!(st["source_times_ms"], json!([watermark_ms]));
    assert_eq!(st["state_rows"], line["state_rows"]);
    assert!(st["state_bytes"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["last_error"], Value::Null);
    // catch_up gave the lease up.
    assert_eq!(st["lease_owner"], Value::Null);
    let human = cli.human(&["processors", "status", JOB]);
    for part in [
        &format!("job          {JOB}"),
        "generation   1",
        "position     5 of 5 (lag 0 events)",
        &format!("watermark    {watermark}"),
        &format!("source 0     latest event time {watermark}"),
        "records      4",
        "outputs      1",
        "late         1",
        &format!(
            "state        {} rows, {} bytes",
            st["state_rows"], st["state_bytes"]
        ),
        "lease        -",
    ] {
        assert!(human.contains(part), "{part:?} missing from:\n{human}");
    }

    // Unknown and malformed names: refused, nothing changed.
    let before = rt.block_on(generations(stores));
    let e = cli.fails(&["processors", "status", "nope"], EXIT_NOT_FOUND);
    assert!(e.contains("no stream job named \"nope\""), "{e}");
    let e = cli.fails(&["processors", "reset", "nope"], EXIT_NOT_FOUND);
    assert!(e.contains("processors list"), "{e}");
    cli.fails(&["processors", "reset", "Not A Name"], EXIT_BAD_INPUT);
    assert_eq!(rt.block_on(generations(stores)), before);

    // `runnel projections` keeps listing the job's projection, marked as a stream job.
    let projections = cli.json(&["projections", "list"]);
    let mine = projections
        .iter()
        .find(|p| p["name"] == format!("stream_job_{JOB}"))
        .unwrap_or_else(|| panic!("{projections:?}"));
    assert_eq!(mine["stream_job"], JOB);
    let human = cli.human(&["projections", "list"]);
    assert!(
        human.contains(&format!("see `runnel processors status {JOB}`")),
        "{human}"
    );

    // Reset: a new generation from the start of $all, beside the current one.
    let human = cli.human(&["processors", "reset", JOB]);
    assert!(
        human.contains("reset: generation 2") && human.contains("emitted again"),
        "{human}"
    );
    let again = cli.json(&["processors", "reset", JOB]);
    assert_eq!(again[0]["version"], 2);
    assert_eq!(again[0]["previous_version"], 1);
    assert_eq!(
        again[0]["created"], false,
        "a second reset reports the first"
    );
    assert_eq!(
        rt.block_on(generations(stores)),
        vec![(1, VersionRole::Current), (2, VersionRole::Building)]
    );
    let st = &cli.json(&["processors", "status", JOB])[0];
    assert_eq!(st["version"], 2);
    assert_eq!(st["position"], 0);
    assert_eq!(st["lag_events"], 5);
    assert_eq!(st["records"], 0);
    assert_eq!(st["watermark"], Value::Null);

    // The service fills the new generation from the start and switches to it.
    assert_eq!(rt.block_on(stream_job(stores).catch_up()).unwrap(), 4);
    let live: Vec<(u32, VersionRole)> = rt
        .block_on(generations(stores))
        .into_iter()
        .filter(|(_, r)| *r != VersionRole::Retired)
        .collect();
    assert_eq!(live, vec![(2, VersionRole::Current)]);
    let st = &cli.json(&["processors", "status", JOB])[0];
    assert_eq!(st["version"], 2);
    assert_eq!(st["records"], 4);
    assert_eq!(st["watermark"], watermark);
    // Minute 0's result and the late record were emitted again by the new generation
    // (the late record as a new event of `StreamLate-revenue`).
    assert_eq!(st["outputs"], 1);
    assert_eq!(st["late"], 1);
    assert_eq!(st["head"], 6);
    assert_eq!(st["position"], st["head"]);
    assert_eq!(st["lag_events"], 0);
}

#[test]
fn processors_list_status_and_reset_on_sqlite() {
    let s = Scratch::new();
    let rt = runtime();
    let stores = rt
        .block_on(open_stores(
            &StoreUrl::sqlite(s.db()),
            OpenMode::CreateIfMissing,
        ))
        .unwrap();
    let cli = Cli {
        scratch: &s,
        store: vec!["--db".into(), s.db().display().to_string()],
    };
    list_status_and_reset(&rt, &stores, &cli);
}

#[test]
fn processors_list_status_and_reset_on_postgres() {
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
    let schema = format!("cli_sp_{}", uuid::Uuid::now_v7().simple());
    let sep = if url.contains('?') { '&' } else { '?' };
    let store_url = format!("{url}{sep}schema={schema}");
    let s = Scratch::new();
    let rt = runtime();
    let stores = rt
        .block_on(open_stores(
            &StoreUrl::parse(&store_url).unwrap(),
            OpenMode::CreateIfMissing,
        ))
        .unwrap();
    let cli = Cli {
        scratch: &s,
        store: vec!["--store".into(), store_url.clone()],
    };
    list_status_and_reset(&rt, &stores, &cli);
    let _ = rt.block_on(async {
        let pool = runnel_postgres::sqlx::PgPool::connect(&url).await?;
        runnel_postgres::sqlx::query(runnel_postgres::sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .execute(&pool)
        .await
    });
}

#[test]
fn every_processors_command_has_help_with_an_example() {
    let s = Scratch::new();
    for command in ["list", "status", "reset"] {
        // --help opens no store, even with one named.
        let out = s
            .runnel()
            .args(["processors", command, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Examples:") && help.contains(&format!("runnel processors {command}")),
            "{command} has no example:\n{help}"
        );
    }
}
