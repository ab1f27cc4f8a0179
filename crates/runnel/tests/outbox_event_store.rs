//! The event store as the outbox: a relay follows `$all` from its checkpoint and
//! publishes every event (no second table), in stream order, through broker outages, and
//! resumes after a restart where it left off — on SQLite and PostgreSQL.

mod outbox_support;

use std::sync::Arc;
use std::time::Duration;

use runnel::core::bus::{Publisher, Subscriber};
use runnel::core::outbox::TopicRouting;
use runnel::core::{
    CheckpointStore, EventStore, ExpectedRevision, NewEvent, StreamName, TopicName,
};
use runnel::outbox::{EventStoreRelay, EventStoreRelayOptions};
use runnel::postgres::bus::{BusOptions as PgBusOptions, PostgresBus};
use runnel::sqlite::bus::{BusOptions, SqliteBus};
use runnel::sqlite::SqliteStore;

use outbox_support::{collect, drop_schema, postgres_store, wait_for, FlakyPublisher};

const STREAMS: usize = 5;
const EVENTS_PER_STREAM: usize = 20;
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

fn options() -> EventStoreRelayOptions {
    EventStoreRelayOptions {
        routing: TopicRouting::Category,
        backoff: runnel::RetryPolicy {
            max_attempts: u32::MAX,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        },
        ..EventStoreRelayOptions::default()
    }
}

/// Appends `per_stream` events to each of `STREAMS` streams, interleaved; event `n` of a
/// stream carries `{"n": n}` with `n` counting from `from`.
async fn append(store: &dyn EventStore, from: usize, per_stream: usize) {
    for n in from..from + per_stream {
        for s in 0..STREAMS {
            let stream = StreamName::new(format!("Order-{s}")).unwrap();
            let kind = if n % 2 == 0 {
                "OrderPlaced"
            } else {
                "OrderAmended"
            };
            store
                .append(
                    &stream,
                    ExpectedRevision::Any,
                    vec![NewEvent::json(kind, &serde_json::json!({ "n": n }))],
                )
                .await
                .expect("append");
        }
    }
}

async fn scenario(
    events: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    publisher: Arc<dyn Publisher>,
    subscriber: Arc<dyn Subscriber>,
) {
    let topic = TopicName::new("Order").unwrap();
    let (seen, consumer) = collect(Arc::clone(&subscriber), &topic, "g").await;
    append(&*events, 0, EVENTS_PER_STREAM).await;
    let total = STREAMS * EVENTS_PER_STREAM;

    // The broker is down: nothing is published, the checkpoint does not move.
    let flaky = FlakyPublisher::new(Arc::clone(&publisher));
    flaky.set_down(true);
    let relay = EventStoreRelay::new(
        Arc::clone(&events),
        Arc::clone(&checkpoints),
        flaky.clone(),
        options(),
    )
    .unwrap()
    .start();
    let until = tokio::time::Instant::now() + DEADLINE;
    while flaky.failures.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        assert!(tokio::time::Instant::now() < until, "the relay never tried");
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(
        checkpoints
            .load_checkpoint("runnel-event-relay")
            .await
            .unwrap(),
        None
    );
    flaky.set_down(false);
    wait_for(&seen, total, DEADLINE).await;
    // The checkpoint reaches the head once everything is confirmed.
    let head = events.head_position().await.unwrap();
    let until = tokio::time::Instant::now() + DEADLINE;
    while checkpoints
        .load_checkpoint("runnel-event-relay")
        .await
        .unwrap()
        != Some(head)
    {
        assert!(
            tokio::time::Instant::now() < until,
            "the checkpoint never reached {head}"
        );
        tokio::time::sleep(POLL).await;
    }
    let published = relay.shutdown().await.expect("shutdown");
    assert_eq!(published, total as u64);

    // Restarted, the relay resumes after its checkpoint: only the new events go out.
    let relay = EventStoreRelay::new(Arc::clone(&events), checkpoints, publisher, options())
        .unwrap()
        .start();
    append(&*events, EVENTS_PER_STREAM, 2).await;
    wait_for(&seen, total + 2 * STREAMS, DEADLINE).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let published = relay.shutdown().await.expect("shutdown");
    consumer.abort();
    assert_eq!(
        published,
        2 * STREAMS as u64,
        "nothing before the checkpoint again"
    );
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.duplicates, 0);
    assert_eq!(seen.by_key.len(), STREAMS, "keyed by stream");
    assert!(
        seen.out_of_order_keys().is_empty(),
        "{:?}",
        seen.out_of_order_keys()
    );
    for ns in seen.by_key.values() {
        assert_eq!(ns.len(), EVENTS_PER_STREAM + 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_store_relay_publishes_in_stream_order_through_an_outage_and_resumes_on_sqlite() {
    let store = Arc::new(SqliteStore::open_temporary().expect("store"));
    let bus = SqliteBus::new((*store).clone(), BusOptions::default().poll_interval(POLL)).unwrap();
    scenario(store.clone(), store, Arc::new(bus.clone()), Arc::new(bus)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_store_relay_publishes_in_stream_order_through_an_outage_and_resumes_on_postgres() {
    let Some(store) = postgres_store(16).await else {
        return;
    };
    let bus = PostgresBus::new(store.clone(), PgBusOptions::default().poll_interval(POLL))
        .await
        .unwrap();
    let shared = Arc::new(store.clone());
    scenario(shared.clone(), shared, Arc::new(bus.clone()), Arc::new(bus)).await;
    drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn default_routing_publishes_to_aggregate_type_dot_event_type() {
    let store = Arc::new(SqliteStore::open_temporary().expect("store"));
    let bus = SqliteBus::new((*store).clone(), BusOptions::default().poll_interval(POLL)).unwrap();
    let placed = TopicName::new("Order.OrderPlaced").unwrap();
    let (seen, consumer) = collect(Arc::new(bus.clone()), &placed, "g").await;
    let relay = EventStoreRelay::new(
        store.clone(),
        store.clone(),
        Arc::new(bus),
        EventStoreRelayOptions::default(),
    )
    .unwrap()
    .start();
    append(&*store, 0, 4).await;
    wait_for(&seen, 2 * STREAMS, DEADLINE).await;
    relay.shutdown().await.unwrap();
    consumer.abort();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    for ns in seen.by_key.values() {
        assert_eq!(
            ns,
            &vec![0, 2],
            "only OrderPlaced events on Order.OrderPlaced"
        );
    }
}
