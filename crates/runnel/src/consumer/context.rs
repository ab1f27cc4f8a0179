//! [`HandlerContext`]: what flows through the layers to a handler — the delivered message,
//! where it came from, the attempt number, a publisher that propagates correlation and
//! causation, the inbox's transactional scope — plus the per-delivery state the layers
//! share (the delivery's lease, its failure history, the shutdown signal).

use std::any::{type_name, Any};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use runnel_core::bus::{Delivery, DeliveryHandle, Publisher, ACK_TIMEOUT_DEFAULT};
use runnel_core::dead_letter::{FailureRecord, FAILURES_KEPT_MAX};
use runnel_core::message::{BusError, GroupName, Message, TopicName};
use runnel_core::metadata::Metadata;
use serde::de::DeserializeOwned;
use tokio::sync::{watch, OwnedMappedMutexGuard, OwnedMutexGuard};
use tokio::time::Instant;

use super::error::{HandlerError, RouterFailure};
use super::publisher::{EffectBuffer, EffectPublisher};

/// Locks a std mutex, ignoring poisoning: every critical section here leaves the data
/// consistent, and a panicking handler must not wedge the consumer.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The consumer's "stop" signal as seen by one delivery.
#[derive(Clone, Debug)]
pub(crate) struct ShutdownSignal(watch::Receiver<bool>);

impl ShutdownSignal {
    pub(crate) fn new(rx: watch::Receiver<bool>) -> Self {
        ShutdownSignal(rx)
    }

    /// A signal that never fires (detached contexts).
    pub(crate) fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // Keeping the sender alive forever would leak; a closed channel is read as "never".
        drop(tx);
        ShutdownSignal(rx)
    }

    pub(crate) fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when shutdown is requested; never, if the consumer is gone without asking.
    pub(crate) async fn requested(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The delivery's lease with the transport: who settles it, and until when it is held.
pub(crate) struct Lease {
    handle: tokio::sync::Mutex<Option<DeliveryHandle>>,
    ack_timeout: Duration,
    /// A lower bound of when the transport would redeliver: the receipt time or the last
    /// extension plus its length, whichever is later.
    held_until: Mutex<Option<Instant>>,
}

impl Lease {
    fn new(handle: Option<DeliveryHandle>, ack_timeout: Duration) -> Self {
        let held_until = handle.as_ref().map(|_| Instant::now() + ack_timeout);
        Lease {
            handle: tokio::sync::Mutex::new(handle),
            ack_timeout,
            held_until: Mutex::new(held_until),
        }
    }

    /// The transport's ack timeout for this delivery.
    pub(crate) fn ack_timeout(&self) -> Duration {
        self.ack_timeout
    }

    /// Keeps the delivery from timing out for `by` more, from now.
    pub(crate) async fn extend(&self, by: Duration) -> Result<(), BusError> {
        let guard = self.handle.lock().await;
        let Some(handle) = guard.as_ref() else {
            // Detached (tests) or already settled: there is nothing to keep.
            return Ok(());
        };
        handle.extend(by).await?;
        let until = Instant::now() + by;
        let mut held = lock(&self.held_until);
        *held = Some(held.map_or(until, |h| h.max(until)));
        Ok(())
    }

    /// Makes sure the lease outlasts a wait of `wait` plus half an ack timeout (time for the
    /// next attempt to start); extends it by `wait + ack_timeout` if not. Returns whether
    /// it extended.
    pub(crate) async fn keep_through(&self, wait: Duration) -> Result<bool, BusError> {
        let Some(held_until) = *lock(&self.held_until) else {
            return Ok(false);
        };
        if Instant::now() + wait + self.ack_timeout / 2 <= held_until {
            return Ok(false);
        }
        self.extend(wait + self.ack_timeout).await.map(|()| true)
    }

    /// Takes the settling handle (once; `None` if detached or taken).
    pub(crate) async fn take(&self) -> Option<DeliveryHandle> {
        let handle = self.handle.lock().await.take();
        *lock(&self.held_until) = None;
        handle
    }
}

/// What happened to a delivery so far: its failed attempts (bounded, first and latest
/// kept), and counts for metrics.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeliveryLog {
    pub(crate) failures: Vec<FailureRecord>,
    pub(crate) failed_attempts: u32,
    pub(crate) retries: u32,
    pub(crate) lease_extensions: u32,
    pub(crate) first_failed_at: Option<DateTime<Utc>>,
    pub(crate) last_failed_at: Option<DateTime<Utc>>,
}

