//! End to end: publish → delivered → handled by a no-op handler through the consumer
//! router's default layers → acknowledged, in a closed loop that keeps [`IN_FLIGHT`]
//! messages between publish and ack; and the same hand-off over a bare tokio mpsc
//! channel, the in-process ceiling.
//!
//! Each message carries its send time in a header; the ack is timed where the consumer
//! settles it with the bus (a thin wrapper around the bus's acknowledger), so the latency
//! is publish call → ack committed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use runnel::async_trait;
use runnel::consumer::{Consumer, HandlerContext, HandlerError, Router};
use runnel_core::bus::{
    Acknowledger, Delivery, DeliveryHandle, DeliveryStream, Publisher, SubscribeOptions, Subscriber,
};
use runnel_core::dead_letter::DeadLetterStore;
use runnel_core::{BusError, GroupName, Message, TopicName};
use tokio::sync::{mpsc, Semaphore};

use super::workload::{message, Budget, Latency, Run, EVENT_TYPE, SENT_HEADER};

/// Messages between publish and ack at any time (= the bus's default `max_in_flight`,
/// so the consumer can hold all of them).
pub const IN_FLIGHT: usize = runnel_core::bus::MAX_IN_FLIGHT_DEFAULT;
/// Concurrent publisher tasks: one per slot, so publishes are never serialized behind
/// one task's commit.
const PUBLISHERS: usize = IN_FLIGHT;
/// Longest wait for the last messages of a round to be acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Time the consumer gets to stop after a round.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The application's handler in every scenario: does nothing, succeeds.
pub async fn noop(ctx: HandlerContext) -> Result<(), HandlerError> {
    std::hint::black_box(ctx.message());
    Ok(())
}

/// Where a round's acks are counted and timed, and the slots the publishers wait for.
pub struct AckBoard {
    epoch: Instant,
    latency: Mutex<Latency>,
    acked: Arc<AtomicU64>,
    slots: Arc<Semaphore>,
}

impl AckBoard {
    pub fn new(acked: Arc<AtomicU64>) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(AckBoard {
            epoch: Instant::now(),
            latency: Mutex::new(Latency::new()?),
            acked,
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
        }))
    }

    /// Nanoseconds since the board was made, for the send-time header.
    fn now_nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes one slot (waits while [`IN_FLIGHT`] messages are unacknowledged).
    async fn take_slot(&self) -> anyhow::Result<()> {
        self.slots
            .acquire()
            .await
            .context("the slot semaphore closed")?
            .forget();
        Ok(())
    }

    /// Counts an ack of a message sent at `sent_nanos` and frees its slot.
    fn acked(&self, sent_nanos: Option<u64>) {
        if let Some(sent) = sent_nanos {
            let latency = Duration::from_nanos(self.now_nanos().saturating_sub(sent));
            self.latency
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(latency);
        }
        self.acked.fetch_add(1, Ordering::Relaxed);
        self.slots.add_permits(1);
    }

    /// Waits until every slot is free again: everything sent was acknowledged.
    async fn drained(&self) -> anyhow::Result<()> {
        let all = u32::try_from(IN_FLIGHT).context("IN_FLIGHT fits u32")?;
        let permits = tokio::time::timeout(DRAIN_TIMEOUT, self.slots.acquire_many(all))
            .await
            .with_context(|| {
                format!(
                    "the last messages were not acknowledged within {DRAIN_TIMEOUT:?} ({} acked)",
                    self.acked.load(Ordering::Relaxed)
                )
            })?
            .context("the slot semaphore closed")?;
        drop(permits);
        Ok(())
    }

    fn latency(&self) -> Latency {
        self.latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The `n`-th message, stamped with its send time.
    fn stamped(&self, n: u64) -> Message {
        message(n).with_header(SENT_HEADER, self.now_nanos().to_string())
    }
}

fn sent_nanos(m: &Message) -> Option<u64> {
    m.headers.get(SENT_HEADER).and_then(|v| v.parse().ok())
}

/// A subscriber that hands out the inner subscriber's deliveries with an acknowledger
/// that reports each successful ack to the board.
struct TimedSubscriber {
    inner: Arc<dyn Subscriber>,
    board: Arc<AckBoard>,
}

#[async_trait]
impl Subscriber for TimedSubscriber {
    async fn subscribe(
        &self,
        topic: &TopicName,
        group: &GroupName,
        options: SubscribeOptions,
    ) -> Result<DeliveryStream, BusError> {
        let deliveries = self.inner.subscribe(topic, group, options).await?;
        let board = Arc::clone(&self.board);
        Ok(Box::pin(deliveries.map(move |item| {
            item.map(|d| {
                let (topic, group, attempt) = (d.topic.clone(), d.group.clone(), d.attempt);
                let sent = sent_nanos(&d.message);
                let (message, handle) = d.into_parts();
                Delivery::new(
                    message,
                    topic,
                    group,
                    attempt,
                    Box::new(TimedAck {
                        handle: tokio::sync::Mutex::new(Some(handle)),
                        sent,
                        board: Arc::clone(&board),
                    }),
                )
            })
        })))
    }
}

