//! The PostgreSQL bus beyond the transport conformance suite: several processes sharing a
//! group under concurrent publishing, wake-ups across processes by NOTIFY, durability
//! across reconnects, the injected clock and retention. Each test has its own schema.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use runnel_core::bus::{
    Delivery, DeliveryStream, Publisher, StartPosition, SubscribeOptions, Subscriber,
};
use runnel_core::chrono::{DateTime, TimeDelta, Utc};
use runnel_core::{BusError, Clock, GroupName, Message, TopicName};
use runnel_postgres::bus::{BusOptions, PostgresBus, POLL_INTERVAL_MAX};
use runnel_postgres::{PostgresOptions, PostgresStore};
use serde_json::json;

/// Longest wait for one expected delivery.
const DEADLINE: Duration = Duration::from_secs(15);
/// Longest wait for the whole shared-group run.
const LOAD_DEADLINE: Duration = Duration::from_secs(120);
/// How long a test watches for a delivery that must not happen.
const QUIET: Duration = Duration::from_millis(300);
/// Connections per store; tests run in parallel against one server.
const POOL_SIZE: u32 = 4;

/// A clock that moves only when told to.
struct ManualClock(Mutex<DateTime<Utc>>);

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

impl ManualClock {
    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += TimeDelta::from_std(by).unwrap();
    }
}

/// A bus on its own store (own pool, own LISTEN connection): one "process".
async fn process(url: &str, schema: &str, options: BusOptions) -> PostgresBus {
    let store = PostgresStore::connect_with(
        PostgresOptions::new(url)
            .schema(schema)
            .pool_size(POOL_SIZE),
    )
    .await
    .expect("connect to the test PostgreSQL");
    PostgresBus::new(store, options)
        .await
        .expect("start the bus")
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap()
}

fn options(max_in_flight: usize, ack_timeout: Duration, start: StartPosition) -> SubscribeOptions {
    SubscribeOptions {
        max_in_flight,
        ack_timeout,
        start,
        ..Default::default()
    }
}

fn numbered(n: usize, key: &str) -> Message {
    Message::json("Numbered", &json!({ "n": n })).with_key(key)
}

fn number_of(m: &Message) -> usize {
    m.payload_json().unwrap()["n"].as_u64().unwrap() as usize
}

async fn next(s: &mut DeliveryStream, what: &str) -> Delivery {
    match tokio::time::timeout(DEADLINE, s.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("{what}: {e}"),
        Ok(None) => panic!("{what}: the subscription ended"),
        Err(_) => panic!("{what}: nothing within {DEADLINE:?}"),
    }
}

async fn assert_quiet(s: &mut DeliveryStream, what: &str) {
    if let Ok(item) = tokio::time::timeout(QUIET, s.next()).await {
        panic!(
            "{what}: expected nothing, got {:?}",
            item.map(|r| r.map(|d| d.message.id))
        );
    }
}

