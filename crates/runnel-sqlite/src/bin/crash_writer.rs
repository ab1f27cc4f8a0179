//! Test helper for `tests/crash.rs`: appends in a loop from several concurrent writers and
//! prints one line per acknowledged append, so the parent knows exactly what was
//! acknowledged before it kills this process with SIGKILL.
//!
//! Usage: `runnel-sqlite-crash-writer DB_PATH WRITERS EVENTS_PER_APPEND`
//! Output: `ack STREAM LAST_REVISION LAST_POSITION ID1,ID2,...`

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use runnel_core::{EventStore, ExpectedRevision, NewEvent, StreamName};
use runnel_sqlite::SqliteStore;

/// Streams per writer; appends rotate over them.
const STREAMS_PER_WRITER: u64 = 8;

/// The integrity check the parent recomputes: FNV-1a over the payload's fields.
fn check(writer: u64, n: u64, k: u64, pad: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{writer}/{n}/{k}/{pad}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: runnel-sqlite-crash-writer DB_PATH WRITERS EVENTS_PER_APPEND");
        std::process::exit(2);
    }
    let path = args[1].clone();
    let writers: u64 = args[2].parse().expect("WRITERS is a number");
    let per_append: u64 = args[3].parse().expect("EVENTS_PER_APPEND is a number");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = SqliteStore::open(&path).expect("open store");
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for w in 0..writers {
            let store = store.clone();
            let out = Arc::clone(&out);
            tasks.push(tokio::spawn(async move {
                let mut revisions: HashMap<u64, Option<u64>> = HashMap::new();
                let mut n: u64 = 0;
                loop {
                    let slot = n % STREAMS_PER_WRITER;
                    let stream = StreamName::new(format!("Crash-w{w}s{slot}")).expect("name");
                    let current = match revisions.get(&slot) {
                        Some(r) => *r,
                        None => store.stream_revision(&stream).await.expect("revision"),
                    };
                    let pad = "x".repeat(((n * 37 + w * 11) % 300) as usize);
                    let events: Vec<NewEvent> = (0..per_append)
                        .map(|k| {
                            NewEvent::json(
                                "CrashTested",
                                &serde_json::json!({
                                    "writer": w, "n": n, "k": k, "pad": pad,
                                    "check": check(w, n, k, &pad).to_string(),
                                }),
                            )
                        })
                        .collect();
                    let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
                    let r = store
                        .append(&stream, ExpectedRevision::from_current(current), events)
                        .await
                        .expect("append");
                    revisions.insert(slot, Some(r.next_expected_revision));
                    {
                        let mut out = out.lock().expect("stdout lock");
                        writeln!(
                            out,
                            "ack {stream} {} {} {}",
                            r.next_expected_revision,
                            r.position,
                            ids.join(",")
                        )
                        .expect("stdout");
                        out.flush().expect("flush");
                    }
                    n += 1;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}
