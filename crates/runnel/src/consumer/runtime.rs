//! The consumer's task: pulls deliveries while the layer stack has room (back-pressure),
//! runs each through the stack, settles it (ack / nack / leave) by the outcome, and shuts
//! down gracefully.

use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use runnel_core::bus::{
    Delivery, DeliveryStream, Publisher, SubscribeOptions, Subscriber, NACK_DELAY_MAX,
};
use runnel_core::message::{BusError, GroupName, TopicName};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle, JoinSet};

use crate::join_once::JoinOnce;
use tower::Service;

use super::builder::ConsumerBuilder;
use super::context::{lock, ContextConfig, HandlerContext, ShutdownSignal};
use super::error::{ConsumerError, ErrorKind, HandlerError};
use super::handler::{BoxFuture, Outcome};
use super::lag::LagProbe;
use super::layers::{BoxHandlerService, METRIC_LAG, METRIC_REPLAYS_SKIPPED};
use crate::dead_letter::{replay_targets_other_group, REPLAY_GROUP_HEADER};

/// How long a failure that escaped every layer (no dead-letter layer) waits before the
/// message comes back.
pub const UNHANDLED_FAILURE_NACK_DELAY: Duration = Duration::from_secs(30);
/// First wait after the subscription yields an error; doubles per consecutive error.
const STREAM_ERROR_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between consecutive subscription errors.
const STREAM_ERROR_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A configured consumer: one consumer group member on one topic, running a handler
/// through the router's layers. Start it with [`start`](Consumer::start).
pub struct Consumer {
    subscriber: Arc<dyn Subscriber>,
    topic: TopicName,
    group: GroupName,
    options: SubscribeOptions,
    service: BoxHandlerService,
    publisher: Option<Arc<dyn Publisher>>,
    shutdown_grace: Duration,
    lag: Option<(Arc<dyn LagProbe>, Duration)>,
    keep_lease_alive: bool,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// Starts configuring a consumer of `topic` in consumer group `group`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use runnel::consumer::{Consumer, HandlerContext, HandlerError, Router};
    /// use runnel::core::bus::{Publisher, Subscriber};
    /// use runnel::core::dead_letter::DeadLetterStore;
    /// use runnel::core::message::{GroupName, Message, TopicName};
    /// use runnel::RetryPolicy;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct OrderPlaced { order_id: String }
    ///
    /// async fn reserve_stock(ctx: HandlerContext) -> Result<(), HandlerError> {
    ///     let event: OrderPlaced = ctx.json()?; // malformed JSON: permanent, dead-lettered
    ///     // ... reserve ...; the effect carries the order's correlation id and has this
    ///     // message as its causation.
    ///     let reserved = Message::json("StockReserved", &serde_json::json!({"order_id": event.order_id}))
    ///         .with_key(format!("Order-{}", event.order_id));
    ///     ctx.publish(&TopicName::new("inventory")?, vec![reserved]).await
    /// }
    ///
    /// async fn run(
    ///     bus: Arc<dyn Subscriber>,
    ///     publisher: Arc<dyn Publisher>,
    ///     dead_letters: Arc<dyn DeadLetterStore>,
    /// ) -> Result<(), Box<dyn std::error::Error>> {
    ///     let consumer = Consumer::builder(bus, TopicName::new("orders")?, GroupName::new("inventory")?)
    ///         .handler(Router::new().route("OrderPlaced", reserve_stock))
    ///         .publisher(publisher)
    ///         .dead_letters(dead_letters)
    ///         .retry(RetryPolicy {
    ///             max_attempts: 5,
    ///             base_delay: Duration::from_millis(200),
    ///             max_delay: Duration::from_secs(10),
    ///         })
    ///         .handler_timeout(Duration::from_secs(10))
    ///         .max_concurrency(32)
    ///         .start()
    ///         .await?;
    ///     // ... later: stop pulling, give in-flight messages 5 s, leave the rest unacked.
    ///     let report = consumer.shutdown(Duration::from_secs(5)).await?;
    ///     println!("acked {} messages", report.acked);
    ///     Ok(())
    /// }
    /// ```
    pub fn builder(
        subscriber: Arc<dyn Subscriber>,
        topic: TopicName,
        group: GroupName,
    ) -> ConsumerBuilder {
        ConsumerBuilder::new(subscriber, topic, group)
    }

