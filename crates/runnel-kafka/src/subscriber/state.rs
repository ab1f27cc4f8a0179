//! The delivery state of one consumer: which records of its partitions are buffered,
//! handed out, delayed or done, per key; what may be delivered next; and which offsets
//! may be committed. Pure bookkeeping (no I/O) so every rule is unit-tested.
//!
//! Rules:
//! * records are queued per `(partition, key)` in offset order; only a queue's head is
//!   ever delivered, and the next record of a key waits until the head is acked — per-key
//!   head-of-line blocking stays local, other keys of the same partition keep flowing;
//! * keyless records each get their own queue (no order among them);
//! * a nack puts the head back (now or after its delay) with the attempt raised, an
//!   expired ack deadline does the same; an extension moves the deadline;
//! * the ack deadline counts from when the application takes the delivery from the
//!   stream ([`State::taken`]): one still waiting in the stream's buffer does not expire;
//! * the commit position of a partition is its lowest unacked offset (or one past the
//!   last fetched record when everything is acked): only the contiguous handled prefix
//!   is ever committed;
//! * the commit metadata says which offsets above the position were already delivered
//!   (and how often), so the partition's next owner reports them as redeliveries.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel_core::Message;

/// Attempt counts of delivered-but-unacked offsets written into one partition's commit
/// metadata (the lowest ones; offsets beyond count as delivered once more via the
/// delivered-up-to mark). Keeps the metadata far below Kafka's 4 KiB default limit.
pub const METADATA_ATTEMPTS_MAX: usize = 32;
/// Prefix of Runnel's offset-commit metadata (versioned).
pub const METADATA_PREFIX: &str = "runnel1";

/// Superseded timers tolerated before the timer heap is rebuilt.
const TIMERS_SLACK: usize = 1024;

/// How a consumer hands out deliveries.
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_in_flight: usize,
    pub ack_timeout: Duration,
    /// Deliveries after which a record goes to the dead-letter topic (0 = never).
    pub max_deliveries: u32,
}

/// The queue a record waits in: its key's, or its own for a keyless record.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueueKey {
    Key(i32, Arc<str>),
    Solo(i32, i64),
}

impl QueueKey {
    fn partition(&self) -> i32 {
        match self {
            QueueKey::Key(p, _) | QueueKey::Solo(p, _) => *p,
        }
    }
}

#[derive(Debug)]
struct Item {
    offset: i64,
    message: Message,
    attempt: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Idle,
    /// Handed to the stream; `taken` once the application received it (until then the
    /// deadline is only a re-check time).
    InFlight {
        token: u64,
        deadline: Instant,
        taken: bool,
    },
    Delayed {
        until: Instant,
    },
}

#[derive(Debug)]
struct KeyQueue {
    items: VecDeque<Item>,
    head: Head,
}

/// What a previous owner recorded in the commit metadata.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PriorDeliveries {
    /// Offsets below this were delivered before.
    pub delivered_end: i64,
    /// Attempts of some of them.
    pub attempts: BTreeMap<i64, u32>,
}

impl PriorDeliveries {
    /// Reads commit metadata (anything not written by Runnel means "nothing known").
    pub fn parse(metadata: &str) -> PriorDeliveries {
        let mut prior = PriorDeliveries::default();
        let mut parts = metadata.split(' ');
        if parts.next() != Some(METADATA_PREFIX) {
            return prior;
        }
        for part in parts {
            if let Some(d) = part.strip_prefix("d=") {
                prior.delivered_end = d.parse().unwrap_or(0);
            } else if let Some(list) = part.strip_prefix("a=") {
                for pair in list.split(',') {
                    if let Some((o, a)) = pair.split_once(':') {
                        if let (Ok(o), Ok(a)) = (o.parse(), a.parse()) {
                            prior.attempts.insert(o, a);
                        }
                    }
                }
            }
        }
        prior
    }

