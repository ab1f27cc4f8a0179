//! Claim check end to end: a 5 MiB payload enqueued in the outbox travels through the
//! relay and the embedded bus as a blob reference, and the consumer's handler gets the
//! whole payload back — on SQLite and PostgreSQL.

mod outbox_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnel::consumer::{Consumer, HandlerContext};
use runnel::core::bus::{Publisher, Subscriber};
use runnel::core::outbox::{BlobStore, OutboxMessage};
use runnel::core::{GroupName, Message, TopicName};
use runnel::outbox::{
    ClaimCheckPublisher, ClaimCheckSubscriber, Relay, RelayOptions, CLAIM_CHECK_HEADER,
};
use runnel::postgres::bus::{BusOptions as PgBusOptions, PostgresBus};
use runnel::postgres::sqlx::{self, AssertSqlSafe};
use runnel::postgres::{PostgresBlobs, PostgresOutbox};
use runnel::sqlite::bus::{BusOptions, SqliteBus};
use runnel::sqlite::{SqliteBlobs, SqliteOutbox, SqliteStore};

use outbox_support::{drop_schema, postgres_store};

const PAYLOAD_BYTES: usize = 5 * 1024 * 1024;
/// The outbox accepts payloads up to this (the claim check happens on the way to the bus).
const OUTBOX_PAYLOAD_MAX: usize = 8 * 1024 * 1024;
const DEADLINE: Duration = Duration::from_secs(60);

fn big_payload() -> Vec<u8> {
    // Not compressible into a pattern a bug could fake: every byte depends on its index.
    (0..PAYLOAD_BYTES)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}

/// Starts a consumer through the claim-check subscriber, relays, and returns the payload
/// and headers the handler saw.
async fn round_trip(
    publisher: Arc<dyn Publisher>,
    subscriber: Arc<dyn Subscriber>,
    blobs: Arc<dyn BlobStore>,
    outbox: Arc<dyn runnel::core::outbox::OutboxStore>,
    topic: &TopicName,
) -> Message {
    let got: Arc<Mutex<Option<Message>>> = Arc::default();
    let sink = Arc::clone(&got);
    let consumer = Consumer::builder(
        Arc::new(ClaimCheckSubscriber::new(subscriber, Arc::clone(&blobs))),
        topic.clone(),
        GroupName::new("archive").unwrap(),
    )
    .handler(move |ctx: HandlerContext| {
        let sink = Arc::clone(&sink);
        async move {
            *sink.lock().unwrap() = Some(ctx.message().clone());
            Ok(())
        }
    })
    .start()
    .await
    .expect("consumer");
    let relay = Relay::new(
        outbox,
        Arc::new(ClaimCheckPublisher::new(publisher, blobs)),
        RelayOptions::default().poll_interval(Duration::from_millis(20)),
    )
    .unwrap()
    .start();
    let until = tokio::time::Instant::now() + DEADLINE;
    let message = loop {
        if let Some(m) = got.lock().unwrap().take() {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the big message never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    relay.shutdown().await.unwrap();
    consumer.shutdown(Duration::from_secs(5)).await.unwrap();
    message
}

fn big_message(topic: &TopicName) -> OutboxMessage {
    let mut m = Message::json("ScanUploaded", &serde_json::json!({}));
    m.content_type = "application/octet-stream".into();
    m.payload = big_payload();
    OutboxMessage::new(topic.clone(), m.with_key("Scan-1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claim_check_round_trips_a_5_mib_payload_on_sqlite() {
    let store = SqliteStore::open_temporary().expect("store");
    let bus = SqliteBus::new(
        store.clone(),
        BusOptions::default().poll_interval(Duration::from_millis(20)),
    )
    .unwrap();
    let outbox = SqliteOutbox::new(store.clone()).with_max_payload_bytes(OUTBOX_PAYLOAD_MAX);
    let topic = TopicName::new("scans").unwrap();
    let sent = big_message(&topic);
    let id = sent.message.id.clone();
    let inner = outbox.clone();
    outbox
        .unit_of_work(move |uow| inner.enqueue_in(uow, &[sent]))
        .await
        .expect("enqueue");
    let got = round_trip(
        Arc::new(bus.clone()),
        Arc::new(bus),
        Arc::new(SqliteBlobs::new(store.clone())),
        Arc::new(outbox),
        &topic,
    )
    .await;
    assert_eq!(got.id, id);
    assert_eq!(got.payload.len(), PAYLOAD_BYTES);
    assert!(
        got.payload == big_payload(),
        "the payload comes back byte for byte"
    );
    assert!(
        !got.headers.contains_key(CLAIM_CHECK_HEADER),
        "resolved transparently"
    );
    // On the bus itself only the reference travelled.
    let conn = runnel::sqlite::rusqlite::Connection::open(store.path()).unwrap();
    let on_bus: i64 = conn
        .query_row("SELECT max(length(payload)) FROM bus_messages", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(on_bus, 0, "the broker carried no payload bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claim_check_round_trips_a_5_mib_payload_on_postgres() {
    let Some(store) = postgres_store(16).await else {
        return;
    };
    let bus = PostgresBus::new(
        store.clone(),
        PgBusOptions::default().poll_interval(Duration::from_millis(20)),
    )
    .await
    .unwrap();
    let outbox = PostgresOutbox::new(store.clone())
        .await
        .unwrap()
        .with_max_payload_bytes(OUTBOX_PAYLOAD_MAX);
    let topic = TopicName::new("scans").unwrap();
    let sent = big_message(&topic);
    let id = sent.message.id.clone();
    let mut tx = store.pool().begin().await.unwrap();
    outbox.enqueue_in(&mut tx, &[sent]).await.expect("enqueue");
    tx.commit().await.unwrap();
    let got = round_trip(
        Arc::new(bus.clone()),
        Arc::new(bus),
        Arc::new(PostgresBlobs::new(store.clone())),
        Arc::new(outbox),
        &topic,
    )
    .await;
    assert_eq!(got.id, id);
    assert_eq!(got.payload.len(), PAYLOAD_BYTES);
    assert!(
        got.payload == big_payload(),
        "the payload comes back byte for byte"
    );
    assert!(!got.headers.contains_key(CLAIM_CHECK_HEADER));
    let on_bus: Option<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT max(octet_length(payload)) FROM {}.bus_messages",
        store.schema()
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(on_bus, Some(0), "the broker carried no payload bytes");
    drop_schema(&store).await;
}
