//! The task behind one subscription: it polls the group consumer, feeds fetched records
//! into the [`State`], hands out deliveries, runs the ack-timeout and nack-delay timers,
//! commits progress, and settles partitions on rebalance inside librdkafka's rebalance
//! callback (which runs within this task's poll).

use runnel_core::envelope::Envelope;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use runnel_core::bus::{Acknowledger, Delivery};
use runnel_core::{BusError, GroupName, TopicName};
use runnel_transport_kit::{check_extension, EntryId, Handout, Lost};
use tokio::sync::{mpsc, watch};

use super::state::{Commit, Outgoing, PriorDeliveries, State};
use crate::codec::Record;
use crate::error::bus_error;
use crate::publisher::Producer;

/// How often progress (acks, deliveries) is committed while messages flow.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Longest wait for a partition's committed offset and metadata during a rebalance.
pub const COMMITTED_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Records a consumer buffers (fetched, not yet acked) before it stops taking more from
/// the client until acks bring the number down.
pub const BUFFERED_RECORDS_MAX: usize = 4096;
/// Wait before a message whose move to the dead-letter topic failed is tried again.
pub const DEAD_LETTER_RETRY_DELAY: Duration = Duration::from_secs(1);

/// State shared by the driver, the rebalance callback, the acknowledgers and the stream.
pub type Shared = runnel_transport_kit::Shared<State>;

/// A client of the subscription's side group (`<kafka group>:delivered`), which never
/// joins: its committed offset per partition is one past the highest offset the group
/// delivered. It carries the delivered mark on brokers that drop offset-commit metadata
/// (tansu 0.6), so a partition's next owner still knows which offsets are redeliveries.
pub type SideConsumer = BaseConsumer;

/// The side group of a Kafka group.
pub fn side_group_id(kafka_group: &str) -> String {
    format!("{kafka_group}:delivered")
}

/// librdkafka callbacks of one consumer.
pub struct Context {
    pub shared: Arc<Shared>,
    /// The Kafka topic (after the prefix).
    pub topic: String,
    pub side: Arc<SideConsumer>,
    /// Bumped on every assignment; `subscribe` waits for the first.
    pub assigned: watch::Sender<u64>,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // While this callback runs the client sends the group nothing for this member (no
        // join, no sync): a callback slower than the group session makes the member look
        // dead to the coordinator. Say so when it happens.
        let started = Instant::now();
        self.settle_rebalance(consumer, rebalance);
        let took = started.elapsed();
        if took >= SLOW_REBALANCE_CALLBACK {
            tracing::warn!(topic = %self.topic, ?took, kind = rebalance_kind(rebalance), "a rebalance callback was slow; the group heard nothing from this member meanwhile");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            self.assigned.send_modify(|n| *n += 1);
            self.shared.wake();
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(topic = %self.topic, error = %e, "commit failed; retried with the next one");
            let mut state = self.shared.lock();
            for e in offsets.elements() {
                state.commit_failed(e.partition());
            }
        }
    }
}

/// A rebalance callback taking this long or longer is logged as a warning.
pub const SLOW_REBALANCE_CALLBACK: Duration = Duration::from_secs(1);