struct TimedAck {
    handle: tokio::sync::Mutex<Option<DeliveryHandle>>,
    sent: Option<u64>,
    board: Arc<AckBoard>,
}

impl TimedAck {
    async fn take(&self) -> Result<DeliveryHandle, BusError> {
        self.handle
            .lock()
            .await
            .take()
            .ok_or_else(|| BusError::DeliveryLost("the delivery was settled already".into()))
    }
}

#[async_trait]
impl Acknowledger for TimedAck {
    async fn ack(&self) -> Result<(), BusError> {
        self.take().await?.ack().await?;
        self.board.acked(self.sent);
        Ok(())
    }

    async fn nack(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.take().await?.nack(delay).await
    }

    async fn extend(&self, by: Duration) -> Result<(), BusError> {
        match self.handle.lock().await.as_ref() {
            Some(handle) => handle.extend(by).await,
            None => Err(BusError::DeliveryLost(
                "the delivery was settled already".into(),
            )),
        }
    }
}

/// The bus a Runnel end-to-end round runs on.
pub struct Endpoints {
    pub publisher: Arc<dyn Publisher>,
    pub subscriber: Arc<dyn Subscriber>,
    pub dead_letters: Arc<dyn DeadLetterStore>,
    pub topic: TopicName,
    pub group: GroupName,
}

/// One round through the bus and the consumer router with its default layers. `acked`
/// tracks progress; `commits` reads the store's commit counter.
pub async fn runnel_round(
    ends: &Endpoints,
    budget: Budget,
    acked: Arc<AtomicU64>,
    commits: &(dyn Fn() -> u64 + Sync),
) -> anyhow::Result<Run> {
    let board = AckBoard::new(Arc::clone(&acked))?;
    let subscriber: Arc<dyn Subscriber> = Arc::new(TimedSubscriber {
        inner: Arc::clone(&ends.subscriber),
        board: Arc::clone(&board),
    });
    // Every default layer (tracing, key order, metrics, dead letter, retry, concurrency
    // limit, timeout) around a router with one no-op route.
    let consumer = Consumer::builder(subscriber, ends.topic.clone(), ends.group.clone())
        .handler(Router::new().route(EVENT_TYPE, noop))
        .dead_letters(Arc::clone(&ends.dead_letters))
        .start()
        .await
        .context("cannot start the benchmark consumer")?;
    let commits_before = commits();
    let reserved = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(PUBLISHERS);
    for _ in 0..PUBLISHERS {
        let (bus, topic) = (Arc::clone(&ends.publisher), ends.topic.clone());
        let (board, reserved) = (Arc::clone(&board), Arc::clone(&reserved));
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < budget.duration {
                let n = reserved.fetch_add(1, Ordering::Relaxed);
                if n >= budget.messages_max {
                    break;
                }
                board.take_slot().await?;
                bus.publish(&topic, vec![board.stamped(n)])
                    .await
                    .with_context(|| format!("benchmark publish to {topic} failed"))?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("a benchmark publisher panicked")??;
    }
    board.drained().await?;
    let elapsed = start.elapsed();
    let commits = commits().saturating_sub(commits_before);
    let report = consumer
        .shutdown(SHUTDOWN_GRACE)
        .await
        .context("the benchmark consumer failed")?;
    anyhow::ensure!(
        report.nacked == 0 && report.settle_errors == 0,
        "the benchmark consumer nacked {} and failed to settle {} messages",
        report.nacked,
        report.settle_errors
    );
    Ok(Run {
        messages: acked.load(Ordering::Relaxed),
        elapsed,
        commits,
        latency: board.latency(),
    })
}

/// The same closed loop over a bare bounded tokio mpsc channel: publishers send the same
/// messages, one consumer task takes each, "handles" it (nothing) and acknowledges it by
/// freeing its slot. No storage, no layers: the in-process ceiling.
pub async fn mpsc_round(budget: Budget, acked: Arc<AtomicU64>) -> anyhow::Result<Run> {
    let board = AckBoard::new(Arc::clone(&acked))?;
    let (tx, mut rx) = mpsc::channel::<Message>(IN_FLIGHT);
    let consumer = {
        let board = Arc::clone(&board);
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                std::hint::black_box(&m);
                board.acked(sent_nanos(&m));
            }
        })
    };
    let reserved = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(PUBLISHERS);
    for _ in 0..PUBLISHERS {
        let (tx, board, reserved) = (tx.clone(), Arc::clone(&board), Arc::clone(&reserved));
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < budget.duration {
                let n = reserved.fetch_add(1, Ordering::Relaxed);
                if n >= budget.messages_max {
                    break;
                }
                board.take_slot().await?;
                tx.send(board.stamped(n))
                    .await
                    .context("the mpsc consumer stopped")?;
            }
            anyhow::Ok(())
        }));
    }
    drop(tx);
    for task in tasks {
        task.await.context("a benchmark publisher panicked")??;
    }
    board.drained().await?;
    let elapsed = start.elapsed();
    consumer.await.context("the mpsc consumer panicked")?;
    Ok(Run {
        messages: acked.load(Ordering::Relaxed),
        elapsed,
        commits: 0,
        latency: board.latency(),
    })
}
