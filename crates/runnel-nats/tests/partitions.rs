//! Partitioned groups (`?partitions=N`) against the real server in
//! `RUNNEL_TEST_NATS_URL`: a group's partitions spread over its members, each message is
//! handled once, per-key order holds while members join and leave, and a crashed member's
//! partitions (and its unacked messages, before anything newer of their keys) are taken
//! over after the lease TTL. Each test has its own topic, group and lease bucket (its own
//! TTL), deleted at the end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use runnel::core::bus::{Publisher, SubscribeOptions, Subscriber};
use runnel::core::{GroupName, Message, TopicName};
use runnel_nats::NatsBus;

const DEADLINE: Duration = Duration::from_secs(60);
const PARTITIONS: u32 = 6;
/// Short enough that a crash is taken over quickly, long enough for a loaded machine.
const LEASE_TTL: &str = "3s";

fn nats_url() -> Option<String> {
    match std::env::var("RUNNEL_TEST_NATS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "RUNNEL_REQUIRE_SERVICES=1 but RUNNEL_TEST_NATS_URL is not set"
            );
            eprintln!("SKIPPED: RUNNEL_TEST_NATS_URL is not set");
            None
        }
    }
}

/// One test's names and URL (own lease bucket, so its own TTL).
struct Setup {
    url: String,
    bucket: String,
    topic: TopicName,
    group: GroupName,
}

impl Setup {
    fn new(what: &str) -> Option<Setup> {
        let base = nats_url()?;
        let suffix = runnel::core::uuid::Uuid::now_v7().simple().to_string();
        let bucket = format!("rt_part_{suffix}");
        let sep = if base.contains('?') { '&' } else { '?' };
        Some(Setup {
            url: format!(
                "{base}{sep}partitions={PARTITIONS}&lease_ttl={LEASE_TTL}&lease_bucket={bucket}"
            ),
            bucket,
            topic: TopicName::new(format!("{what}.{suffix}")).expect("topic"),
            group: GroupName::new(format!("{what}-{suffix}")).expect("group"),
        })
    }

    async fn bus(&self) -> Arc<NatsBus> {
        runnel_nats::connect(&self.url).await.expect("connect")
    }

    /// Holder (member id) of each partition lease that is held.
    async fn holders(&self, bus: &NatsBus) -> Vec<String> {
        let js = async_nats::jetstream::new(bus.client().clone());
        let Ok(store) = js.get_key_value(&self.bucket).await else {
            return Vec::new();
        };
        let stream = bus.stream_name(&self.topic);
        let mut out = Vec::new();
        for p in 0..PARTITIONS {
            let key = runnel_nats::lease_key(
                &stream,
                &runnel_nats::partition_consumer_name(&self.group, p),
            );
            if let Ok(Some(e)) = store.entry(key.as_str()).await {
                if e.operation == async_nats::jetstream::kv::Operation::Put {
                    out.push(String::from_utf8_lossy(&e.value).into_owned());
                }
            }
        }
        out
    }

    /// Waits until every partition is held and `members` distinct members hold them
    /// evenly (each at most ceil(partitions / members)).
    async fn wait_balanced(&self, bus: &NatsBus, members: usize) {
        let quota = (PARTITIONS as usize).div_ceil(members);
        let what = format!("{PARTITIONS} partitions balanced over {members} members");
        runnel_testkit::harness::wait_until(DEADLINE, &what, || async {
            let holders = self.holders(bus).await;
            let mut per: HashMap<String, usize> = HashMap::new();
            for h in &holders {
                *per.entry(h.clone()).or_default() += 1;
            }
            holders.len() == PARTITIONS as usize
                && per.len() == members
                && per.values().all(|n| *n <= quota)
        })
        .await;
    }

    async fn cleanup(&self, bus: &NatsBus) {
        let js = async_nats::jetstream::new(bus.client().clone());
        let _ = js.delete_stream(bus.stream_name(&self.topic)).await;
        let _ = js.delete_key_value(&self.bucket).await;
    }
}

fn keyed(key: &str, seq: usize) -> Message {
    Message::json("Seq", &serde_json::json!({ "key": key, "seq": seq })).with_key(key)
}

fn seq_of(m: &Message) -> (String, usize) {
    let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
    (
        v["key"].as_str().expect("key").to_string(),
        v["seq"].as_u64().expect("seq") as usize,
    )
}

/// What the members handled, in the order they started handling it.
#[derive(Default)]
struct Log {
    /// (member, key, seq, attempt)
    events: Vec<(usize, String, usize, u32)>,
}

type SharedLog = Arc<Mutex<Log>>;

