//! The embedded bus beyond the transport conformance suite: durability across a restart,
//! time-driven behaviour on an injected clock, retention, other processes on the same
//! file, units of work, and an idle consumer that stays off the writer.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use runnel_core::bus::{
    Delivery, DeliveryStream, Publisher, StartPosition, SubscribeOptions, Subscriber,
};
use runnel_core::chrono::{DateTime, TimeDelta, Utc};
use runnel_core::{BusError, Clock, GroupName, Message, StoreError, TopicName};
use runnel_sqlite::bus::{BusOptions, GroupBacklog, SqliteBus};
use runnel_sqlite::SqliteStore;
use serde_json::json;

/// Longest wait for one expected delivery.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long a test watches for a delivery that must not happen.
const QUIET: Duration = Duration::from_millis(300);
/// Polling interval of buses on a manual clock: they learn that time moved only by looking.
const FAST_POLL: Duration = Duration::from_millis(20);

/// A clock that moves only when told to.
struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(ManualClock(Mutex::new(Utc::now())))
    }
    fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap();
        *now += TimeDelta::from_std(by).unwrap();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
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

fn bus_with_clock(store: SqliteStore, clock: Arc<ManualClock>) -> SqliteBus {
    SqliteBus::new(
        store,
        BusOptions::default().clock(clock).poll_interval(FAST_POLL),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn published_messages_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.db");
    let t = topic("orders");
    let g = group("billing");
    let sent: Vec<Message> = (0..20)
        .map(|n| numbered(n, &format!("Order-{}", n % 4)))
        .collect();
    let mut acked = HashSet::new();
    let mut in_flight = HashSet::new();
    {
        let store = SqliteStore::open(&path).unwrap();
        let bus = SqliteBus::new(store, BusOptions::default()).unwrap();
        let mut s = bus
            .subscribe(
                &t,
                &g,
                options(8, Duration::from_secs(1), StartPosition::Latest),
            )
            .await
            .unwrap();
        bus.publish(&t, sent.clone()).await.unwrap();
        // Acked before the restart: gone for good. Held unacked: comes back after it.
        for _ in 0..4 {
            let d = next(&mut s, "before the restart").await;
            acked.insert(d.message.id.clone());
            d.ack().await.unwrap();
        }
        let mut held = Vec::new();
        for _ in 0..3 {
            let d = next(&mut s, "held over the restart").await;
            in_flight.insert(d.message.id.clone());
            held.push(d);
        }
        // Everything goes: deliveries, stream, bus, store (and with it the writer thread).
        drop(held);
        drop(s);
        drop(bus);
    }

    let store = SqliteStore::open(&path).unwrap();
    let bus = SqliteBus::new(store, BusOptions::default()).unwrap();
    let mut s = bus
        .subscribe(
            &t,
            &g,
            options(32, Duration::from_secs(30), StartPosition::Latest),
        )
        .await
        .unwrap();
    let mut got: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut got_ids = HashSet::new();
    for i in 0..sent.len() - acked.len() {
        let d = next(&mut s, &format!("after the restart, message {i}")).await;
        if in_flight.contains(&d.message.id) {
            assert_eq!(
                d.attempt, 2,
                "a delivery held over the restart is a redelivery"
            );
        } else {
            assert_eq!(d.attempt, 1);
        }
        assert!(
            got_ids.insert(d.message.id.clone()),
            "delivered twice after the restart"
        );
        got.entry(d.message.key.clone().unwrap())
            .or_default()
            .push(number_of(&d.message));
        d.ack().await.unwrap();
    }
    let expected: HashSet<String> = sent
        .iter()
        .map(|m| m.id.clone())
        .filter(|id| !acked.contains(id))
        .collect();
    assert_eq!(
        got_ids, expected,
        "every unacknowledged message, nothing acknowledged"
    );
    for (key, ns) in &got {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{key} out of order: {ns:?}"
        );
    }
    assert_quiet(&mut s, "after the restart's backlog").await;

    // The log itself survived too: a new group starting at the earliest sees all of it.
    let mut early = bus
        .subscribe(
            &t,
            &group("audit"),
            options(32, Duration::from_secs(30), StartPosition::Earliest),
        )
        .await
        .unwrap();
    let mut audit = HashSet::new();
    for _ in 0..sent.len() {
        let d = next(&mut early, "the retained log after the restart").await;
        audit.insert(d.message.id.clone());
        d.ack().await.unwrap();
    }
    assert_eq!(audit.len(), sent.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nack_delay_and_ack_timeout_follow_the_injected_clock() {
    let clock = ManualClock::new();
    let bus = bus_with_clock(SqliteStore::open_temporary().unwrap(), clock.clone());
    let t = topic("clocked");
    let mut s = bus
        .subscribe(
            &t,
            &group("g"),
            options(4, Duration::from_secs(600), StartPosition::Latest),
        )
        .await
        .unwrap();
    bus.publish(&t, vec![numbered(1, "k")]).await.unwrap();

    // A one-hour nack delay: nothing while the clock stands still, at once when it moves.
    let d = next(&mut s, "first delivery").await;
    d.nack(Some(Duration::from_secs(3600))).await.unwrap();
    assert_quiet(&mut s, "before the delay has passed on the clock").await;
    clock.advance(Duration::from_secs(3599));
    assert_quiet(&mut s, "a second before the delay ends").await;
    clock.advance(Duration::from_secs(1));
    let d = next(&mut s, "after the delay").await;
    assert_eq!(d.attempt, 2);

    // A ten-minute ack timeout: the held delivery comes back once the clock passes it, and
    // the superseded delivery can no longer settle it.
    assert_quiet(&mut s, "while the lease runs").await;
    clock.advance(Duration::from_secs(601));
    let again = next(&mut s, "after the lease expired").await;
    assert_eq!(again.attempt, 3);
    assert!(matches!(d.ack().await, Err(BusError::DeliveryLost(_))));
    again.ack().await.unwrap();
    assert_quiet(&mut s, "after the ack").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn extend_follows_the_injected_clock() {
    let clock = ManualClock::new();
    let bus = bus_with_clock(SqliteStore::open_temporary().unwrap(), clock.clone());
    let t = topic("extended");
    let mut s = bus
        .subscribe(
            &t,
            &group("g"),
            options(4, Duration::from_secs(60), StartPosition::Latest),
        )
        .await
        .unwrap();
    bus.publish(&t, vec![numbered(1, "k")]).await.unwrap();
    let d = next(&mut s, "the delivery").await;
    d.extend(Duration::from_secs(600)).await.unwrap();
    clock.advance(Duration::from_secs(300));
    assert_quiet(&mut s, "past the ack timeout but inside the extension").await;
    clock.advance(Duration::from_secs(301));
    let again = next(&mut s, "past the extension").await;
    assert_eq!(again.attempt, 2);
    assert!(matches!(
        d.extend(Duration::from_secs(1)).await,
        Err(BusError::DeliveryLost(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_sweep_deletes_only_unneeded_messages_past_retention() {
    let clock = ManualClock::new();
    let store = SqliteStore::open_temporary().unwrap();
    let bus = SqliteBus::new(
        store,
        BusOptions::default()
            .clock(clock.clone())
            .poll_interval(FAST_POLL)
            .retention(Duration::from_secs(3600)),
    )
    .unwrap();
    let t = topic("retained");
    let g = group("g");
    let mut s = bus
        .subscribe(
            &t,
            &g,
            options(8, Duration::from_secs(600), StartPosition::Latest),
        )
        .await
        .unwrap();
    bus.publish(&t, (0..3).map(|n| numbered(n, &format!("k{n}"))).collect())
        .await
        .unwrap();
    for _ in 0..3 {
        let d = next(&mut s, "a message").await;
        if number_of(&d.message) != 2 {
            d.ack().await.unwrap();
        }
        // Message 2 is dropped unacknowledged: the group still needs it.
    }
    drop(s);
    assert_eq!(
        bus.sweep_retained().await.unwrap(),
        0,
        "nothing is past retention yet"
    );
    clock.advance(Duration::from_secs(7200));
    assert_eq!(
        bus.sweep_retained().await.unwrap(),
        2,
        "the two acknowledged messages go; the one the group still needs stays"
    );
    let backlog = bus.group_backlog(&t, &g).await.unwrap().unwrap();
    assert_eq!(backlog.pending, 1);
    let mut late = bus
        .subscribe(
            &t,
            &group("late"),
            options(8, Duration::from_secs(600), StartPosition::Earliest),
        )
        .await
        .unwrap();
    let d = next(&mut late, "the only retained message").await;
    assert_eq!(number_of(&d.message), 2);
    assert_quiet(&mut late, "the swept messages").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_process_on_the_same_file_is_noticed_by_polling() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let t = topic("shared");
    let g = group("g");
    // Two stores on one file: two writers, no shared wake-ups — as two processes.
    let consumer_side = SqliteBus::new(
        SqliteStore::open(&path).unwrap(),
        BusOptions::default().poll_interval(Duration::from_millis(50)),
    )
    .unwrap();
    let publisher_side =
        SqliteBus::new(SqliteStore::open(&path).unwrap(), BusOptions::default()).unwrap();
    let mut a = consumer_side
        .subscribe(&t, &g, SubscribeOptions::default())
        .await
        .unwrap();
    let mut b = publisher_side
        .subscribe(&t, &g, SubscribeOptions::default())
        .await
        .unwrap();
    let sent: Vec<Message> = (0..30)
        .map(|n| numbered(n, &format!("k{}", n % 5)))
        .collect();
    publisher_side.publish(&t, sent.clone()).await.unwrap();
    let mut seen = HashSet::new();
    while seen.len() < sent.len() {
        let d = tokio::time::timeout(DEADLINE, async {
            tokio::select! {
                Some(d) = a.next() => d.unwrap(),
                Some(d) = b.next() => d.unwrap(),
            }
        })
        .await
        .expect("every message within the deadline");
        assert!(
            seen.insert(d.message.id.clone()),
            "a message went to both processes"
        );
        d.ack().await.unwrap();
    }
    // The other process's publish reaches a consumer that only polls.
    publisher_side
        .publish(&t, vec![numbered(99, "solo")])
        .await
        .unwrap();
    drop(b);
    let d = next(&mut a, "a message published by the other process").await;
    assert_eq!(number_of(&d.message), 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_consumer_stays_off_the_writer() {
    let store = SqliteStore::open_temporary().unwrap();
    let bus = SqliteBus::new(
        store.clone(),
        BusOptions::default().poll_interval(Duration::from_millis(10)),
    )
    .unwrap();
    let mut s = bus
        .subscribe(&topic("idle"), &group("g"), SubscribeOptions::default())
        .await
        .unwrap();
    // Commits are counted before callers are answered (jobs only after), so this is exact.
    let before = store.writer_stats().commits;
    // Fifty polling intervals of a consumer waiting for its next delivery: it probes on a
    // read connection only.
    let waited = tokio::time::timeout(Duration::from_millis(500), s.next()).await;
    assert!(waited.is_err(), "nothing was published");
    assert_eq!(
        store.writer_stats().commits,
        before,
        "an idle consumer wrote"
    );
    // And it is still awake: a publish reaches it.
    bus.publish(&topic("idle"), vec![numbered(1, "k")])
        .await
        .unwrap();
    next(&mut s, "the first message after idling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_in_a_unit_of_work_commits_with_it_or_not_at_all() {
    let store = SqliteStore::open_temporary().unwrap();
    let bus = SqliteBus::new(store.clone(), BusOptions::default()).unwrap();
    let t = topic("outbox");
    let mut s = bus
        .subscribe(&t, &group("g"), SubscribeOptions::default())
        .await
        .unwrap();

    let (b, tt) = (bus.clone(), t.clone());
    let failed: Result<(), StoreError> = store
        .unit_of_work(move |uow| {
            b.publish_in(uow, &tt, vec![numbered(1, "k")])
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            Err(StoreError::InvalidArgument(
                "the business rule failed".into(),
            ))
        })
        .await;
    assert!(failed.is_err());

    let (b, tt) = (bus.clone(), t.clone());
    store
        .unit_of_work(move |uow| -> Result<(), BusError> {
            b.publish_in(uow, &tt, vec![numbered(2, "k")])
        })
        .await
        .unwrap();
    bus.wake_consumers(&t);
    let d = next(&mut s, "the committed unit's message").await;
    assert_eq!(
        number_of(&d.message),
        2,
        "the rolled-back unit published nothing"
    );
    d.ack().await.unwrap();
    assert_quiet(&mut s, "after the committed message").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_group_loses_its_backlog_and_its_leases() {
    let bus = SqliteBus::new(
        SqliteStore::open_temporary().unwrap(),
        BusOptions::default(),
    )
    .unwrap();
    let t = topic("deleted");
    let g = group("g");
    let mut s = bus
        .subscribe(&t, &g, SubscribeOptions::default())
        .await
        .unwrap();
    bus.publish(&t, (0..3).map(|n| numbered(n, "k")).collect())
        .await
        .unwrap();
    let d = next(&mut s, "the first message").await;
    assert_eq!(
        bus.group_backlog(&t, &g).await.unwrap(),
        Some(GroupBacklog {
            pending: 3,
            in_flight: 1
        })
    );
    assert!(bus.delete_group(&t, &g).await.unwrap());
    assert!(!bus.delete_group(&t, &g).await.unwrap());
    assert_eq!(bus.group_backlog(&t, &g).await.unwrap(), None);
    assert!(matches!(d.ack().await, Err(BusError::DeliveryLost(_))));
}

#[test]
fn invalid_bus_options_are_rejected() {
    let store = SqliteStore::open_temporary().unwrap();
    for bad in [
        BusOptions::default().max_payload_bytes(0),
        BusOptions::default().poll_interval(Duration::ZERO),
        BusOptions::default().poll_interval(Duration::from_secs(3600)),
        BusOptions::default().retention(Duration::from_secs(400 * 24 * 3600)),
    ] {
        assert!(matches!(
            SqliteBus::new(store.clone(), bad),
            Err(BusError::InvalidArgument(_))
        ));
    }
}
