//! Consuming: one channel per subscription on the group's single-active-consumer quorum
//! queue, manual acks, and the per-key head-of-line book kept in the client.
//!
//! The broker hands the active consumer up to `prefetch` messages in queue order. The
//! book releases to the application at most `max_in_flight` at a time and at most one
//! per key: a key's next message waits (unacknowledged at the broker, buffered here)
//! until the one before it is acked. A nack — with or without a delay — and an ack
//! timeout keep the message at the head of its key and hand it out again from the
//! client, with the attempt number increased; nothing reaches the broker until the ack.
//! If the consumer or its connection dies, the broker gives every unacknowledged message
//! (the key's head first, in queue order) to the next active consumer with
//! `x-delivery-count` increased.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use runnel_core::bus::NACK_DELAY_MAX;
use runnel_core::bus::{Acknowledger, Delivery, DeliveryStream, StartPosition, SubscribeOptions};
use runnel_core::{BusError, GroupName, Message, TopicName};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::codec::{broker_attempt, from_amqp};
use crate::connection::{Backoff, Link};
use crate::error::from_lapin;
use crate::topology::{declare_group, group_queue_name};

/// The timer heap is rebuilt once it holds more than this many items per live entry
/// (plus [`TIMERS_SLACK`]).
const TIMERS_STALE_FACTOR: usize = 4;
const TIMERS_SLACK: usize = 64;
/// Settle commands queued from acknowledgers to their subscription's task.
const COMMANDS_QUEUED_MAX: usize = 1024;

/// The broker prefetch of a subscription: `max_in_flight` deliveries for the
/// application plus as many again of look-ahead, so a blocked key's buffered messages do
/// not stall other keys while the window lasts.
fn prefetch(max_in_flight: usize) -> u16 {
    u16::try_from(max_in_flight.saturating_mul(2)).unwrap_or(u16::MAX)
}

/// Joins `group` on `topic` and returns the consumer's deliveries.
pub(crate) async fn subscribe(
    link: Arc<Link>,
    topic: &TopicName,
    group: &GroupName,
    options: SubscribeOptions,
) -> Result<DeliveryStream, BusError> {
    options.validate()?;
    let session = open_session(&link, topic, group, options.start, options.max_in_flight).await?;
    let (out_tx, out_rx) = mpsc::channel(options.max_in_flight);
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMANDS_QUEUED_MAX);
    let task = Subscription {
        link,
        topic: topic.clone(),
        group: group.clone(),
        options,
        out: out_tx,
        commands: cmd_tx,
        book: Book::default(),
    };
    tokio::spawn(task.run(session, cmd_rx));
    Ok(Box::pin(futures_util::stream::unfold(
        out_rx,
        |mut rx: mpsc::Receiver<Result<Handout, BusError>>| async move {
            let item = rx.recv().await?.map(|h| {
                // The application has it now: its ack timeout starts.
                let _ = h.received.set(Instant::now());
                h.delivery
            });
            Some((item, rx))
        },
    )))
}

/// One consumer on one channel.
struct Session {
    channel: Channel,
    consumer: Consumer,
}