/// Runs one member: handles (logs, waits `work`, acks) until `stop` is set, then drops
/// its subscription (a graceful leave).
async fn run_member(
    bus: Arc<NatsBus>,
    setup_topic: TopicName,
    group: GroupName,
    member: usize,
    log: SharedLog,
    work: Duration,
    stop: Arc<AtomicBool>,
) {
    let options = SubscribeOptions {
        max_in_flight: 4,
        ..SubscribeOptions::default()
    };
    let mut stream = bus
        .subscribe(&setup_topic, &group, options)
        .await
        .expect("subscribe");
    while !stop.load(Ordering::SeqCst) {
        let next = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
        let Ok(Some(delivery)) = next else { continue };
        let delivery = delivery.expect("delivery");
        let (key, seq) = seq_of(&delivery.message);
        log.lock()
            .expect("log")
            .events
            .push((member, key, seq, delivery.attempt));
        tokio::time::sleep(work).await;
        delivery.ack().await.expect("ack");
    }
}

/// Connects a member of its own and runs it ([`run_member`], 2 ms of work per message).
async fn start_member(
    url: String,
    topic: TopicName,
    group: GroupName,
    member: usize,
    log: SharedLog,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let bus = runnel_nats::connect(&url).await.expect("connect");
    tokio::spawn(run_member(
        bus,
        topic,
        group,
        member,
        log,
        Duration::from_millis(2),
        stop,
    ))
}

/// Every key's handled sequence numbers never go back (a redelivery of the latest one may
/// repeat it), and every (key, seq) published was handled.
fn assert_per_key_order(log: &Log, keys: usize, per_key: usize) {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (_, k, s, _) in &log.events {
        by_key.entry(k).or_default().push(*s);
    }
    assert_eq!(by_key.len(), keys, "every key handled");
    for (k, seqs) in &by_key {
        for w in seqs.windows(2) {
            assert!(w[1] >= w[0], "key {k} went back: {seqs:?}");
        }
        let distinct: HashSet<usize> = seqs.iter().copied().collect();
        assert_eq!(distinct.len(), per_key, "key {k}: {seqs:?}");
    }
}

