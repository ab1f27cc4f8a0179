//! One subscription: a member of its group's durable pull consumer.
//!
//! Each subscription runs a member task. The member that holds the group's lease (see
//! [`crate::lease`]) is the only one pulling from the group's consumer; the others wait
//! to take over. The holder keeps every message it pulled and has not settled in a local
//! table keyed by stream sequence, and hands a message to the application only when it is
//! the earliest unsettled one of its ordering key (head of line); keyless messages go at
//! once. Messages waiting behind their key are kept alive on the server with `+WPI`.
//!
//! After taking the lease, and whenever the consumer's delivery sequence shows a gap (a
//! delivery that never reached this member: in flight during a reconnect, or still held
//! by the previous holder), the member hands nothing out until the server's count of
//! unacknowledged messages is no more than what it tracks itself — i.e. until every
//! message delivered before has come back to it (after its ack wait) or been settled.
//! Only then can it know each key's true head.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::Subject;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use runnel_core::bus::{
    Acknowledger, Delivery, DeliveryStream, StartPosition, SubscribeOptions, NACK_DELAY_MAX,
};
use runnel_core::{BusError, GroupName, Message, TopicName};
use tokio::sync::{mpsc, Notify};

use crate::bus::{unavailable, Inner};
use crate::codec::{self, dead_letter_headers as dlh, MSG_ID_HEADER};
use crate::lease::Lease;
use crate::names;

/// Unacknowledged messages the server lets one group's consumer have out at once.
pub const CONSUMER_MAX_ACK_PENDING: i64 = 20_000;
/// Most messages one pull asks for.
pub const PULL_BATCH_MAX: usize = 1024;
/// Fewest messages one pull asks for (when the application's window allows).
pub const PULL_BATCH_MIN: usize = 16;
/// How long one pull request waits on the server for messages.
pub const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// How often a member without the lease tries to take it.
pub const LEASE_POLL: Duration = Duration::from_millis(200);
/// Pause after a failed pull request before the next.
const PULL_RETRY: Duration = Duration::from_millis(250);
/// Sequences of recently acknowledged messages remembered, so a redelivery of one (its
/// ack lost in an outage) is acked again instead of handled again out of order.
pub const RECENTLY_ACKED_MAX: usize = 4096;
/// A message that waited here longer than the ack timeout divided by this gets a `+WPI`
/// when handed out, so its ack timeout (nearly) starts at the hand-over; a shorter wait
/// is not worth a message to the server.
const HANDOUT_TOUCH_DIVISOR: u32 = 20;
/// Extra room in the hand-over channel for deliveries superseded while queued.
const CHANNEL_SLACK: usize = 64;
/// Bounds of the housekeeping tick (keep-alives, lease renewal, barrier checks).
const TICK_MIN: Duration = Duration::from_millis(50);
const TICK_MAX: Duration = Duration::from_millis(250);

enum Phase {
    /// Pulled, not handed out (waiting behind its key, or for room).
    Buffered(Box<Message>),
    /// Handed to the stream; `taken` once the application received it. Until then it waits
    /// in the stream's buffer and is kept alive like a buffered one.
    Handed {
        extended_until: Option<Instant>,
        taken: bool,
    },
    /// Nacked; the server will deliver it again.
    Awaiting,
}

struct Entry {
    key: Option<String>,
    token: u64,
    reply: Subject,
    delivered: u64,
    phase: Phase,
    /// When the server's ack timer for this message was last reset.
    touched: Instant,
}

#[derive(Default)]
struct State {
    entries: HashMap<u64, Entry>,
    keys: HashMap<String, BTreeSet<u64>>,
    buffered: BTreeSet<u64>,
    /// Buffered messages that may go now: keyless ones and the heads of their keys.
    ready: BTreeSet<u64>,
    in_flight: usize,
    recently_acked: VecDeque<u64>,
    recently_acked_set: HashSet<u64>,
    next_token: u64,
}

