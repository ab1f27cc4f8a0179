//! [`ConsumerBuilder`]: configures a consumer and builds its layer stack — the default
//! order of the layers is written (with its reasons) in [`ConsumerBuilder::build`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use runnel_core::bus::{Publisher, SubscribeOptions, Subscriber};
use runnel_core::dead_letter::DeadLetterStore;
use runnel_core::idempotency::DedupStore;
use runnel_core::message::{GroupName, TopicName};
use runnel_core::{Clock, SystemClock};
use tower::limit::ConcurrencyLimitLayer;
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceBuilder};

use super::context::HandlerContext;
use super::error::{Classify, ConsumerError, DefaultClassify, HandlerError};
use super::handler::{Handler, HandlerService, Outcome};
use super::inbox::Inbox;
use super::lag::{LagProbe, LAG_PROBE_INTERVAL_DEFAULT};
use super::layers::{
    BoxHandlerService, CustomLayers, DeadLetterLayer, DedupLayer, InboxLayer, KeyOrderLayer,
    MetricsLayer, RetryLayer, TimeoutLayer, TracingLayer, PER_KEY_QUEUE_MAX_DEFAULT,
};
use super::runtime::Consumer;
use super::time::{Sleeper, TokioSleeper};
use crate::retry::{FullJitter, Jitter, RetryPolicy};

/// Default most handler attempts running at once per consumer.
pub const MAX_CONCURRENCY_DEFAULT: usize = 16;
/// Upper bound for `max_concurrency`.
pub const MAX_CONCURRENCY_MAX: usize = 4096;
/// Default handler timeout per attempt: below the default 30 s ack timeout, so a stuck
/// attempt fails (and is retried) before the transport would redeliver the message.
pub const HANDLER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(20);
/// Default time in-flight deliveries get to finish when the subscription ends by itself
/// ([`ConsumerHandle::shutdown`](super::ConsumerHandle::shutdown) takes its own).
pub const SHUTDOWN_GRACE_DEFAULT: Duration = Duration::from_secs(30);
/// Default most attempts per delivery (the first included).
pub const RETRY_ATTEMPTS_MAX_DEFAULT: u32 = 5;
/// Default backoff ceiling after the first failed attempt.
pub const RETRY_BASE_DELAY_DEFAULT: Duration = Duration::from_millis(200);
/// Default largest backoff ceiling (waits happen while the key is held).
pub const RETRY_MAX_DELAY_DEFAULT: Duration = Duration::from_secs(10);

/// The consumer router's default retry policy: 5 attempts, backoff ceilings 200 ms,
/// 400 ms, 800 ms, 1.6 s (capped at 10 s), full jitter.
pub fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: RETRY_ATTEMPTS_MAX_DEFAULT,
        base_delay: RETRY_BASE_DELAY_DEFAULT,
        max_delay: RETRY_MAX_DELAY_DEFAULT,
    }
}

/// Configures a [`Consumer`]. Made by [`Consumer::builder`].
pub struct ConsumerBuilder {
    subscriber: Arc<dyn Subscriber>,
    topic: TopicName,
    group: GroupName,
    options: SubscribeOptions,
    handler: Option<Arc<dyn Handler>>,
    service: Option<BoxHandlerService>,
    publisher: Option<Arc<dyn Publisher>>,
    dead_letters: Option<Arc<dyn DeadLetterStore>>,
    retry: RetryPolicy,
    classify: Arc<dyn Classify>,
    jitter: Arc<dyn Jitter>,
    sleeper: Arc<dyn Sleeper>,
    clock: Arc<dyn Clock>,
    inbox: Option<InboxLayer>,
    dedup: Option<DedupLayer>,
    dedup_store: Option<Arc<dyn DedupStore>>,
    timeout: Option<Duration>,
    max_concurrency: usize,
    per_key_queue_max: usize,
    custom: CustomLayers,
    shutdown_grace: Duration,
    lag: Option<(Arc<dyn LagProbe>, Duration)>,
    keep_lease_alive: bool,
}

