//! Router overhead, in memory (no bus, no disk): a no-op handler called directly, beside
//! the same handler through the router's default layers, and through a whole consumer
//! (the layers plus the consumer's task, which spawns, settles and acks each delivery)
//! fed by an in-memory subscriber.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use runnel::async_trait;
use runnel::consumer::layers::{
    DeadLetterLayer, KeyOrderLayer, MetricsLayer, RetryLayer, TimeoutLayer, TracingLayer,
    PER_KEY_QUEUE_MAX_DEFAULT,
};
use runnel::consumer::{
    default_retry_policy, Consumer, HandlerContext, HandlerError, HandlerService, Router,
    HANDLER_TIMEOUT_DEFAULT, MAX_CONCURRENCY_DEFAULT,
};
use runnel_core::bus::{
    Acknowledger, Delivery, DeliveryStream, SubscribeOptions, Subscriber, MAX_IN_FLIGHT_DEFAULT,
};
use runnel_core::dead_letter::DeadLetterStore;
use runnel_core::{BusError, GroupName, Message, TopicName};
use tokio::sync::mpsc;
use tower::limit::ConcurrencyLimitLayer;
use tower::{Service as _, ServiceBuilder, ServiceExt as _};

use super::end_to_end::noop;
use super::workload::{message, Latency, Run, EVENT_TYPE};

/// Calls between two looks at the clock.
const CALLS_PER_CHECK: u64 = 256;

/// What every router scenario handles.
pub struct Setup {
    pub message: Message,
    pub topic: TopicName,
    pub group: GroupName,
    /// Given to the dead-letter layer; never written (the handler never fails).
    pub dead_letters: Arc<dyn DeadLetterStore>,
}

impl Setup {
    pub fn new(dead_letters: Arc<dyn DeadLetterStore>) -> anyhow::Result<Self> {
        Ok(Setup {
            message: message(0),
            topic: TopicName::new("bench-router")?,
            group: GroupName::new("bench")?,
            dead_letters,
        })
    }

    fn context(&self) -> HandlerContext {
        HandlerContext::detached(self.message.clone(), self.topic.clone(), self.group.clone())
    }
}

fn failed(e: HandlerError) -> anyhow::Error {
    anyhow::anyhow!("the no-op handler failed: {}", e.report())
}

fn run_of(calls: u64, elapsed: Duration) -> anyhow::Result<Run> {
    Ok(Run {
        messages: calls,
        elapsed,
        commits: 0,
        latency: Latency::new()?,
    })
}

/// The handler called directly, one call after another, each with a fresh context (as
/// the layered runs get).
pub async fn direct(
    setup: &Setup,
    duration: Duration,
    count: Arc<AtomicU64>,
) -> anyhow::Result<Run> {
    let mut calls = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        for _ in 0..CALLS_PER_CHECK {
            noop(setup.context()).await.map_err(failed)?;
        }
        calls += CALLS_PER_CHECK;
        count.store(calls, Ordering::Relaxed);
    }
    run_of(calls, start.elapsed())
}

/// The handler (in a [`Router`] with one route) under the default layers, in the order
/// `ConsumerBuilder::build` documents and builds them with its default settings, called
/// one after another.
pub async fn layered(
    setup: &Setup,
    duration: Duration,
    count: Arc<AtomicU64>,
) -> anyhow::Result<Run> {
    let mut service = ServiceBuilder::new()
        .layer(TracingLayer::new())
        .layer(KeyOrderLayer::new(
            PER_KEY_QUEUE_MAX_DEFAULT,
            MAX_IN_FLIGHT_DEFAULT,
        ))
        .layer(MetricsLayer::new())
        .layer(DeadLetterLayer::new(Arc::clone(&setup.dead_letters)))
        .layer(RetryLayer::new(default_retry_policy()))
        .layer(ConcurrencyLimitLayer::new(MAX_CONCURRENCY_DEFAULT))
        .layer(TimeoutLayer::new(HANDLER_TIMEOUT_DEFAULT))
        .service(HandlerService::new(Router::new().route(EVENT_TYPE, noop)));
    let mut calls = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        for _ in 0..CALLS_PER_CHECK {
            service.ready().await.map_err(failed)?;
            service.call(setup.context()).await.map_err(failed)?;
        }
        calls += CALLS_PER_CHECK;
        count.store(calls, Ordering::Relaxed);
    }
    run_of(calls, start.elapsed())
}

/// A whole consumer built by `Consumer::builder` with its defaults, fed from a bounded
/// channel: a producer task hands out deliveries as fast as the consumer takes them, the
/// consumer runs each through its layers on a task of its own and acks it. The time runs
/// until the consumer has acked the last one and stopped.
pub async fn consumer(
    setup: &Setup,
    duration: Duration,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<Run> {
    let (tx, rx) = mpsc::channel::<Delivery>(MAX_IN_FLIGHT_DEFAULT);
    let subscriber = Arc::new(ChannelSubscriber {
        deliveries: Mutex::new(Some(rx)),
    });
    let handle = Consumer::builder(subscriber, setup.topic.clone(), setup.group.clone())
        .handler(Router::new().route(EVENT_TYPE, noop))
        .dead_letters(Arc::clone(&setup.dead_letters))
        .start()
        .await
        .context("cannot start the in-memory consumer")?;
    let mut sent = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        for _ in 0..CALLS_PER_CHECK {
            let delivery = Delivery::new(
                setup.message.clone(),
                setup.topic.clone(),
                setup.group.clone(),
                1,
                Box::new(CountingAck {
                    acked: Arc::clone(&acked),
                }),
            );
            tx.send(delivery)
                .await
                .context("the in-memory consumer stopped early")?;
        }
        sent += CALLS_PER_CHECK;
    }
    // The subscription ends; the consumer finishes what it holds and stops.
    drop(tx);
    let report = handle
        .join()
        .await
        .context("the in-memory consumer failed")?;
    let elapsed = start.elapsed();
    anyhow::ensure!(
        report.acked == sent && acked.load(Ordering::Relaxed) == sent,
        "the in-memory consumer acked {} of {sent} deliveries",
        report.acked
    );
    run_of(sent, elapsed)
}

/// Hands out the deliveries of one channel to the first subscription.
struct ChannelSubscriber {
    deliveries: Mutex<Option<mpsc::Receiver<Delivery>>>,
}

#[async_trait]
impl Subscriber for ChannelSubscriber {
    async fn subscribe(
        &self,
        _topic: &TopicName,
        _group: &GroupName,
        _options: SubscribeOptions,
    ) -> Result<DeliveryStream, BusError> {
        let rx = self
            .deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| BusError::InvalidArgument("subscribed twice".into()))?;
        Ok(Box::pin(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|d| (Ok(d), rx)) },
        )))
    }
}

struct CountingAck {
    acked: Arc<AtomicU64>,
}

#[async_trait]
impl Acknowledger for CountingAck {
    async fn ack(&self) -> Result<(), BusError> {
        self.acked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn nack(&self, _delay: Option<Duration>) -> Result<(), BusError> {
        Err(BusError::InvalidArgument(
            "the no-op handler never fails; nothing is nacked".into(),
        ))
    }

    async fn extend(&self, _by: Duration) -> Result<(), BusError> {
        Ok(())
    }
}