impl State {
    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.entries.remove(&seq)?;
        self.buffered.remove(&seq);
        self.ready.remove(&seq);
        if let Some(k) = &entry.key {
            if let Some(set) = self.keys.get_mut(k) {
                set.remove(&seq);
                if set.is_empty() {
                    self.keys.remove(k);
                } else {
                    self.refresh_key(k);
                }
            }
        }
        if matches!(entry.phase, Phase::Handed { .. }) {
            self.in_flight -= 1;
        }
        Some(entry)
    }

    fn remember_acked(&mut self, seq: u64) {
        if self.recently_acked_set.insert(seq) {
            self.recently_acked.push_back(seq);
            if self.recently_acked.len() > RECENTLY_ACKED_MAX {
                if let Some(old) = self.recently_acked.pop_front() {
                    self.recently_acked_set.remove(&old);
                }
            }
        }
    }

    /// Whether the hand-out `(seq, token)` is current; if so the application takes it now
    /// (its keep-alives stop: the ack timeout is the handler's from here).
    fn take(&mut self, seq: u64, token: u64) -> bool {
        match self.entries.get_mut(&seq) {
            Some(e) if e.token == token => match &mut e.phase {
                Phase::Handed { taken, .. } => {
                    *taken = true;
                    true
                }
                _ => false,
            },
            _ => false,
        }
    }

    fn is_current(&self, seq: u64, token: u64) -> bool {
        self.entries
            .get(&seq)
            .is_some_and(|e| e.token == token && matches!(e.phase, Phase::Handed { .. }))
    }

    /// Marks the head of `key` ready when it is buffered here.
    fn refresh_key(&mut self, key: &str) {
        if let Some(&head) = self.keys.get(key).and_then(|s| s.first()) {
            if self
                .entries
                .get(&head)
                .is_some_and(|e| matches!(e.phase, Phase::Buffered(_)))
            {
                self.ready.insert(head);
            }
        }
    }

    /// Marks a just-buffered message ready if nothing of its key is before it.
    fn buffered_now(&mut self, seq: u64) {
        self.buffered.insert(seq);
        match self.entries.get(&seq).and_then(|e| e.key.clone()) {
            None => {
                self.ready.insert(seq);
            }
            Some(k) => self.refresh_key(&k),
        }
    }

    /// The next message that may be handed out: the earliest buffered one that is keyless
    /// or the head of its key.
    fn next_ready(&self) -> Option<u64> {
        debug_assert!(self.ready.is_subset(&self.buffered));
        self.ready.first().copied()
    }
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Handout = (u64, u64, Delivery);

/// What one member task needs.
struct Member {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    topic: TopicName,
    group: GroupName,
    stream: String,
    consumer_name: String,
    consumer: jetstream::consumer::PullConsumer,
    stream_handle: jetstream::stream::Stream<()>,
    options: SubscribeOptions,
    tx: mpsc::Sender<Handout>,
}

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

    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        notify: Notify::new(),
    });
    let (tx, rx) = mpsc::channel(options.max_in_flight + CHANNEL_SLACK);
    let member = Member {
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
    Ok(Box::pin(Deliveries { rx, shared }))
}

/// The application's side: deliveries superseded while queued are skipped.
struct Deliveries {
    rx: mpsc::Receiver<Handout>,
    shared: Arc<Shared>,
}

