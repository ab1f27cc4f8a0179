//! `window_results_survive_kill_9_without_duplicates`, on SQLite and on PostgreSQL: the
//! stream job (`src/bin/stream_crash_child.rs`, a process of its own) is SIGKILLed
//! mid-batch again and again; at the end every window's sum was appended exactly once,
//! with the value a recomputation from the stored readings gives.

#[path = "pg_schema/mod.rs"]
mod pg_schema;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::RngExt;
use runnel::connect::{open_stores, OpenMode, StoreUrl, Stores};
use runnel::core::{EventFilter, ExpectedRevision, NewEvent, Position, StreamName};
use runnel::stream::job_status;

const SENSORS: i64 = 12;
const PER_SENSOR: i64 = 150;
const CYCLES: usize = 5;
const BATCH_EVENTS: &str = "20";
/// Each kill comes after this many more processed events than the cycle started with.
const KILL_AFTER: std::ops::RangeInclusive<u64> = 40..=300;
const CYCLE_DEADLINE: Duration = Duration::from_secs(60);
const FINAL_DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(5);
/// Event times start here (ms since the epoch): 2026-01-01.
const T0: i64 = 1_767_225_600_000;

fn spawn_child(store: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_runnel-stream-crash-child"))
        .arg(store)
        .arg(BATCH_EVENTS)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the stream crash child")
}

/// Readings one second apart per sensor, each up to 3 s out of order (less than the job's
/// 5 s of allowed out-of-orderness: none is late). Returns the expected sums by (sensor,
/// window start).
async fn seed(stores: &Stores) -> BTreeMap<(String, i64), i64> {
    let mut rng = rand::rng();
    let mut expected = BTreeMap::new();
    for i in 0..PER_SENSOR {
        let mut batch = Vec::new();
        for s in 0..SENSORS {
            let t = T0 + i * 1000 + rng.random_range(0..3000);
            let v = rng.random_range(1..1000);
            let key = format!("s{s}");
            *expected
                .entry((key.clone(), t.div_euclid(10_000) * 10_000))
                .or_insert(0) += v;
            batch.push((key, t, v));
        }
        for (key, t, v) in batch {
            stores
                .events
                .append(
                    &StreamName::new(format!("Sensor-{key}")).unwrap(),
                    ExpectedRevision::Any,
                    vec![NewEvent::json(
                        "Reading",
                        &serde_json::json!({"key": key, "t": t, "v": v}),
                    )],
                )
                .await
                .unwrap();
        }
    }
    expected
}

async fn processed(stores: &Stores) -> u64 {
    job_status(stores, "kill_sums")
        .await
        .unwrap()
        .map_or(0, |s| s.records)
}

async fn survive_kill_9(stores: Stores, store_arg: String) {
    let expected = seed(&stores).await;
    let total = (SENSORS * PER_SENSOR) as u64;
    for cycle in 0..CYCLES {
        let target = processed(&stores).await + rand::rng().random_range(KILL_AFTER);
        let mut child = spawn_child(&store_arg);
        let deadline = Instant::now() + CYCLE_DEADLINE;
        loop {
            if processed(&stores).await >= target.min(total) {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "cycle {cycle}: the child failed: {status}"
                );
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("cycle {cycle}: no progress within {CYCLE_DEADLINE:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        let _ = child.kill(); // SIGKILL, to this child's own PID
        child.wait().unwrap();
    }
    let mut last = spawn_child(&store_arg);
    let until = Instant::now() + FINAL_DEADLINE;
    let status = loop {
        if let Some(status) = last.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = last.kill();
            let _ = last.wait();
            let s = job_status(&stores, "kill_sums").await;
            panic!("the last child did not finish within {FINAL_DEADLINE:?}: {s:?}");
        }
        tokio::time::sleep(POLL).await;
    };
    assert!(status.success(), "the last child failed: {status}");

    let mut got: BTreeMap<(String, i64), i64> = BTreeMap::new();
    let mut ids = std::collections::HashSet::new();
    for e in stores
        .events
        .read_all(
            Position::START,
            &EventFilter::categories(["KillSums"]),
            10_000,
        )
        .await
        .unwrap()
    {
        assert!(ids.insert(e.id), "an event id twice");
        let d = e.data_json().unwrap();
        let key = d["key"].as_str().unwrap().to_string();
        let start = d["window"]["start"].as_i64().unwrap();
        assert_eq!(d["kind"], "final");
        let before = got.insert((key.clone(), start), d["value"].as_i64().unwrap());
        assert!(before.is_none(), "window {key} @ {start} emitted twice");
    }
    assert_eq!(got.len(), expected.len(), "every window, once");
    assert_eq!(got, expected, "every sum as recomputed from the readings");
    let s = job_status(&stores, "kill_sums").await.unwrap().unwrap();
    assert_eq!(s.records, total, "every reading processed once: {s:?}");
    assert_eq!(s.late, 0);
    assert_eq!(s.state_rows, 0, "no state left: {s:?}");
}

mod sqlite {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn window_results_survive_kill_9_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let url = StoreUrl::sqlite(dir.path().join("stream.db"));
        let stores = open_stores(&url, OpenMode::default()).await.unwrap();
        let arg = format!("sqlite:{}", dir.path().join("stream.db").display());
        survive_kill_9(stores, arg).await;
    }
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn window_results_survive_kill_9_without_duplicates() {
        let Some((_store, guard)) = pg_schema::fresh_store("strmk", 2).await else {
            return;
        };
        let url = std::env::var("RUNNEL_TEST_POSTGRES_URL").unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let arg = format!("{url}{sep}schema={}&pool_size=4", guard.schema);
        let stores = open_stores(&StoreUrl::parse(&arg).unwrap(), OpenMode::default())
            .await
            .unwrap();
        survive_kill_9(stores, arg).await;
        drop(guard);
    }
}
