//! One subscription: a member of its group's durable pull consumer.
//!
//! Each subscription runs a member task ([`driver`]). The member that holds the group's
//! lease (see [`crate::lease`]) is the only one pulling from the group's consumer; the
//! others wait to take over. The holder keeps every message it pulled and has not settled
//! in the kit's per-key book ([`state`]), keyed by stream sequence, and hands a message to
//! the application only when it is the earliest unsettled one of its ordering key (head
//! of line); keyless messages go at once. Messages waiting behind their key are kept
//! alive on the server with `+WPI`.
//!
//! After taking the lease, and whenever the consumer's delivery sequence shows a gap (a
//! delivery that never reached this member: in flight during a reconnect, or still held
//! by the previous holder), the member hands nothing out until the server's count of
//! unacknowledged messages is no more than what it tracks itself — i.e. until every
//! message delivered before has come back to it (after its ack wait) or been settled.
//! Only then can it know each key's true head.

mod driver;
mod membership;
mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::Subject;
use async_trait::async_trait;
use bytes::Bytes;
use runnel_core::bus::{Acknowledger, DeliveryStream, StartPosition, SubscribeOptions};
use runnel_core::{BusError, GroupName, TopicName};
use runnel_transport_kit::{check_extension, handout_stream, EntryId, Shared};
use tokio::sync::mpsc;

use crate::bus::{unavailable, Inner};
use crate::names;
use membership::Membership;
use state::NatsState;

/// Unacknowledged messages the server lets one group's consumer have out at once.
pub const CONSUMER_MAX_ACK_PENDING: i64 = 20_000;
/// Most messages one pull asks for.
pub const PULL_BATCH_MAX: usize = 1024;
/// Extra room in the hand-over channel for deliveries superseded while queued.
const CHANNEL_SLACK: usize = 64;

pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    topic: TopicName,
    group: GroupName,
    options: SubscribeOptions,
) -> Result<DeliveryStream, BusError> {
    inner.ensure_stream(&topic).await?;
    let stream = names::stream_name(&inner.options.stream_prefix, &topic);
    let group_consumer = names::consumer_name(&group);
    let stream_handle = inner
        .js
        .get_stream_no_info(&stream)
        .await
        .map_err(|e| unavailable(&format!("stream {stream}"), e))?;
    let partitions = inner.options.partitions;
    if partitions <= 1 {
        let filter = names::subject(&inner.options.subject_prefix, &topic);
        let description = format!("Runnel group {group} on topic {topic}");
        let consumer = open_consumer(
            &stream_handle,
            &stream,
            &group_consumer,
            filter,
            description,
            &options,
        )
        .await?;
        // Make sure the lease bucket exists before the stream is handed out.
        inner.lease_store().await?;
        let (member, rx, shared) = member(
            inner,
            topic,
            group,
            stream,
            group_consumer.clone(),
            group_consumer,
            consumer,
            stream_handle,
            options,
            None,
        );
        tokio::spawn(member.run());
        return Ok(handout_stream(rx, shared, ()));
    }

    // Partitioned: one durable consumer, lease and member task per partition, balanced
    // over the group's members by the membership task.
    let store = inner.lease_store().await?;
    let membership = Arc::new(Membership::new(
        &inner,
        &stream,
        &group_consumer,
        partitions,
    ));
    membership.beat(&store).await?;
    membership.refresh(&inner, &store).await?;
    let mut streams = Vec::with_capacity(partitions as usize);
    let mut closed = Vec::with_capacity(partitions as usize);
    // One window over every partition: `max_in_flight` bounds the subscription.
    let books: Vec<_> = (0..partitions)
        .map(|_| Shared::new(NatsState::new(options.max_in_flight)))
        .collect();
    let window = Arc::new(Window {
        max_in_flight: options.max_in_flight,
        books: books.clone(),
        dispatch: std::sync::Mutex::new(()),
    });
    for (p, shared) in (0..partitions).zip(books) {
        let consumer_name = names::partition_consumer_name(&group, p);
        let filter = names::partition_subject(&inner.options.subject_prefix, &topic, p);
        let description = format!("Runnel group {group} on topic {topic}, partition {p}");
        let consumer = open_consumer(
            &stream_handle,
            &stream,
            &consumer_name,
            filter,
            description,
            &options,
        )
        .await?;
        let (member, rx, shared) = member(
            inner.clone(),
            topic.clone(),
            group.clone(),
            stream.clone(),
            consumer_name,
            group_consumer.clone(),
            consumer,
            stream_handle.clone(),
            options.clone(),
            Some(Partitioned {
                membership: membership.clone(),
                window: window.clone(),
                shared,
            }),
        );
        closed.push(member.tx.clone());
        tokio::spawn(member.run());
        streams.push(handout_stream(rx, shared, ()));
    }
    // The application holds every partition's stream in one; dropping it closes them all.
    let closed = async move {
        for tx in closed {
            tx.closed().await;
        }
    };
    tokio::spawn(membership.run(inner, store, closed));
    Ok(Box::pin(futures_util::stream::select_all(streams)))
}

