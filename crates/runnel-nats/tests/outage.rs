//! Broker outage: a private `nats-server` (JetStream, file store in a temporary directory,
//! its own port — never the shared server) is killed with SIGKILL while keyed messages are
//! being published and consumed, then restarted on the same port with the same store.
//! The publisher retries (same message ids: the server deduplicates), the consumer
//! reconnects and takes its group back, every message is handled exactly once in effect
//! (through the SQLite inbox) and each key's messages are handled in publish order.

use std::collections::{BTreeMap, HashSet};
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use runnel_core::bus::{Publisher, StartPosition, SubscribeOptions, Subscriber};
use runnel_core::{GroupName, Message, TopicName};
use runnel_sqlite::{SqliteInbox, SqliteStore};
use tokio::process::{Child, Command};

const NATS_SERVER: &str = "/usr/sbin/nats-server";
const MESSAGES: usize = 300;
const KEYS: usize = 5;
/// The server is killed once this many messages were published.
const KILL_AFTER: usize = 100;
/// How long the broker stays down.
const OUTAGE: Duration = Duration::from_millis(1500);
const DEADLINE: Duration = Duration::from_secs(90);

fn skip_or_fail(why: &str) {
    if std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("RUNNEL_REQUIRE_SERVICES=1 but {why}");
    }
    eprintln!("SKIPPED: {why}");
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// A private nats-server, killed when dropped.
struct Server {
    child: Child,
}

impl Server {
    async fn start(port: u16, store: &Path) -> Server {
        let child = Command::new(NATS_SERVER)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start nats-server");
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nats-server did not listen on {port} within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Server { child }
    }

    async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL nats-server");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_mid_stream_loses_nothing_and_keeps_key_order() {
    if std::env::var("RUNNEL_TEST_NATS_URL").is_err() {
        return skip_or_fail("RUNNEL_TEST_NATS_URL is not set");
    }
    if !Path::new(NATS_SERVER).exists() {
        return skip_or_fail("no nats-server binary at /usr/sbin/nats-server");
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let store_dir = dir.path().join("jetstream");
    let port = free_port();
    let server = Server::start(port, &store_dir).await;
    let url = format!("nats://127.0.0.1:{port}?publish_timeout=60s&lease_ttl=5s");
    let publisher = runnel_nats::connect(&url)
        .await
        .expect("publisher connects");
    let subscriber = runnel_nats::connect(&url)
        .await
        .expect("subscriber connects");

    let topic = TopicName::new(format!("outage.{}", uuid_like())).expect("topic");
    let group = GroupName::new("outage-consumer").expect("group");
    let mut deliveries = subscriber
        .subscribe(
            &topic,
            &group,
            SubscribeOptions {
                max_in_flight: 32,
                ack_timeout: Duration::from_secs(2),
                start: StartPosition::Earliest,
                ..Default::default()
            },
        )
        .await
        .expect("subscribe");

    // Consumer: the SQLite inbox makes each message's effect happen once.
    let inbox = SqliteInbox::new(SqliteStore::open_temporary().expect("sqlite inbox"));
    let effects: Arc<Mutex<Vec<(String, usize, String)>>> = Arc::default();
    let deliveries_seen = Arc::new(AtomicUsize::new(0));
    let consumer = {
        let effects = effects.clone();
        let seen = deliveries_seen.clone();
        tokio::spawn(async move {
            while let Some(item) = deliveries.next().await {
                let d = item.expect("a delivery");
                seen.fetch_add(1, Ordering::SeqCst);
                let body = d.message.payload_json().expect("JSON payload");
                let n = body["n"].as_u64().expect("n") as usize;
                let key = d.message.key.clone().expect("key");
                let id = d.message.id.clone();
                let record = effects.clone();
                let effect_id = id.clone();
                inbox
                    .process("outage", &effect_id, move |_uow| {
                        record.lock().expect("effects").push((key, n, id));
                        Ok::<_, runnel_core::StoreError>(())
                    })
                    .await
                    .expect("inbox");
                // An ack lost in the outage only means a redelivery the inbox absorbs.
                let _ = d.ack().await;
                if effects.lock().expect("effects").len() == MESSAGES {
                    break;
                }
            }
        })
    };

    // Publisher: one message per call, in order; each call retries through the outage.
    let published = Arc::new(AtomicUsize::new(0));
    let producer = {
        let published = published.clone();
        let publisher = publisher.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for n in 0..MESSAGES {
                let m = Message::json("OutageTested", &serde_json::json!({ "n": n }))
                    .with_key(format!("key-{}", n % KEYS));
                publisher
                    .publish(&topic, vec![m])
                    .await
                    .unwrap_or_else(|e| panic!("publish {n} through the outage: {e}"));
                published.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    let started = Instant::now();
    while published.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(
            started.elapsed() < DEADLINE,
            "publishing stalled before the outage"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill().await;
    let at_kill = published.load(Ordering::SeqCst);
    tokio::time::sleep(OUTAGE).await;
    let server = Server::start(port, &store_dir).await;

    tokio::time::timeout(DEADLINE, producer)
        .await
        .expect("the publisher finished within the deadline")
        .expect("publisher task");
    tokio::time::timeout(DEADLINE, consumer)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "every message handled within the deadline: {} of {MESSAGES} effects",
                effects.lock().map(|e| e.len()).unwrap_or(0)
            )
        })
        .expect("consumer task");
    server.kill().await;

    let effects = effects.lock().expect("effects").clone();
    let ids: HashSet<&str> = effects.iter().map(|(_, _, id)| id.as_str()).collect();
    assert_eq!(ids.len(), MESSAGES, "each message has exactly one effect");
    let mut per_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (key, n, _) in &effects {
        per_key.entry(key.as_str()).or_default().push(*n);
    }
    for (key, ns) in &per_key {
        let expected: Vec<usize> = (0..MESSAGES)
            .filter(|n| format!("key-{}", n % KEYS) == *key)
            .collect();
        assert_eq!(ns, &expected, "{key} handled in publish order");
    }
    eprintln!(
        "outage after {at_kill} published; {} deliveries for {MESSAGES} messages",
        deliveries_seen.load(Ordering::SeqCst)
    );
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    )
}
