//! The outbox relay end to end on the real stores and their embedded buses: per-key order,
//! a broker outage, three relays sharing one PostgreSQL, a dead relay's keys taken over, a
//! failed follower recorded before its head is marked.

mod outbox_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use runnel::core::bus::{Publisher, Subscriber};
use runnel::core::outbox::{FailureAction, OutboxMessage, OutboxRecord, OutboxStatus, OutboxStore};
use runnel::core::{BusError, Message, StoreError, TopicName};
use runnel::outbox::{Relay, RelayOptions};
use runnel::postgres::bus::{BusOptions as PgBusOptions, PostgresBus};
use runnel::postgres::PostgresOutbox;
use runnel::sqlite::bus::{BusOptions, SqliteBus};
use runnel::sqlite::{SqliteOutbox, SqliteStore};

use outbox_support::{
    collect, drop_schema, keyed_messages, postgres_store, wait_for, FlakyPublisher,
};

/// Longest wait for every message to arrive.
const ARRIVAL_DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(20);

fn topic() -> TopicName {
    TopicName::new("counted").unwrap()
}

fn relay_options(name: &str) -> RelayOptions {
    RelayOptions::default()
        .name(name)
        .poll_interval(Duration::from_millis(50))
        .backoff(runnel::RetryPolicy {
            max_attempts: u32::MAX,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        })
}

/// Enqueues `messages` in chunks of `chunk` per transaction on SQLite.
async fn enqueue_sqlite(outbox: &SqliteOutbox, messages: Vec<OutboxMessage>, chunk: usize) {
    let mut messages = messages;
    while !messages.is_empty() {
        let rest = messages.split_off(chunk.min(messages.len()));
        let batch = std::mem::replace(&mut messages, rest);
        let inner = outbox.clone();
        outbox
            .unit_of_work(move |uow| inner.enqueue_in(uow, &batch))
            .await
            .expect("enqueue");
    }
}