async fn open_session(
    link: &Link,
    topic: &TopicName,
    group: &GroupName,
    start: StartPosition,
    max_in_flight: usize,
) -> Result<Session, BusError> {
    let connection = link.connection().await?;
    declare_group(
        &connection,
        topic,
        group,
        start == StartPosition::Earliest,
        link.options(),
    )
    .await?;
    let channel = connection.create_channel().await.map_err(from_lapin)?;
    channel
        .basic_qos(prefetch(max_in_flight), BasicQosOptions::default())
        .await
        .map_err(from_lapin)?;
    let tag = format!("runnel-{}", runnel_core::uuid::Uuid::now_v7().simple());
    let consumer = channel
        .basic_consume(
            &group_queue_name(topic, group),
            &tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(from_lapin)?;
    Ok(Session { channel, consumer })
}

enum Command {
    Ack {
        id: u64,
        lease: u64,
        reply: oneshot::Sender<Result<(), BusError>>,
    },
    Nack {
        id: u64,
        lease: u64,
        delay: Option<Duration>,
        reply: oneshot::Sender<Result<(), BusError>>,
    },
    Extend {
        id: u64,
        lease: u64,
        by: Duration,
        reply: oneshot::Sender<Result<(), BusError>>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Behind an earlier message of its key.
    Waiting,
    /// Next to hand out.
    Ready,
    /// Held by the application until the deadline.
    Out { deadline: Instant },
    /// Nacked with a delay.
    Delayed { until: Instant },
}

struct Entry {
    acker: lapin::acker::Acker,
    message: Message,
    key: Option<String>,
    attempt: u32,
    lease: u64,
    state: State,
    /// When the application took the current lease's delivery from the stream; unset while
    /// it waits in the stream's buffer. The ack timeout counts from then.
    received: Arc<OnceLock<Instant>>,
}

/// A delivery on its way to the application, with the cell the stream sets when the
/// application takes it.
struct Handout {
    delivery: Delivery,
    received: Arc<OnceLock<Instant>>,
}

type Outbox = mpsc::Sender<Result<Handout, BusError>>;

/// What the subscription holds from the broker and what it handed out.
#[derive(Default)]
struct Book {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    /// Per key, its held messages in queue order; the front is the key's head.
    keys: HashMap<String, VecDeque<u64>>,
    ready: VecDeque<u64>,
    /// Deliveries handed to the application and not yet settled or timed out.
    out: usize,
    /// `(when, id, lease)` of ack deadlines and delay ends; stale items are skipped.
    timers: BinaryHeap<Reverse<(Instant, u64, u64)>>,
}

impl Book {
    fn accept(&mut self, acker: lapin::acker::Acker, message: Message, attempt: u32) {
        let id = self.next_id;
        self.next_id += 1;
        let key = message.ordering_key().map(str::to_string);
        let state = match &key {
            Some(k) => {
                let queue = self.keys.entry(k.clone()).or_default();
                queue.push_back(id);
                if queue.len() == 1 {
                    State::Ready
                } else {
                    State::Waiting
                }
            }
            None => State::Ready,
        };
        if state == State::Ready {
            self.ready.push_back(id);
        }
        self.entries.insert(
            id,
            Entry {
                acker,
                message,
                key,
                attempt,
                lease: 0,
                state,
                received: Arc::new(OnceLock::new()),
            },
        );
    }

    /// The entry `id` if the application's lease `lease` on it is current.
    fn held(&mut self, id: u64, lease: u64) -> Option<&mut Entry> {
        self.entries
            .get_mut(&id)
            .filter(|e| e.lease == lease && matches!(e.state, State::Out { .. }))
    }

    /// Removes a settled entry and lets its key's next message go.
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if matches!(entry.state, State::Out { .. }) {
            self.out -= 1;
        }
        if let Some(k) = &entry.key {
            if let Some(queue) = self.keys.get_mut(k) {
                debug_assert_eq!(queue.front(), Some(&id), "only a key's head is settled");
                queue.retain(|x| *x != id);
                match queue.front() {
                    Some(next) => {
                        let next = *next;
                        if let Some(e) = self.entries.get_mut(&next) {
                            if e.state == State::Waiting {
                                e.state = State::Ready;
                                self.ready.push_back(next);
                            }
                        }
                    }
                    None => {
                        self.keys.remove(k);
                    }
                }
            }
        }
        Some(entry)
    }

    /// Puts a handed-out entry back at the front of the line, one attempt later.
    fn hand_back(&mut self, id: u64) {
        if let Some(e) = self.entries.get_mut(&id) {
            if matches!(e.state, State::Out { .. }) {
                self.out -= 1;
            }
            e.attempt = e.attempt.saturating_add(1);
            e.lease += 1;
            e.state = State::Ready;
            self.ready.push_front(id);
        }
    }

    /// Hands out ready entries while the application has room.
    fn emit(
        &mut self,
        options: &SubscribeOptions,
        topic: &TopicName,
        group: &GroupName,
        out: &Outbox,
        commands: &mpsc::Sender<Command>,
    ) {
        while self.out < options.max_in_flight {
            let Some(id) = self.ready.pop_front() else {
                return;
            };
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            if e.state != State::Ready {
                continue;
            }
            e.lease += 1;
            let deadline = Instant::now() + options.ack_timeout;
            let delivery = Delivery::new(
                e.message.clone(),
                topic.clone(),
                group.clone(),
                e.attempt,
                Box::new(RabbitAcknowledger {
                    id,
                    lease: e.lease,
                    message_id: e.message.id.clone(),
                    commands: commands.clone(),
                }),
            );
            let received = Arc::new(OnceLock::new());
            let handout = Handout {
                delivery,
                received: received.clone(),
            };
            match out.try_send(Ok(handout)) {
                Ok(()) => {
                    e.received = received;
                    e.state = State::Out { deadline };
                    self.out += 1;
                    self.timers.push(Reverse((deadline, id, e.lease)));
                }
                Err(_) => {
                    // The application has not read what it was given; try again later.
                    e.lease -= 1;
                    self.ready.push_front(id);
                    return;
                }
            }
        }
    }

    /// Times out handed-out entries and ends delays that are due. A handed-out entry's
    /// ack timeout counts from when the application took it from the stream: one still
    /// waiting in the stream's buffer, or taken less than `ack_timeout` ago, gets its
    /// deadline moved instead of coming back.
    fn expire(&mut self, now: Instant, ack_timeout: Duration) {
        while let Some(Reverse((when, id, lease))) = self.timers.peek().copied() {
            if when > now {
                return;
            }
            self.timers.pop();
            let Some(e) = self.entries.get_mut(&id).filter(|e| e.lease == lease) else {
                continue;
            };
            match e.state {
                State::Out { deadline } if deadline == when => {
                    let due = match e.received.get() {
                        None => Some(now + ack_timeout),
                        Some(at) if *at + ack_timeout > now => Some(*at + ack_timeout),
                        Some(_) => None,
                    };
                    match due {
                        Some(deadline) => {
                            e.state = State::Out { deadline };
                            self.timers.push(Reverse((deadline, id, lease)));
                        }
                        None => self.hand_back(id),
                    }
                }
                State::Delayed { until } if until == when => self.hand_back(id),
                _ => {}
            }
        }
    }

    /// Rebuilds the timer heap from the live entries once stale items (left by
    /// extensions) outnumber them, so repeated extends cannot grow it without bound.
    fn compact_timers(&mut self) {
        if self.timers.len() <= TIMERS_STALE_FACTOR * self.entries.len() + TIMERS_SLACK {
            return;
        }
        self.timers = self
            .entries
            .iter()
            .filter_map(|(id, e)| match e.state {
                State::Out { deadline } => Some(Reverse((deadline, *id, e.lease))),
                State::Delayed { until } => Some(Reverse((until, *id, e.lease))),
                _ => None,
            })
            .collect();
    }

    fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((when, _, _))| *when)
    }

    /// Forgets everything: the channel is gone and the broker gives it all out again.
    fn clear(&mut self) {
        self.entries.clear();
        self.keys.clear();
        self.ready.clear();
        self.timers.clear();
        self.out = 0;
    }
}