/// Three processes consume one group while two others publish to the same keys
/// concurrently (so acks of a key race with publishes of it): every message is handled
/// exactly once, and each key's messages in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_sharing_a_group_handle_each_message_once_in_key_order() {
    const CONSUMERS: usize = 3;
    const PUBLISHERS: usize = 2;
    const KEYS: usize = 4;
    const PER_PUBLISHER: usize = 150;
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let t = topic("orders");
    let g = group("fulfilment");

    // (key, n) in the order handlers ran, recorded before each ack.
    let handled: Arc<Mutex<Vec<(String, usize, usize)>>> = Arc::default();
    let mut consumers = Vec::new();
    for c in 0..CONSUMERS {
        let bus = process(&url, &schema, BusOptions::default()).await;
        let mut s = bus
            .subscribe(
                &t,
                &g,
                options(8, Duration::from_secs(30), StartPosition::Latest),
            )
            .await
            .unwrap();
        let handled = handled.clone();
        consumers.push(tokio::spawn(async move {
            let _bus = bus;
            while let Some(d) = s.next().await {
                let d = d.unwrap();
                let key = d.message.key.clone().unwrap();
                handled
                    .lock()
                    .unwrap()
                    .push((key, number_of(&d.message), c));
                tokio::task::yield_now().await;
                d.ack().await.unwrap();
            }
        }));
    }
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let bus = process(&url, &schema, BusOptions::default()).await;
        let t = t.clone();
        publishers.push(tokio::spawn(async move {
            let mut n = 0;
            while n < PER_PUBLISHER {
                // Batches of 1..=5, keys shared by both publishers.
                let batch: Vec<Message> = (n..(n + 1 + n % 5).min(PER_PUBLISHER))
                    .map(|i| numbered(p * PER_PUBLISHER + i, &format!("key-{}", i % KEYS)))
                    .collect();
                n += batch.len();
                bus.publish(&t, batch).await.unwrap();
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let total = PUBLISHERS * PER_PUBLISHER;
    tokio::time::timeout(LOAD_DEADLINE, async {
        while handled.lock().unwrap().len() < total {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every message handled within the deadline");
    // Anything more would be a duplicate.
    tokio::time::sleep(QUIET).await;
    for c in consumers {
        c.abort();
    }

    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled.len(), total, "a message was handled twice");
    let distinct: HashSet<usize> = handled.iter().map(|(_, n, _)| *n).collect();
    assert_eq!(distinct.len(), total, "a message was handled twice");
    // Within a key, each publisher's messages keep their order (the two publishers
    // interleave in commit order).
    let mut per_key_publisher: BTreeMap<(String, usize), Vec<usize>> = BTreeMap::new();
    for (key, n, _) in &handled {
        per_key_publisher
            .entry((key.clone(), n / PER_PUBLISHER))
            .or_default()
            .push(*n);
    }
    for ((key, p), ns) in &per_key_publisher {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{key} from publisher {p} handled out of order: {ns:?}"
        );
    }
    let by_consumer: HashMap<usize, usize> = handled.iter().fold(HashMap::new(), |mut m, h| {
        *m.entry(h.2).or_default() += 1;
        m
    });
    assert!(
        by_consumer.len() > 1,
        "the group's work was shared by the processes: {by_consumer:?}"
    );
}

/// A consumer that only polls once a minute still gets another process's message at once:
/// the publish's NOTIFY wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_wakes_consumers_in_other_processes() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let t = topic("notified");
    let consumer = process(
        &url,
        &schema,
        BusOptions::default().poll_interval(POLL_INTERVAL_MAX),
    )
    .await;
    let publisher = process(&url, &schema, BusOptions::default()).await;
    let mut s = consumer
        .subscribe(&t, &group("g"), SubscribeOptions::default())
        .await
        .unwrap();
    // Let the consumer go idle first (its first look finds nothing).
    assert_quiet(&mut s, "before anything is published").await;
    for n in 0..3 {
        let started = std::time::Instant::now();
        publisher.publish(&t, vec![numbered(n, "k")]).await.unwrap();
        let d = next(&mut s, "the other process's message").await;
        assert_eq!(number_of(&d.message), n);
        assert!(
            started.elapsed() < POLL_INTERVAL_MAX / 4,
            "woken by NOTIFY, not by polling ({:?})",
            started.elapsed()
        );
        d.ack().await.unwrap();
    }
}

/// Messages (and unacknowledged deliveries) outlive every process that touched them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn published_messages_survive_every_process_going_away() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let t = topic("durable");
    let g = group("g");
    let sent: Vec<Message> = (0..10)
        .map(|n| numbered(n, &format!("k{}", n % 3)))
        .collect();
    let mut acked = HashSet::new();
    {
        let bus = process(&url, &schema, BusOptions::default()).await;
        let mut s = bus
            .subscribe(
                &t,
                &g,
                options(8, Duration::from_secs(1), StartPosition::Latest),
            )
            .await
            .unwrap();
        bus.publish(&t, sent.clone()).await.unwrap();
        for _ in 0..3 {
            let d = next(&mut s, "before going away").await;
            acked.insert(d.message.id.clone());
            d.ack().await.unwrap();
        }
        let _held = next(&mut s, "held while going away").await;
    }
    let bus = process(&url, &schema, BusOptions::default()).await;
    let mut s = bus
        .subscribe(&t, &g, SubscribeOptions::default())
        .await
        .unwrap();
    let mut got = HashSet::new();
    for _ in 0..sent.len() - acked.len() {
        let d = next(&mut s, "after a new process started").await;
        assert!(got.insert(d.message.id.clone()));
        d.ack().await.unwrap();
    }
    let expected: HashSet<String> = sent
        .iter()
        .map(|m| m.id.clone())
        .filter(|id| !acked.contains(id))
        .collect();
    assert_eq!(got, expected);
    assert_quiet(&mut s, "after the backlog").await;
}

/// Delays, leases and retention are measured on the injected clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delays_leases_and_retention_follow_the_injected_clock() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let clock = Arc::new(ManualClock(Mutex::new(Utc::now())));
    let bus = process(
        &url,
        &schema,
        BusOptions::default()
            .clock(clock.clone())
            .poll_interval(Duration::from_millis(20))
            .retention(Duration::from_secs(3600)),
    )
    .await;
    let t = topic("clocked");
    let g = group("g");
    let mut s = bus
        .subscribe(
            &t,
            &g,
            options(4, Duration::from_secs(600), StartPosition::Latest),
        )
        .await
        .unwrap();
    bus.publish(&t, vec![numbered(1, "k"), numbered(2, "other")])
        .await
        .unwrap();
    let mut first = None;
    for _ in 0..2 {
        let d = next(&mut s, "first deliveries").await;
        if number_of(&d.message) == 1 {
            first = Some(d);
        } else {
            d.ack().await.unwrap();
        }
    }
    let d = first.unwrap();
    d.nack(Some(Duration::from_secs(3600))).await.unwrap();
    assert_quiet(&mut s, "before the delay has passed on the clock").await;
    clock.advance(Duration::from_secs(3601));
    let d = next(&mut s, "after the delay").await;
    assert_eq!(d.attempt, 2);
    assert_quiet(&mut s, "while the lease runs").await;
    clock.advance(Duration::from_secs(601));
    let again = next(&mut s, "after the lease expired").await;
    assert_eq!(again.attempt, 3);
    assert!(matches!(d.ack().await, Err(BusError::DeliveryLost(_))));
    again.ack().await.unwrap();

    // Both messages are acknowledged; the clock is past their retention.
    assert_eq!(bus.sweep_retained().await.unwrap(), 2);
    let backlog = bus.group_backlog(&t, &g).await.unwrap().unwrap();
    assert_eq!((backlog.pending, backlog.in_flight), (0, 0));
    let mut late = bus
        .subscribe(
            &t,
            &group("late"),
            options(4, Duration::from_secs(600), StartPosition::Earliest),
        )
        .await
        .unwrap();
    assert_quiet(&mut late, "nothing is retained any more").await;
    assert!(bus.delete_group(&t, &group("late")).await.unwrap());
    assert_eq!(bus.group_backlog(&t, &group("late")).await.unwrap(), None);
}
