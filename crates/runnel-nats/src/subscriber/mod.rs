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
    let consumer_name = names::consumer_name(&group);
    let config = pull::Config {
        durable_name: Some(consumer_name.clone()),
        description: Some(format!("Runnel group {group} on topic {topic}")),
        deliver_policy: match options.start {
            StartPosition::Earliest => jetstream::consumer::DeliverPolicy::All,
            StartPosition::Latest => jetstream::consumer::DeliverPolicy::New,
        },
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: options.ack_timeout,
        // Unlimited on the server: the poison backstop is this transport's, so a message
        // is never silently stopped while its key waits for it.
        max_deliver: -1,
        filter_subject: names::subject(&inner.options.subject_prefix, &topic),
        max_ack_pending: CONSUMER_MAX_ACK_PENDING,
        ..Default::default()
    };
    let stream_handle = inner
        .js
        .get_stream_no_info(&stream)
        .await
        .map_err(|e| unavailable(&format!("stream {stream}"), e))?;
    let consumer: jetstream::consumer::PullConsumer = stream_handle
        .get_or_create_consumer(&consumer_name, config.clone())
        .await
        .map_err(|e| unavailable(&format!("consumer {consumer_name} on {stream}"), e))?;
    if consumer.cached_info().config.ack_wait != options.ack_timeout {
        // The group's ack timeout follows its latest subscriber.
        if let Err(e) = stream_handle.create_consumer(config).await {
            tracing::warn!(consumer = %consumer_name, error = %e, "could not update the consumer's ack wait");
        }
    }
    // Make sure the lease bucket exists before the stream is handed out.
    inner.lease_store().await?;

    let shared = Shared::new(NatsState::new(options.max_in_flight));
    let (tx, rx) = mpsc::channel(options.max_in_flight + CHANNEL_SLACK);
    let member = driver::Member {
        inner,
        shared: shared.clone(),
        topic,
        group,
        stream,
        consumer_name,
        consumer,
        stream_handle,
        options,
        tx,
    };
    tokio::spawn(member.run());
    Ok(handout_stream(rx, shared, ()))
}

/// Settles one delivery: sends the ack kind on the message's reply subject, then
/// updates the member's book so the key's next message can go.
struct NatsAcker {
    shared: Arc<Shared<NatsState>>,
    client: async_nats::Client,
    seq: EntryId,
    token: u64,
    reply: Subject,
}

impl NatsAcker {
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
        self.shared.wake();
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
        self.shared.wake();
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