    #[allow(clippy::too_many_arguments)] // crate-internal; the builder is the public face
    pub(crate) fn new(
        subscriber: Arc<dyn Subscriber>,
        topic: TopicName,
        group: GroupName,
        options: SubscribeOptions,
        service: BoxHandlerService,
        publisher: Option<Arc<dyn Publisher>>,
        shutdown_grace: Duration,
        lag: Option<(Arc<dyn LagProbe>, Duration)>,
        keep_lease_alive: bool,
    ) -> Self {
        Consumer {
            subscriber,
            topic,
            group,
            options,
            service,
            publisher,
            shutdown_grace,
            lag,
            keep_lease_alive,
        }
    }

    /// The topic.
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// The consumer group.
    pub fn group(&self) -> &GroupName {
        &self.group
    }

    /// Subscribes and starts consuming on a tokio task.
    pub async fn start(self) -> Result<ConsumerHandle, ConsumerError> {
        let stream = self
            .subscriber
            .subscribe(&self.topic, &self.group, self.options.clone())
            .await
            .map_err(|source| ConsumerError::Subscribe {
                topic: self.topic.to_string(),
                group: self.group.to_string(),
                source,
            })?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop = ShutdownSignal::new(stop_rx);
        let grace = Arc::new(Mutex::new(self.shutdown_grace));
        let lag_task = self.lag.map(|(probe, interval)| {
            tokio::spawn(lag_loop(
                probe,
                interval,
                self.topic.clone(),
                self.group.clone(),
                stop.clone(),
            ))
        });
        super::board::started(self.topic.as_str(), self.group.as_str());
        tracing::info!(topic = %self.topic, group = %self.group, "consumer started");
        let driver = Driver {
            stream,
            service: self.service,
            config: ContextConfig {
                ack_timeout: self.options.ack_timeout,
                publisher: self.publisher,
                shutdown: stop.clone(),
            },
            stop,
            grace: Arc::clone(&grace),
            buffered_max: self.options.max_in_flight,
            lag_task,
            keep_lease_alive: self.keep_lease_alive,
        };
        Ok(ConsumerHandle {
            stop: stop_tx,
            grace,
            task: JoinOnce::new(tokio::spawn(driver.run())),
            topic: self.topic,
            group: self.group,
        })
    }
}

/// What a consumer did with its deliveries, reported when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Deliveries acknowledged (handled, duplicates, dead-lettered).
    pub acked: u64,
    /// Deliveries nacked to come again.
    pub nacked: u64,
    /// Deliveries left unsettled for the transport to redeliver after their ack timeout
    /// (not started before shutdown, cut off at the shutdown deadline, lease lost).
    pub left_unsettled: u64,
    /// Acks or nacks the transport refused (the message will come back).
    pub settle_errors: u64,
}

/// A running consumer. Dropping the handle detaches the consumer: it runs until its
/// subscription ends.
#[derive(Debug)]
pub struct ConsumerHandle {
    stop: watch::Sender<bool>,
    grace: Arc<Mutex<Duration>>,
    task: JoinOnce<ShutdownReport>,
    topic: TopicName,
    group: GroupName,
}

impl ConsumerHandle {
    /// Graceful shutdown: stops pulling deliveries, lets in-flight handling finish for up
    /// to `grace`, then cancels what is left. Nothing unfinished is acked: deliveries that
    /// had not started, or were cut off, are left for the transport to redeliver; a
    /// delivery waiting in a retry backoff is nacked with the rest of its wait.
    pub async fn shutdown(self, grace: Duration) -> Result<ShutdownReport, ConsumerError> {
        *lock(&self.grace) = grace;
        // Fails only if the consumer already stopped; joining reports that either way.
        let _ = self.stop.send(true);
        self.join().await
    }

    /// Waits until the consumer stops (its subscription ended, or shutdown was asked
    /// through another path).
    pub async fn join(mut self) -> Result<ShutdownReport, ConsumerError> {
        self.stopped().await
    }

    /// Waits until the consumer stops by itself (its subscription ended or its task
    /// panicked), without asking it to. Cancel-safe: a supervisor selects on it beside its
    /// own shutdown signal, then still calls [`ConsumerHandle::shutdown`].
    pub async fn stopped(&mut self) -> Result<ShutdownReport, ConsumerError> {
        self.task
            .join()
            .await
            .map_err(|reason| ConsumerError::TaskFailed {
                topic: self.topic.to_string(),
                group: self.group.to_string(),
                reason,
            })
    }

