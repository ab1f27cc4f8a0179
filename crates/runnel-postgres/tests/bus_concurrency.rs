//! The PostgreSQL bus under concurrent publishers: publishes of one process share
//! transactions and publishes of different keys commit in parallel, yet every group gets
//! each message exactly once, one delivery per key at a time, in each publisher's order —
//! also a group created while 64 publishers run. Each test has its own schema.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use runnel_core::bus::{Publisher, StartPosition, SubscribeOptions, Subscriber};
use runnel_core::{GroupName, Message, TopicName};
use runnel_postgres::bus::{BusOptions, PostgresBus};
use runnel_postgres::{PostgresOptions, PostgresStore};
use serde_json::json;

/// Longest wait for a whole run to be consumed.
const LOAD_DEADLINE: Duration = Duration::from_secs(120);
/// How long a test watches for duplicates once everything was consumed.
const QUIET: Duration = Duration::from_millis(300);
/// Connections per store (the default pool is 16; tests run in parallel on one server).
const POOL_SIZE: u32 = 8;

async fn process(url: &str, schema: &str) -> PostgresBus {
    let store = PostgresStore::connect_with(
        PostgresOptions::new(url)
            .schema(schema)
            .pool_size(POOL_SIZE),
    )
    .await
    .expect("connect to the test PostgreSQL");
    PostgresBus::new(store, BusOptions::default())
        .await
        .expect("start the bus")
}

fn numbered(n: usize, key: &str) -> Message {
    Message::json("Numbered", &json!({ "n": n })).with_key(key)
}

fn number_of(m: &Message) -> usize {
    m.payload_json().unwrap()["n"].as_u64().unwrap() as usize
}

fn subscribe_options(start: StartPosition) -> SubscribeOptions {
    SubscribeOptions {
        max_in_flight: 16,
        ack_timeout: Duration::from_secs(60),
        start,
        ..Default::default()
    }
}

/// What one group's consumers handled: (key, n) in handling order, and the keys in flight.
#[derive(Default)]
struct Handled {
    order: Mutex<Vec<(String, usize)>>,
    in_flight: Mutex<HashSet<String>>,
    overlaps: Mutex<Vec<String>>,
}

/// Consumes `group` in its own process, acking each delivery from a task of its own (so
/// several are in flight); records a second delivery of a key whose earlier one is not
/// acknowledged yet.
async fn consume(
    url: &str,
    schema: &str,
    topic: &TopicName,
    group: &str,
    start: StartPosition,
    handled: Arc<Handled>,
) -> (PostgresBus, tokio::task::JoinHandle<()>) {
    let bus = process(url, schema).await;
    let mut s = bus
        .subscribe(
            topic,
            &GroupName::new(group).unwrap(),
            subscribe_options(start),
        )
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        while let Some(d) = s.next().await {
            let d = d.unwrap();
            let key = d.message.key.clone().unwrap();
            if !handled.in_flight.lock().unwrap().insert(key.clone()) {
                handled.overlaps.lock().unwrap().push(key.clone());
            }
            handled
                .order
                .lock()
                .unwrap()
                .push((key.clone(), number_of(&d.message)));
            let handled = handled.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                handled.in_flight.lock().unwrap().remove(&key);
                d.ack().await.unwrap();
            });
        }
    });
    (bus, task)
}

/// Waits until `group` has nothing left to consume.
async fn drained(bus: &PostgresBus, topic: &TopicName, group: &str) {
    let group = GroupName::new(group).unwrap();
    runnel_testkit::harness::wait_until(LOAD_DEADLINE, "the group to drain", || async {
        let backlog = bus.group_backlog(topic, &group).await.unwrap().unwrap();
        backlog.pending == 0
    })
    .await;
}

/// Checks exactly-once, one delivery per key at a time, and each publisher's order within
/// a key (publisher = n / per_publisher).
fn check(group: &str, handled: &Handled, expected: &HashSet<usize>, per_publisher: usize) {
    let order = handled.order.lock().unwrap().clone();
    let seen: HashSet<usize> = order.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        seen.len(),
        order.len(),
        "{group}: a message was handled twice"
    );
    assert_eq!(
        &seen, expected,
        "{group}: not every message, or an unexpected one"
    );
    let overlaps = handled.overlaps.lock().unwrap().clone();
    assert!(
        overlaps.is_empty(),
        "{group}: a key was delivered again before its earlier message was acked: {overlaps:?}"
    );
    let mut per_key_publisher: BTreeMap<(String, usize), Vec<usize>> = BTreeMap::new();
    for (key, n) in &order {
        per_key_publisher
            .entry((key.clone(), n / per_publisher))
            .or_default()
            .push(*n);
    }
    for ((key, p), ns) in &per_key_publisher {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{group}: {key} from publisher {p} handled out of order: {ns:?}"
        );
    }
}

