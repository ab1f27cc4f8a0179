//! `projection_applies_each_event_exactly_once_across_kill_9` on SQLite: the projection
//! runner (`src/bin/projection_crash_child.rs`) is SIGKILLed mid-batch again and again; at
//! the end every event was applied exactly once — the `applied` table's primary key would
//! have failed (and faulted the projection) on a second application, and each stream's
//! count equals its length.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::RngExt;
use runnel::core::{EventStore, ExpectedRevision, NewEvent, StreamName};
use runnel::sqlite::rusqlite::{Connection, OpenFlags};
use runnel::sqlite::SqliteStore;

const STREAMS: usize = 30;
const PER_STREAM: usize = 100;
const CYCLES: usize = 5;
const CYCLE_DEADLINE: Duration = Duration::from_secs(60);
const FINAL_DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(5);

fn spawn_child(db: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_runnel-projection-crash-child"))
        .arg(db)
        .arg("25")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the projection crash child")
}

fn applied(db: &Path) -> i64 {
    let Ok(conn) = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return 0;
    };
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    match conn.query_row("SELECT count(*) FROM applied", [], |r| r.get(0)) {
        Ok(n) => n,
        Err(e) if e.to_string().contains("no such table") => 0,
        Err(e) => panic!("counting: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_applies_each_event_exactly_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("projection.db");
    {
        let store = SqliteStore::open(&db).unwrap();
        for round in 0..PER_STREAM / 10 {
            for s in 0..STREAMS {
                let events = (0..10)
                    .map(|i| NewEvent::json("Posted", &serde_json::json!({"i": round * 10 + i})))
                    .collect();
                store
                    .append(
                        &StreamName::new(format!("Acct-{s}")).unwrap(),
                        ExpectedRevision::Any,
                        events,
                    )
                    .await
                    .unwrap();
            }
        }
    }
    let total = (STREAMS * PER_STREAM) as i64;
    let mut rng = rand::rng();
    for cycle in 0..CYCLES {
        let target = applied(&db) + rng.random_range(50..=400);
        let mut child = spawn_child(&db);
        let deadline = Instant::now() + CYCLE_DEADLINE;
        loop {
            if applied(&db) >= target.min(total) {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "cycle {cycle}: the child failed: {status}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: no progress in time"
            );
            std::thread::sleep(POLL);
        }
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
    }
    let mut last = spawn_child(&db);
    let deadline = Instant::now() + FINAL_DEADLINE;
    let status = loop {
        if let Some(status) = last.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = last.kill();
            panic!("the last child did not finish within {FINAL_DEADLINE:?}");
        }
        std::thread::sleep(POLL);
    };
    assert!(
        status.success(),
        "the last child failed (a faulted projection?): {status}"
    );
    assert_eq!(applied(&db), total, "every event applied, once");
    let conn = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let wrong: i64 = conn
        .query_row(
            "SELECT count(*) FROM counts WHERE n <> ?1",
            [PER_STREAM as i64],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(wrong, 0, "every stream counted exactly once per event");
}
