//! `topic_projection_applies_each_message_exactly_once_across_kill_9` on SQLite with the
//! embedded bus: an application running a topic projection
//! (`src/bin/topic_projection_crash_child.rs`) is SIGKILLed mid-stream again and again.
//! Deliveries it had committed but not acknowledged come back to the next one; at the end
//! every message was applied exactly once — the `applied` table's primary key would have
//! failed (and dead-lettered the message) on a second application, and each key's count
//! equals its number of messages.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::RngExt;
use runnel::connect::{open_bus, open_stores, BusUrl, OpenMode, StoreUrl};
use runnel::core::{Message, TopicName};
use runnel::sqlite::rusqlite::{Connection, OpenFlags};

const KEYS: usize = 20;
const PER_KEY: usize = 60;
const CYCLES: usize = 5;
const CYCLE_DEADLINE: Duration = Duration::from_secs(60);
const FINAL_DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(5);

fn spawn_child(db: &Path, total: usize) -> Child {
    Command::new(env!("CARGO_BIN_EXE_runnel-topic-projection-crash-child"))
        .arg(db)
        .arg(total.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the topic projection crash child")
}

fn query(db: &Path, sql: &str) -> i64 {
    let Ok(conn) = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return 0;
    };
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    match conn.query_row(sql, [], |r| r.get(0)) {
        Ok(n) => n,
        Err(e) if e.to_string().contains("no such table") => 0,
        Err(e) => panic!("{sql}: {e}"),
    }
}

fn applied(db: &Path) -> i64 {
    query(db, "SELECT count(*) FROM applied")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_projection_applies_each_message_exactly_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("topic-projection.db");
    {
        let stores = open_stores(&StoreUrl::sqlite(&db), OpenMode::CreateIfMissing)
            .await
            .unwrap();
        let bus = open_bus(&BusUrl::Embedded, &stores).await.unwrap();
        let topic = TopicName::new("crash.Counted").unwrap();
        for round in 0..PER_KEY {
            let messages = (0..KEYS)
                .map(|k| {
                    Message::json("Counted", &serde_json::json!({"round": round}))
                        .with_key(format!("key-{k}"))
                })
                .collect();
            bus.publisher.publish(&topic, messages).await.unwrap();
        }
    }
    let total = KEYS * PER_KEY;
    let mut rng = rand::rng();
    for cycle in 0..CYCLES {
        let target = applied(&db) + rng.random_range(50..=200);
        let mut child = spawn_child(&db, total);
        let deadline = Instant::now() + CYCLE_DEADLINE;
        loop {
            if applied(&db) >= target.min(total as i64) {
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
    let mut last = spawn_child(&db, total);
    let deadline = Instant::now() + FINAL_DEADLINE;
    let status = loop {
        if let Some(status) = last.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = last.kill();
            panic!(
                "the last child did not finish within {FINAL_DEADLINE:?} ({} of {total} applied)",
                applied(&db)
            );
        }
        std::thread::sleep(POLL);
    };
    assert!(status.success(), "the last child failed: {status}");
    assert_eq!(applied(&db), total as i64, "every message applied, once");
    assert_eq!(
        query(
            &db,
            &format!("SELECT count(*) FROM counts WHERE n <> {PER_KEY}")
        ),
        0,
        "every key counted exactly once per message"
    );
    assert_eq!(
        query(&db, "SELECT count(*) FROM dead_letters"),
        0,
        "no message failed (a second application would have)"
    );
    assert_eq!(
        query(
            &db,
            "SELECT events_applied FROM projection_state WHERE name = 'key_counts'"
        ),
        total as i64
    );
}