/// 64 publishers on two processes share four keys; two groups, each consumed by two
/// processes, get every message once, one per key at a time, in each publisher's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_on_shared_keys_keep_key_order_for_every_group() {
    const PUBLISHERS: usize = 64;
    const PER_PUBLISHER: usize = 12;
    const KEYS: usize = 4;
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let t = TopicName::new("orders").unwrap();
    let groups = ["billing", "shipping"];
    let mut consumers = Vec::new();
    let mut handled = HashMap::new();
    for g in groups {
        let h = Arc::new(Handled::default());
        handled.insert(g, h.clone());
        for _ in 0..2 {
            consumers.push(consume(&url, &schema, &t, g, StartPosition::Latest, h.clone()).await);
        }
    }
    let buses = [process(&url, &schema).await, process(&url, &schema).await];
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (bus, t) = (buses[p % 2].clone(), t.clone());
        publishers.push(tokio::spawn(async move {
            for i in 0..PER_PUBLISHER {
                let key = format!("key-{}", (p + i) % KEYS);
                bus.publish(&t, vec![numbered(p * PER_PUBLISHER + i, &key)])
                    .await
                    .unwrap();
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    for g in groups {
        drained(&buses[0], &t, g).await;
    }
    // Anything more would be a duplicate.
    tokio::time::sleep(QUIET).await;
    for (_, task) in &consumers {
        task.abort();
    }
    let all: HashSet<usize> = (0..PUBLISHERS * PER_PUBLISHER).collect();
    for g in groups {
        check(g, &handled[g], &all, PER_PUBLISHER);
    }
}

/// Groups created while 64 publishers run: one from the earliest message gets every
/// message exactly once (each is queued for it either by its publish or by the group's
/// creation, never both, never neither); one from the latest gets every message published
/// after it was created, none published before it was asked for, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_created_while_64_publishers_run_gets_each_message_exactly_once() {
    const PUBLISHERS: usize = 64;
    /// Each publisher publishes at least this many, and at least two after the groups exist.
    const PER_PUBLISHER_MIN: usize = 12;
    /// Message numbers: publisher p's i-th is p * STRIDE + i.
    const STRIDE: usize = 1_000_000;
    const KEYS: usize = 32;
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let t = TopicName::new("orders").unwrap();
    let buses = [process(&url, &schema).await, process(&url, &schema).await];
    // Publish order recorded against the subscription: a message whose call returned
    // before the subscription started, or whose call began after it returned.
    let subscribing = Arc::new(AtomicBool::new(false));
    let subscribed = Arc::new(AtomicBool::new(false));
    let before: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let after: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let all: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let published = Arc::new(AtomicUsize::new(0));
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (bus, t) = (buses[p % 2].clone(), t.clone());
        let (subscribing, subscribed) = (subscribing.clone(), subscribed.clone());
        let (before, after, all) = (before.clone(), after.clone(), all.clone());
        let published = published.clone();
        publishers.push(tokio::spawn(async move {
            let mut published_after = 0;
            for i in 0..STRIDE {
                if i >= PER_PUBLISHER_MIN && published_after >= 2 {
                    break;
                }
                let n = p * STRIDE + i;
                let began_after = subscribed.load(Ordering::SeqCst);
                bus.publish(&t, vec![numbered(n, &format!("key-{}", n % KEYS))])
                    .await
                    .unwrap();
                all.lock().unwrap().insert(n);
                if began_after {
                    after.lock().unwrap().insert(n);
                    published_after += 1;
                } else if !subscribing.load(Ordering::SeqCst) {
                    before.lock().unwrap().insert(n);
                }
                published.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Subscribe once about a third has been published.
    runnel_testkit::harness::wait_until(LOAD_DEADLINE, "a third published", || {
        let published = published.clone();
        async move { published.load(Ordering::SeqCst) >= PUBLISHERS * PER_PUBLISHER_MIN / 3 }
    })
    .await;
    subscribing.store(true, Ordering::SeqCst);
    let earliest = Arc::new(Handled::default());
    let latest = Arc::new(Handled::default());
    let (e_bus, e_task) = consume(
        &url,
        &schema,
        &t,
        "earliest",
        StartPosition::Earliest,
        earliest.clone(),
    )
    .await;
    let (l_bus, l_task) = consume(
        &url,
        &schema,
        &t,
        "latest",
        StartPosition::Latest,
        latest.clone(),
    )
    .await;
    subscribed.store(true, Ordering::SeqCst);
    for p in publishers {
        p.await.unwrap();
    }
    drained(&e_bus, &t, "earliest").await;
    drained(&l_bus, &t, "latest").await;
    tokio::time::sleep(QUIET).await;
    e_task.abort();
    l_task.abort();

    let all = all.lock().unwrap().clone();
    check("earliest", &earliest, &all, STRIDE);
    let got: HashSet<usize> = latest.order.lock().unwrap().iter().map(|h| h.1).collect();
    let after = after.lock().unwrap().clone();
    let before = before.lock().unwrap().clone();
    assert!(!after.is_empty() && !before.is_empty());
    assert!(
        after.is_subset(&got),
        "latest: missed {:?}",
        after.difference(&got).collect::<Vec<_>>()
    );
    assert!(
        got.is_disjoint(&before),
        "latest: got messages published before it was asked for"
    );
    check("latest", &latest, &got, STRIDE);
}