fn rebalance_kind(rebalance: &Rebalance<'_>) -> &'static str {
    match rebalance {
        Rebalance::Revoke(_) => "revoke",
        Rebalance::Assign(_) => "assign",
        Rebalance::Error(_) => "error",
    }
}

impl Context {
    /// Settles revoked partitions (a synchronous commit) or reads an assignment's
    /// committed offsets and delivered marks.
    fn settle_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                let commits = self.shared.lock().revoke(&partitions);
                // Settle the revoked partitions before they move: the next owner starts
                // at the contiguous handled prefix and knows what was delivered above it.
                if let Err(e) = off_the_runtime(|| {
                    commit(
                        consumer,
                        &self.side,
                        &self.topic,
                        &commits,
                        CommitMode::Sync,
                    )
                }) {
                    tracing::warn!(topic = %self.topic, error = %e, "commit on revoke failed; the next owner redelivers from the last commit");
                }
                tracing::debug!(topic = %self.topic, ?partitions, commits = ?commits.iter().map(|c| (c.partition, c.position, c.delivered_end)).collect::<Vec<_>>(), "partitions revoked");
            }
            Rebalance::Assign(tpl) => {
                let mut priors: Vec<(i32, PriorDeliveries)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.partition(), PriorDeliveries::default()))
                    .collect();
                let (committed, delivered) = off_the_runtime(|| {
                    (
                        consumer.committed_offsets((*tpl).clone(), COMMITTED_FETCH_TIMEOUT),
                        self.side
                            .committed_offsets((*tpl).clone(), COMMITTED_FETCH_TIMEOUT),
                    )
                });
                match committed {
                    Ok(committed) => {
                        tracing::debug!(topic = %self.topic, committed = ?committed.elements().iter().map(|e| (e.partition(), e.offset())).collect::<Vec<_>>(), "committed offsets of the assignment");
                        for e in committed.elements() {
                            if let Some((_, prior)) =
                                priors.iter_mut().find(|(p, _)| *p == e.partition())
                            {
                                *prior = PriorDeliveries::parse(e.metadata());
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(topic = %self.topic, error = %e, "reading committed metadata failed; redeliveries may report attempt 1");
                    }
                }
                match delivered {
                    Ok(committed) => {
                        for e in committed.elements() {
                            if let (Some((_, prior)), Offset::Offset(end)) = (
                                priors.iter_mut().find(|(p, _)| *p == e.partition()),
                                e.offset(),
                            ) {
                                prior.delivered_end = prior.delivered_end.max(end);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(topic = %self.topic, error = %e, "reading the delivered marks failed; redeliveries may report attempt 1");
                    }
                }
                let read: Vec<(i32, i64)> = priors
                    .iter()
                    .map(|(p, prior)| (*p, prior.delivered_end))
                    .collect();
                {
                    let mut state = self.shared.lock();
                    for (p, prior) in priors {
                        state.assign(p, prior);
                    }
                }
                tracing::debug!(topic = %self.topic, partitions = ?tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), delivered_marks = ?read, "partitions assigned");
            }
            Rebalance::Error(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "rebalance error");
            }
        }
    }
}

/// Runs the broker round trips of a rebalance callback (a synchronous commit on revoke,
/// two committed-offset reads on assign, each bounded by its timeout). The callback runs
/// inside the driver task's poll, on a runtime worker thread; on a multi-thread runtime
/// the worker first hands its other tasks to another thread, so a slow broker stalls this
/// subscription only. Otherwise a rebalance of every subscription at once (a member of
/// each group dies, and the survivors revoke and are assigned again) would hold the
/// workers in blocking calls while the process's other tasks wait.
fn off_the_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Commits positions with metadata to the group, and the delivered marks to the side
/// group (marks first: a position must never be visible without its mark).
pub fn commit<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    side: &SideConsumer,
    topic: &str,
    commits: &[Commit],
    mode: CommitMode,
) -> KafkaResult<()> {
    if commits.is_empty() {
        return Ok(());
    }
    let mut marks = TopicPartitionList::with_capacity(commits.len());
    let mut positions = TopicPartitionList::with_capacity(commits.len());
    for c in commits {
        if c.delivered_end > c.position {
            marks
                .add_partition(topic, c.partition)
                .set_offset(Offset::Offset(c.delivered_end))?;
        }
        let mut e = positions.add_partition(topic, c.partition);
        e.set_offset(Offset::Offset(c.position))?;
        e.set_metadata(&c.metadata);
    }
    if marks.count() > 0 {
        if let Err(e) = side.commit(&marks, mode) {
            tracing::debug!(topic, error = %e, "committing the delivered marks failed");
        }
    }
    consumer.commit(&positions, mode)
}

/// Settles one delivery through the shared state.
pub struct Acker {
    shared: Arc<Shared>,
    id: EntryId,
    token: u64,
    message_id: String,
}

impl Acker {
    fn lost(&self, _: Lost) -> BusError {
        BusError::DeliveryLost(self.message_id.clone())
    }
}