async fn enqueue_postgres(outbox: &PostgresOutbox, messages: Vec<OutboxMessage>, chunk: usize) {
    for batch in messages.chunks(chunk) {
        let mut tx = outbox.store().pool().begin().await.expect("begin");
        outbox.enqueue_in(&mut tx, batch).await.expect("enqueue");
        tx.commit().await.expect("commit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_publishes_every_message_in_key_order_on_sqlite() {
    let store = SqliteStore::open_temporary().expect("store");
    let bus = SqliteBus::new(store.clone(), BusOptions::default().poll_interval(POLL)).unwrap();
    let (seen, consumer) = collect(Arc::new(bus.clone()), &topic(), "g").await;
    let outbox = SqliteOutbox::new(store.clone());
    let relay = Relay::new(Arc::new(outbox.clone()), Arc::new(bus), relay_options("r1"))
        .unwrap()
        .start();
    enqueue_sqlite(&outbox, keyed_messages(&topic(), 2_000, 20), 100).await;
    wait_for(&seen, 2_000, ARRIVAL_DEADLINE).await;
    let report = relay.shutdown().await.expect("shutdown");
    consumer.abort();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(report.published, 2_000);
    assert!(
        seen.out_of_order_keys().is_empty(),
        "{:?}",
        seen.out_of_order_keys()
    );
    assert_eq!(seen.duplicates, 0);
    assert_eq!(outbox.status().await.unwrap().pending, 0);
}

/// The broker is down while messages are enqueued: the relay fails, backs off and keeps
/// trying; nothing is marked, nothing is lost. Back up, everything arrives in key order.
async fn outage_scenario(
    outbox: Arc<dyn OutboxStore>,
    enqueue: impl std::future::Future<Output = ()>,
    publisher: Arc<dyn Publisher>,
    subscriber: Arc<dyn Subscriber>,
    total: usize,
) {
    let flaky = FlakyPublisher::new(publisher);
    flaky.set_down(true);
    let (seen, consumer) = collect(subscriber, &topic(), "g").await;
    let relay = Relay::new(Arc::clone(&outbox), flaky.clone(), relay_options("outage"))
        .unwrap()
        .start();
    enqueue.await;
    // Wait until the relay has run into the outage several times.
    let until = tokio::time::Instant::now() + ARRIVAL_DEADLINE;
    while flaky.failures.load(Ordering::SeqCst) < 5 {
        assert!(tokio::time::Instant::now() < until, "the relay never tried");
        tokio::time::sleep(POLL).await;
    }
    let status = outbox.status().await.unwrap();
    assert_eq!(
        status.pending, total as u64,
        "every row waits during the outage"
    );
    assert_eq!(status.parked, 0, "an outage never parks a row");
    assert_eq!(seen.lock().unwrap().deliveries, 0);

    flaky.set_down(false);
    wait_for(&seen, total, ARRIVAL_DEADLINE).await;
    let report = relay.shutdown().await.expect("shutdown");
    consumer.abort();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.out_of_order_keys().is_empty(),
        "{:?}",
        seen.out_of_order_keys()
    );
    assert_eq!(seen.duplicates, 0, "nothing was published twice");
    assert_eq!(report.published, total as u64);
    assert!(report.publish_failures >= 5);
    eprintln!(
        "outage: {} failed publish calls, then {} published",
        flaky.failures.load(Ordering::SeqCst),
        report.published
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_outage_delays_but_loses_and_reorders_nothing_on_sqlite() {
    let store = SqliteStore::open_temporary().expect("store");
    let bus = SqliteBus::new(store.clone(), BusOptions::default().poll_interval(POLL)).unwrap();
    let outbox = SqliteOutbox::new(store.clone());
    let o = outbox.clone();
    outage_scenario(
        Arc::new(outbox),
        async move { enqueue_sqlite(&o, keyed_messages(&topic(), 500, 10), 50).await },
        Arc::new(bus.clone()),
        Arc::new(bus),
        500,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_outage_delays_but_loses_and_reorders_nothing_on_postgres() {
    let Some(store) = postgres_store(16).await else {
        return;
    };
    let bus = PostgresBus::new(store.clone(), PgBusOptions::default().poll_interval(POLL))
        .await
        .unwrap();
    let outbox = PostgresOutbox::new(store.clone()).await.unwrap();
    let o = outbox.clone();
    outage_scenario(
        Arc::new(outbox),
        async move { enqueue_postgres(&o, keyed_messages(&topic(), 500, 10), 50).await },
        Arc::new(bus.clone()),
        Arc::new(bus),
        500,
    )
    .await;
    drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_relays_share_10000_messages_over_100_keys_on_postgres() {
    const TOTAL: usize = 10_000;
    const KEYS: usize = 100;
    let Some(store) = postgres_store(32).await else {
        return;
    };
    let bus = PostgresBus::new(store.clone(), PgBusOptions::default().poll_interval(POLL))
        .await
        .unwrap();
    let (seen, consumer) = collect(Arc::new(bus.clone()), &topic(), "g").await;
    // Three relays, each with its own outbox handle (its own LISTEN connection), as three
    // processes would have.
    let mut relays = Vec::new();
    for i in 0..3 {
        let outbox = PostgresOutbox::new(store.clone()).await.unwrap();
        relays.push(
            Relay::new(
                Arc::new(outbox),
                Arc::new(bus.clone()),
                relay_options(&format!("relay-{i}")).batch_size(100),
            )
            .unwrap()
            .start(),
        );
    }
    let app = PostgresOutbox::new(store.clone()).await.unwrap();
    let started = std::time::Instant::now();
    enqueue_postgres(&app, keyed_messages(&topic(), TOTAL, KEYS), 100).await;
    wait_for(&seen, TOTAL, ARRIVAL_DEADLINE).await;
    let elapsed = started.elapsed();
    let mut per_relay = Vec::new();
    for r in relays {
        per_relay.push(r.shutdown().await.expect("shutdown").published);
    }
    // Let late duplicates (if any) show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer.abort();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    eprintln!(
        "three relays: {TOTAL} messages over {KEYS} keys in {elapsed:?}; published per relay {per_relay:?}; \
         deliveries {}, duplicates {}",
        seen.deliveries, seen.duplicates
    );
    assert_eq!(seen.ids.len(), TOTAL, "every message published");
    assert_eq!(seen.by_key.len(), KEYS);
    assert!(
        seen.out_of_order_keys().is_empty(),
        "{:?}",
        seen.out_of_order_keys()
    );
    assert_eq!(seen.duplicates, 0, "no duplicates without crashes");
    assert_eq!(per_relay.iter().sum::<u64>(), TOTAL as u64);
    assert_eq!(app.status().await.unwrap().pending, 0);
    drop(seen);
    drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_relays_keys_are_taken_over_after_its_lease_on_postgres() {
    const TOTAL: usize = 200;
    let Some(store) = postgres_store(16).await else {
        return;
    };
    let bus = PostgresBus::new(store.clone(), PgBusOptions::default().poll_interval(POLL))
        .await
        .unwrap();
    let (seen, consumer) = collect(Arc::new(bus.clone()), &topic(), "g").await;
    let outbox = PostgresOutbox::new(store.clone()).await.unwrap();
    enqueue_postgres(&outbox, keyed_messages(&topic(), TOTAL, 10), 50).await;
    // A relay claims everything and dies without publishing or releasing.
    let lease = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let held = outbox.claim("dead", lease, 1000).await.unwrap();
    assert_eq!(held.len(), TOTAL);
    let relay = Relay::new(
        Arc::new(outbox.clone()),
        Arc::new(bus),
        relay_options("alive"),
    )
    .unwrap()
    .start();
    wait_for(&seen, TOTAL, ARRIVAL_DEADLINE).await;
    assert!(
        started.elapsed() >= lease,
        "nothing moved before the dead relay's lease ran out"
    );
    let report = relay.shutdown().await.unwrap();
    consumer.abort();
    assert_eq!(report.published, TOTAL as u64);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen.out_of_order_keys().is_empty());
    assert_eq!(seen.duplicates, 0);
    drop(seen);
    drop_schema(&store).await;
}

/// An outbox that, the moment a relay's marks are committed, lets another relay claim:
/// what a second relay racing the first could get between the mark and the next call.
struct ClaimAfterMark {
    inner: SqliteOutbox,
    intruder_got: std::sync::Mutex<Vec<u64>>,
}

#[runnel::async_trait]
impl OutboxStore for ClaimAfterMark {
    async fn enqueue(&self, messages: Vec<OutboxMessage>) -> Result<(), StoreError> {
        self.inner.enqueue(messages).await
    }
    async fn claim(
        &self,
        relay: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        self.inner.claim(relay, lease, limit).await
    }
    async fn mark_published(&self, seqs: &[u64]) -> Result<(), StoreError> {
        self.inner.mark_published(seqs).await?;
        let got = self
            .inner
            .claim("intruder", Duration::from_secs(30), 100)
            .await?;
        self.intruder_got
            .lock()
            .unwrap()
            .extend(got.iter().map(|r| r.seq));
        Ok(())
    }
    async fn record_failure(
        &self,
        seqs: &[u64],
        error: &str,
        action: FailureAction,
    ) -> Result<(), StoreError> {
        self.inner.record_failure(seqs, error, action).await
    }
    async fn release(&self, relay: &str) -> Result<u64, StoreError> {
        self.inner.release(relay).await
    }
    async fn purge_published(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.inner.purge_published(before, limit).await
    }
    async fn status(&self) -> Result<OutboxStatus, StoreError> {
        self.inner.status().await
    }
    async fn retry_parked(&self, topic: Option<&TopicName>) -> Result<u64, StoreError> {
        self.inner.retry_parked(topic).await
    }
    async fn wait_for_messages(&self, max_wait: Duration) -> Result<(), StoreError> {
        self.inner.wait_for_messages(max_wait).await
    }
}

/// Accepts every topic but `refused`, whose messages it rejects for good.
struct RefusingPublisher;

#[runnel::async_trait]
impl Publisher for RefusingPublisher {
    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        if topic.as_str() == "refused" {
            return Err(BusError::InvalidMessage {
                id: messages[0].id.clone(),
                reason: "refused by the test".into(),
            });
        }
        Ok(())
    }
}

/// A claim leases only a key's head; its followers are held because they cannot become
/// heads before it is marked. So a round records its failures before it marks: the failed
/// follower is parked before the head's mark makes it the key's head, and a second relay
/// claiming right after that mark gets nothing (with the mark first it got the follower
/// while the first relay was still about to park it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_follower_is_recorded_before_its_head_is_marked() {
    let store = SqliteStore::open_temporary().expect("store");
    let outbox = Arc::new(ClaimAfterMark {
        inner: SqliteOutbox::new(store),
        intruder_got: Default::default(),
    });
    let keyed = |t: &str, n: u64| {
        OutboxMessage::new(
            TopicName::new(t).unwrap(),
            Message::json("Counted", &serde_json::json!({ "n": n })).with_key("k"),
        )
    };
    outbox
        .enqueue(vec![keyed("fine", 0), keyed("refused", 1)])
        .await
        .expect("enqueue");
    let mut options = relay_options("r1");
    options.max_attempts = 1;
    let relay = Relay::new(outbox.clone(), Arc::new(RefusingPublisher), options).unwrap();
    let round = relay.run_once().await.expect("a round");
    assert_eq!((round.claimed, round.published, round.failed), (2, 1, 1));
    assert_eq!(
        *outbox.intruder_got.lock().unwrap(),
        Vec::<u64>::new(),
        "the refused follower was parked before its head was marked"
    );
    let status = outbox.status().await.unwrap();
    assert_eq!((status.pending, status.parked), (1, 1));
}

/// Holds every publish until the test opens the gate; counts what it confirmed.
#[derive(Default)]
struct GatedPublisher {
    entered: tokio::sync::Notify,
    gate: tokio::sync::Notify,
    confirmed: std::sync::atomic::AtomicUsize,
}

#[runnel::async_trait]
impl Publisher for GatedPublisher {
    async fn publish(&self, _topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        self.entered.notify_one();
        self.gate.notified().await;
        self.confirmed.fetch_add(messages.len(), Ordering::SeqCst);
        Ok(())
    }
}

/// A running relay marks a round's rows with its next claim; asked to stop in the middle
/// of a round, it still marks that round's rows before it stops (otherwise they would be
/// released unmarked and published again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stopped_mid_round_marks_that_rounds_rows_before_it_stops() {
    let store = SqliteStore::open_temporary().expect("store");
    let outbox = SqliteOutbox::new(store);
    let keyed = |n: u64| {
        OutboxMessage::new(
            topic(),
            Message::json("Counted", &serde_json::json!({ "n": n })).with_key("k"),
        )
    };
    outbox
        .enqueue(vec![keyed(0), keyed(1)])
        .await
        .expect("enqueue");
    let publisher = Arc::new(GatedPublisher::default());
    let relay = Relay::new(
        Arc::new(outbox.clone()),
        publisher.clone(),
        relay_options("gated"),
    )
    .unwrap()
    .start();
    tokio::time::timeout(ARRIVAL_DEADLINE, publisher.entered.notified())
        .await
        .expect("the relay publishes the claimed rows");
    let mut shutdown = Box::pin(relay.shutdown());
    // The first poll asks the relay to stop; the round in progress goes on.
    assert!(futures_util::poll!(&mut shutdown).is_pending());
    publisher.gate.notify_one();
    let report = tokio::time::timeout(ARRIVAL_DEADLINE, shutdown)
        .await
        .expect("the relay stops")
        .expect("its report");
    assert_eq!(publisher.confirmed.load(Ordering::SeqCst), 2);
    assert_eq!(report.published, 2);
    let status = outbox.status().await.expect("status");
    assert_eq!(
        (status.pending, status.published_retained),
        (0, 2),
        "the last round's rows were marked before the relay stopped"
    );
}

/// The application's relay outbox claims without an fsync of its own only when the bus is
/// the embedded bus of the same SQLite file (whose publish is then the round's fsync); with
/// any other bus its claims stay fsynced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_outbox_skips_the_claims_fsync_only_with_the_bus_of_its_own_file() {
    use runnel::connect::{open_bus, open_stores, BusUrl, OpenMode, StoreBackend, StoreUrl};

    let dir = tempfile::tempdir().expect("a temporary directory");
    let open = |name: &str| {
        let url = StoreUrl::sqlite(dir.path().join(name));
        async move {
            open_stores(&url, OpenMode::CreateIfMissing)
                .await
                .expect("stores")
        }
    };
    let stores = open("app.db").await;
    let other = open("other.db").await;
    let StoreBackend::Sqlite(store) = stores.backend() else {
        panic!("a SQLite store");
    };
    let own_bus = open_bus(&BusUrl::Embedded, &stores).await.expect("bus");
    let other_bus = open_bus(&BusUrl::Embedded, &other).await.expect("bus");
    for (bus, fsyncs) in [(own_bus, 0), (other_bus, 1)] {
        let outbox = stores.relay_outbox(&bus).await.expect("relay outbox");
        outbox
            .enqueue(vec![OutboxMessage::new(
                topic(),
                Message::json("Counted", &serde_json::json!({ "n": 0 })),
            )])
            .await
            .expect("enqueue");
        let before = store.writer_stats();
        let rows = outbox
            .claim("r1", Duration::from_secs(30), 10)
            .await
            .expect("claim");
        let after = store.writer_stats();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            after.synced_commits - before.synced_commits,
            fsyncs,
            "fsyncs of a claim with the bus of {}",
            if fsyncs == 0 {
                "its own file"
            } else {
                "another file"
            }
        );
        let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
        outbox.mark_published(&seqs).await.expect("mark");
    }
}