impl fmt::Debug for ConsumerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("options", &self.options)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("max_concurrency", &self.max_concurrency)
            .field("per_key_queue_max", &self.per_key_queue_max)
            .finish_non_exhaustive()
    }
}

impl ConsumerBuilder {
    pub(crate) fn new(subscriber: Arc<dyn Subscriber>, topic: TopicName, group: GroupName) -> Self {
        ConsumerBuilder {
            subscriber,
            topic,
            group,
            options: SubscribeOptions::default(),
            handler: None,
            service: None,
            publisher: None,
            dead_letters: None,
            retry: default_retry_policy(),
            classify: Arc::new(DefaultClassify),
            jitter: Arc::new(FullJitter),
            sleeper: Arc::new(TokioSleeper),
            clock: Arc::new(SystemClock),
            inbox: None,
            dedup: None,
            dedup_store: None,
            timeout: Some(HANDLER_TIMEOUT_DEFAULT),
            max_concurrency: MAX_CONCURRENCY_DEFAULT,
            per_key_queue_max: PER_KEY_QUEUE_MAX_DEFAULT,
            custom: CustomLayers::new(),
            shutdown_grace: SHUTDOWN_GRACE_DEFAULT,
            lag: None,
            keep_lease_alive: false,
        }
    }

    /// The handler (a closure, a type implementing [`Handler`], or a
    /// [`Router`](super::Router) of handlers by event type).
    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Replaces the whole default stack with `service` (compose your own from
    /// [`layers`](super::layers) with `tower::ServiceBuilder`). The settings that configure
    /// built-in layers are then ignored; the subscription, publisher and shutdown settings
    /// still apply. Include a [`KeyOrderLayer`] to keep per-key order; the consumer bounds
    /// its in-flight deliveries by `max_in_flight` either way.
    pub fn service<S>(mut self, service: S) -> Self
    where
        S: Service<HandlerContext, Response = Outcome, Error = HandlerError>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        self.service = Some(BoxCloneService::new(service));
        self
    }

    /// Where the handler's effects are published ([`HandlerContext::publish`]).
    pub fn publisher(mut self, publisher: Arc<dyn Publisher>) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// Where final failures go. Without a store they are nacked to come back later
    /// (never dropped) — set one in production.
    pub fn dead_letters(mut self, store: Arc<dyn DeadLetterStore>) -> Self {
        self.dead_letters = Some(store);
        self
    }

    /// The retry policy (default [`default_retry_policy`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Decides whether errors returned through `?` are retryable (default
    /// [`DefaultClassify`]).
    pub fn classify(mut self, classify: impl Classify) -> Self {
        self.classify = Arc::new(classify);
        self
    }

    /// Draws the retry waits (default [`FullJitter`]; tests pass a scripted one).
    pub fn jitter(mut self, jitter: Arc<dyn Jitter>) -> Self {
        self.jitter = jitter;
        self
    }

    /// Waits between retries and dedup polls (default tokio's timer).
    pub fn sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> Self {
        self.sleeper = sleeper;
        self
    }

    /// Stamps failure records (default the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Runs each attempt in a scope of `inbox`: exactly-once effects for handlers whose
    /// state lives in the inbox's database.
    pub fn inbox<I: Inbox>(mut self, inbox: Arc<I>) -> Self {
        self.inbox = Some(InboxLayer::from_arc(inbox));
        self
    }

    /// Like [`inbox`](Self::inbox), with a configured layer.
    pub fn inbox_layer(mut self, layer: InboxLayer) -> Self {
        self.inbox = Some(layer);
        self
    }

    /// Deduplicates through `store` (default TTLs; waits use this builder's sleeper).
    pub fn dedup(mut self, store: Arc<dyn DedupStore>) -> Self {
        self.dedup_store = Some(store);
        self.dedup = None;
        self
    }

    /// Like [`dedup`](Self::dedup), with a configured layer.
    pub fn dedup_layer(mut self, layer: DedupLayer) -> Self {
        self.dedup = Some(layer);
        self.dedup_store = None;
        self
    }

