//! `kill -9` a consumer mid-batch, restart it: every message handled, effects exactly once
//! (the transactional inbox), per-key order kept, nothing dead-lettered.
//!
//! The test publishes `MESSAGES` messages over `KEYS` keys to the embedded bus in a SQLite
//! file, then runs the consumer as a child process (`src/bin/consumer_crash_child.rs`: the
//! router with its default layers, the SQLite inbox and dead-letter store; one effect row
//! per message written through the inbox scope). It SIGKILLs the child at a random point
//! once some effects are committed — `RUNNEL_CONSUMER_CRASH_CYCLES` times (default 4) —
//! and finally lets a child run until the group is drained. Killed children leave leased,
//! half-handled and handled-but-unacked messages behind; the file must show each message's
//! effect exactly once regardless.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::RngExt;
use runnel::core::bus::Publisher;
use runnel::core::dead_letter::{DeadLetterFilter, DeadLetterStore};
use runnel::core::{GroupName, Message, TopicName};
use runnel::sqlite::bus::{BusOptions, SqliteBus};
use runnel::sqlite::rusqlite::{Connection, OpenFlags};
use runnel::sqlite::{SqliteDeadLetters, SqliteInbox, SqliteStore};

const TOPIC: &str = "ledger";
const GROUP: &str = "balances";
const MESSAGES: usize = 2_000;
const KEYS: usize = 50;
/// How long the child's handler takes per message: slow enough that a kill always finds
/// attempts in flight, fast enough that the whole run takes seconds.
const HANDLER_DELAY_MS: &str = "2";
/// Kill cycles unless `RUNNEL_CONSUMER_CRASH_CYCLES` says otherwise.
const CYCLES_DEFAULT: usize = 4;
/// Each kill comes after this many more effects (at random) than the cycle started with.
const KILL_AFTER_EFFECTS: std::ops::RangeInclusive<usize> = 20..=250;
/// Longest wait for a child to commit the effects a cycle waits for.
const CYCLE_DEADLINE: Duration = Duration::from_secs(60);
/// Longest wait for the final child to drain the group.
const FINAL_DEADLINE: Duration = Duration::from_secs(120);
/// How often the test looks at the file and the child.
const POLL: Duration = Duration::from_millis(10);

/// A running child and the thread collecting what it prints.
struct ChildRun {
    child: Child,
    output: JoinHandle<Vec<String>>,
}

/// What a child printed: the redeliveries it received, and (if it finished) its acks.
struct ChildReport {
    pid: i64,
    redelivered: Vec<String>,
    acked: Option<u64>,
}

fn spawn_child(db: &Path) -> ChildRun {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel-consumer-crash-child"))
        .arg(db)
        .arg(TOPIC)
        .arg(GROUP)
        .arg(HANDLER_DELAY_MS)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the crash child");
    let stdout = child.stdout.take().unwrap();
    // Reads until the pipe closes (the child exited or was killed).
    let output = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect()
    });
    ChildRun { child, output }
}

impl ChildRun {
    /// Waits for the child to be gone and parses what it printed.
    fn finish(mut self) -> ChildReport {
        let pid = i64::from(self.child.id());
        self.child.wait().unwrap();
        let lines = self.output.join().unwrap();
        let mut report = ChildReport {
            pid,
            redelivered: Vec::new(),
            acked: None,
        };
        for line in lines {
            if let Some(rest) = line.strip_prefix("redelivered ") {
                let id = rest.split(' ').next().unwrap().to_string();
                report.redelivered.push(id);
            } else if let Some(n) = line.strip_prefix("done acked=") {
                report.acked = Some(n.parse().unwrap());
            } else {
                panic!("unexpected output of the child: {line:?}");
            }
        }
        report
    }
}

/// A read-only connection: the test reads the child's file while it writes (WAL).
fn reader(db: &Path) -> Connection {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

/// Committed effect rows (0 before the first child created the table).
fn effect_count(db: &Path) -> usize {
    let conn = reader(db);
    match conn.query_row("SELECT count(*) FROM effects", [], |r| r.get::<_, i64>(0)) {
        Ok(n) => usize::try_from(n).unwrap(),
        Err(e) if e.to_string().contains("no such table") => 0,
        Err(e) => panic!("counting effects: {e}"),
    }
}

/// Message number `n` of key `key`.
fn message(key: &str, n: usize) -> Message {
    Message::json("Posted", &serde_json::json!({ "n": n })).with_key(key)
}

/// Publishes every message (keys interleaved) and returns each key's ids in publish order.
async fn publish_all(db: &Path) -> HashMap<String, Vec<String>> {
    let store = SqliteStore::open(db).unwrap();
    let bus = SqliteBus::new(store, BusOptions::default()).unwrap();
    let topic = TopicName::new(TOPIC).unwrap();
    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    let mut messages = Vec::with_capacity(MESSAGES);
    for n in 1..=MESSAGES / KEYS {
        for k in 0..KEYS {
            let key = format!("Acct-{k:02}");
            let m = message(&key, n);
            order.entry(key).or_default().push(m.id.clone());
            messages.push(m);
        }
    }
    assert_eq!(messages.len(), MESSAGES);
    for batch in messages.chunks(runnel::core::message::PUBLISH_BATCH_MAX) {
        bus.publish(&topic, batch.to_vec()).await.unwrap();
    }
    order
}

/// Runs a child until `more` effects beyond the current count are committed, then kills
/// it with SIGKILL.
async fn run_and_kill(db: &Path, more: usize) -> (usize, ChildReport) {
    let target = effect_count(db) + more;
    assert!(
        target < MESSAGES,
        "the kill would come after the last message"
    );
    let mut run = spawn_child(db);
    let deadline = tokio::time::Instant::now() + CYCLE_DEADLINE;
    let count = loop {
        let count = effect_count(db);
        if count >= target {
            break count;
        }
        if let Some(status) = run.child.try_wait().unwrap() {
            panic!("the child exited ({status}) before it was killed, at {count} effects");
        }
        if tokio::time::Instant::now() >= deadline {
            run.child.kill().ok();
            panic!(
                "the child committed only {count} of {target} effects within {CYCLE_DEADLINE:?}"
            );
        }
        tokio::time::sleep(POLL).await;
    };
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "the child finished before the kill"
    );
    run.child.kill().expect("SIGKILL the child"); // std's kill is SIGKILL on Unix
    (count, run.finish())
}