impl DeliveryLog {
    pub(crate) fn record_failure(&mut self, record: FailureRecord) {
        self.failed_attempts = self.failed_attempts.saturating_add(1);
        self.first_failed_at.get_or_insert(record.at);
        self.last_failed_at = Some(record.at);
        if self.failures.len() >= FAILURES_KEPT_MAX {
            // Keep the earliest (why it started failing) and the latest (why it stopped).
            self.failures.remove(1);
        }
        self.failures.push(record);
        debug_assert!(self.failures.len() <= FAILURES_KEPT_MAX);
    }
}

/// Per-delivery state shared by every layer and attempt.
pub(crate) struct DeliveryShared {
    message: Message,
    topic: TopicName,
    group: GroupName,
    delivery_attempt: u32,
    pub(crate) lease: Lease,
    publisher: Option<Arc<dyn Publisher>>,
    pub(crate) shutdown: ShutdownSignal,
    log: Mutex<DeliveryLog>,
}

/// How the runtime builds contexts for its deliveries.
#[derive(Clone)]
pub(crate) struct ContextConfig {
    pub(crate) ack_timeout: Duration,
    pub(crate) publisher: Option<Arc<dyn Publisher>>,
    pub(crate) shutdown: ShutdownSignal,
}

/// The request every layer and handler receives: one delivery of one message, at one
/// attempt. Cheap to clone.
///
/// A handler reads the message ([`message`](Self::message), [`json`](Self::json)),
/// publishes effects ([`publish`](Self::publish)) that carry this message's correlation id
/// and have it as their causation, and — under an inbox layer — writes through the inbox's
/// transactional [`scope`](Self::scope).
#[derive(Clone)]
pub struct HandlerContext {
    delivery: Arc<DeliveryShared>,
    attempt: u32,
    effects: Option<Arc<EffectBuffer>>,
    result: Option<Arc<Mutex<Option<Vec<u8>>>>>,
    /// An `Arc<tokio::sync::Mutex<Option<S>>>` for the inbox's scope type `S`.
    scope: Option<Arc<dyn Any + Send + Sync>>,
}

