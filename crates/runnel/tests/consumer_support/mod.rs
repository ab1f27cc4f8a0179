//! Fakes for the consumer router tests: an in-memory subscriber whose acknowledgers log
//! every ack / nack / extend / drop, a recording publisher, dead-letter and dedup stores,
//! a clock on tokio's (pausable) time, a recording sleeper and scripted jitter.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::stream;
use runnel::consumer::Sleeper;
use runnel::core::bus::{
    Acknowledger, Delivery, DeliveryStream, Publisher, SubscribeOptions, Subscriber,
};
use runnel::core::dead_letter::{
    DeadLetter, DeadLetterFilter, DeadLetterId, DeadLetterStore, NewDeadLetter,
};
use runnel::core::idempotency::{DedupClaim, DedupStore};
use runnel::core::message::{BusError, GroupName, Message, TopicName};
use runnel::core::StoreError;
use runnel::core::{async_trait, Clock};
use runnel::retry::Jitter;
use tokio::sync::{mpsc, Notify};

/// Every test wait ends by this (virtual, under paused time) deadline.
pub const WAIT_LIMIT: Duration = Duration::from_secs(120);
/// Deliveries the fake subscription buffers before `deliver` fails.
const FAKE_QUEUE_MAX: usize = 1024;

pub fn topic() -> TopicName {
    TopicName::new("orders").unwrap()
}

pub fn group() -> GroupName {
    GroupName::new("billing").unwrap()
}

/// A JSON message with a chosen id and ordering key.
pub fn msg(id: &str, key: Option<&str>) -> Message {
    let m = Message::json("OrderPlaced", &serde_json::json!({ "id": id })).with_id(id);
    match key {
        Some(k) => m.with_key(k),
        None => m,
    }
}

// ---------------------------------------------------------------- waiting

/// A log that tests wait on: every push wakes the waiters.
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

    /// Waits (deadline [`WAIT_LIMIT`]) until `cond` holds over the items.
    pub async fn wait_until(&self, what: &str, cond: impl Fn(&[T]) -> bool) {
        let waited = tokio::time::timeout(WAIT_LIMIT, async {
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
        .await;
        if waited.is_err() {
            panic!("timed out waiting for {what}; log: {:#?}", self.snapshot());
        }
    }
}

// ---------------------------------------------------------------- subscriber

#[derive(Clone, Debug, PartialEq)]
pub enum SettleKind {
    Ack,
    Nack(Option<Duration>),
    Extend(Duration),
    /// Dropped without ack or nack: the transport would redeliver after the ack timeout.
    Dropped,
}

#[derive(Clone, Debug)]
pub struct SettleEvent {
    pub message_id: String,
    pub kind: SettleKind,
}

/// An in-memory subscriber for one topic/group: the test pushes deliveries, the consumer
/// pulls them, every settlement is logged.
pub struct FakeBus {
    tx: Mutex<Option<mpsc::Sender<Result<Delivery, BusError>>>>,
    rx: Mutex<Option<mpsc::Receiver<Result<Delivery, BusError>>>>,
    pub settled: Arc<Log<SettleEvent>>,
    pub subscribed_with: Mutex<Option<SubscribeOptions>>,
}

impl FakeBus {
    pub fn new() -> Arc<Self> {
        let (tx, rx) = mpsc::channel(FAKE_QUEUE_MAX);
        Arc::new(FakeBus {
            tx: Mutex::new(Some(tx)),
            rx: Mutex::new(Some(rx)),
            settled: Log::new(),
            subscribed_with: Mutex::new(None),
        })
    }

    pub fn deliver(&self, message: Message) {
        self.deliver_attempt(message, 1);
    }

    pub fn deliver_attempt(&self, message: Message, attempt: u32) {
        let ack = FakeAck {
            message_id: message.id.clone(),
            log: Arc::clone(&self.settled),
            settled: AtomicBool::new(false),
        };
        let delivery = Delivery::new(message, topic(), group(), attempt, Box::new(ack));
        let tx = self.tx.lock().unwrap();
        let tx = tx.as_ref().expect("the fake bus was closed");
        // A closed channel (the consumer released its subscription) drops the delivery,
        // which its acknowledger logs as `Dropped`.
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(Ok(delivery)) {
            panic!("the fake subscription is full");
        }
    }

    /// Ends the subscription's stream (what a transport does when it closes).
    pub fn close(&self) {
        self.tx.lock().unwrap().take();
    }

    /// Whether the consumer dropped its subscription.
    pub fn is_closed(&self) -> bool {
        self.tx
            .lock()
            .unwrap()
            .as_ref()
            .is_none_or(|tx| tx.is_closed())
    }

    pub fn events_for(&self, id: &str) -> Vec<SettleKind> {
        self.settled
            .snapshot()
            .into_iter()
            .filter(|e| e.message_id == id)
            .map(|e| e.kind)
            .collect()
    }

    pub fn acks(&self, id: &str) -> usize {
        self.events_for(id)
            .iter()
            .filter(|k| **k == SettleKind::Ack)
            .count()
    }

    /// Waits until every id in `ids` was acked at least once.
    pub async fn wait_acked(&self, ids: &[&str]) {
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        self.settled
            .wait_until(&format!("acks of {ids:?}"), |events| {
                ids.iter().all(|id| {
                    events
                        .iter()
                        .any(|e| &e.message_id == id && e.kind == SettleKind::Ack)
                })
            })
            .await;
    }

    /// Waits until `id` was settled (or dropped) somehow; returns how.
    pub async fn wait_settled(&self, id: &str) -> SettleKind {
        self.settled
            .wait_until(&format!("settlement of {id}"), |events| {
                events
                    .iter()
                    .any(|e| e.message_id == id && !matches!(e.kind, SettleKind::Extend(_)))
            })
            .await;
        self.events_for(id)
            .into_iter()
            .find(|k| !matches!(k, SettleKind::Extend(_)))
            .unwrap()
    }
}

#[async_trait]
impl Subscriber for FakeBus {
    async fn subscribe(
        &self,
        _topic: &TopicName,
        _group: &GroupName,
        options: SubscribeOptions,
    ) -> Result<DeliveryStream, BusError> {
        *self.subscribed_with.lock().unwrap() = Some(options);
        let rx = self
            .rx
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| BusError::InvalidArgument("the fake bus subscribes once".into()))?;
        Ok(Box::pin(stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })))
    }
}

