//! Shared pieces of the outbox tests: a publisher that can be made to fail (a broker
//! outage), a collecting consumer that records arrival order per key, and the PostgreSQL
//! test schema.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use runnel::async_trait;
use runnel::core::bus::{Publisher, StartPosition, SubscribeOptions, Subscriber};
use runnel::core::outbox::OutboxMessage;
use runnel::core::{BusError, GroupName, Message, TopicName};
use runnel::postgres::sqlx::{self, AssertSqlSafe};
use runnel::postgres::{PostgresOptions, PostgresStore};

/// A publisher in front of a real one that fails with `Unavailable` while it is "down".
pub struct FlakyPublisher {
    inner: Arc<dyn Publisher>,
    down: AtomicBool,
    pub failures: AtomicU64,
}

impl FlakyPublisher {
    pub fn new(inner: Arc<dyn Publisher>) -> Arc<Self> {
        Arc::new(FlakyPublisher {
            inner,
            down: AtomicBool::new(false),
            failures: AtomicU64::new(0),
        })
    }
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

#[async_trait]
impl Publisher for FlakyPublisher {
    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        if self.down.load(Ordering::SeqCst) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(BusError::Unavailable(
                "the broker is down (test outage)".into(),
            ));
        }
        self.inner.publish(topic, messages).await
    }
}

/// `total` messages over `keys` keys on `topic`: message `n` has key `k{n % keys}` and
/// `{"n": n}` as payload, so each key's numbers increase in enqueue order.
pub fn keyed_messages(topic: &TopicName, total: usize, keys: usize) -> Vec<OutboxMessage> {
    (0..total)
        .map(|n| {
            OutboxMessage::new(
                topic.clone(),
                Message::json("Counted", &serde_json::json!({ "n": n }))
                    .with_key(format!("k{}", n % keys)),
            )
        })
        .collect()
}

/// What a collecting consumer saw.
#[derive(Default)]
pub struct Seen {
    /// Per key, the numbers in arrival order (duplicates included).
    pub by_key: HashMap<String, Vec<u64>>,
    pub ids: HashSet<String>,
    pub deliveries: u64,
    pub duplicates: u64,
}

impl Seen {
    /// Keys whose first arrivals are not in increasing order.
    pub fn out_of_order_keys(&self) -> Vec<String> {
        let mut bad = Vec::new();
        for (k, ns) in &self.by_key {
            let mut seen = HashSet::new();
            let firsts: Vec<u64> = ns.iter().copied().filter(|n| seen.insert(*n)).collect();
            if firsts.windows(2).any(|w| w[0] >= w[1]) {
                bad.push(k.clone());
            }
        }
        bad
    }
}

/// Subscribes `group` on `topic` (from the earliest message) and records every delivery,
/// acking each at once (concurrently, so other keys are not held up).
pub async fn collect(
    subscriber: Arc<dyn Subscriber>,
    topic: &TopicName,
    group: &str,
) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let group = GroupName::new(group).expect("group");
    let mut deliveries = subscriber
        .subscribe(
            topic,
            &group,
            SubscribeOptions {
                max_in_flight: 512,
                start: StartPosition::Earliest,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        let mut acks = tokio::task::JoinSet::new();
        while let Some(d) = deliveries.next().await {
            let Ok(d) = d else { continue };
            let n = d
                .message
                .payload_json()
                .ok()
                .and_then(|v| v["n"].as_u64())
                .unwrap_or(u64::MAX);
            let key = d.message.ordering_key().unwrap_or("").to_string();
            {
                let mut s = out.lock().unwrap();
                s.deliveries += 1;
                if !s.ids.insert(d.message.id.clone()) {
                    s.duplicates += 1;
                }
                s.by_key.entry(key).or_default().push(n);
            }
            acks.spawn(async move {
                let _ = d.ack().await;
            });
            while acks.len() > 256 {
                acks.join_next().await;
            }
            while acks.try_join_next().is_some() {}
        }
    });
    (seen, task)
}

/// Waits until `seen` holds `total` distinct ids, with a deadline.
pub async fn wait_for(seen: &Mutex<Seen>, total: usize, deadline: Duration) {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let n = seen.lock().unwrap().ids.len();
        if n >= total {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "only {n} of {total} messages arrived within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The test server, or `None` (skipped loudly; a failure under `RUNNEL_REQUIRE_SERVICES=1`).
pub fn postgres_url() -> Option<String> {
    match std::env::var("RUNNEL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "RUNNEL_TEST_POSTGRES_URL is not set but RUNNEL_REQUIRE_SERVICES=1"
            );
            eprintln!("SKIPPED: RUNNEL_TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// A store in a fresh schema; drop it with [`drop_schema`] at the end of the test.
pub async fn postgres_store(pool_size: u32) -> Option<PostgresStore> {
    let url = postgres_url()?;
    let schema = format!("outbox_{}", runnel::core::uuid::Uuid::now_v7().simple());
    Some(
        PostgresStore::connect_with(
            PostgresOptions::new(url)
                .schema(schema)
                .pool_size(pool_size),
        )
        .await
        .expect("connect to the test PostgreSQL"),
    )
}

/// Drops the store's schema.
pub async fn drop_schema(store: &PostgresStore) {
    sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA {} CASCADE",
        store.schema()
    )))
    .execute(store.pool())
    .await
    .expect("drop the test schema");
}
