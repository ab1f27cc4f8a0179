//! `kill -9` a saga service mid-saga, again and again, then let it finish: every instance
//! completes, every step's side effect is there, no step ran more often than the kills
//! explain, nothing was compensated, and each instance announced its completion once.
//!
//! The child (`src/bin/saga_crash_child.rs`) runs `INSTANCES` instances of a three-step
//! saga on a SQLite file; each step records its side effect in a transaction of its own
//! before the saga commits the step's outcome. The test SIGKILLs the child at a random
//! point once some effects are committed — `CYCLES` times — then lets a last child run to
//! the end. Killed children leave steps running under their lease, effects whose outcome
//! was never committed, and committed transitions whose next step never started.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::RngExt;
use runnel::sqlite::rusqlite::{Connection, OpenFlags};

const INSTANCES: u32 = 150;
const STEP_DELAY_MS: &str = "4";
const CYCLES: usize = 4;
/// Each kill comes after this many more effects (at random) than the cycle started with.
const KILL_AFTER_EFFECTS: std::ops::RangeInclusive<i64> = 10..=120;
const CYCLE_DEADLINE: Duration = Duration::from_secs(60);
const FINAL_DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(10);

fn spawn_child(db: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_runnel-saga-crash-child"))
        .arg(db)
        .arg(INSTANCES.to_string())
        .arg(STEP_DELAY_MS)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the saga crash child")
}

fn reader(db: &Path) -> Option<Connection> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    Some(conn)
}

/// Committed side effects (0 before the first child created the table).
fn effects(db: &Path) -> i64 {
    let Some(conn) = reader(db) else { return 0 };
    match conn.query_row("SELECT count(*) FROM saga_effects", [], |r| r.get(0)) {
        Ok(n) => n,
        Err(e) if e.to_string().contains("no such table") => 0,
        Err(e) => panic!("counting effects: {e}"),
    }
}

#[test]
fn a_saga_killed_at_random_points_completes_with_every_effect_once_per_crash() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sagas.db");
    let mut rng = rand::rng();
    for cycle in 0..CYCLES {
        let before = effects(&db);
        let target = before + rng.random_range(KILL_AFTER_EFFECTS);
        let mut child = spawn_child(&db);
        let deadline = Instant::now() + CYCLE_DEADLINE;
        loop {
            if effects(&db) >= target {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                // Finished everything before the kill point: fine, nothing left to kill.
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
        // SIGKILL: no destructor, no graceful shutdown.
        let _ = child.kill();
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
    assert!(status.success(), "the last child failed: {status}");

    let conn = reader(&db).unwrap();
    let statuses: Vec<(String, i64)> = conn
        .prepare("SELECT status, count(*) FROM processor_instances GROUP BY status")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        statuses,
        vec![("completed".to_string(), i64::from(INSTANCES))]
    );
    let rows: Vec<(String, i64)> = conn
        .prepare("SELECT key, runs FROM saga_effects ORDER BY key")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows.len(),
        INSTANCES as usize * 3,
        "one effect per step per instance"
    );
    assert!(
        rows.iter().all(|(key, _)| key.ends_with("/do")),
        "nothing was compensated"
    );
    let reruns: i64 = rows.iter().map(|(_, runs)| runs - 1).sum();
    eprintln!("{reruns} step runs repeated after {CYCLES} kills");
    assert!(
        reruns <= CYCLES as i64 * 16,
        "{reruns} steps ran again: at most the steps in flight at each kill (16 at once)"
    );
    let completed_events: i64 = conn
        .query_row(
            "SELECT count(*) FROM outbox_bodies WHERE envelope LIKE '%\"SagaCompleted\"%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        completed_events,
        i64::from(INSTANCES),
        "SagaCompleted once per instance"
    );
    let leftover_timers: i64 = conn
        .query_row("SELECT count(*) FROM processor_timers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(leftover_timers, 0, "no work left behind");
}