struct FakeAck {
    message_id: String,
    log: Arc<Log<SettleEvent>>,
    settled: AtomicBool,
}

impl FakeAck {
    fn record(&self, kind: SettleKind) {
        self.log.push(SettleEvent {
            message_id: self.message_id.clone(),
            kind,
        });
    }
}

#[async_trait]
impl Acknowledger for FakeAck {
    async fn ack(&self) -> Result<(), BusError> {
        assert!(!self.settled.swap(true, Ordering::SeqCst), "settled twice");
        self.record(SettleKind::Ack);
        Ok(())
    }
    async fn nack(&self, delay: Option<Duration>) -> Result<(), BusError> {
        assert!(!self.settled.swap(true, Ordering::SeqCst), "settled twice");
        self.record(SettleKind::Nack(delay));
        Ok(())
    }
    async fn extend(&self, by: Duration) -> Result<(), BusError> {
        self.record(SettleKind::Extend(by));
        Ok(())
    }
}

impl Drop for FakeAck {
    fn drop(&mut self) {
        if !self.settled.load(Ordering::SeqCst) {
            self.record(SettleKind::Dropped);
        }
    }
}

// ---------------------------------------------------------------- publisher

#[derive(Default)]
pub struct RecordingPublisher {
    pub published: Mutex<Vec<(TopicName, Message)>>,
}

#[async_trait]
impl Publisher for RecordingPublisher {
    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        let mut published = self.published.lock().unwrap();
        for m in messages {
            published.push((topic.clone(), m));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- dead letters

/// An in-memory dead-letter store (only `put` is used by the router); `failing` makes
/// every `put` fail.
pub struct MemoryDeadLetters {
    pub stored: Arc<Log<NewDeadLetter>>,
    pub failing: bool,
    next_id: AtomicU64,
}

impl MemoryDeadLetters {
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryDeadLetters {
            stored: Log::new(),
            failing: false,
            next_id: AtomicU64::new(1),
        })
    }

    pub fn failing() -> Arc<Self> {
        Arc::new(MemoryDeadLetters {
            stored: Log::new(),
            failing: true,
            next_id: AtomicU64::new(1),
        })
    }
}