struct Subscription {
    link: Arc<Link>,
    topic: TopicName,
    group: GroupName,
    options: SubscribeOptions,
    out: Outbox,
    commands: mpsc::Sender<Command>,
    book: Book,
}

impl Subscription {
    async fn run(mut self, first: Session, mut commands: mpsc::Receiver<Command>) {
        let mut session = Some(first);
        loop {
            let Some(current) = session.as_mut() else {
                match self.reconnect(&mut commands).await {
                    Some(s) => session = Some(s),
                    None => return,
                }
                continue;
            };
            self.book.emit(
                &self.options,
                &self.topic,
                &self.group,
                &self.out,
                &self.commands,
            );
            let timer = self.book.next_timer();
            tokio::select! {
                _ = self.out.closed() => {
                    // The stream was dropped: closing the channel returns every
                    // unacknowledged message to the queue for the next consumer.
                    let _ = current.channel.close(200, "subscription dropped").await;
                    return;
                }
                Some(command) = commands.recv() => self.handle(command).await,
                delivery = current.consumer.next() => match delivery {
                    Some(Ok(d)) => self.accept(d).await,
                    Some(Err(e)) => {
                        tracing::warn!(topic = %self.topic, group = %self.group, error = %e, "consumer lost; reconnecting");
                        self.book.clear();
                        session = None;
                    }
                    None => {
                        tracing::warn!(topic = %self.topic, group = %self.group, "consumer cancelled; reconnecting");
                        self.book.clear();
                        session = None;
                    }
                },
                _ = sleep_until(timer) => self.book.expire(Instant::now(), self.options.ack_timeout),
            }
        }
    }