impl Stream for Deliveries {
    type Item = Result<Delivery, BusError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some((seq, token, delivery))) => {
                    if self.shared.lock().take(seq, token) {
                        return Poll::Ready(Some(Ok(delivery)));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Member {
    fn tick_period(&self) -> Duration {
        (self.options.ack_timeout / 4).clamp(TICK_MIN, TICK_MAX)
    }

    fn pull_batch(&self) -> usize {
        (self.options.max_in_flight * 2).clamp(PULL_BATCH_MIN, PULL_BATCH_MAX)
    }

    async fn run(self) {
        let member_id = uuid::Uuid::now_v7().simple().to_string();
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
        let mut next_pull = Instant::now();
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
                let (room, buffered) = {
                    let st = self.shared.lock();
                    let n = st.buffered.len();
                    (self.pull_batch().saturating_sub(n), n)
                };
                // No trickle of tiny pulls while plenty waits here already.
                if room > 0 && (buffered == 0 || room >= self.pull_batch() / 4) {
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
                _ = self.shared.notify.notified() => {}
                _ = tick.tick() => {
                    self.housekeeping(&store, &mut lease, &mut pull, &mut barrier, &mut max_consumer_seq, &mut next_acquire).await;
                }
            }
            if lease.held() && !barrier {
                self.dispatch().await;
            }
        }
        // The application dropped the stream: give waiting messages back at once and let
        // another member take over. Deliveries the application still holds stay settle-able.
        drop(pull);
        if lease.held() {
            let replies: Vec<Subject> = {
                let mut st = self.shared.lock();
                let seqs: Vec<u64> = st.buffered.iter().copied().collect();
                seqs.into_iter()
                    .filter_map(|s| st.remove(s).map(|e| e.reply))
                    .collect()
            };
            for reply in replies {
                let _ = self
                    .inner
                    .client
                    .publish(reply, Bytes::from(AckKind::Nak(None)))
                    .await;
            }
        }
        lease.release(&store).await;
        tracing::debug!(group = %self.group, topic = %self.topic, "member stopped");
    }

    async fn housekeeping(
        &self,
        store: &jetstream::kv::Store,
        lease: &mut Lease,
        pull: &mut Option<pull::Batch>,
        barrier: &mut bool,
        max_consumer_seq: &mut u64,
        next_acquire: &mut Instant,
    ) {
        if lease.held() && lease.renewal_due() {
            match lease.renew(store).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(group = %self.group, "group lease lost"),
                Err(e) => tracing::debug!(error = %e, "lease renewal failed; retrying"),
            }
        }
        if !lease.held() {
            if pull.is_some() || !self.shared.lock().buffered.is_empty() {
                // Lost: stop pulling, forget what waits here (the server redelivers it
                // to the next holder after its ack wait).
                *pull = None;
                let mut st = self.shared.lock();
                let seqs: Vec<u64> = st.buffered.iter().copied().collect();
                for s in seqs {
                    st.remove(s);
                }
            }
            if Instant::now() >= *next_acquire {
                *next_acquire = Instant::now() + LEASE_POLL;
                match lease.acquire(store).await {
                    Ok(true) => {
                        tracing::debug!(group = %self.group, topic = %self.topic, "group lease taken");
                        *barrier = true;
                        *max_consumer_seq = 0;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::debug!(error = %e, "taking the group lease failed"),
                }
            }
        }
        if lease.held() && *barrier {
            match self.stream_handle.consumer_info(&self.consumer_name).await {
                Ok(info) => {
                    let tracked = self.shared.lock().entries.len();
                    if info.num_ack_pending <= tracked {
                        *barrier = false;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "consumer info failed"),
            }
        }
        self.keep_alive(lease.held()).await;
    }

    /// Resets the server's ack timer of messages waiting here (when holding the lease)
    /// and of extended deliveries.
    async fn keep_alive(&self, held: bool) {
        let threshold = self.options.ack_timeout / 3;
        let now = Instant::now();
        let replies: Vec<Subject> = {
            let mut st = self.shared.lock();
            st.entries
                .values_mut()
                .filter(|e| match &e.phase {
                    Phase::Buffered(_) => held,
                    Phase::Handed {
                        extended_until: Some(until),
                        ..
                    } => *until > now,
                    // Waiting in the stream's buffer: not the application's yet.
                    Phase::Handed { taken: false, .. } => held,
                    _ => false,
                })
                .filter(|e| now.duration_since(e.touched) >= threshold)
                .map(|e| {
                    e.touched = now;
                    e.reply.clone()
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
            Ok(i) => (i.stream_sequence, i.delivered as u64, i.consumer_sequence),
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

        if self.shared.lock().recently_acked_set.contains(&stream_seq) {
            // Its ack was lost: ack again rather than handle it twice, out of order.
            let _ = self
                .inner
                .client
                .publish(reply, Bytes::from(AckKind::Ack))
                .await;
            return;
        }
        let decoded = codec::from_nats(msg.headers.as_ref(), &msg.payload);
        let reason = match &decoded {
            Err(e) => Some(format!("undecodable: {e}")),
            Ok(_) if delivered > u64::from(self.inner.options.max_deliver) => Some(format!(
                "delivered {delivered} times without being settled (max_deliver {})",
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
        let mut st = self.shared.lock();
        let token = st.token();
        let now = Instant::now();
        match st.entries.get_mut(&stream_seq) {
            Some(entry) => {
                let was_handed = matches!(entry.phase, Phase::Handed { .. });
                entry.token = token;
                entry.reply = reply;
                entry.delivered = delivered;
                entry.phase = Phase::Buffered(Box::new(message));
                entry.touched = now;
                if was_handed {
                    st.in_flight -= 1;
                }
            }
            None => {
                let key = message.ordering_key().map(str::to_string);
                if let Some(k) = &key {
                    st.keys.entry(k.clone()).or_default().insert(stream_seq);
                }
                st.entries.insert(
                    stream_seq,
                    Entry {
                        key,
                        token,
                        reply,
                        delivered,
                        phase: Phase::Buffered(Box::new(message)),
                        touched: now,
                    },
                );
            }
        }
        st.buffered_now(stream_seq);
    }

    /// The poison backstop: copies the message to the dead-letter stream, then terminates
    /// it on the group's consumer (no more redeliveries). If the copy fails the message is
    /// nacked to come back and be tried again.
    async fn dead_letter(
        &self,
        msg: &jetstream::Message,
        reply: Subject,
        stream_seq: u64,
        delivered: u64,
        reason: &str,
    ) {
        {
            let mut st = self.shared.lock();
            st.remove(stream_seq);
        }
        let mut headers = msg.headers.clone().unwrap_or_default();
        headers.insert(dlh::TOPIC, self.topic.as_str());
        headers.insert(dlh::GROUP, self.group.as_str());
        headers.insert(dlh::ATTEMPTS, delivered.to_string().as_str());
        headers.insert(dlh::REASON, reason.replace(['\r', '\n'], " ").as_str());
        headers.insert(dlh::STREAM_SEQUENCE, stream_seq.to_string().as_str());
        headers.insert(dlh::AT, chrono::Utc::now().to_rfc3339().as_str());
        let id = format!("{}:{}:{}", self.stream, self.consumer_name, stream_seq);
        headers.insert(MSG_ID_HEADER, id.as_str());
        let copied = match self.inner.ensure_dead_letter_stream().await {
            Ok(()) => {
                let subject = names::dead_letter_subject(
                    &self.inner.options.subject_prefix,
                    &self.stream,
                    &self.consumer_name,
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
            let mut st = self.shared.lock();
            while st.in_flight < self.options.max_in_flight {
                let Some(seq) = st.next_ready() else { break };
                let token = st.token();
                let Some(entry) = st.entries.get_mut(&seq) else {
                    break;
                };
                let phase = std::mem::replace(
                    &mut entry.phase,
                    Phase::Handed {
                        extended_until: None,
                        taken: false,
                    },
                );
                let Phase::Buffered(message) = phase else {
                    entry.phase = phase;
                    break;
                };
                entry.token = token;
                if entry.touched.elapsed() >= self.options.ack_timeout / HANDOUT_TOUCH_DIVISOR {
                    // The ack timeout runs from the hand-over, not from the pull.
                    entry.touched = Instant::now();
                    touch.push(entry.reply.clone());
                }
                let attempt = u32::try_from(entry.delivered).unwrap_or(u32::MAX).max(1);
                let acker = NatsAcker {
                    shared: self.shared.clone(),
                    client: self.inner.client.clone(),
                    seq,
                    token,
                    reply: entry.reply.clone(),
                };
                let delivery = Delivery::new(
                    *message,
                    self.topic.clone(),
                    self.group.clone(),
                    attempt,
                    Box::new(acker),
                );
                st.buffered.remove(&seq);
                st.ready.remove(&seq);
                st.in_flight += 1;
                match self.tx.try_send((seq, token, delivery)) {
                    Ok(()) => {}
                    Err(err) => {
                        // No room (superseded deliveries fill the slack) or closed: back
                        // to waiting.
                        let (_, _, delivery) = err.into_inner();
                        let (message, _handle) = delivery.into_parts();
                        st.in_flight -= 1;
                        if let Some(entry) = st.entries.get_mut(&seq) {
                            entry.phase = Phase::Buffered(Box::new(message));
                        }
                        st.buffered_now(seq);
                        break;
                    }
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

/// Settles one delivery: sends the ack kind on the message's reply subject, then
/// updates the member's table so the key's next message can go.
struct NatsAcker {
    shared: Arc<Shared>,
    client: async_nats::Client,
    seq: u64,
    token: u64,
    reply: Subject,
}

impl NatsAcker {
    fn check(&self) -> Result<(), BusError> {
        if self.shared.lock().is_current(self.seq, self.token) {
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
            if st.is_current(self.seq, self.token) {
                st.remove(self.seq);
                st.remember_acked(self.seq);
            }
        }
        self.shared.notify.notify_one();
        Ok(())
    }

    async fn nack(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.check()?;
        self.send(AckKind::Nak(delay.filter(|d| !d.is_zero())))
            .await?;
        {
            let mut st = self.shared.lock();
            if st.is_current(self.seq, self.token) {
                if let Some(entry) = st.entries.get_mut(&self.seq) {
                    entry.phase = Phase::Awaiting;
                }
                st.in_flight -= 1;
            }
        }
        self.shared.notify.notify_one();
        Ok(())
    }

    async fn extend(&self, by: Duration) -> Result<(), BusError> {
        if by > NACK_DELAY_MAX {
            return Err(BusError::InvalidArgument(format!(
                "extension {by:?} is over the {NACK_DELAY_MAX:?} maximum"
            )));
        }
        self.check()?;
        self.send(AckKind::Progress).await?;
        let mut st = self.shared.lock();
        if let Some(entry) = st.entries.get_mut(&self.seq) {
            if entry.token == self.token {
                entry.touched = Instant::now();
                entry.phase = Phase::Handed {
                    extended_until: Some(Instant::now() + by),
                    taken: true,
                };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(st: &mut State, seq: u64, key: Option<&str>) {
        let message = Message::json("T", &serde_json::json!({ "seq": seq }));
        let token = st.token();
        if let Some(k) = key {
            st.keys.entry(k.to_string()).or_default().insert(seq);
        }
        st.entries.insert(
            seq,
            Entry {
                key: key.map(str::to_string),
                token,
                reply: Subject::from("reply"),
                delivered: 1,
                phase: Phase::Buffered(Box::new(message)),
                touched: Instant::now(),
            },
        );
        st.buffered_now(seq);
    }

    fn hand_out(st: &mut State, seq: u64) {
        let entry = st.entries.get_mut(&seq).expect("tracked");
        entry.phase = Phase::Handed {
            extended_until: None,
            taken: true,
        };
        st.buffered.remove(&seq);
        st.ready.remove(&seq);
        st.in_flight += 1;
    }

    #[test]
    fn only_the_head_of_a_key_is_ready_and_settling_it_releases_the_next() {
        let mut st = State::default();
        buffer(&mut st, 1, Some("A"));
        buffer(&mut st, 2, Some("B"));
        buffer(&mut st, 3, Some("A"));
        buffer(&mut st, 4, None);
        assert_eq!(st.ready.iter().copied().collect::<Vec<_>>(), vec![1, 2, 4]);

        hand_out(&mut st, 1);
        assert_eq!(st.next_ready(), Some(2));
        assert!(!st.ready.contains(&3), "A's second waits for its first");

        // A nacked head stays tracked: the key stays blocked.
        if let Some(e) = st.entries.get_mut(&1) {
            e.phase = Phase::Awaiting;
        }
        st.in_flight -= 1;
        assert!(!st.ready.contains(&3));

        // Redelivered, it is the head again; acked, the next one goes.
        let entry = st.entries.get_mut(&1).expect("tracked");
        entry.phase = Phase::Buffered(Box::new(Message::json("T", &serde_json::json!(1))));
        st.buffered_now(1);
        assert!(st.ready.contains(&1) && !st.ready.contains(&3));
        hand_out(&mut st, 1);
        st.remove(1);
        assert!(st.ready.contains(&3), "settling A's head releases A's next");
        assert_eq!(st.in_flight, 0);
    }

    #[test]
    fn recently_acked_memory_is_bounded() {
        let mut st = State::default();
        for seq in 0..(RECENTLY_ACKED_MAX as u64 + 10) {
            st.remember_acked(seq);
        }
        assert_eq!(st.recently_acked.len(), RECENTLY_ACKED_MAX);
        assert_eq!(st.recently_acked_set.len(), RECENTLY_ACKED_MAX);
        assert!(!st.recently_acked_set.contains(&0));
    }
}