    /// Cancels an attempt after `timeout` (a retryable failure). Default
    /// [`HANDLER_TIMEOUT_DEFAULT`].
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Lets attempts run for as long as they take.
    pub fn no_handler_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }

    /// At most `max` attempts run at once (default [`MAX_CONCURRENCY_DEFAULT`]).
    pub fn max_concurrency(mut self, max: usize) -> Self {
        self.max_concurrency = max;
        self
    }

    /// At most `max` deliveries of one key are held (default
    /// [`PER_KEY_QUEUE_MAX_DEFAULT`]); when a key reaches it, the consumer stops pulling.
    pub fn per_key_queue(mut self, max: usize) -> Self {
        self.per_key_queue_max = max;
        self
    }

    /// Subscription options: `max_in_flight` also bounds the deliveries the consumer
    /// holds; `ack_timeout` is the lease the retry layer keeps extended.
    pub fn subscribe_options(mut self, options: SubscribeOptions) -> Self {
        self.options = options;
        self
    }

    /// Adds an application layer just above the handler timeout (inside idempotency, so
    /// it runs once per attempt). Layers run in the order they were added.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxHandlerService> + Send + Sync + 'static,
        L::Service: Service<HandlerContext, Response = Outcome, Error = HandlerError>
            + Clone
            + Send
            + 'static,
        <L::Service as Service<HandlerContext>>::Future: Send + 'static,
    {
        self.custom.push(layer);
        self
    }

    /// Keeps each delivery's lease with the transport alive while the consumer holds it
    /// (waiting for its key, being handled, between retries), extending it every third of
    /// the ack timeout. A handler may then take longer than `ack_timeout` without being
    /// redelivered meanwhile, and the ack timeout is only how long a crashed consumer's
    /// deliveries wait before they come back to the group: keep it short for a quick
    /// takeover when several processes share a group. Off by default: a delivery held past
    /// its ack timeout is redelivered (the idempotency layers absorb the duplicate).
    pub fn keep_lease_alive(mut self) -> Self {
        self.keep_lease_alive = true;
        self
    }

    /// Time in-flight deliveries get when the subscription ends by itself.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Polls `probe` every `interval` (default [`LAG_PROBE_INTERVAL_DEFAULT`] if `None`) for
    /// the `runnel_consumer_lag_messages` gauge.
    pub fn lag_probe(mut self, probe: Arc<dyn LagProbe>, interval: Option<Duration>) -> Self {
        self.lag = Some((probe, interval.unwrap_or(LAG_PROBE_INTERVAL_DEFAULT)));
        self
    }

    fn validate(&self) -> Result<(), ConsumerError> {
        self.options
            .validate()
            .map_err(|e| ConsumerError::InvalidSetting(e.to_string()))?;
        if self.max_concurrency == 0 || self.max_concurrency > MAX_CONCURRENCY_MAX {
            return Err(ConsumerError::InvalidSetting(format!(
                "max_concurrency must be 1..={MAX_CONCURRENCY_MAX}"
            )));
        }
        if self.per_key_queue_max == 0 {
            return Err(ConsumerError::InvalidSetting(
                "per_key_queue must be at least 1".into(),
            ));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConsumerError::InvalidSetting(
                "the handler timeout must be above zero (or use no_handler_timeout)".into(),
            ));
        }
        if let Some(t) = self.timeout.filter(|_| !self.keep_lease_alive) {
            if t >= self.options.ack_timeout {
                tracing::warn!(
                    handler_timeout = ?t,
                    ack_timeout = ?self.options.ack_timeout,
                    "the handler timeout is not below the ack timeout: a slow attempt may be redelivered elsewhere while it still runs"
                );
            }
        }
        Ok(())
    }

    /// Builds the consumer. Unless [`service`](Self::service) replaced it, the layer stack
    /// is, from the outside in:
    ///
    /// 1. **tracing** — outermost, so everything that happens to a delivery (waiting for
    ///    its key, every attempt, dead-lettering) is inside its span;
    /// 2. **key order** — admission: one delivery per key at a time, in delivery order,
    ///    bounded queues; everything below runs while the key is held, so retries keep
    ///    per-key order and other keys go on meanwhile;
    /// 3. **metrics** — below key order, so handling time and in-flight count deliveries
    ///    being handled, not queued; above dead letter and retry, so it sees final outcomes
    ///    and the whole retry history;
    /// 4. **dead letter** — turns the final failure (after retries, or a permanent error)
    ///    into a stored dead letter and an ack; nacks if the store fails;
    /// 5. **retry** — attempts with backoff; everything below runs once per attempt;
    /// 6. **concurrency limit** — per attempt, so a key waiting in backoff holds no slot
    ///    and a failing key cannot starve the others;
    /// 7. **inbox**, then **dedup** — per attempt, inside retry: a failed attempt rolls
    ///    its transaction back or releases its lock, and a duplicate found on any attempt
    ///    is skipped;
    /// 8. **application layers** ([`layer`](Self::layer)), in the order added;
    /// 9. **timeout** — innermost around the handler: it times the handler alone (not the
    ///    inbox commit or dedup waits), and a timed-out attempt is a retryable failure;
    /// 10. the **handler** (panics are caught as retryable failures; effects published on
    ///     success).
    ///
    /// Before any layer — whether this stack or a [`service`](Self::service) of your own —
    /// the consumer acknowledges, without handling, dead-letter replays addressed to
    /// another group ([`replay_targets_other_group`](crate::dead_letter::replay_targets_other_group);
    /// metric `runnel_consumer_replays_skipped_total`).
    pub fn build(self) -> Result<Consumer, ConsumerError> {
        self.validate()?;
        let service = match self.service.clone() {
            Some(service) => service,
            None => {
                let handler = self
                    .handler
                    .clone()
                    .ok_or_else(|| ConsumerError::NoHandler {
                        topic: self.topic.to_string(),
                        group: self.group.to_string(),
                    })?;
                if self.dead_letters.is_none() {
                    tracing::warn!(
                        topic = %self.topic,
                        group = %self.group,
                        "no dead-letter store: messages that fail for good will be nacked and come back forever"
                    );
                }
                self.default_stack(handler)
            }
        };
        Ok(Consumer::new(
            self.subscriber,
            self.topic,
            self.group,
            self.options,
            service,
            self.publisher,
            self.shutdown_grace,
            self.lag,
            self.keep_lease_alive,
        ))
    }

    /// Builds and starts the consumer.
    pub async fn start(self) -> Result<super::ConsumerHandle, ConsumerError> {
        self.build()?.start().await
    }

    /// The default stack: see [`build`](Self::build) for the order and why.
    fn default_stack(&self, handler: Arc<dyn Handler>) -> BoxHandlerService {
        let retry = RetryLayer::new(self.retry)
            .classify(Arc::clone(&self.classify))
            .jitter(Arc::clone(&self.jitter))
            .sleeper(Arc::clone(&self.sleeper))
            .clock(Arc::clone(&self.clock));
        let dead_letter = self
            .dead_letters
            .clone()
            .map(|store| DeadLetterLayer::new(store).clock(Arc::clone(&self.clock)));
        let dedup = self.dedup.clone().or_else(|| {
            self.dedup_store
                .clone()
                .map(|store| DedupLayer::new(store).sleeper(Arc::clone(&self.sleeper)))
        });
        let stack = ServiceBuilder::new()
            .layer(TracingLayer::new()) // 1
            .layer(KeyOrderLayer::new(
                self.per_key_queue_max,
                self.options.max_in_flight,
            )) // 2
            .layer(MetricsLayer::new()) // 3
            .option_layer(dead_letter) // 4
            .layer(retry) // 5
            .layer(ConcurrencyLimitLayer::new(self.max_concurrency)) // 6
            .option_layer(self.inbox.clone()) // 7
            .option_layer(dedup) // 7
            .layer(self.custom.clone()) // 8
            .option_layer(self.timeout.map(TimeoutLayer::new)) // 9
            .service(HandlerService::from_arc(handler)); // 10
        BoxCloneService::new(stack)
    }
}