#[async_trait]
impl DeadLetterStore for MemoryDeadLetters {
    async fn put(&self, dead_letter: NewDeadLetter) -> Result<DeadLetterId, StoreError> {
        if self.failing {
            return Err(StoreError::Unavailable(
                "the dead-letter database is down".into(),
            ));
        }
        assert!(
            !dead_letter.failures.is_empty(),
            "a dead letter without failures"
        );
        self.stored.push(dead_letter);
        Ok(DeadLetterId(self.next_id.fetch_add(1, Ordering::SeqCst)))
    }
    async fn list(
        &self,
        _: &DeadLetterFilter,
        _: Option<DeadLetterId>,
        _: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        Err(StoreError::Backend("not used by the router".into()))
    }
    async fn get(&self, _: DeadLetterId) -> Result<Option<DeadLetter>, StoreError> {
        Err(StoreError::Backend("not used by the router".into()))
    }
    async fn count(&self, _: &DeadLetterFilter) -> Result<u64, StoreError> {
        Err(StoreError::Backend("not used by the router".into()))
    }
    async fn mark_replayed(&self, _: DeadLetterId, _: DateTime<Utc>) -> Result<(), StoreError> {
        Err(StoreError::Backend("not used by the router".into()))
    }
    async fn purge(&self, _: &DeadLetterFilter, _: DateTime<Utc>) -> Result<u64, StoreError> {
        Err(StoreError::Backend("not used by the router".into()))
    }
}

// ---------------------------------------------------------------- dedup

enum DedupEntry {
    Locked { token: String },
    Done { result: Vec<u8> },
}

/// An in-memory dedup store (no expiry: tests run within the TTLs).
#[derive(Default)]
pub struct MemoryDedup {
    entries: Mutex<HashMap<String, DedupEntry>>,
    tokens: AtomicU64,
    pub claims: AtomicU64,
}

#[async_trait]
impl DedupStore for MemoryDedup {
    async fn claim(&self, key: &str, _lock_ttl: Duration) -> Result<DedupClaim, StoreError> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        let mut entries = self.entries.lock().unwrap();
        match entries.get(key) {
            Some(DedupEntry::Locked { .. }) => Ok(DedupClaim::InProgress),
            Some(DedupEntry::Done { result }) => Ok(DedupClaim::Completed {
                result: result.clone(),
            }),
            None => {
                let token = format!("t{}", self.tokens.fetch_add(1, Ordering::SeqCst));
                entries.insert(
                    key.to_string(),
                    DedupEntry::Locked {
                        token: token.clone(),
                    },
                );
                Ok(DedupClaim::Acquired { token })
            }
        }
    }

    async fn complete(
        &self,
        key: &str,
        token: &str,
        result: Vec<u8>,
        _ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut entries = self.entries.lock().unwrap();
        match entries.get(key) {
            Some(DedupEntry::Locked { token: t }) if t == token => {
                entries.insert(key.to_string(), DedupEntry::Done { result });
                Ok(())
            }
            _ => Err(StoreError::DedupLockLost { key: key.into() }),
        }
    }

    async fn release(&self, key: &str, token: &str) -> Result<(), StoreError> {
        let mut entries = self.entries.lock().unwrap();
        match entries.get(key) {
            Some(DedupEntry::Locked { token: t }) if t == token => {
                entries.remove(key);
                Ok(())
            }
            _ => Err(StoreError::DedupLockLost { key: key.into() }),
        }
    }
}

// ---------------------------------------------------------------- time

/// Wall-clock time that follows tokio's (pausable) clock, so failure times in tests move
/// with the virtual time.
pub struct TokioClock {
    base: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Arc<Self> {
        Arc::new(TokioClock {
            base: Utc::now(),
            start: tokio::time::Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        self.base + chrono::Duration::from_std(self.start.elapsed()).unwrap()
    }
}

/// Records the waits asked for and returns at once.
#[derive(Default)]
pub struct RecordingSleeper {
    pub waits: Mutex<Vec<Duration>>,
}

#[async_trait]
impl Sleeper for RecordingSleeper {
    async fn sleep(&self, duration: Duration) {
        self.waits.lock().unwrap().push(duration);
    }
}

/// Draws `ceiling × fraction` with fractions from a script (then repeats the last one).
pub struct ScriptedJitter {
    fractions: Mutex<Vec<f64>>,
}

impl ScriptedJitter {
    pub fn new(fractions: &[f64]) -> Arc<Self> {
        let mut f = fractions.to_vec();
        f.reverse();
        Arc::new(ScriptedJitter {
            fractions: Mutex::new(f),
        })
    }
}

impl Jitter for ScriptedJitter {
    fn draw(&self, ceiling: Duration) -> Duration {
        let mut f = self.fractions.lock().unwrap();
        let fraction = if f.len() > 1 { f.pop().unwrap() } else { f[0] };
        ceiling.mul_f64(fraction)
    }
}