/// Runs a child until it drains the group and exits by itself.
async fn run_to_completion(db: &Path) -> ChildReport {
    let mut run = spawn_child(db);
    let deadline = tokio::time::Instant::now() + FINAL_DEADLINE;
    loop {
        if let Some(status) = run.child.try_wait().unwrap() {
            assert!(status.success(), "the final child failed: {status}");
            return run.finish();
        }
        if tokio::time::Instant::now() >= deadline {
            run.child.kill().ok();
            panic!(
                "the final child did not drain the group within {FINAL_DEADLINE:?} ({} effects)",
                effect_count(db)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_consumer_restarts_and_handles_every_message_exactly_once_in_key_order() {
    let cycles: usize = std::env::var("RUNNEL_CONSUMER_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CYCLES_DEFAULT);
    assert!(
        cycles * KILL_AFTER_EFFECTS.end() < MESSAGES,
        "too many cycles for {MESSAGES} messages"
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("consumer-crash.db");
    let published = publish_all(&db).await;

    let mut rng = rand::rng();
    let mut runs = Vec::new();
    for cycle in 0..cycles {
        let (killed_at, report) = run_and_kill(&db, rng.random_range(KILL_AFTER_EFFECTS)).await;
        eprintln!(
            "cycle {cycle}: killed the consumer at {killed_at} effects ({} redeliveries received)",
            report.redelivered.len()
        );
        runs.push(report);
    }
    let last = run_to_completion(&db).await;
    assert!(last.acked.is_some(), "the final child did not report");
    runs.push(last);

    // Every message exactly once, each key in publish order.
    let conn = reader(&db);
    let mut stmt = conn
        .prepare("SELECT message_id, key, pid FROM effects ORDER BY seq")
        .unwrap();
    let rows: Vec<(String, String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut seen = HashSet::new();
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, key, _) in &rows {
        assert!(seen.insert(id.clone()), "message {id} has two effects");
        by_key.entry(key.clone()).or_default().push(id.clone());
    }
    assert_eq!(rows.len(), MESSAGES, "messages without an effect");
    assert_eq!(by_key.len(), KEYS);
    for (key, ids) in &by_key {
        assert_eq!(
            ids, &published[key],
            "key {key}: effects are not in publish order"
        );
    }
    let pids: HashSet<i64> = rows.iter().map(|(_, _, pid)| *pid).collect();
    assert!(
        pids.len() >= 2,
        "every effect came from one process: no kill landed mid-run"
    );
    // A redelivery whose effect another process committed is a duplicate the inbox
    // absorbed: that process was killed between its commit and its ack. The child acks
    // slowly after each commit so kills land there; without any such duplicate this run
    // would not have tested exactly-once effects at all.
    let effect_pid: HashMap<&str, i64> = rows
        .iter()
        .map(|(id, _, pid)| (id.as_str(), *pid))
        .collect();
    let absorbed = runs
        .iter()
        .flat_map(|run| run.redelivered.iter().map(move |id| (run.pid, id)))
        .filter(|(pid, id)| effect_pid[id.as_str()] != *pid)
        .count();
    eprintln!("{absorbed} redelivered duplicates absorbed by the inbox");
    assert!(
        absorbed > 0,
        "no kill left a committed but unacknowledged message behind"
    );

    // Nothing dead-lettered, every mark there, nothing left on the bus.
    let store = SqliteStore::open(&db).unwrap();
    let dead = SqliteDeadLetters::new(store.clone())
        .count(&DeadLetterFilter {
            include_replayed: true,
            ..DeadLetterFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(dead, 0, "a crash got a healthy message dead-lettered");
    let inbox = SqliteInbox::new(store.clone());
    for ids in published.values() {
        for id in ids {
            assert!(
                inbox
                    .is_processed(&format!("{TOPIC}/{GROUP}"), id)
                    .await
                    .unwrap(),
                "message {id} has an effect but no inbox mark"
            );
        }
    }
    let backlog = SqliteBus::new(store, BusOptions::default())
        .unwrap()
        .group_backlog(
            &TopicName::new(TOPIC).unwrap(),
            &GroupName::new(GROUP).unwrap(),
        )
        .await
        .unwrap()
        .expect("the group exists");
    assert_eq!(backlog.pending, 0);
}