#[async_trait]
impl Acknowledger for Acker {
    async fn ack(&self) -> Result<(), BusError> {
        self.shared
            .lock()
            .ack(self.id, self.token)
            .map_err(|e| self.lost(e))?;
        self.shared.wake();
        Ok(())
    }

    async fn nack(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.shared
            .lock()
            .nack(self.id, self.token, delay, Instant::now())
            .map_err(|e| self.lost(e))?;
        self.shared.wake();
        Ok(())
    }

    async fn extend(&self, by: Duration) -> Result<(), BusError> {
        check_extension(by)?;
        self.shared
            .lock()
            .extend(self.id, self.token, by, Instant::now())
            .map_err(|e| self.lost(e))?;
        self.shared.wake();
        Ok(())
    }
}

/// Everything the driver task owns.
pub struct Driver {
    pub consumer: Arc<StreamConsumer<Context>>,
    pub shared: Arc<Shared>,
    pub topic: TopicName,
    /// The Kafka topic of `topic` (after the prefix): what offsets are committed on.
    pub kafka_topic: String,
    pub group: GroupName,
    pub out: mpsc::Sender<Result<Handout, BusError>>,
    pub producer: Producer,
    pub dead_letter_topic: TopicName,
    pub side: Arc<SideConsumer>,
    /// How this subscription reads records.
    pub envelope: Envelope,
}

impl Driver {
    /// Runs until the subscription's stream is dropped, then leaves the group after
    /// committing what was handled.
    pub async fn run(self) {
        let mut last_commit = Instant::now();
        loop {
            self.shared.lock().fire_timers(Instant::now());
            self.dispatch();
            if self.shared.lock().commit_dirty() && last_commit.elapsed() >= COMMIT_INTERVAL {
                self.commit_async();
                last_commit = Instant::now();
            }
            // Serve the side client's commit results (it is never polled otherwise).
            while self.side.poll(Duration::ZERO).is_some() {}
            // After dispatching: the deliveries just handed out have their deadlines.
            let (wake_at, dirty) = {
                let state = self.shared.lock();
                (state.next_timer(), state.commit_dirty())
            };
            // Back-pressure: while too many records wait in memory, stop taking more from
            // librdkafka (whose own pre-fetch queue is bounded by
            // `queued.max.messages.kbytes`, so its fetcher stops too). Acks and timers
            // keep being served; group events wait until the backlog drains.
            let fetching = self.shared.lock().buffered() < BUFFERED_RECORDS_MAX;
            let commit_at = dirty.then(|| last_commit + COMMIT_INTERVAL);
            let wake_at = match (wake_at, commit_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.out.closed() => break,
                _ = self.shared.woken() => {}
                _ = sleep => {}
                received = self.consumer.recv(), if fetching => match received {
                    Ok(m) => {
                        let record = Record::from_kafka(&m);
                        drop(m);
                        match record.to_message(self.topic.as_str(), &self.envelope) {
                            Ok(message) => {
                                self.shared.lock().push(record.partition, record.offset, message);
                            }
                            Err(e) => {
                                tracing::error!(topic = %self.topic, group = %self.group, partition = record.partition, offset = record.offset, error = %e, "undecodable record; it goes to the dead-letter topic");
                                let kept = record.undecodable(self.topic.as_str());
                                self.shared.lock().push_undecodable(record.partition, record.offset, kept, e.to_string());
                            }
                        }
                    }
                    Err(e) => {
                        if let KafkaError::MessageConsumptionFatal(_) = e {
                            let _ = self.out.try_send(Err(bus_error("consume", &e)));
                            break;
                        }
                        tracing::debug!(topic = %self.topic, error = %e, "consumer error (retried by the client)");
                    }
                },
            }
        }
        self.shutdown().await;
    }

    /// Hands out what the state allows.
    fn dispatch(&self) {
        let room = self.out.capacity();
        if room == 0 {
            return;
        }
        let outgoing = self.shared.lock().dispatch(room);
        for o in outgoing {
            if o.dead_letter {
                self.dead_letter(o);
                continue;
            }
            let acker = Acker {
                shared: self.shared.clone(),
                id: o.id,
                token: o.token,
                message_id: o.message.id.clone(),
            };
            let delivery = Delivery::new(
                o.message,
                self.topic.clone(),
                self.group.clone(),
                o.attempt,
                Box::new(acker),
            );
            // Room was checked above and this task is the only sender.
            let handout = Handout {
                id: o.id,
                token: o.token,
                delivery,
            };
            if self.out.try_send(Ok(handout)).is_err() {
                tracing::debug!(topic = %self.topic, "subscription closed while delivering");
            }
        }
    }

