//! Durability under `kill -9`: a child process appends in a loop and prints every
//! acknowledged append; the test kills it with SIGKILL at a random moment, reopens the
//! store and checks that every acknowledged event is there, intact, and that no partial
//! append is visible. Repeated for `RUNNEL_CRASH_CYCLES` cycles (default 20) on one file.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::RngExt;
use runnel_core::{EventFilter, EventStore, Position, ReadStream, StreamName};
use runnel_sqlite::SqliteStore;

const WRITERS: u64 = 4;
const EVENTS_PER_APPEND: u64 = 3;

struct Ack {
    stream: String,
    revision: u64,
    position: u64,
    ids: Vec<String>,
}

fn parse_ack(line: &str) -> Ack {
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts.len(), 5, "bad ack line {line:?}");
    assert_eq!(parts[0], "ack");
    Ack {
        stream: parts[1].to_string(),
        revision: parts[2].parse().unwrap(),
        position: parts[3].parse().unwrap(),
        ids: parts[4].split(',').map(str::to_string).collect(),
    }
}

fn check(writer: u64, n: u64, k: u64, pad: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{writer}/{n}/{k}/{pad}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Runs the child until it has acknowledged `target` appends (or a deadline passes),
/// kills it with SIGKILL and returns every append it acknowledged.
fn run_and_kill(db: &std::path::Path, target: usize) -> Vec<Ack> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel-sqlite-crash-writer"))
        .arg(db)
        .arg(WRITERS.to_string())
        .arg(EVENTS_PER_APPEND.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn crash writer");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines.len() < target {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "child acknowledged only {} appends",
            lines.len()
        );
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(e) => panic!("child stopped early ({e}) after {} acks", lines.len()),
        }
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the child was killed, not finished");
    // Acks printed before the kill may still sit in the pipe.
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    lines.iter().map(|l| parse_ack(l)).collect()
}

async fn verify(db: &std::path::Path, acks: &[Ack]) -> usize {
    let store = SqliteStore::open(db).expect("reopen after crash");
    for ack in acks {
        let stream = StreamName::new(ack.stream.clone()).unwrap();
        let first = ack.revision + 1 - EVENTS_PER_APPEND;
        let events = store
            .read_stream(
                &stream,
                ReadStream::forward(EVENTS_PER_APPEND as usize).from(first),
            )
            .await
            .unwrap();
        assert_eq!(
            events.len(),
            EVENTS_PER_APPEND as usize,
            "acked append lost in {}",
            ack.stream
        );
        let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(ids, ack.ids, "acked events differ in {}", ack.stream);
        assert_eq!(events.last().unwrap().position.get(), ack.position);
    }
    // Everything stored (acked or not) is intact and no append is partially visible.
    let mut per_stream: HashMap<String, u64> = HashMap::new();
    let mut after = Position::START;
    let mut total = 0;
    loop {
        let page = store
            .read_all(after, &EventFilter::all(), 1000)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        for e in &page {
            let v = e.data_json().expect("stored JSON is intact");
            let (w, n, k) = (
                v["writer"].as_u64().unwrap(),
                v["n"].as_u64().unwrap(),
                v["k"].as_u64().unwrap(),
            );
            let pad = v["pad"].as_str().unwrap();
            assert_eq!(
                v["check"].as_str().unwrap(),
                check(w, n, k, pad).to_string()
            );
            let rev = per_stream.entry(e.stream.to_string()).or_insert(0);
            *rev += 1;
            assert_eq!(e.revision, *rev, "revisions are gap-free in {}", e.stream);
            assert_eq!((e.revision - 1) % EVENTS_PER_APPEND, k, "append order kept");
        }
        total += page.len();
    }
    for (stream, count) in &per_stream {
        assert_eq!(
            count % EVENTS_PER_APPEND,
            0,
            "partial append visible in {stream}"
        );
        let s = StreamName::new(stream.clone()).unwrap();
        assert_eq!(store.stream_revision(&s).await.unwrap(), Some(*count));
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkill() {
    let cycles: usize = std::env::var("RUNNEL_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let mut rng = rand::rng();
    let mut acked_total = 0;
    let mut stored = 0;
    for cycle in 0..cycles {
        let target = rng.random_range(1..=120);
        let acks = run_and_kill(&db, target);
        assert!(acks.len() >= target);
        acked_total += acks.len();
        stored = verify(&db, &acks).await;
        eprintln!(
            "cycle {cycle}: {} acks verified, {stored} events stored",
            acks.len()
        );
    }
    assert!(stored as u64 >= acked_total as u64 * EVENTS_PER_APPEND);
}
