//! Broker outage: a private tansu broker (its own port, never the shared one) whose
//! advertised listener is a [`TcpProxy`], so every connection of every client — the
//! bootstrap one and the ones made from the broker metadata — runs through the proxy.
//! Mid-stream the proxy cuts every connection and refuses new ones; then it is restored.
//! (tansu's only storage engine in this build is in memory, so killing the broker would
//! lose the topic; cutting its connections is the outage the clients see either way.)
//!
//! Publishers retry, the consumer reconnects, every message is handled exactly once in
//! effect (the router's SQLite inbox), and each key's messages are applied in order.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runnel::consumer::{Consumer, HandlerContext};
use runnel_core::bus::{Publisher, StartPosition, SubscribeOptions};
use runnel_core::Message;
use runnel_kafka::{KafkaBus, KafkaOptions};
use runnel_testkit::fault::TcpProxy;
use serde_json::json;
use support::SqliteSide;

/// Messages published across the outage.
const MESSAGES: usize = 300;
/// Keys they are spread over.
const KEYS: usize = 6;
/// Connection attempts the proxy must refuse before the outage ends (the clients noticed
/// and kept trying).
const REFUSALS_BEFORE_RESTORE: u64 = 20;
/// Pause between a failed publish and its retry.
const PUBLISH_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The tansu binary: `RUNNEL_TANSU_BIN`, else where `scripts/services.sh` installs it.
fn tansu_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("RUNNEL_TANSU_BIN") {
        return Some(PathBuf::from(p));
    }
    let tools = std::env::var("RUNNEL_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cache/runnel-tools")))
        .ok()?;
    // The first is what `scripts/services.sh` builds today (keep in step with its
    // TANSU_HOME); the others are earlier builds.
    [
        "tansu-0.6.0-fix4/bin/tansu",
        "tansu-0.6.0-groupfix3/bin/tansu",
        "tansu-0.6.0-groupfix2/bin/tansu",
        "tansu-0.6.0-groupfix1/bin/tansu",
        "tansu-0.6.0/bin/tansu",
        "tansu/bin/tansu",
    ]
    .iter()
    .map(|p| tools.join(p))
    .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishing_and_consuming_survive_a_broker_outage() {
    let test = "publishing_and_consuming_survive_a_broker_outage";
    if support::brokers(test).is_none() {
        return;
    }
    let Some(tansu) = tansu_binary() else {
        runnel_testkit::harness::skip(&format!("{test} (no tansu binary; set RUNNEL_TANSU_BIN)"));
        return;
    };

    // The private broker behind the proxy.
    let broker_port = free_port();
    let proxy = TcpProxy::start(("127.0.0.1", broker_port))
        .await
        .expect("start the proxy");
    let advertised = proxy.local_addr();
    let mut broker = tokio::process::Command::new(&tansu)
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{broker_port}"),
            "--advertised-listener-url",
            &format!("tcp://{advertised}"),
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start a private tansu broker");
    support::wait_for("the private broker to listen", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", broker_port))
            .await
            .is_ok()
    })
    .await;

    let brokers = advertised.to_string();
    let publisher = Arc::new(KafkaBus::new(KafkaOptions::new(&brokers)).expect("publisher bus"));
    let consumer_bus = Arc::new(KafkaBus::new(KafkaOptions::new(&brokers)).expect("consumer bus"));
    let topic = support::fresh_topic("outage");
    let group = support::fresh_group("outage");
    let side = Arc::new(SqliteSide::new().await);

    let consumer = Consumer::builder(consumer_bus.clone(), topic.clone(), group.clone())
        .inbox(side.inbox.clone())
        .handler(|ctx: HandlerContext| async move { SqliteSide::write_effect(&ctx).await })
        .subscribe_options(SubscribeOptions {
            max_in_flight: 64,
            ack_timeout: Duration::from_secs(10),
            start: StartPosition::Earliest,
            ..Default::default()
        })
        .start()
        .await
        .expect("start the consumer");

    // The publisher: one message at a time, retried until the bus accepts it.
    let published = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent: Vec<Message> = (0..MESSAGES)
        .map(|n| Message::json("Counted", &json!({ "n": n })).with_key(format!("key-{}", n % KEYS)))
        .collect();
    let publishing = {
        let (publisher, topic, sent) = (publisher.clone(), topic.clone(), sent.clone());
        let (published, failures) = (published.clone(), failures.clone());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + support::DEADLINE;
            for m in sent {
                loop {
                    match publisher.publish(&topic, vec![m.clone()]).await {
                        Ok(()) => break,
                        Err(e) => {
                            assert!(e.is_transient(), "a publish failed for good: {e}");
                            assert!(
                                tokio::time::Instant::now() < deadline,
                                "publishing did not recover: {e}"
                            );
                            failures.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(PUBLISH_RETRY_DELAY).await;
                        }
                    }
                }
                published.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    // The outage, a third of the way in.
    support::wait_for("a third of the messages to be published", || async {
        published.load(Ordering::SeqCst) >= MESSAGES / 3
    })
    .await;
    let effects_before = side.effects().await.len();
    proxy.cut();
    support::wait_for(
        "the clients to try reconnecting during the outage",
        || async { proxy.connections_refused() >= REFUSALS_BEFORE_RESTORE },
    )
    .await;
    let published_during_outage = published.load(Ordering::SeqCst);
    proxy.restore();

    tokio::time::timeout(support::DEADLINE, publishing)
        .await
        .expect("publishing finished")
        .expect("the publisher task");
    support::wait_for("every message to be handled", || async {
        let ids: HashSet<String> = side
            .effects()
            .await
            .into_iter()
            .map(|e| e.message_id)
            .collect();
        ids.len() >= MESSAGES
    })
    .await;
    consumer
        .shutdown(Duration::from_secs(10))
        .await
        .expect("shut the consumer down");

    let effects = side.effects().await;
    let mut seen = HashSet::new();
    for e in &effects {
        assert!(
            seen.insert(e.message_id.clone()),
            "message {} applied twice",
            e.message_id
        );
    }
    let expected: HashSet<String> = sent.iter().map(|m| m.id.clone()).collect();
    assert_eq!(seen, expected, "every published message applied");
    let mut per_key: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for e in &effects {
        per_key.entry(e.key.as_str()).or_default().push(e.n);
    }
    for (key, ns) in &per_key {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, &sorted, "key {key} applied out of order");
    }
    eprintln!(
        "outage: {} effects before the cut, {published_during_outage} published when it ended, \
         {} failed publishes retried, {} connections refused",
        effects_before,
        failures.load(Ordering::SeqCst),
        proxy.connections_refused()
    );
    // Clients first (they leave the group and close cleanly), then the broker.
    drop(publisher);
    drop(consumer_bus);
    let _ = broker.kill().await;
}