impl fmt::Debug for HandlerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerContext")
            .field("topic", &self.delivery.topic)
            .field("group", &self.delivery.group)
            .field("message_id", &self.delivery.message.id)
            .field("event_type", &self.delivery.message.event_type)
            .field("delivery_attempt", &self.delivery.delivery_attempt)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl HandlerContext {
    /// A context for `message` that is not tied to a transport delivery: for calling a
    /// handler or a layer stack directly (unit tests, replays). Its lease cannot be lost;
    /// it has no publisher unless [`with_publisher`](Self::with_publisher) sets one.
    ///
    /// ```
    /// use runnel::consumer::HandlerContext;
    /// use runnel::core::message::{GroupName, Message, TopicName};
    ///
    /// let msg = Message::json("OrderPlaced", &serde_json::json!({"order": 7}));
    /// let ctx = HandlerContext::detached(msg, TopicName::new("orders")?, GroupName::new("billing")?);
    /// assert_eq!(ctx.attempt(), 1);
    /// assert_eq!(ctx.message().event_type, "OrderPlaced");
    /// # Ok::<(), runnel::core::message::BusError>(())
    /// ```
    pub fn detached(message: Message, topic: TopicName, group: GroupName) -> Self {
        Self::build(
            message,
            topic,
            group,
            1,
            None,
            &ContextConfig {
                ack_timeout: ACK_TIMEOUT_DEFAULT,
                publisher: None,
                shutdown: ShutdownSignal::never(),
            },
        )
    }

    /// The same detached context with a publisher for the handler's effects.
    pub fn with_publisher(self, publisher: Arc<dyn Publisher>) -> Self {
        let d = &self.delivery;
        Self::build(
            d.message.clone(),
            d.topic.clone(),
            d.group.clone(),
            d.delivery_attempt,
            None,
            &ContextConfig {
                ack_timeout: d.lease.ack_timeout,
                publisher: Some(publisher),
                shutdown: d.shutdown.clone(),
            },
        )
    }

    pub(crate) fn from_delivery(delivery: Delivery, config: &ContextConfig) -> Self {
        let (message, handle) = delivery.into_parts();
        let topic = handle.topic.clone();
        let group = handle.group.clone();
        let attempt = handle.attempt;
        Self::build(message, topic, group, attempt, Some(handle), config)
    }

    fn build(
        message: Message,
        topic: TopicName,
        group: GroupName,
        delivery_attempt: u32,
        handle: Option<DeliveryHandle>,
        config: &ContextConfig,
    ) -> Self {
        HandlerContext {
            delivery: Arc::new(DeliveryShared {
                message,
                topic,
                group,
                delivery_attempt,
                lease: Lease::new(handle, config.ack_timeout),
                publisher: config.publisher.clone(),
                shutdown: config.shutdown.clone(),
                log: Mutex::new(DeliveryLog::default()),
            }),
            attempt: 1,
            effects: None,
            result: None,
            scope: None,
        }
    }

    /// The delivered message.
    pub fn message(&self) -> &Message {
        &self.delivery.message
    }

    /// The message's event type (what a [`Router`](super::Router) routes on).
    pub fn event_type(&self) -> &str {
        &self.delivery.message.event_type
    }

    /// The topic it was delivered from.
    pub fn topic(&self) -> &TopicName {
        &self.delivery.topic
    }

    /// The consumer group it was delivered to.
    pub fn group(&self) -> &GroupName {
        &self.delivery.group
    }

    /// This attempt within the delivery: 1 for the first try, 2 for the first in-process
    /// retry, ...
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The transport's delivery count: 1 for the first delivery, 2 for the first
    /// redelivery, ...
    pub fn delivery_attempt(&self) -> u32 {
        self.delivery.delivery_attempt
    }

    /// The payload decoded from JSON; a payload that does not decode is a permanent error
    /// (it will never decode, so retrying is pointless).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.delivery.message.payload).map_err(HandlerError::permanent)
    }

    /// The metadata an effect of this message carries: the same correlation id (or this
    /// message's id if it has none), this message as the causation, the trace context.
    pub fn effect_metadata(&self) -> Metadata {
        self.delivery.message.effect_metadata()
    }

    /// A publisher for this handler's effects (also usable as a
    /// [`runnel_core::bus::Publisher`]).
    ///
    /// Every message published through it gets this message's correlation id (or this
    /// message's id, if it has none), this message's id as its causation id, its
    /// traceparent and user id — unless the handler set them itself. The messages are held
    /// until the attempt succeeds and are published before the delivery is marked
    /// processed and acked: a failed or timed-out attempt publishes nothing, a successful
    /// one publishes at least once.
    pub fn publisher(&self) -> EffectPublisher {
        EffectPublisher::new(self.clone())
    }

    /// Publishes `messages` to `topic` as effects of this message: see
    /// [`publisher`](Self::publisher).
    pub async fn publish(
        &self,
        topic: &TopicName,
        messages: Vec<Message>,
    ) -> Result<(), HandlerError> {
        self.publisher()
            .stage(topic, messages)
            .map_err(|f| match f {
                // Configuration and size mistakes fail the same way on every attempt.
                RouterFailure::NoPublisher
                | RouterFailure::TooManyEffects { .. }
                | RouterFailure::InvalidEffect(_) => HandlerError::permanent(f),
                other => HandlerError::retryable(other),
            })
    }

    /// The inbox's transactional scope for this attempt (under an
    /// [`InboxLayer`](super::layers::InboxLayer)): what the handler writes through so its
    /// writes commit together with the processed-message mark. `S` is the inbox's
    /// [`Inbox::Scope`](super::inbox::Inbox::Scope) type.
    ///
    /// The scope stays locked while the guard lives; drop it before returning.
    pub async fn scope<S: Send + 'static>(&self) -> Result<InboxScope<S>, HandlerError> {
        let missing = |reason| {
            HandlerError::permanent(RouterFailure::NoInboxScope {
                expected: type_name::<S>(),
                reason,
            })
        };
        let slot = self
            .scope
            .clone()
            .ok_or_else(|| missing("no inbox layer is configured on this consumer"))?;
        let slot = slot
            .downcast::<tokio::sync::Mutex<Option<S>>>()
            .map_err(|_| missing("the configured inbox provides another scope type"))?;
        let guard = slot.lock_owned().await;
        OwnedMutexGuard::try_map(guard, Option::as_mut)
            .map(|guard| InboxScope { guard })
            .map_err(|_| missing("the attempt already ended and its scope was committed"))
    }

    /// Sets the result a dedup layer caches for this message (a receipt id, a status);
    /// duplicates get it back as [`Outcome::Duplicate`](super::Outcome::Duplicate).
    pub fn set_result(&self, result: impl Into<Vec<u8>>) {
        if let Some(slot) = &self.result {
            *lock(slot) = Some(result.into());
        }
    }

    /// Keeps this delivery from being redelivered for `by` more (a long-running handler).
    /// The retry layer does this by itself before long backoff waits.
    pub async fn extend_lease(&self, by: Duration) -> Result<(), HandlerError> {
        self.delivery
            .lease
            .extend(by)
            .await
            .map_err(|e| HandlerError::abandoned(RouterFailure::LeaseLost(e)))
    }

    /// Whether the consumer is shutting down (a long handler may stop early and return
    /// [`HandlerError::redeliver`]).
    pub fn is_shutting_down(&self) -> bool {
        self.delivery.shutdown.is_requested()
    }

    /// The failed attempts of this delivery so far, oldest first (for custom layers).
    pub fn failures(&self) -> Vec<FailureRecord> {
        lock(&self.delivery.log).failures.clone()
    }

    // ---- for the layers ----

    pub(crate) fn shared(&self) -> &DeliveryShared {
        &self.delivery
    }

    pub(crate) fn log(&self) -> MutexGuard<'_, DeliveryLog> {
        lock(&self.delivery.log)
    }

    pub(crate) fn publisher_arc(&self) -> Option<&Arc<dyn Publisher>> {
        self.delivery.publisher.as_ref()
    }

    pub(crate) fn effects(&self) -> Option<&Arc<EffectBuffer>> {
        self.effects.as_ref()
    }

    pub(crate) fn for_attempt(&self, attempt: u32) -> Self {
        debug_assert!(attempt >= 1);
        HandlerContext {
            attempt,
            ..self.clone()
        }
    }

    pub(crate) fn with_effects(mut self, effects: Arc<EffectBuffer>) -> Self {
        self.effects = Some(effects);
        self
    }

    pub(crate) fn with_result_slot(mut self, slot: Arc<Mutex<Option<Vec<u8>>>>) -> Self {
        self.result = Some(slot);
        self
    }

    pub(crate) fn with_scope_slot(mut self, slot: Arc<dyn Any + Send + Sync>) -> Self {
        self.scope = Some(slot);
        self
    }
}

/// The inbox's scope, locked for the handler (see [`HandlerContext::scope`]).
pub struct InboxScope<S: 'static> {
    guard: OwnedMappedMutexGuard<Option<S>, S>,
}

impl<S: fmt::Debug> fmt::Debug for InboxScope<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InboxScope").field(&*self.guard).finish()
    }
}

impl<S> Deref for InboxScope<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.guard
    }
}

impl<S> DerefMut for InboxScope<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_core::dead_letter::FailureRecord;

    #[test]
    fn failure_log_is_bounded_and_keeps_the_first_and_the_latest() {
        let mut log = DeliveryLog::default();
        let total = u32::try_from(FAILURES_KEPT_MAX).unwrap() + 10;
        for attempt in 1..=total {
            log.record_failure(FailureRecord {
                attempt,
                at: Utc::now(),
                error: format!("e{attempt}"),
                permanent: false,
            });
        }
        assert_eq!(log.failures.len(), FAILURES_KEPT_MAX);
        assert_eq!(log.failures[0].attempt, 1);
        assert_eq!(log.failures.last().unwrap().attempt, total);
        assert_eq!(log.failed_attempts, total);
        assert!(log.first_failed_at <= log.last_failed_at);
    }
}