    /// Whether the consumer has stopped.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// How one delivery was settled.
enum Settled {
    Acked,
    Nacked,
    Unsettled,
    Failed,
}

impl ShutdownReport {
    fn record(&mut self, joined: Result<Settled, JoinError>) {
        match joined {
            Ok(Settled::Acked) => self.acked += 1,
            Ok(Settled::Nacked) => self.nacked += 1,
            Ok(Settled::Unsettled) => self.left_unsettled += 1,
            Ok(Settled::Failed) => self.settle_errors += 1,
            Err(e) => {
                if e.is_panic() {
                    tracing::error!(error = %e, "a delivery task panicked; the message will be redelivered");
                }
                self.left_unsettled += 1;
            }
        }
    }
}

struct Driver {
    stream: DeliveryStream,
    service: BoxHandlerService,
    config: ContextConfig,
    stop: ShutdownSignal,
    grace: Arc<Mutex<Duration>>,
    /// Our own bound on deliveries held, whatever the stack does (= `max_in_flight`).
    buffered_max: usize,
    lag_task: Option<JoinHandle<()>>,
    /// [`ConsumerBuilder::keep_lease_alive`](super::ConsumerBuilder::keep_lease_alive).
    keep_lease_alive: bool,
}

impl Driver {
    async fn run(mut self) -> ShutdownReport {
        let mut tasks: JoinSet<Settled> = JoinSet::new();
        let mut report = ShutdownReport::default();
        let mut stream_errors: u32 = 0;
        let stop = self.stop.clone();

        loop {
            // Room for one more delivery: our own bound, then the stack's readiness (the
            // key-order layer's per-key and total bounds). Until there is room we only
            // reap finished deliveries and do not pull: that is the back-pressure.
            if tasks.len() >= self.buffered_max {
                tokio::select! {
                    biased;
                    () = stop.requested() => break,
                    Some(joined) = tasks.join_next() => report.record(joined),
                }
                continue;
            }
            let ready = tokio::select! {
                biased;
                () = stop.requested() => break,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    report.record(joined);
                    continue;
                }
                ready = poll_fn(|cx| self.service.poll_ready(cx)) => ready,
            };
            if let Err(e) = ready {
                tracing::error!(error = %e, "the consumer's service failed; stopping");
                break;
            }
            let next = tokio::select! {
                biased;
                () = stop.requested() => break,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    report.record(joined);
                    continue;
                }
                next = self.stream.next() => next,
            };
            match next {
                None | Some(Err(BusError::Closed)) => {
                    tracing::info!("the subscription ended");
                    break;
                }
                Some(Err(e)) => {
                    stream_errors = stream_errors.saturating_add(1);
                    let backoff = STREAM_ERROR_BACKOFF_MIN
                        .saturating_mul(1 << stream_errors.min(16))
                        .min(STREAM_ERROR_BACKOFF_MAX);
                    tracing::warn!(error = %e, ?backoff, "the subscription failed; retrying");
                    tokio::select! {
                        biased;
                        () = stop.requested() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                }
                Some(Ok(delivery)) => {
                    stream_errors = 0;
                    if replay_targets_other_group(&delivery.message, &delivery.group) {
                        // Before the stack, whatever it is (default or custom): the message
                        // is not this group's, so no layer — inbox, retry, dead letter —
                        // may act on it, and it must not wait in its key's line.
                        tasks.spawn(skip_replay_for_other_group(delivery));
                        continue;
                    }
                    super::board::received(
                        delivery.topic.as_str(),
                        delivery.group.as_str(),
                        delivery.message.time,
                    );
                    let ctx = HandlerContext::from_delivery(delivery, &self.config);
                    // `call` right after readiness, in delivery order: the key-order layer
                    // takes each delivery's place in its key's line here.
                    let handling = self.service.call(ctx.clone());
                    tasks.spawn(settle(handling, ctx, self.keep_lease_alive));
                }
            }
        }

        let grace = *lock(&self.grace);
        drain(&mut tasks, grace, &mut report).await;
        if let Some(lag) = self.lag_task.take() {
            lag.abort();
        }
        // Only now: a transport may need its subscription alive to settle deliveries.
        drop(self.stream);
        tracing::info!(
            acked = report.acked,
            nacked = report.nacked,
            left_unsettled = report.left_unsettled,
            "consumer stopped"
        );
        report
    }
}

/// Waits up to `grace` for in-flight deliveries, then cancels the rest (their deliveries
/// are dropped unsettled and come back after their ack timeout).
async fn drain(tasks: &mut JoinSet<Settled>, grace: Duration, report: &mut ShutdownReport) {
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(joined) => report.record(joined),
                None => return,
            },
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    tracing::warn!(
        unfinished = tasks.len(),
        "shutdown deadline passed; unfinished deliveries are left to be redelivered"
    );
    tasks.abort_all();
    while let Some(joined) = tasks.join_next().await {
        report.record(joined);
    }
}

