//! The member task behind one subscription: it takes and renews the group's lease,
//! pulls from the group's consumer while it holds it, feeds the book, hands out what the
//! book allows, keeps the leases of waiting messages alive with `+WPI`, and dead-letters
//! poison messages.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::Subject;
use bytes::Bytes;
use futures_util::StreamExt;
use runnel_core::bus::{Delivery, SubscribeOptions};
use runnel_core::{BusError, GroupName, TopicName};
use runnel_transport_kit::{Handout, Phase, Shared};
use tokio::sync::mpsc;

use super::membership::Membership;
use super::state::NatsState;
use super::{NatsAcker, Window};
use crate::bus::Inner;
use crate::codec::{self, dead_letter_headers as dlh, MSG_ID_HEADER};
use crate::lease::Lease;
use crate::names;

/// Fewest messages one pull asks for (when the application's window allows).
pub const PULL_BATCH_MIN: usize = 16;
/// How long one pull request waits on the server for messages.
pub const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// How often a member without the lease tries to take it.
pub const LEASE_POLL: Duration = Duration::from_millis(200);
/// After giving a surplus partition up, how long its driver leaves it to the newcomer
/// before trying to take a partition again.
const GIVE_UP_PAUSE: Duration = Duration::from_secs(1);
/// How long past its expiry an open pull request is read when a partition is let go.
const PULL_DRAIN_SLACK: Duration = Duration::from_millis(500);
/// Pause after a failed pull request before the next.
const PULL_RETRY: Duration = Duration::from_millis(250);
/// A message that waited here longer than the ack timeout divided by this gets a `+WPI`
/// when handed out, so its ack timeout (nearly) starts at the hand-over; a shorter wait
/// is not worth a message to the server.
const HANDOUT_TOUCH_DIVISOR: u32 = 20;
/// During a hand-over barrier with a full book, a probe pull (for the previous holder's
/// deliveries, which come back only in answer to a pull) goes out this many times per ack
/// timeout.
const BARRIER_PROBES_PER_ACK_TIMEOUT: u32 = 4;
/// Bounds of the housekeeping tick (keep-alives, lease renewal, barrier checks).
const TICK_MIN: Duration = Duration::from_millis(50);
const TICK_MAX: Duration = Duration::from_millis(250);

/// What one member task needs.
pub(super) struct Member {
    pub inner: Arc<Inner>,
    pub shared: Arc<Shared<NatsState>>,
    pub topic: TopicName,
    pub group: GroupName,
    pub stream: String,
    /// This member's durable consumer (the group's, or one partition's).
    pub consumer_name: String,
    /// The group's consumer name (dead-letter subjects are per group, not per partition).
    pub group_consumer: String,
    pub consumer: jetstream::consumer::PullConsumer,
    pub stream_handle: jetstream::stream::Stream<()>,
    pub options: SubscribeOptions,
    pub tx: mpsc::Sender<Result<Handout, BusError>>,
    /// A partitioned group's membership: how many partitions this member may hold.
    pub membership: Option<Arc<Membership>>,
    /// A partitioned subscription's window over all its partitions.
    pub window: Option<Arc<Window>>,
}

impl Member {
    fn tick_period(&self) -> Duration {
        (self.options.ack_timeout / 4).clamp(TICK_MIN, TICK_MAX)
    }

    fn pull_batch(&self) -> usize {
        (self.options.max_in_flight * 2).clamp(PULL_BATCH_MIN, super::PULL_BATCH_MAX)
    }