    /// The metadata text.
    pub fn render(&self) -> String {
        let mut s = format!("{METADATA_PREFIX} d={}", self.delivered_end);
        if !self.attempts.is_empty() {
            s.push_str(" a=");
            let list: Vec<String> = self
                .attempts
                .iter()
                .take(METADATA_ATTEMPTS_MAX)
                .map(|(o, a)| format!("{o}:{a}"))
                .collect();
            s.push_str(&list.join(","));
        }
        s
    }
}

#[derive(Debug)]
struct Partition {
    /// Fetched and not yet acked (offset → attempts delivered so far, 0 = never).
    pending: BTreeMap<i64, u32>,
    /// One past the highest fetched offset.
    next_offset: Option<i64>,
    /// What earlier owners delivered.
    prior: PriorDeliveries,
    /// One past the highest offset this consumer delivered.
    delivered_end: i64,
    /// The last commit issued.
    committed: Option<Commit>,
}

impl Partition {
    fn new(prior: PriorDeliveries) -> Self {
        Partition {
            pending: BTreeMap::new(),
            next_offset: None,
            delivered_end: prior.delivered_end,
            prior,
            committed: None,
        }
    }

    fn position(&self) -> Option<i64> {
        self.pending.keys().next().copied().or(self.next_offset)
    }

    fn commit(&self, partition: i32) -> Option<Commit> {
        let position = self.position()?;
        let mut meta = PriorDeliveries {
            delivered_end: self.delivered_end.max(position),
            attempts: BTreeMap::new(),
        };
        for (&offset, &attempts) in &self.pending {
            if meta.attempts.len() >= METADATA_ATTEMPTS_MAX {
                break;
            }
            let attempts = attempts.max(self.prior.attempts.get(&offset).copied().unwrap_or(0));
            if attempts > 0 {
                meta.attempts.insert(offset, attempts);
            }
        }
        Some(Commit {
            partition,
            position,
            delivered_end: meta.delivered_end,
            metadata: meta.render(),
        })
    }
}

/// A delivery (or a move to the dead-letter topic) decided by [`State::dispatch`].
#[derive(Debug)]
pub struct Outgoing {
    pub token: u64,
    pub queue: QueueKey,
    pub partition: i32,
    pub offset: i64,
    pub attempt: u32,
    pub message: Message,
    /// Over `max_deliveries`: publish to the dead-letter topic, then ack.
    pub dead_letter: bool,
}

/// A commit to issue for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub partition: i32,
    /// The group's position: the lowest offset not yet acked.
    pub position: i64,
    /// Runnel's metadata: what was delivered above the position, and how often.
    pub metadata: String,
    /// One past the highest offset ever delivered (also committed to the side group for
    /// brokers that drop commit metadata).
    pub delivered_end: i64,
}

/// Why settling a delivery failed.
#[derive(Debug, PartialEq, Eq)]
pub enum SettleError {
    /// The delivery was settled already, expired, or its partition moved away.
    Lost,
}

/// The state of one consumer.
#[derive(Debug)]
pub struct State {
    settings: Settings,
    partitions: HashMap<i32, Partition>,
    queues: HashMap<QueueKey, KeyQueue>,
    ready: VecDeque<QueueKey>,
    timers: BinaryHeap<Reverse<(Instant, QueueKey)>>,
    in_flight: usize,
    buffered: usize,
    next_token: u64,
    closed: bool,
    commit_dirty: bool,
}

impl State {
    pub fn new(settings: Settings) -> Self {
        State {
            settings,
            partitions: HashMap::new(),
            queues: HashMap::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            in_flight: 0,
            buffered: 0,
            next_token: 1,
            closed: false,
            commit_dirty: false,
        }
    }

    /// Records buffered (fetched, not yet acked).
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Deliveries handed out and not settled.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// No more deliveries; settling anything fails from now on.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Partitions assigned to this consumer, with what earlier owners recorded.
    pub fn assign(&mut self, partition: i32, prior: PriorDeliveries) {
        self.partitions.insert(partition, Partition::new(prior));
    }