/// Creates (or opens) one durable pull consumer; the group's ack timeout follows its
/// latest subscriber.
async fn open_consumer(
    stream_handle: &jetstream::stream::Stream<()>,
    stream: &str,
    consumer_name: &str,
    filter_subject: String,
    description: String,
    options: &SubscribeOptions,
) -> Result<jetstream::consumer::PullConsumer, BusError> {
    let config = pull::Config {
        durable_name: Some(consumer_name.to_string()),
        description: Some(description),
        deliver_policy: match options.start {
            StartPosition::Earliest => jetstream::consumer::DeliverPolicy::All,
            StartPosition::Latest => jetstream::consumer::DeliverPolicy::New,
        },
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: options.ack_timeout,
        // Unlimited on the server: the poison backstop is this transport's, so a message
        // is never silently stopped while its key waits for it.
        max_deliver: -1,
        filter_subject,
        max_ack_pending: CONSUMER_MAX_ACK_PENDING,
        ..Default::default()
    };
    let consumer: jetstream::consumer::PullConsumer = stream_handle
        .get_or_create_consumer(consumer_name, config.clone())
        .await
        .map_err(|e| unavailable(&format!("consumer {consumer_name} on {stream}"), e))?;
    if consumer.cached_info().config.ack_wait != options.ack_timeout {
        if let Err(e) = stream_handle.create_consumer(config).await {
            tracing::warn!(consumer = %consumer_name, error = %e, "could not update the consumer's ack wait");
        }
    }
    Ok(consumer)
}

type Channel = mpsc::Receiver<Result<runnel_transport_kit::Handout, BusError>>;

/// One member task (not yet spawned), the receiving end of its hand-overs and its state.
#[allow(clippy::too_many_arguments)]
fn member(
    inner: Arc<Inner>,
    topic: TopicName,
    group: GroupName,
    stream: String,
    consumer_name: String,
    group_consumer: String,
    consumer: jetstream::consumer::PullConsumer,
    stream_handle: jetstream::stream::Stream<()>,
    options: SubscribeOptions,
    partitioned: Option<Partitioned>,
) -> (driver::Member, Channel, Arc<Shared<NatsState>>) {
    let (shared, membership, window) = match partitioned {
        Some(p) => (p.shared, Some(p.membership), Some(p.window)),
        None => (
            Shared::new(NatsState::new(options.max_in_flight)),
            None,
            None,
        ),
    };
    let (tx, rx) = mpsc::channel(options.max_in_flight + CHANNEL_SLACK);
    let member = driver::Member {
        inner,
        shared: shared.clone(),
        topic,
        group,
        stream,
        consumer_name,
        group_consumer,
        consumer,
        stream_handle,
        options,
        tx,
        membership,
        window,
    };
    (member, rx, shared)
}

/// What a partition's member task shares with its siblings.
struct Partitioned {
    membership: Arc<Membership>,
    window: Arc<Window>,
    shared: Arc<Shared<NatsState>>,
}

/// The window of a partitioned subscription: every partition's book, so a partition hands
/// out only while the deliveries out over all of them are under `max_in_flight`.
pub(crate) struct Window {
    max_in_flight: usize,
    books: Vec<Arc<Shared<NatsState>>>,
    /// Held while a partition checks the window and hands out, so two partitions never
    /// both take its last room (and locks one book at a time: no lock-order cycle).
    pub(crate) dispatch: std::sync::Mutex<()>,
}

impl Window {
    /// Room left for `own` (deliveries out in the other partitions' books subtracted).
    /// Call with `dispatch` held.
    pub(crate) fn room_for(&self, own: &Arc<Shared<NatsState>>) -> usize {
        let others: usize = self
            .books
            .iter()
            .filter(|b| !Arc::ptr_eq(b, own))
            .map(|b| b.lock().book.out())
            .sum();
        self.max_in_flight.saturating_sub(others)
    }

    /// Wakes every partition: room was freed in the shared window.
    fn wake_all(&self) {
        for b in &self.books {
            b.wake();
        }
    }
}

/// Settles one delivery: sends the ack kind on the message's reply subject, then
/// updates the member's book so the key's next message can go.
struct NatsAcker {
    shared: Arc<Shared<NatsState>>,
    /// A partitioned subscription's window: settling frees room for every partition.
    window: Option<Arc<Window>>,
    client: async_nats::Client,
    seq: EntryId,
    token: u64,
    reply: Subject,
}

impl NatsAcker {
    fn wake(&self) {
        match &self.window {
            Some(w) => w.wake_all(),
            None => self.shared.wake(),
        }
    }

    fn check(&self) -> Result<(), BusError> {
        if self.shared.lock().book.is_current(self.seq, self.token) {
            Ok(())
        } else {
            Err(BusError::DeliveryLost(format!(
                "stream sequence {} (already settled or redelivered)",
                self.seq
            )))
        }
    }

    async fn send(&self, kind: AckKind) -> Result<(), BusError> {
        self.client
            .publish(self.reply.clone(), Bytes::from(kind))
            .await
            .map_err(|e| unavailable("settling a delivery", e))
    }
}

#[async_trait]
impl Acknowledger for NatsAcker {
    async fn ack(&self) -> Result<(), BusError> {
        self.check()?;
        self.send(AckKind::Ack).await?;
        {
            let mut st = self.shared.lock();
            if st.book.ack(self.seq, self.token).is_ok() {
                st.remember_acked(self.seq);
            }
        }
        self.wake();
        Ok(())
    }

    async fn nack(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.check()?;
        let delay = delay.filter(|d| !d.is_zero());
        self.send(AckKind::Nak(delay)).await?;
        // Awaiting the server's redelivery: the key stays blocked.
        let _ = self
            .shared
            .lock()
            .book
            .nack(self.seq, self.token, delay, Instant::now());
        self.wake();
        Ok(())
    }

    async fn extend(&self, by: Duration) -> Result<(), BusError> {
        check_extension(by)?;
        self.check()?;
        self.send(AckKind::Progress).await?;
        let now = Instant::now();
        let mut st = self.shared.lock();
        if st.book.extend(self.seq, self.token, by, now).is_ok() {
            // Kept alive with `+WPI` until the extension runs out.
            if let Some(entry) = st.book.get_mut(self.seq) {
                entry.item.touched = now;
            }
        }
        Ok(())
    }
}