fn handled(log: &SharedLog) -> usize {
    let log = log.lock().expect("log");
    log.events
        .iter()
        .map(|(_, k, s, _)| (k.clone(), *s))
        .collect::<HashSet<_>>()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_partitioned_group_share_its_messages_each_once() {
    let Some(setup) = Setup::new("part-share") else {
        return;
    };
    let publisher = setup.bus().await;
    publisher.ensure_stream(&setup.topic).await.expect("stream");
    let log: SharedLog = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for member in 0..3 {
        let bus = setup.bus().await;
        tasks.push(tokio::spawn(run_member(
            bus,
            setup.topic.clone(),
            setup.group.clone(),
            member,
            log.clone(),
            Duration::from_millis(1),
            stop.clone(),
        )));
    }
    setup.wait_balanced(&publisher, 3).await;

    let (keys, per_key) = (60, 10);
    let mut batch = Vec::new();
    for seq in 0..per_key {
        for k in 0..keys {
            batch.push(keyed(&format!("k{k}"), seq));
        }
    }
    publisher
        .publish(&setup.topic, batch)
        .await
        .expect("publish");
    runnel_testkit::harness::wait_until(DEADLINE, "every message handled", || async {
        handled(&log) == keys * per_key
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("member");
    }
    let log = std::mem::take(&mut *log.lock().expect("log"));
    assert_eq!(log.events.len(), keys * per_key, "each message once");
    let mut per_member = [0usize; 3];
    for (m, _, _, attempt) in &log.events {
        per_member[*m] += 1;
        assert_eq!(*attempt, 1);
    }
    assert!(per_member.iter().all(|n| *n > 0), "shares: {per_member:?}");
    assert_per_key_order(&log, keys, per_key);
    setup.cleanup(&publisher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_while_members_join_and_leave() {
    let Some(setup) = Setup::new("part-order") else {
        return;
    };
    let publisher = setup.bus().await;
    publisher.ensure_stream(&setup.topic).await.expect("stream");
    let log: SharedLog = Arc::default();
    let spawn = |member: usize, stop: Arc<AtomicBool>| {
        start_member(
            setup.url.clone(),
            setup.topic.clone(),
            setup.group.clone(),
            member,
            log.clone(),
            stop,
        )
    };
    let stop_a = Arc::new(AtomicBool::new(false));
    let stop_b = Arc::new(AtomicBool::new(false));
    let a = spawn(0, stop_a.clone()).await;
    setup.wait_balanced(&publisher, 1).await;

    let (keys, per_key) = (24, 60);
    let total = keys * per_key;
    let publishing = {
        let (publisher, topic) = (publisher.clone(), setup.topic.clone());
        tokio::spawn(async move {
            for seq in 0..per_key {
                let batch = (0..keys).map(|k| keyed(&format!("k{k}"), seq)).collect();
                publisher.publish(&topic, batch).await.expect("publish");
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    runnel_testkit::harness::wait_until(DEADLINE, "a quarter handled by A", || async {
        handled(&log) >= total / 4
    })
    .await;
    let b = spawn(1, stop_b.clone()).await;
    setup.wait_balanced(&publisher, 2).await;
    let at_join = handled(&log);
    runnel_testkit::harness::wait_until(DEADLINE, "more handled after B joined", || async {
        handled(&log) >= at_join + total / 8
    })
    .await;
    // A leaves mid-stream: B takes every partition.
    stop_a.store(true, Ordering::SeqCst);
    a.await.expect("member A");
    publishing.await.expect("publisher");
    runnel_testkit::harness::wait_until(DEADLINE, "every message handled", || async {
        handled(&log) == total
    })
    .await;
    stop_b.store(true, Ordering::SeqCst);
    b.await.expect("member B");
    let log = std::mem::take(&mut *log.lock().expect("log"));
    let by_b = log.events.iter().filter(|(m, ..)| *m == 1).count();
    assert!(by_b > 0, "B got work after joining");
    assert_per_key_order(&log, keys, per_key);
    setup.cleanup(&publisher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_members_partitions_are_taken_over_and_its_messages_redelivered_first() {
    let Some(setup) = Setup::new("part-crash") else {
        return;
    };
    let publisher = setup.bus().await;
    publisher.ensure_stream(&setup.topic).await.expect("stream");
    let log: SharedLog = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let ack_timeout = Duration::from_secs(3);

    // The member that crashes runs on its own runtime (its connection too): shutting the
    // runtime down drops everything without releasing a lease or settling a delivery.
    let crashed_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let held: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    {
        let (url, topic, group, held) = (
            setup.url.clone(),
            setup.topic.clone(),
            setup.group.clone(),
            held.clone(),
        );
        crashed_runtime.spawn(async move {
            let bus = runnel_nats::connect(&url).await.expect("connect");
            let options = SubscribeOptions {
                max_in_flight: 64,
                ack_timeout,
                ..SubscribeOptions::default()
            };
            let mut stream = bus
                .subscribe(&topic, &group, options)
                .await
                .expect("subscribe");
            let mut kept = Vec::new();
            while let Some(Ok(d)) = stream.next().await {
                held.lock().expect("held").push(seq_of(&d.message));
                kept.push(d); // never settled
            }
        });
    }
    setup.wait_balanced(&publisher, 1).await;
    let survivor = {
        let bus = setup.bus().await;
        let (topic, group, log, stop) = (
            setup.topic.clone(),
            setup.group.clone(),
            log.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let options = SubscribeOptions {
                max_in_flight: 4,
                ack_timeout,
                ..SubscribeOptions::default()
            };
            let mut stream = bus
                .subscribe(&topic, &group, options)
                .await
                .expect("subscribe");
            while !stop.load(Ordering::SeqCst) {
                let next = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
                let Ok(Some(delivery)) = next else { continue };
                let delivery = delivery.expect("delivery");
                let (key, seq) = seq_of(&delivery.message);
                log.lock()
                    .expect("log")
                    .events
                    .push((1, key, seq, delivery.attempt));
                delivery.ack().await.expect("ack");
            }
        })
    };
    setup.wait_balanced(&publisher, 2).await;

    let (keys, per_key) = (24, 5);
    let first: Vec<Message> = (0..keys).map(|k| keyed(&format!("k{k}"), 0)).collect();
    publisher
        .publish(&setup.topic, first)
        .await
        .expect("publish");
    runnel_testkit::harness::wait_until(DEADLINE, "both members got messages", || async {
        let by_crashed = held.lock().expect("held").len();
        by_crashed > 0 && by_crashed + handled(&log) == keys
    })
    .await;
    crashed_runtime.shutdown_background();
    let lost: Vec<(String, usize)> = held.lock().expect("held").clone();
    // Newer messages of every key, the crashed member's keys included.
    for seq in 1..per_key {
        let batch = (0..keys).map(|k| keyed(&format!("k{k}"), seq)).collect();
        publisher
            .publish(&setup.topic, batch)
            .await
            .expect("publish");
    }
    runnel_testkit::harness::wait_until(
        DEADLINE,
        "every message handled by the survivor",
        || async { handled(&log) == keys * per_key },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    survivor.await.expect("survivor");
    let log = std::mem::take(&mut *log.lock().expect("log"));
    assert_per_key_order(&log, keys, per_key);
    for (key, seq) in &lost {
        let first_of_key = log
            .events
            .iter()
            .find(|(_, k, ..)| k == key)
            .expect("the key was handled");
        assert_eq!(
            (first_of_key.2, first_of_key.3 >= 2),
            (*seq, true),
            "key {key}: the crashed member's message comes first, as a redelivery"
        );
    }
    setup.cleanup(&publisher).await;
}