    /// Partitions taken away: returns the commits that settle them (the contiguous
    /// acked prefix) and forgets everything buffered or in flight for them — the next
    /// owner redelivers it.
    pub fn revoke(&mut self, partitions: &[i32]) -> Vec<Commit> {
        let mut commits = Vec::new();
        for &p in partitions {
            let Some(part) = self.partitions.remove(&p) else {
                continue;
            };
            if let Some(c) = part.commit(p) {
                commits.push(c);
            }
            self.buffered -= part.pending.len();
        }
        let in_flight = &mut self.in_flight;
        self.queues.retain(|k, q| {
            let keep = !partitions.contains(&k.partition());
            if !keep && matches!(q.head, Head::InFlight { .. }) {
                *in_flight -= 1;
            }
            keep
        });
        self.ready.retain(|k| !partitions.contains(&k.partition()));
        commits
    }

    /// A fetched record. Returns false when it was ignored (partition not owned, or a
    /// record fetched again after a seek).
    pub fn push(&mut self, partition: i32, offset: i64, message: Message) -> bool {
        let Some(part) = self.partitions.get_mut(&partition) else {
            return false;
        };
        if part.next_offset.is_some_and(|next| offset < next) {
            return false;
        }
        part.next_offset = Some(offset + 1);
        part.pending.insert(offset, 0);
        let attempt = match part.prior.attempts.get(&offset) {
            Some(&a) => a + 1,
            None if offset < part.prior.delivered_end => 2,
            None => 1,
        };
        self.buffered += 1;
        let key = match message.key.as_deref() {
            Some(k) => QueueKey::Key(partition, Arc::from(k)),
            None => QueueKey::Solo(partition, offset),
        };
        let item = Item {
            offset,
            message,
            attempt,
        };
        match self.queues.get_mut(&key) {
            Some(q) => q.items.push_back(item),
            None => {
                self.queues.insert(
                    key.clone(),
                    KeyQueue {
                        items: VecDeque::from([item]),
                        head: Head::Idle,
                    },
                );
                self.ready.push_back(key);
            }
        }
        true
    }