    pub async fn run(self) {
        let member_id = match &self.membership {
            Some(m) => m.member_id().to_string(),
            None => uuid::Uuid::now_v7().simple().to_string(),
        };
        let mut lease = Lease::new(
            names::lease_key(&self.stream, &self.consumer_name),
            member_id,
            self.inner.options.lease_ttl,
        );
        let mut pull: Option<pull::Batch> = None;
        let mut pull_connection = 0u64;
        let mut barrier = true;
        let mut max_consumer_seq: u64 = 0;
        let mut next_acquire = Instant::now();
        // Partitioned: whether this driver counts in the member's held partitions.
        let mut reserved = false;
        let mut next_pull = Instant::now();
        // During the barrier: deliveries the server counts as pending that this member
        // does not track (the previous holder's), and when the next probe may go out.
        let mut missing: usize = 0;
        let mut next_probe = Instant::now();
        let mut tick = tokio::time::interval(self.tick_period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let store = match self.inner.lease_store().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "no lease bucket; the subscription ends");
                return;
            }
        };

        loop {
            let connection = self.inner.connections.load(Ordering::SeqCst);
            if pull.is_some() && connection != pull_connection {
                // Reconnected: the server forgot the pull request; ask again.
                pull = None;
            }
            let held = lease.held();
            if held && pull.is_none() && Instant::now() >= next_pull {
                let (mut room, buffered) = {
                    let n = self.shared.lock().book.held();
                    (self.pull_batch().saturating_sub(n), n)
                };
                // A probe: the barrier waits for the previous holder's deliveries, and the
                // server hands them back (redeliveries first) only in answer to a pull. A
                // full (or nearly full) book must not stop that, or the member waits
                // forever; the probes are paced so the book grows by at most a few times
                // `missing` meanwhile.
                let probe = barrier && missing > 0 && Instant::now() >= next_probe;
                if probe {
                    room = room.max(missing.min(super::PULL_BATCH_MAX));
                    next_probe =
                        Instant::now() + self.options.ack_timeout / BARRIER_PROBES_PER_ACK_TIMEOUT;
                }
                // No trickle of tiny pulls while plenty waits here already.
                if room > 0 && (probe || buffered == 0 || room >= self.pull_batch() / 4) {
                    match self
                        .consumer
                        .batch()
                        .max_messages(room)
                        .expires(PULL_EXPIRES)
                        .messages()
                        .await
                    {
                        Ok(b) => {
                            pull = Some(b);
                            pull_connection = connection;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "pull request failed; retrying");
                            next_pull = Instant::now() + PULL_RETRY;
                        }
                    }
                }
            }
            let pulling = pull.is_some();
            tokio::select! {
                biased;
                _ = self.tx.closed() => break,
                item = async { match pull.as_mut() { Some(p) => p.next().await, None => None } }, if pulling => {
                    match item {
                        Some(Ok(msg)) => {
                            self.on_message(msg, &mut barrier, &mut max_consumer_seq).await;
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "pull ended with an error");
                            pull = None;
                            next_pull = Instant::now() + PULL_RETRY;
                        }
                        None => pull = None,
                    }
                }
                _ = self.shared.woken() => {}
                _ = tick.tick() => {
                    let mut hk = Housekeeping {
                        lease: &mut lease,
                        pull: &mut pull,
                        barrier: &mut barrier,
                        max_consumer_seq: &mut max_consumer_seq,
                        next_acquire: &mut next_acquire,
                        reserved: &mut reserved,
                    };
                    missing = self.housekeeping(&store, &mut hk).await;
                }
            }
            if lease.held() && !barrier {
                self.dispatch().await;
            }
        }
        // The application dropped the stream: give waiting messages back at once and let
        // another member take over. Deliveries the application still holds stay settle-able.
        if self.membership.is_none() {
            drop(pull.take());
        }
        if lease.held() && self.membership.is_some() {
            // Nothing left here will be taken: give back what the open pull request still
            // brings and the untaken hand-outs too, so the partition's next holder need
            // not wait out their ack timeout.
            let drained = drain_pull(pull.take()).await;
            self.give_back_waiting().await;
            self.nak_all(drained).await;
        } else if lease.held() {
            let replies: Vec<Subject> = self
                .shared
                .lock()
                .book
                .retain(|_, e| e.phase() != Phase::Held)
                .into_iter()
                .map(|(_, item)| item.reply)
                .collect();
            for reply in replies {
                let _ = self
                    .inner
                    .client
                    .publish(reply, Bytes::from(AckKind::Nak(None)))
                    .await;
            }
        }
        lease.release(&store).await;
        if reserved {
            if let Some(m) = &self.membership {
                m.unreserve();
            }
        }
        tracing::debug!(group = %self.group, topic = %self.topic, "member stopped");
    }

    async fn housekeeping(&self, store: &jetstream::kv::Store, hk: &mut Housekeeping<'_>) -> usize {
        let Housekeeping {
            lease,
            pull,
            barrier,
            max_consumer_seq,
            next_acquire,
            reserved,
        } = hk;
        let mut missing = 0;
        if lease.held() && lease.renewal_due() {
            match lease.renew(store).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(group = %self.group, "group lease lost"),
                Err(e) => tracing::debug!(error = %e, "lease renewal failed; retrying"),
            }
        }
        if let Some(m) = &self.membership {
            if lease.held() && m.try_give_up() {
                // More partitions than the quota (a member joined): hand this one over.
                // What waits here goes back to the server; deliveries the application
                // holds stay settle-able, and the next holder's barrier waits for them.
                let drained = drain_pull(pull.take()).await;
                self.give_back_waiting().await;
                self.nak_all(drained).await;
                lease.release(store).await;
                **reserved = false;
                **next_acquire = Instant::now() + GIVE_UP_PAUSE;
                tracing::debug!(group = %self.group, consumer = %self.consumer_name, "surplus partition given up");
            }
            if !lease.held() && **reserved {
                m.unreserve();
                **reserved = false;
            }
        }
        if !lease.held() {
            if pull.is_some() || self.shared.lock().book.held() > 0 {
                // Lost: stop pulling, forget what waits here (the server redelivers it
                // to the next holder after its ack wait).
                **pull = None;
                self.shared
                    .lock()
                    .book
                    .retain(|_, e| e.phase() != Phase::Held);
            }
            if Instant::now() >= **next_acquire {
                **next_acquire = Instant::now() + LEASE_POLL;
                let may = match &self.membership {
                    Some(m) => m.try_reserve(),
                    None => true,
                };
                if may {
                    match lease.acquire(store).await {
                        Ok(true) => {
                            tracing::debug!(group = %self.group, topic = %self.topic, consumer = %self.consumer_name, "group lease taken");
                            **barrier = true;
                            **max_consumer_seq = 0;
                            if self.membership.is_some() {
                                **reserved = true;
                                // What an earlier tenure left (nacked, or handed out and
                                // never taken) is the server's again.
                                self.shared.lock().book.retain(|_, e| {
                                    matches!(
                                        e.phase(),
                                        Phase::Out {
                                            taken_at: Some(_),
                                            ..
                                        }
                                    )
                                });
                            }
                        }
                        Ok(false) => {
                            if let Some(m) = &self.membership {
                                m.unreserve();
                            }
                        }
                        Err(e) => {
                            if let Some(m) = &self.membership {
                                m.unreserve();
                            }
                            tracing::debug!(error = %e, "taking the group lease failed");
                        }
                    }
                }
            }
        }
        if lease.held() && **barrier {
            match self.stream_handle.consumer_info(&self.consumer_name).await {
                Ok(info) => {
                    let tracked = self.shared.lock().book.len();
                    if info.num_ack_pending <= tracked {
                        **barrier = false;
                    } else {
                        missing = info.num_ack_pending - tracked;
                        tracing::trace!(
                            pending = info.num_ack_pending,
                            tracked,
                            held = self.shared.lock().book.held(),
                            "hand-over barrier: waiting for deliveries"
                        );
                    }
                }
                Err(e) => tracing::debug!(error = %e, "consumer info failed"),
            }
        }
        self.keep_alive(lease.held()).await;
        missing
    }

    /// Gives what waits here back to the server (`-NAK`) and forgets it, with hand-outs
    /// the application has not taken yet (the stream skips them); deliveries the
    /// application took stay tracked and settle-able.
    async fn give_back_waiting(&self) {
        let replies: Vec<Subject> = {
            let mut st = self.shared.lock();
            let replies = st
                .book
                .entries()
                .filter(|(_, e)| {
                    matches!(e.phase(), Phase::Held | Phase::Out { taken_at: None, .. })
                })
                .map(|(_, e)| e.item.reply.clone())
                .collect();
            st.book.retain(|_, e| {
                matches!(
                    e.phase(),
                    Phase::Out {
                        taken_at: Some(_),
                        ..
                    }
                )
            });
            replies
        };
        self.nak_all(replies).await;
    }

    async fn nak_all(&self, replies: Vec<Subject>) {
        for reply in replies {
            let _ = self
                .inner
                .client
                .publish(reply, Bytes::from(AckKind::Nak(None)))
                .await;
        }
    }

    /// Resets the server's ack timer of messages waiting here (when holding the lease)
    /// and of extended deliveries.
    async fn keep_alive(&self, held: bool) {
        let threshold = self.options.ack_timeout / 3;
        let now = Instant::now();
        let replies: Vec<Subject> = {
            let mut st = self.shared.lock();
            st.book
                .entries_mut()
                .filter(|(_, e)| match e.phase() {
                    Phase::Held => held,
                    // Extended by the application: kept alive until the extension ends.
                    Phase::Out {
                        deadline: Some(until),
                        ..
                    } => until > now,
                    // Waiting in the stream's buffer: not the application's yet.
                    Phase::Out { taken_at: None, .. } => held,
                    _ => false,
                })
                .filter(|(_, e)| now.duration_since(e.item.touched) >= threshold)
                .map(|(_, e)| {
                    e.item.touched = now;
                    e.item.reply.clone()
                })
                .collect()
        };
        for reply in replies {
            if let Err(e) = self
                .inner
                .client
                .publish(reply, Bytes::from(AckKind::Progress))
                .await
            {
                tracing::debug!(error = %e, "keep-alive failed");
            }
        }
    }

    async fn on_message(
        &self,
        msg: jetstream::Message,
        barrier: &mut bool,
        max_consumer_seq: &mut u64,
    ) {
        let (stream_seq, delivered, consumer_seq) = match msg.info() {
            Ok(i) => (
                i.stream_sequence,
                u32::try_from(i.delivered).unwrap_or(u32::MAX),
                i.consumer_sequence,
            ),
            Err(e) => {
                tracing::warn!(error = %e, "a pulled message without JetStream metadata");
                return;
            }
        };
        let Some(reply) = msg.reply.clone() else {
            return;
        };
        if *max_consumer_seq != 0 && consumer_seq > *max_consumer_seq + 1 && !*barrier {
            tracing::debug!(
                expected = *max_consumer_seq + 1,
                got = consumer_seq,
                "a delivery never reached this member; waiting for it before handing out more"
            );
            *barrier = true;
        }
        *max_consumer_seq = (*max_consumer_seq).max(consumer_seq);

        if self.shared.lock().was_recently_acked(stream_seq) {
            // Its ack was lost: ack again rather than handle it twice, out of order.
            let _ = self
                .inner
                .client
                .publish(reply, Bytes::from(AckKind::Ack))
                .await;
            return;
        }
        let envelope = self
            .options
            .envelope
            .as_ref()
            .unwrap_or(&self.inner.options.envelope);
        let published = msg.info().ok().and_then(|i| {
            runnel_core::chrono::DateTime::from_timestamp_nanos(
                i64::try_from(i.published.unix_timestamp_nanos()).ok()?,
            )
            .into()
        });
        let facts = codec::broker_facts(&self.stream, stream_seq, self.topic.as_str(), published);
        let decoded = codec::from_nats(msg.headers.as_ref(), &msg.payload, envelope, facts);
        let reason = match &decoded {
            Err(e) => Some(format!("undecodable: {e}")),
            Ok(_) if delivered > self.inner.options.max_deliver => Some(format!(
                "delivered {delivered} times without being settled (max_deliveries {})",
                self.inner.options.max_deliver
            )),
            Ok(_) => None,
        };
        if let Some(reason) = reason {
            self.dead_letter(&msg, reply, stream_seq, delivered, &reason)
                .await;
            return;
        }
        let Ok(message) = decoded else { return };
        self.shared
            .lock()
            .receive(stream_seq, delivered, reply, message, Instant::now());
    }

    /// The poison backstop: copies the message to the dead-letter stream, then terminates
    /// it on the group's consumer (no more redeliveries). If the copy fails the message is
    /// nacked to come back and be tried again.
    async fn dead_letter(
        &self,
        msg: &jetstream::Message,
        reply: Subject,
        stream_seq: u64,
        delivered: u32,
        reason: &str,
    ) {
        self.shared.lock().book.remove(stream_seq);
        let mut headers = msg.headers.clone().unwrap_or_default();
        headers.insert(dlh::TOPIC, self.topic.as_str());
        headers.insert(dlh::GROUP, self.group.as_str());
        headers.insert(dlh::ATTEMPTS, delivered.to_string().as_str());
        headers.insert(dlh::REASON, reason.replace(['\r', '\n'], " ").as_str());
        headers.insert(dlh::STREAM_SEQUENCE, stream_seq.to_string().as_str());
        headers.insert(dlh::AT, chrono::Utc::now().to_rfc3339().as_str());
        let id = format!("{}:{}:{}", self.stream, self.group_consumer, stream_seq);
        headers.insert(MSG_ID_HEADER, id.as_str());
        let copied = match self.inner.ensure_dead_letter_stream().await {
            Ok(()) => {
                let subject = names::dead_letter_subject(
                    &self.inner.options.subject_prefix,
                    &self.stream,
                    &self.group_consumer,
                );
                self.inner
                    .publish_one(&subject, headers, msg.payload.clone(), &id)
                    .await
            }
            Err(e) => Err(e),
        };
        let kind = match copied {
            Ok(_) => {
                tracing::warn!(topic = %self.topic, group = %self.group, stream_seq, reason, "message moved to the dead-letter stream");
                AckKind::Term
            }
            Err(e) => {
                tracing::warn!(error = %e, "copying a message to the dead-letter stream failed; it will come back");
                AckKind::Nak(Some(Duration::from_secs(1)))
            }
        };
        let _ = self.inner.client.publish(reply, Bytes::from(kind)).await;
    }

    /// Hands out ready messages while the application's window has room.
    async fn dispatch(&self) {
        let mut touch = Vec::new();
        {
            // Partitioned: the other partitions' deliveries out count against the window.
            let guard = self
                .window
                .as_ref()
                .map(|w| (w, w.dispatch.lock().unwrap_or_else(|p| p.into_inner())));
            let room = match &guard {
                Some((w, _)) => w.room_for(&self.shared),
                None => usize::MAX,
            };
            let mut st = self.shared.lock();
            while st.book.out() < room {
                let Some(h) = st.book.hand_out() else { break };
                let Some(entry) = st.book.get_mut(h.id) else {
                    continue;
                };
                let Some(message) = entry.item.message.take() else {
                    debug_assert!(false, "a held entry has its message");
                    continue;
                };
                if entry.item.touched.elapsed() >= self.options.ack_timeout / HANDOUT_TOUCH_DIVISOR
                {
                    // The ack timeout runs from the hand-over, not from the pull.
                    entry.item.touched = Instant::now();
                    touch.push(entry.item.reply.clone());
                }
                let acker = NatsAcker {
                    shared: self.shared.clone(),
                    window: self.window.clone(),
                    client: self.inner.client.clone(),
                    seq: h.id,
                    token: h.token,
                    reply: entry.item.reply.clone(),
                };
                let delivery = Delivery::new(
                    *message,
                    self.topic.clone(),
                    self.group.clone(),
                    h.attempt,
                    Box::new(acker),
                );
                let handout = Handout {
                    id: h.id,
                    token: h.token,
                    delivery,
                };
                if let Err(err) = self.tx.try_send(Ok(handout)) {
                    // No room (superseded deliveries fill the slack) or closed: back
                    // to waiting.
                    st.book.undo_hand_out(h.id, h.token);
                    if let (Ok(handout), Some(entry)) = (err.into_inner(), st.book.get_mut(h.id)) {
                        let (message, _handle) = handout.delivery.into_parts();
                        entry.item.message = Some(Box::new(message));
                    }
                    break;
                }
            }
        }
        for reply in touch {
            let _ = self
                .inner
                .client
                .publish(reply, Bytes::from(AckKind::Progress))
                .await;
        }
    }
}

/// The member loop's state the housekeeping tick reads and changes.
struct Housekeeping<'a> {
    lease: &'a mut Lease,
    pull: &'a mut Option<pull::Batch>,
    barrier: &'a mut bool,
    max_consumer_seq: &'a mut u64,
    next_acquire: &'a mut Instant,
    reserved: &'a mut bool,
}

/// Reads what an open pull request still brings until it ends (at most its expiry), so
/// nothing delivered to a member that lets its partition go stays pending on the server
/// until its ack timeout. Returns the reply subjects, to be `-NAK`ed once the request is
/// over (nacked while it is open, a message could come straight back to it).
async fn drain_pull(pull: Option<pull::Batch>) -> Vec<Subject> {
    let mut replies = Vec::new();
    let Some(mut pull) = pull else {
        return replies;
    };
    let until = tokio::time::Instant::now() + PULL_EXPIRES + PULL_DRAIN_SLACK;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, pull.next()).await {
        if let Some(reply) = msg.reply.clone() {
            replies.push(reply);
        }
    }
    replies
}