/// Acknowledges, without handling, a dead-letter replay that targets another consumer
/// group (see [`crate::dead_letter::replay`]): on transports without per-group delivery
/// every group receives it, and only the named one may act on it.
async fn skip_replay_for_other_group(delivery: Delivery) -> Settled {
    metrics::counter!(
        METRIC_REPLAYS_SKIPPED,
        "topic" => delivery.topic.to_string(),
        "group" => delivery.group.to_string()
    )
    .increment(1);
    let message_id = delivery.message.id.clone();
    tracing::debug!(
        message_id,
        target_group = delivery.message.headers.get(REPLAY_GROUP_HEADER).map(String::as_str),
        group = %delivery.group,
        "a dead-letter replay for another group; acknowledged without handling"
    );
    match delivery.ack().await {
        Ok(()) => Settled::Acked,
        Err(e) => {
            tracing::warn!(message_id, error = %e, "ack of a replay for another group failed; it comes back and is skipped again");
            Settled::Failed
        }
    }
}

/// Runs `handling` while extending its delivery's lease every third of the ack timeout
/// (see [`ConsumerBuilder::keep_lease_alive`](super::ConsumerBuilder::keep_lease_alive)).
async fn keeping_lease_alive(
    handling: BoxFuture<Result<Outcome, HandlerError>>,
    ctx: &HandlerContext,
) -> Result<Outcome, HandlerError> {
    let lease = &ctx.shared().lease;
    let period = lease.ack_timeout() / 3;
    // Polled beside `handling` in this one task (never awaited alone), so an extension
    // waiting for the lease's lock never blocks a layer that holds it.
    let keep = async {
        loop {
            tokio::time::sleep(period).await;
            match lease.keep_through(Duration::ZERO).await {
                Ok(_) => {}
                Err(e @ BusError::DeliveryLost(_)) => {
                    tracing::debug!(error = %e, "the delivery's lease is lost; no more keep-alives");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "could not extend the delivery's lease"),
            }
        }
    };
    tokio::pin!(handling);
    tokio::select! {
        result = &mut handling => result,
        () = keep => handling.await,
    }
}

/// Runs one delivery through the stack and settles it with the transport.
async fn settle(
    handling: BoxFuture<Result<Outcome, HandlerError>>,
    ctx: HandlerContext,
    keep_lease_alive: bool,
) -> Settled {
    let result = if keep_lease_alive {
        keeping_lease_alive(handling, &ctx).await
    } else {
        handling.await
    };
    let Some(handle) = ctx.shared().lease.take().await else {
        return Settled::Unsettled;
    };
    let message_id = ctx.message().id.as_str();
    let delay = match result {
        Ok(_) => {
            return match handle.ack().await {
                Ok(()) => Settled::Acked,
                Err(e) => {
                    tracing::warn!(message_id, error = %e, "ack failed; the message will be redelivered");
                    Settled::Failed
                }
            };
        }
        Err(e) => match e.kind() {
            ErrorKind::Abandoned => {
                tracing::debug!(message_id, reason = %e, "left unsettled for redelivery");
                return Settled::Unsettled;
            }
            ErrorKind::Redeliver { after } => after,
            // Only without a dead-letter layer: keep the message on the bus, never drop it.
            _ => {
                tracing::warn!(message_id, error = %e, "handling failed and no dead-letter layer took it; nacking");
                Some(UNHANDLED_FAILURE_NACK_DELAY)
            }
        },
    };
    match handle.nack(delay.map(|d| d.min(NACK_DELAY_MAX))).await {
        Ok(()) => Settled::Nacked,
        Err(e) => {
            tracing::warn!(message_id, error = %e, "nack failed; the message comes back after its ack timeout");
            Settled::Failed
        }
    }
}

async fn lag_loop(
    probe: Arc<dyn LagProbe>,
    interval: Duration,
    topic: TopicName,
    group: GroupName,
    stop: ShutdownSignal,
) {
    let gauge =
        metrics::gauge!(METRIC_LAG, "topic" => topic.to_string(), "group" => group.to_string());
    loop {
        match probe.lag(&topic, &group).await {
            // Precision loss above 2^53 messages is irrelevant for a gauge.
            Ok(Some(lag)) => {
                gauge.set(lag as f64);
                super::board::probed(topic.as_str(), group.as_str(), lag);
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "the lag probe failed"),
        }
        tokio::select! {
            biased;
            () = stop.requested() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