    /// Hands out ready heads while fewer than `max_in_flight` are unsettled, at most
    /// `room` of them.
    pub fn dispatch(&mut self, now: Instant, room: usize) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        while self.in_flight < self.settings.max_in_flight && out.len() < room {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let Some(q) = self.queues.get_mut(&key) else {
                continue;
            };
            if q.head != Head::Idle {
                continue;
            }
            let Some(item) = q.items.front() else {
                continue;
            };
            let (offset, attempt, message) = (item.offset, item.attempt, item.message.clone());
            let token = self.next_token;
            self.next_token += 1;
            let deadline = now + self.settings.ack_timeout;
            q.head = Head::InFlight {
                token,
                deadline,
                taken: false,
            };
            self.push_timer(deadline, key.clone());
            self.in_flight += 1;
            let partition = key.partition();
            if let Some(part) = self.partitions.get_mut(&partition) {
                part.pending.insert(offset, attempt);
                part.delivered_end = part.delivered_end.max(offset + 1);
                self.commit_dirty = true;
            }
            let max = self.settings.max_deliveries;
            out.push(Outgoing {
                token,
                queue: key,
                partition,
                offset,
                attempt,
                message,
                dead_letter: max > 0 && attempt > max,
            });
        }
        out
    }

    fn head_in_flight(
        &mut self,
        queue: &QueueKey,
        token: u64,
    ) -> Result<&mut KeyQueue, SettleError> {
        if self.closed {
            return Err(SettleError::Lost);
        }
        match self.queues.get_mut(queue) {
            Some(q) if matches!(q.head, Head::InFlight { token: t, .. } if t == token) => Ok(q),
            _ => Err(SettleError::Lost),
        }
    }

    /// The delivery `token` is done.
    pub fn ack(&mut self, queue: &QueueKey, token: u64) -> Result<(), SettleError> {
        let q = self.head_in_flight(queue, token)?;
        let item = q.items.pop_front().expect("an in-flight head exists");
        q.head = Head::Idle;
        let more = !q.items.is_empty();
        if more {
            self.ready.push_back(queue.clone());
        } else {
            self.queues.remove(queue);
        }
        self.in_flight -= 1;
        self.buffered -= 1;
        if let Some(part) = self.partitions.get_mut(&queue.partition()) {
            part.pending.remove(&item.offset);
            self.commit_dirty = true;
        }
        Ok(())
    }

    /// The delivery `token` failed: redeliver after `delay` with the attempt raised.
    pub fn nack(
        &mut self,
        queue: &QueueKey,
        token: u64,
        delay: Option<Duration>,
        now: Instant,
    ) -> Result<(), SettleError> {
        let q = self.head_in_flight(queue, token)?;
        if let Some(item) = q.items.front_mut() {
            item.attempt += 1;
        }
        match delay {
            Some(d) if !d.is_zero() => {
                let until = now + d;
                q.head = Head::Delayed { until };
                self.in_flight -= 1;
                self.push_timer(until, queue.clone());
                return Ok(());
            }
            _ => {
                q.head = Head::Idle;
                self.ready.push_front(queue.clone());
            }
        }
        self.in_flight -= 1;
        Ok(())
    }

    /// Records that the application took the delivery from the stream at `now`: its ack
    /// timeout starts then. Stale tokens are ignored.
    pub fn taken(&mut self, queue: &QueueKey, token: u64, now: Instant) {
        let ack_timeout = self.settings.ack_timeout;
        let Ok(q) = self.head_in_flight(queue, token) else {
            return;
        };
        if let Head::InFlight {
            deadline, taken, ..
        } = &mut q.head
        {
            *taken = true;
            *deadline = now + ack_timeout;
        }
        self.push_timer(now + ack_timeout, queue.clone());
    }

    /// Moves the delivery's deadline to `by` from now (never earlier than it was).
    pub fn extend(
        &mut self,
        queue: &QueueKey,
        token: u64,
        by: Duration,
        now: Instant,
    ) -> Result<(), SettleError> {
        let q = self.head_in_flight(queue, token)?;
        let wanted = now + by;
        let mut moved = false;
        if let Head::InFlight { deadline, .. } = &mut q.head {
            if wanted > *deadline {
                *deadline = wanted;
                moved = true;
            }
        }
        if moved {
            self.push_timer(wanted, queue.clone());
        }
        Ok(())
    }

    /// Adds a timer. Timers are checked against the queue's state when they fire, so
    /// superseded ones are simply skipped; when superseded ones pile up (many acks within
    /// one ack timeout) the heap is rebuilt from the live heads, keeping it bounded.
    fn push_timer(&mut self, at: Instant, key: QueueKey) {
        self.timers.push(Reverse((at, key)));
        if self.timers.len() > TIMERS_SLACK + 2 * (self.settings.max_in_flight + self.queues.len())
        {
            self.timers = self
                .queues
                .iter()
                .filter_map(|(k, q)| match q.head {
                    Head::InFlight { deadline, .. } => Some(Reverse((deadline, k.clone()))),
                    Head::Delayed { until } => Some(Reverse((until, k.clone()))),
                    Head::Idle => None,
                })
                .collect();
        }
    }

    /// The earliest pending timer.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Expires ack deadlines and ends nack delays due by `now`.
    pub fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, key))) = self.timers.pop() else {
                break;
            };
            let Some(q) = self.queues.get_mut(&key) else {
                continue;
            };
            match q.head {
                Head::InFlight {
                    token,
                    deadline,
                    taken: false,
                } if deadline <= now => {
                    // Still in the stream's buffer: not the application's yet.
                    let deadline = now + self.settings.ack_timeout;
                    q.head = Head::InFlight {
                        token,
                        deadline,
                        taken: false,
                    };
                    self.push_timer(deadline, key);
                }
                Head::InFlight { deadline, .. } if deadline <= now => {
                    if let Some(item) = q.items.front_mut() {
                        item.attempt += 1;
                    }
                    q.head = Head::Idle;
                    self.in_flight -= 1;
                    self.ready.push_front(key);
                }
                Head::Delayed { until } if until <= now => {
                    q.head = Head::Idle;
                    self.ready.push_front(key);
                }
                _ => {}
            }
        }
    }

    /// Whether something changed that a commit would record.
    pub fn commit_dirty(&self) -> bool {
        self.commit_dirty
    }

    /// The commits that record progress since the last ones (every owned partition's
    /// when `force`).
    pub fn commits(&mut self, force: bool) -> Vec<Commit> {
        self.commit_dirty = false;
        let mut out = Vec::new();
        for (&p, part) in &mut self.partitions {
            let Some(now) = part.commit(p) else { continue };
            if force || part.committed.as_ref() != Some(&now) {
                part.committed = Some(now.clone());
                out.push(now);
            }
        }
        out
    }

    /// A commit of `partition` failed: issue it again next time.
    pub fn commit_failed(&mut self, partition: i32) {
        if let Some(part) = self.partitions.get_mut(&partition) {
            part.committed = None;
            self.commit_dirty = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_in_flight: usize) -> Settings {
        Settings {
            max_in_flight,
            ack_timeout: Duration::from_secs(1),
            max_deliveries: 0,
        }
    }

    fn msg(n: u32, key: Option<&str>) -> Message {
        let m = Message::json("T", &serde_json::json!({ "n": n }));
        match key {
            Some(k) => m.with_key(k),
            None => m,
        }
    }

    fn n(o: &Outgoing) -> u64 {
        o.message.payload_json().unwrap()["n"].as_u64().unwrap()
    }

    #[test]
    fn a_key_waits_for_its_head_other_keys_flow() {
        let now = Instant::now();
        let mut s = State::new(settings(10));
        s.assign(0, PriorDeliveries::default());
        s.push(0, 0, msg(0, Some("a")));
        s.push(0, 1, msg(1, Some("a")));
        s.push(0, 2, msg(2, Some("b")));
        let out = s.dispatch(now, 10);
        assert_eq!(out.iter().map(n).collect::<Vec<_>>(), vec![0, 2]);
        assert!(s.dispatch(now, 10).is_empty());
        s.ack(&out[0].queue, out[0].token).unwrap();
        let next = s.dispatch(now, 10);
        assert_eq!(next.iter().map(n).collect::<Vec<_>>(), vec![1]);
        assert_eq!(s.ack(&out[0].queue, out[0].token), Err(SettleError::Lost));
    }

    #[test]
    fn only_the_contiguous_prefix_is_committed() {
        let now = Instant::now();
        let mut s = State::new(settings(10));
        s.assign(0, PriorDeliveries::default());
        for o in 0..3 {
            s.push(0, 10 + o, msg(o as u32, None));
        }
        let out = s.dispatch(now, 10);
        s.ack(&out[1].queue, out[1].token).unwrap();
        s.ack(&out[2].queue, out[2].token).unwrap();
        let c = s.commits(false);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].position, 10, "offset 10 is unacked");
        assert_eq!(c[0].delivered_end, 13);
        assert_eq!(PriorDeliveries::parse(&c[0].metadata).delivered_end, 13);
        s.ack(&out[0].queue, out[0].token).unwrap();
        assert_eq!(s.commits(false)[0].position, 13);
        assert!(s.commits(false).is_empty(), "nothing changed");
    }

    #[test]
    fn nack_and_timeout_raise_the_attempt_and_keep_the_key_blocked() {
        let now = Instant::now();
        let mut s = State::new(settings(10));
        s.assign(0, PriorDeliveries::default());
        s.push(0, 0, msg(0, Some("k")));
        s.push(0, 1, msg(1, Some("k")));
        let d = s.dispatch(now, 10).remove(0);
        s.nack(&d.queue, d.token, Some(Duration::from_secs(1)), now)
            .unwrap();
        assert!(
            s.dispatch(now, 10).is_empty(),
            "delayed head blocks its key"
        );
        s.fire_timers(now + Duration::from_secs(1));
        let d = s.dispatch(now, 10).remove(0);
        assert_eq!((n(&d), d.attempt), (0, 2));
        s.taken(&d.queue, d.token, now);
        // Not settled: the ack timeout brings it back.
        let later = now + Duration::from_secs(3);
        s.fire_timers(later);
        let d = s.dispatch(later, 10).remove(0);
        assert_eq!((n(&d), d.attempt), (0, 3));
        s.taken(&d.queue, d.token, later);
        s.extend(&d.queue, d.token, Duration::from_secs(10), later)
            .unwrap();
        s.fire_timers(later + Duration::from_secs(5));
        assert_eq!(s.in_flight(), 1, "the extension kept it");
    }

    #[test]
    fn the_ack_timeout_counts_from_when_the_application_takes_the_delivery() {
        let now = Instant::now();
        let mut s = State::new(settings(10));
        let ack_timeout = s.settings.ack_timeout;
        s.assign(0, PriorDeliveries::default());
        s.push(0, 0, msg(0, Some("k")));
        let d = s.dispatch(now, 10).remove(0);
        // Waiting in the stream's buffer for three ack timeouts: it stays handed out.
        for i in 1..=3 {
            s.fire_timers(now + ack_timeout * i + Duration::from_millis(1));
        }
        assert_eq!(s.in_flight(), 1, "not taken yet, so not expired");
        let taken = now + ack_timeout * 3 + Duration::from_millis(2);
        s.taken(&d.queue, d.token, taken);
        s.fire_timers(taken + ack_timeout - Duration::from_millis(1));
        assert_eq!(s.in_flight(), 1, "within its ack timeout");
        s.fire_timers(taken + ack_timeout * 5);
        assert_eq!(
            s.in_flight(),
            0,
            "expired one ack timeout after it was taken"
        );
        let d = s.dispatch(taken + ack_timeout * 5, 10).remove(0);
        assert_eq!((n(&d), d.attempt), (0, 2));
    }

    #[test]
    fn a_new_owner_sees_earlier_deliveries_as_redeliveries() {
        let now = Instant::now();
        let mut s = State::new(settings(10));
        s.assign(0, PriorDeliveries::default());
        s.push(0, 0, msg(0, Some("k")));
        s.push(0, 1, msg(1, None));
        let out = s.dispatch(now, 10);
        assert_eq!(out.len(), 2);
        let commits = s.revoke(&[0]);
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.buffered(), 0);
        assert_eq!(commits[0].position, 0);
        let mut next = State::new(settings(10));
        next.assign(0, PriorDeliveries::parse(&commits[0].metadata));
        next.push(0, 0, msg(0, Some("k")));
        next.push(0, 1, msg(1, None));
        next.push(0, 2, msg(2, None));
        let attempts: Vec<u32> = next.dispatch(now, 10).iter().map(|o| o.attempt).collect();
        assert_eq!(attempts, vec![2, 2, 1]);
        // Without metadata (brokers that drop it) the side group's mark alone suffices.
        let mut next = State::new(settings(10));
        next.assign(
            0,
            PriorDeliveries {
                delivered_end: commits[0].delivered_end,
                attempts: BTreeMap::new(),
            },
        );
        next.push(0, 0, msg(0, Some("k")));
        next.push(0, 2, msg(2, None));
        let attempts: Vec<u32> = next.dispatch(now, 10).iter().map(|o| o.attempt).collect();
        assert_eq!(attempts, vec![2, 1]);
    }

    #[test]
    fn max_in_flight_and_room_bound_dispatch() {
        let now = Instant::now();
        let mut s = State::new(settings(2));
        s.assign(0, PriorDeliveries::default());
        for o in 0..5 {
            s.push(0, o, msg(o as u32, None));
        }
        assert_eq!(s.dispatch(now, 1).len(), 1);
        assert_eq!(s.dispatch(now, 10).len(), 1);
        assert!(s.dispatch(now, 10).is_empty());
    }

    #[test]
    fn metadata_round_trips() {
        let p = PriorDeliveries {
            delivered_end: 42,
            attempts: BTreeMap::from([(40, 3), (41, 1)]),
        };
        assert_eq!(PriorDeliveries::parse(&p.render()), p);
        assert_eq!(PriorDeliveries::parse("other"), PriorDeliveries::default());
    }
}