    /// Moves a message delivered `max_deliveries` times to the dead-letter topic, then
    /// settles it; a failed move is retried after a delay.
    fn dead_letter(&self, o: Outgoing) {
        let shared = self.shared.clone();
        let producer = self.producer.clone();
        let dlq = self.dead_letter_topic.clone();
        let group = self.group.clone();
        let topic = self.topic.clone();
        tokio::spawn(async move {
            let undecodable = o.undecodable.is_some();
            let attempts = if undecodable {
                o.attempt
            } else {
                o.attempt - 1
            };
            let mut message = o.message;
            if let Some(reason) = &o.undecodable {
                message =
                    message.with_header(crate::dead_letter::DLQ_REASON_HEADER, reason.as_str());
            }
            let message = message
                .with_header(crate::dead_letter::DLQ_GROUP_HEADER, group.as_str())
                .with_header(crate::dead_letter::DLQ_TOPIC_HEADER, topic.as_str())
                .with_header(
                    crate::dead_letter::DLQ_ATTEMPTS_HEADER,
                    attempts.to_string(),
                );
            // Dead letters are always CloudEvents: whatever the topic's envelope, the
            // record kept (bytes that fit no envelope included) must be writable.
            let result = producer
                .send_all(&dlq, &[message], &Envelope::CloudEvents)
                .await;
            let mut state = shared.lock();
            let settled = match result {
                Ok(()) => {
                    if undecodable {
                        tracing::warn!(topic = %topic, group = %group, offset = o.offset, partition = o.partition, "undecodable message moved to {dlq}");
                    } else {
                        tracing::warn!(topic = %topic, group = %group, offset = o.offset, partition = o.partition, "message delivered {attempts} times moved to {dlq}");
                    }
                    state.ack(o.id, o.token)
                }
                Err(e) => {
                    tracing::warn!(topic = %topic, error = %e, "moving a message to the dead-letter topic failed; retrying");
                    state.nack(o.id, o.token, Some(DEAD_LETTER_RETRY_DELAY), Instant::now())
                }
            };
            drop(state);
            if settled.is_ok() {
                shared.wake();
            }
        });
    }

    fn commit_async(&self) {
        let commits = self.shared.lock().commits(false);
        tracing::trace!(topic = %self.topic, commits = ?commits.iter().map(|c| (c.partition, c.position, c.delivered_end)).collect::<Vec<_>>(), "committing");
        if let Err(e) = commit(
            self.consumer.as_ref(),
            &self.side,
            &self.kafka_topic,
            &commits,
            CommitMode::Async,
        ) {
            tracing::debug!(topic = %self.topic, error = %e, "commit failed; retried with the next one");
            let mut state = self.shared.lock();
            for c in &commits {
                state.commit_failed(c.partition);
            }
        }
    }

    /// The stream was dropped (the consumer ended or crashed): nothing more is handed
    /// out, what was handled is committed, and the group is left so the partitions move
    /// at once; unacked deliveries come back to the next owner as redeliveries.
    async fn shutdown(self) {
        let commits = {
            let mut state = self.shared.lock();
            state.close();
            state.commits(true)
        };
        let consumer = self.consumer;
        let side = self.side;
        let topic = self.kafka_topic;
        let closing = tokio::task::spawn_blocking(move || {
            if let Err(e) = commit(consumer.as_ref(), &side, &topic, &commits, CommitMode::Sync) {
                tracing::warn!(topic = %topic, error = %e, "final commit failed; the next owner redelivers from the last commit");
            }
            // Dropping the last handle closes the consumer: it revokes (committing again
            // in the callback) and leaves the group.
            drop(consumer);
        });
        let _ = closing.await;
    }
}