    /// Opens a new session with back-off; `None` once the stream was dropped.
    async fn reconnect(&mut self, commands: &mut mpsc::Receiver<Command>) -> Option<Session> {
        let mut backoff = Backoff::new(self.link.options());
        loop {
            let attempt = open_session(
                &self.link,
                &self.topic,
                &self.group,
                StartPosition::Latest,
                self.options.max_in_flight,
            );
            tokio::select! {
                _ = self.out.closed() => return None,
                result = attempt => match result {
                    Ok(s) => {
                        tracing::info!(topic = %self.topic, group = %self.group, "consumer reconnected");
                        return Some(s);
                    }
                    Err(BusError::Closed) => {
                        // The bus was closed: the subscription ends.
                        let _ = self.out.try_send(Err(BusError::Closed));
                        return None;
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(topic = %self.topic, group = %self.group, error = %e, ?delay, "resubscribing failed");
                        let sleep = tokio::time::sleep(delay);
                        tokio::pin!(sleep);
                        loop {
                            tokio::select! {
                                _ = self.out.closed() => return None,
                                _ = &mut sleep => break,
                                // Settlements of deliveries from the lost channel fail.
                                Some(command) = commands.recv() => self.handle(command).await,
                            }
                        }
                    }
                },
            }
        }
    }

