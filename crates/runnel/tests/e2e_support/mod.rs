//! End-to-end fixtures: the consumer router on a real backend — its durable bus, its
//! transactional inbox, its dead-letter store — behind one [`Backend`] trait, so every
//! scenario in [`scenarios`] runs unchanged on SQLite and on PostgreSQL.
//!
//! Each handler in the scenarios records what it did as a row of the backend's own
//! `effects` table, written through the inbox scope: a row exists exactly when the
//! handler's attempt committed together with the inbox mark.

#![allow(dead_code)] // each test binary uses a different part

pub mod postgres;
pub mod scenarios;
pub mod sqlite;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use runnel::async_trait;
use runnel::consumer::{ConsumerBuilder, HandlerContext, HandlerError};
use runnel::core::bus::{DeliveryStream, Publisher, SubscribeOptions, Subscriber};
use runnel::core::dead_letter::DeadLetterStore;
use runnel::core::{BusError, GroupName, Message, TopicName};
use tokio::sync::Notify;

/// Every wait in these tests ends by this deadline (a failure, never a hang).
pub const DEADLINE: Duration = Duration::from_secs(60);
/// How often a polled condition is checked again.
pub const POLL: Duration = Duration::from_millis(20);
/// How often the buses look for work they were not woken for (redeliveries after a lease
/// ends, delayed nacks).
pub const BUS_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// One row of the `effects` table: which consumer (group) handled which message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect {
    pub consumer: String,
    pub message_id: String,
    pub key: String,
    pub n: i64,
}

impl Effect {
    /// The effect a handler records for the message in `ctx`.
    pub fn of(ctx: &HandlerContext) -> Result<Effect, HandlerError> {
        let body: serde_json::Value = ctx.json()?;
        Ok(Effect {
            consumer: ctx.group().to_string(),
            message_id: ctx.message().id.clone(),
            key: ctx.message().ordering_key().unwrap_or("").to_string(),
            n: body["n"].as_i64().unwrap_or(-1),
        })
    }
}

/// A backend under test: bus, dead-letter store, transactional inbox and an `effects`
/// table written through the inbox's scope.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn publisher(&self) -> Arc<dyn Publisher>;
    fn subscriber(&self) -> Arc<dyn Subscriber>;
    fn dead_letters(&self) -> Arc<dyn DeadLetterStore>;
    /// The builder with this backend's transactional inbox layer.
    fn with_inbox(&self, builder: ConsumerBuilder) -> ConsumerBuilder;
    /// Writes `effect` through the inbox scope of `ctx`'s attempt.
    async fn write_effect(&self, ctx: &HandlerContext, effect: Effect) -> Result<(), HandlerError>;
    /// Every committed effect, in commit order.
    async fn effects(&self) -> Vec<Effect>;
    /// Messages `group` has not yet acknowledged on `topic`.
    async fn pending(&self, topic: &TopicName, group: &GroupName) -> u64;
}

pub fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

pub fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap()
}

/// Message number `n` of ordering key `key`.
pub fn numbered(key: &str, n: i64) -> Message {
    Message::json("Numbered", &serde_json::json!({ "key": key, "n": n })).with_key(key)
}

/// Subscription options for tests: the group starts at the first message, so consumers
/// may start before or after the publishes.
pub fn options(max_in_flight: usize, ack_timeout: Duration) -> SubscribeOptions {
    SubscribeOptions {
        max_in_flight,
        ack_timeout,
        start: runnel::core::bus::StartPosition::Earliest,
        ..Default::default()
    }
}

/// Polls `cond` every [`POLL`] until it holds; panics after [`DEADLINE`].
pub async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `group` has acknowledged everything on `topic`.
pub async fn wait_drained(backend: &dyn Backend, topic: &TopicName, group: &GroupName) {
    wait_for(&format!("{group} to drain {topic}"), || async {
        backend.pending(topic, group).await == 0
    })
    .await;
}

/// A list that tests wait on: every push wakes the waiters.
pub struct Log<T> {
    items: Mutex<Vec<T>>,
    changed: Notify,
}

impl<T: Clone + std::fmt::Debug> Log<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Log {
            items: Mutex::new(Vec::new()),
            changed: Notify::new(),
        })
    }

    pub fn push(&self, item: T) {
        self.items.lock().unwrap().push(item);
        self.changed.notify_waiters();
    }

    pub fn snapshot(&self) -> Vec<T> {
        self.items.lock().unwrap().clone()
    }

    /// Waits (deadline [`DEADLINE`]) until `cond` holds over the items; returns whether it
    /// did (callers inside handlers must not panic, so they check the result).
    pub async fn wait_until(&self, cond: impl Fn(&[T]) -> bool) -> bool {
        tokio::time::timeout(DEADLINE, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if cond(&self.items.lock().unwrap()) {
                    return;
                }
                changed.await;
            }
        })
        .await
        .is_ok()
    }
}

/// Wraps a subscriber and logs every delivery it hands out (message id, delivery attempt)
/// before the router sees it: how a test observes a redelivery the router then absorbs.
pub struct RecordingSubscriber {
    inner: Arc<dyn Subscriber>,
    pub deliveries: Arc<Log<(String, u32)>>,
}

impl RecordingSubscriber {
    pub fn new(inner: Arc<dyn Subscriber>) -> Arc<Self> {
        Arc::new(RecordingSubscriber {
            inner,
            deliveries: Log::new(),
        })
    }
}

#[async_trait]
impl Subscriber for RecordingSubscriber {
    async fn subscribe(
        &self,
        topic: &TopicName,
        group: &GroupName,
        options: SubscribeOptions,
    ) -> Result<DeliveryStream, BusError> {
        let stream = self.inner.subscribe(topic, group, options).await?;
        let log = Arc::clone(&self.deliveries);
        Ok(Box::pin(stream.inspect(move |item| {
            if let Ok(delivery) = item {
                log.push((delivery.message.id.clone(), delivery.attempt));
            }
        })))
    }
}
