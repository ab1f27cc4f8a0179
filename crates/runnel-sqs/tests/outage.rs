//! Broker outage: the publisher and the consumer reach moto through a TCP proxy that is cut
//! and restored while keyed messages flow. The publisher retries, the consumer's poller
//! reconnects, every message is handled exactly once in effect (the router's dedup layer on
//! SQLite absorbs redeliveries and republished duplicates) and per-key order holds.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runnel::consumer::{Consumer, HandlerContext};
use runnel_core::bus::{Publisher, StartPosition, SubscribeOptions};
use runnel_core::{GroupName, Message, TopicName};
use runnel_sqlite::{SqliteDedupStore, SqliteStore};
use runnel_testkit::fault::TcpProxy;

const KEYS: usize = 4;
const PER_KEY: usize = 15;
const CUT_AFTER: usize = 20;
const OUTAGE: Duration = Duration::from_secs(3);
const DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_mid_stream_loses_nothing_and_keeps_key_order() {
    let Some(endpoint) = common::endpoint("outage_mid_stream_loses_nothing_and_keeps_key_order")
    else {
        return;
    };
    let target = url::Url::parse(&endpoint).expect("endpoint URL");
    let addr = format!(
        "{}:{}",
        target.host_str().expect("endpoint host"),
        target.port_or_known_default().expect("endpoint port")
    );
    let proxy = Arc::new(TcpProxy::start(addr).await.expect("start the proxy"));
    let via_proxy = format!("http://{}", proxy.local_addr());
    // Separate clients for publishing and consuming, both through the proxy.
    let publisher = runnel_sqs::connect(&common::url(&via_proxy, "&wait=0s")).expect("publisher");
    let subscriber = runnel_sqs::connect(&common::url(&via_proxy, "&wait=0s")).expect("subscriber");

    let id = uuid::Uuid::new_v4().simple().to_string();
    let topic = TopicName::new(format!("outage.{id}")).expect("topic");
    let group = GroupName::new(format!("outage-{id}")).expect("group");
    let handled: Arc<Mutex<Vec<(String, usize)>>> = Arc::new(Mutex::new(Vec::new()));
    let h = handled.clone();
    let dedup = Arc::new(SqliteDedupStore::new(
        SqliteStore::open_temporary().expect("SQLite dedup store"),
    ));
    let consumer = Consumer::builder(subscriber.clone(), topic.clone(), group.clone())
        .handler(move |ctx: HandlerContext| {
            let handled = h.clone();
            async move {
                let m = ctx.message();
                let n = m.payload_json()?["n"].as_u64().unwrap_or(u64::MAX) as usize;
                let key = m.key.clone().unwrap_or_default();
                handled.lock().expect("log").push((key, n));
                Ok(())
            }
        })
        .dedup(dedup)
        // One message in flight at a time: a receive whose reply the cut swallows leaves
        // its messages in flight until their visibility timeout, and when several of one
        // group expire together moto 5.2.5 hands out the group's last one first (AWS
        // restarts the group from its first). One at a time keeps moto in order.
        .subscribe_options(SubscribeOptions {
            max_in_flight: 1,
            ack_timeout: Duration::from_secs(5),
            start: StartPosition::Latest,
            ..Default::default()
        })
        .start()
        .await
        .expect("start the consumer");

    let started = Instant::now();
    let mut publish_failures = 0u32;
    for n in 0..KEYS * PER_KEY {
        if n == CUT_AFTER {
            proxy.cut();
            let p = proxy.clone();
            tokio::spawn(async move {
                tokio::time::sleep(OUTAGE).await;
                p.restore();
            });
        }
        let m = Message::json("Tested", &serde_json::json!({ "n": n }))
            .with_key(format!("key-{}", n % KEYS));
        // The publisher retries until the broker takes it (same id: SNS FIFO dedups).
        loop {
            match publisher.publish(&topic, vec![m.clone()]).await {
                Ok(()) => break,
                Err(e) => {
                    assert!(e.is_transient(), "a non-transient publish error: {e}");
                    publish_failures += 1;
                    assert!(
                        started.elapsed() < DEADLINE,
                        "publishing never recovered: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    assert!(publish_failures > 0, "the outage never hit the publisher");
    assert!(proxy.is_up(), "the proxy was restored");

    loop {
        let done = {
            let log = handled.lock().expect("log");
            log.len() >= KEYS * PER_KEY
        };
        if done {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "only {} of {} messages handled",
            handled.lock().expect("log").len(),
            KEYS * PER_KEY
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything late would be a duplicate effect.
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown");

    let log = handled.lock().expect("log").clone();
    assert_eq!(
        log.len(),
        KEYS * PER_KEY,
        "a message was handled twice: {log:?}"
    );
    let mut per_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (k, n) in log {
        per_key.entry(k).or_default().push(n);
    }
    for k in 0..KEYS {
        let expected: Vec<usize> = (0..KEYS * PER_KEY).filter(|n| n % KEYS == k).collect();
        assert_eq!(
            per_key.get(&format!("key-{k}")),
            Some(&expected),
            "key-{k} order"
        );
    }
}