    async fn accept(&mut self, delivery: lapin::message::Delivery) {
        let attempt = broker_attempt(&delivery.properties, delivery.redelivered);
        match from_amqp(&delivery.properties, delivery.data) {
            Ok(message) => self.book.accept(delivery.acker, message, attempt),
            Err(e) => {
                // Not a CloudEvent Runnel can read: straight to the dead-letter queue.
                tracing::warn!(topic = %self.topic, group = %self.group, error = %e, "unreadable message dead-lettered");
                let _ = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await;
            }
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Ack { id, lease, reply } => {
                let entry = match self.book.held(id, lease) {
                    None => None,
                    Some(_) => self.book.remove(id),
                };
                match entry {
                    None => {
                        let _ = reply.send(Err(lost(&self.book, id)));
                    }
                    // The book has let the key's next message go; the ack frame itself
                    // is written off this task so intake and other settlements go on.
                    Some(e) => {
                        tokio::spawn(async move {
                            let result = e
                                .acker
                                .ack(BasicAckOptions::default())
                                .await
                                .map(|_| ())
                                .map_err(|err| {
                                    tracing::warn!(error = %err, "ack failed; the message will be redelivered");
                                    BusError::DeliveryLost(e.message.id.clone())
                                });
                            let _ = reply.send(result);
                        });
                    }
                }
            }
            Command::Nack {
                id,
                lease,
                delay,
                reply,
            } => {
                let result = match self.book.held(id, lease) {
                    None => Err(lost(&self.book, id)),
                    Some(e) => {
                        match delay.filter(|d| !d.is_zero()) {
                            None => self.book.hand_back(id),
                            Some(d) => {
                                let until = Instant::now() + d;
                                e.state = State::Delayed { until };
                                let lease = e.lease;
                                self.book.out -= 1;
                                self.book.timers.push(Reverse((until, id, lease)));
                            }
                        }
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            Command::Extend {
                id,
                lease,
                by,
                reply,
            } => {
                let result = match self.book.held(id, lease) {
                    None => Err(lost(&self.book, id)),
                    Some(e) => {
                        let deadline = Instant::now() + by;
                        e.state = State::Out { deadline };
                        let lease = e.lease;
                        self.book.timers.push(Reverse((deadline, id, lease)));
                        self.book.compact_timers();
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
        }
    }
}

fn lost(book: &Book, id: u64) -> BusError {
    BusError::DeliveryLost(
        book.entries
            .get(&id)
            .map(|e| e.message.id.clone())
            .unwrap_or_else(|| format!("#{id}")),
    )
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Settles one delivery through its subscription's task.
struct RabbitAcknowledger {
    id: u64,
    lease: u64,
    message_id: String,
    commands: mpsc::Sender<Command>,
}

impl RabbitAcknowledger {
    async fn send(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), BusError>>) -> Command,
    ) -> Result<(), BusError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| BusError::DeliveryLost(self.message_id.clone()))?;
        answer
            .await
            .map_err(|_| BusError::DeliveryLost(self.message_id.clone()))?
    }
}

#[async_trait]
impl Acknowledger for RabbitAcknowledger {
    async fn ack(&self) -> Result<(), BusError> {
        let (id, lease) = (self.id, self.lease);
        self.send(|reply| Command::Ack { id, lease, reply }).await
    }

    async fn nack(&self, delay: Option<Duration>) -> Result<(), BusError> {
        let (id, lease) = (self.id, self.lease);
        self.send(|reply| Command::Nack {
            id,
            lease,
            delay,
            reply,
        })
        .await
    }

    async fn extend(&self, by: Duration) -> Result<(), BusError> {
        if by > NACK_DELAY_MAX {
            return Err(BusError::InvalidArgument(format!(
                "extension {by:?} is over the {NACK_DELAY_MAX:?} maximum"
            )));
        }
        let (id, lease) = (self.id, self.lease);
        self.send(|reply| Command::Extend {
            id,
            lease,
            by,
            reply,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: usize, key: Option<&str>) -> Message {
        let m = Message::json("T", &serde_json::json!({ "n": n }));
        match key {
            Some(k) => m.with_key(k),
            None => m,
        }
    }

    fn setup(max_in_flight: usize) -> (Book, SubscribeOptions, TopicName, GroupName) {
        let options = SubscribeOptions {
            max_in_flight,
            ack_timeout: Duration::from_secs(30),
            ..SubscribeOptions::default()
        };
        (
            Book::default(),
            options,
            TopicName::new("t").unwrap(),
            GroupName::new("g").unwrap(),
        )
    }

    /// Takes what the stream would yield (starting each delivery's ack timeout).
    fn drain(rx: &mut mpsc::Receiver<Result<Handout, BusError>>) -> Vec<(usize, u32)> {
        let mut got = Vec::new();
        while let Ok(Ok(h)) = rx.try_recv() {
            let _ = h.received.set(Instant::now());
            let d = h.delivery;
            let n = d.message.payload_json().unwrap()["n"].as_u64().unwrap() as usize;
            got.push((n, d.attempt));
        }
        got
    }

    #[tokio::test]
    async fn one_head_per_key_and_the_next_only_after_settling() {
        let (mut book, options, topic, group) = setup(8);
        let (out, mut rx) = mpsc::channel(8);
        let (commands, _crx) = mpsc::channel(8);
        for (n, k) in [(0, "A"), (1, "A"), (2, "B"), (3, "A"), (4, "B")] {
            book.accept(lapin::acker::Acker::mock(), msg(n, Some(k)), 1);
        }
        book.emit(&options, &topic, &group, &out, &commands);
        assert_eq!(drain(&mut rx), vec![(0, 1), (2, 1)]);
        // A nack keeps the key's head at the front, one attempt later.
        book.hand_back(0);
        book.emit(&options, &topic, &group, &out, &commands);
        assert_eq!(drain(&mut rx), vec![(0, 2)]);
        // Settling a head lets the key's next one go.
        book.remove(0);
        book.emit(&options, &topic, &group, &out, &commands);
        assert_eq!(drain(&mut rx), vec![(1, 1)]);
        book.remove(2);
        book.remove(1);
        book.emit(&options, &topic, &group, &out, &commands);
        assert_eq!(drain(&mut rx), vec![(4, 1), (3, 1)]);
    }

    #[tokio::test]
    async fn max_in_flight_and_ack_timeout() {
        let (mut book, options, topic, group) = setup(2);
        let (out, mut rx) = mpsc::channel(2);
        let (commands, _crx) = mpsc::channel(8);
        for n in 0..4 {
            book.accept(lapin::acker::Acker::mock(), msg(n, None), 1);
        }
        book.emit(&options, &topic, &group, &out, &commands);
        assert_eq!(drain(&mut rx), vec![(0, 1), (1, 1)]);
        book.emit(&options, &topic, &group, &out, &commands);
        assert!(drain(&mut rx).is_empty(), "at max_in_flight");
        // Both time out: they come back first, with attempt 2.
        book.expire(
            Instant::now() + Duration::from_secs(31),
            options.ack_timeout,
        );
        book.emit(&options, &topic, &group, &out, &commands);
        let mut got = drain(&mut rx);
        got.sort_unstable();
        assert_eq!(got, vec![(0, 2), (1, 2)]);
    }

    #[tokio::test]
    async fn the_ack_timeout_counts_from_when_the_application_takes_the_delivery() {
        let (mut book, options, topic, group) = setup(2);
        let (out, mut rx) = mpsc::channel(2);
        let (commands, _crx) = mpsc::channel(8);
        book.accept(lapin::acker::Acker::mock(), msg(0, None), 1);
        book.emit(&options, &topic, &group, &out, &commands);
        // Still in the stream's buffer after a whole ack timeout: it does not come back.
        let start = Instant::now();
        book.expire(start + Duration::from_secs(31), options.ack_timeout);
        book.emit(&options, &topic, &group, &out, &commands);
        assert_eq!(book.out, 1, "still handed out");
        assert_eq!(drain(&mut rx), vec![(0, 1)], "one delivery, first attempt");
        // Taken now: it times out one ack timeout later, not before.
        let taken = Instant::now();
        book.expire(taken + Duration::from_secs(29), options.ack_timeout);
        book.emit(&options, &topic, &group, &out, &commands);
        assert!(drain(&mut rx).is_empty(), "within its ack timeout");
        book.expire(taken + Duration::from_secs(62), options.ack_timeout);
        book.emit(&options, &topic, &group, &out, &commands);
        assert_eq!(drain(&mut rx), vec![(0, 2)], "back after its ack timeout");
    }

    #[tokio::test]
    async fn repeated_extensions_do_not_grow_the_timer_heap() {
        let (mut book, options, topic, group) = setup(1);
        let (out, _rx) = mpsc::channel(1);
        let (commands, _crx) = mpsc::channel(8);
        book.accept(lapin::acker::Acker::mock(), msg(0, Some("A")), 1);
        book.emit(&options, &topic, &group, &out, &commands);
        for i in 0..10_000u64 {
            let lease = book.entries[&0].lease;
            book.timers.push(Reverse((
                Instant::now() + Duration::from_secs(60 + i),
                0,
                lease,
            )));
            book.compact_timers();
        }
        assert!(book.timers.len() <= TIMERS_STALE_FACTOR + TIMERS_SLACK + 1);
    }
}
