//! `kill -9` the outbox relay between a confirmed publish and the mark, restart it: the
//! message is published again with the same message id, and a consumer with the
//! transactional inbox applies it once — end to end on one SQLite file.
//!
//! The relay runs as a child process (`src/bin/runnel-relay-crash-child.rs`). In `crash`
//! mode it stops dead right after the publisher (the embedded bus) confirmed its batch
//! and before marking it; the test SIGKILLs it there. A `drain` child then relays what is
//! still pending. Finally the consumer router, with the SQLite inbox, consumes the topic.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runnel::consumer::inbox::SqliteInboxScope;
use runnel::consumer::{Consumer, HandlerContext};
use runnel::core::bus::{StartPosition, SubscribeOptions, Subscriber};
use runnel::core::outbox::{OutboxMessage, OutboxStore};
use runnel::core::{GroupName, Message, StoreError, TopicName};
use runnel::sqlite::bus::{BusOptions, SqliteBus};
use runnel::sqlite::rusqlite::{params, Connection};
use runnel::sqlite::{SqliteInbox, SqliteOutbox, SqliteStore};

const TOPIC: &str = "payments";
const GROUP: &str = "ledger";
const MESSAGES: usize = 5;
/// Longest wait for a child to reach its point, or to drain.
const CHILD_DEADLINE: Duration = Duration::from_secs(60);
/// Longest wait for the consumer to settle everything.
const CONSUME_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

fn bus_copies(db: &Path, id: &str) -> i64 {
    let conn = Connection::open(db).expect("open the file");
    conn.query_row(
        "SELECT count(*) FROM bus_messages WHERE json_extract(envelope, '$.id') = ?1",
        [id],
        |r| r.get(0),
    )
    .expect("count bus copies")
}

fn effects(db: &Path) -> Vec<(String, i64)> {
    let conn = Connection::open(db).expect("open the file");
    let mut stmt = conn
        .prepare("SELECT message_id, n FROM effects ORDER BY seq")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query");
    rows.collect::<Result<_, _>>().expect("rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_between_publish_and_mark_republishes_and_the_inbox_applies_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("app.db");
    let store = SqliteStore::open(&db).expect("store");
    let bus = SqliteBus::new(
        store.clone(),
        BusOptions::default().poll_interval(Duration::from_millis(20)),
    )
    .expect("bus");
    let topic = TopicName::new(TOPIC).unwrap();
    let group = GroupName::new(GROUP).unwrap();
    store
        .unit_of_work(|uow| {
            uow.connection()
                .execute_batch(
                    "CREATE TABLE effects (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
                     message_id TEXT NOT NULL, n INTEGER NOT NULL)",
                )
                .map_err(|e| StoreError::Backend(e.to_string()))
        })
        .await
        .expect("app table");
    // The consumer group exists before anything is published.
    drop(
        bus.subscribe(
            &topic,
            &group,
            SubscribeOptions {
                start: StartPosition::Earliest,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("create the group"),
    );

    // The application: messages enqueued in its unit of work.
    let outbox = SqliteOutbox::new(store.clone());
    let ids: Vec<String> = {
        let messages: Vec<OutboxMessage> = (0..MESSAGES)
            .map(|n| {
                OutboxMessage::new(
                    topic.clone(),
                    Message::json("PaymentTaken", &serde_json::json!({ "n": n }))
                        .with_key("Account-1"),
                )
            })
            .collect();
        let ids = messages.iter().map(|m| m.message.id.clone()).collect();
        let inner = outbox.clone();
        outbox
            .unit_of_work(move |uow| inner.enqueue_in(uow, &messages))
            .await
            .expect("enqueue");
        ids
    };

    // 1. The relay publishes and is killed before it marks.
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel-relay-crash-child"))
        .arg(&db)
        .arg("crash")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the crash child");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(CHILD_DEADLINE)
        .expect("the child reports its confirmed publish");
    assert!(line.starts_with("published "), "{line}");
    child.kill().expect("SIGKILL the relay");
    let status = child.wait().expect("reap");
    assert!(!status.success(), "killed, not finished: {status:?}");

    for id in &ids {
        assert_eq!(bus_copies(&db, id), 1, "published once before the kill");
    }
    let pending = outbox.status().await.expect("status").pending;
    assert_eq!(pending, MESSAGES as u64, "the kill came before the mark");

    // 2. Restarted, the relay publishes them again: same ids.
    let out = tokio::task::spawn_blocking({
        let db = db.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_runnel-relay-crash-child"))
                .arg(&db)
                .arg("drain")
                .output()
                .expect("run the drain child")
        }
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "drain child: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("done published={MESSAGES}")),
        "{text}"
    );
    for id in &ids {
        assert_eq!(
            bus_copies(&db, id),
            2,
            "republished with the same message id"
        );
    }
    assert_eq!(outbox.status().await.expect("status").pending, 0);

    // 3. The consumer with the transactional inbox applies each message once.
    let calls = Arc::new(AtomicUsize::new(0));
    let handler_calls = Arc::clone(&calls);
    let consumer = Consumer::builder(Arc::new(bus.clone()), topic.clone(), group.clone())
        .inbox(Arc::new(SqliteInbox::new(store.clone())))
        .handler(move |ctx: HandlerContext| {
            let calls = Arc::clone(&handler_calls);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let n = ctx.json::<serde_json::Value>()?["n"].as_i64().unwrap_or(-1);
                let id = ctx.message().id.clone();
                ctx.scope::<SqliteInboxScope>().await?.write(move |uow| {
                    uow.connection().execute(
                        "INSERT INTO effects (message_id, n) VALUES (?1, ?2)",
                        params![id, n],
                    )?;
                    Ok(())
                })
            }
        })
        .start()
        .await
        .expect("start the consumer");
    let deadline = tokio::time::Instant::now() + CONSUME_DEADLINE;
    loop {
        let backlog = bus
            .group_backlog(&topic, &group)
            .await
            .expect("backlog")
            .expect("the group exists");
        if backlog.pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumer did not settle: {backlog:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let report = consumer
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown");
    assert_eq!(
        report.acked,
        2 * MESSAGES as u64,
        "both copies of each message acked"
    );
    let effects = effects(&db);
    let applied: Vec<&str> = effects.iter().map(|(id, _)| id.as_str()).collect();
    let expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(applied, expected, "each message applied once, in key order");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        MESSAGES,
        "duplicates never reach the handler"
    );
}
