//! The delivery state of one consumer: the kit's per-key book over the records of its
//! partitions (buffered, handed out, delayed or done, per key), and which offsets may be
//! committed. Pure bookkeeping (no I/O) so every rule is unit-tested.
//!
//! Rules (the book's, see `runnel-transport-kit`, plus Kafka's own):
//! * records are lined up per `(partition, key)` in fetch (offset) order; only a line's
//!   head is ever delivered, and the next record of a key waits until the head is acked —
//!   per-key head-of-line blocking stays local, other keys of the same partition keep
//!   flowing;
//! * keyless records have no line (no order among them);
//! * a nack puts the head back (now or after its delay) with the attempt raised, an
//!   expired ack deadline does the same; an extension moves the deadline
//!   ([`Redelivery::Local`]: Kafka itself never redelivers to a live consumer);
//! * the ack deadline counts from when the application takes the delivery from the
//!   stream ([`State::taken`]): one still waiting in the stream's buffer does not expire;
//! * the commit position of a partition is its lowest unacked offset (or one past the
//!   last fetched record when everything is acked): only the contiguous handled prefix
//!   is ever committed;
//! * the commit metadata says which offsets above the position were already delivered
//!   (and how often), so the partition's next owner reports them as redeliveries.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel_core::Message;
use runnel_transport_kit::book::{BookSettings, KeyBook, Redelivery};
use runnel_transport_kit::{EntryId, Lost, TakesHandouts};

/// Attempt counts of delivered-but-unacked offsets written into one partition's commit
/// metadata (the lowest ones; offsets beyond count as delivered once more via the
/// delivered-up-to mark). Keeps the metadata far below Kafka's 4 KiB default limit.
pub const METADATA_ATTEMPTS_MAX: usize = 32;
/// Prefix of Runnel's offset-commit metadata (versioned).
pub const METADATA_PREFIX: &str = "runnel1";

/// How a consumer hands out deliveries.
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_in_flight: usize,
    pub ack_timeout: Duration,
    /// Deliveries after which a record goes to the dead-letter topic (0 = never).
    pub max_deliveries: u32,
}

/// The line a record waits in: its partition and key.
pub type LineKey = (i32, Arc<str>);

/// What the book keeps of one fetched record.
#[derive(Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub message: Message,
    /// Why the record could not be read: it goes to the dead-letter topic at once.
    pub undecodable: Option<String>,
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
    pub id: EntryId,
    pub token: u64,
    pub partition: i32,
    pub offset: i64,
    pub attempt: u32,
    pub message: Message,
    /// Over `max_deliveries`, or undecodable: publish to the dead-letter topic, then ack.
    pub dead_letter: bool,
    /// Why the record could not be read, if it could not.
    pub undecodable: Option<String>,
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

/// The state of one consumer.
#[derive(Debug)]
pub struct State {
    settings: Settings,
    partitions: HashMap<i32, Partition>,
    book: KeyBook<LineKey, Record>,
    /// Arrival ids (never reused, so a stale settlement cannot match a new record).
    next_id: EntryId,
    closed: bool,
    commit_dirty: bool,
}

impl State {
    pub fn new(settings: Settings) -> Self {
        let book = KeyBook::new(BookSettings {
            max_in_flight: settings.max_in_flight,
            redelivery: Redelivery::Local {
                ack_timeout: settings.ack_timeout,
            },
        });
        State {
            settings,
            partitions: HashMap::new(),
            book,
            next_id: 0,
            closed: false,
            commit_dirty: false,
        }
    }

    /// Records buffered (fetched, not yet acked).
    pub fn buffered(&self) -> usize {
        self.book.len()
    }

    /// Deliveries handed out and not settled.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.book.out()
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
        }
        self.book
            .retain(|_, e| !partitions.contains(&e.item.partition));
        commits
    }

    /// A fetched record. Returns false when it was ignored (partition not owned, or a
    /// record fetched again after a seek).
    pub fn push(&mut self, partition: i32, offset: i64, message: Message) -> bool {
        self.push_record(partition, offset, message, None)
    }

    /// A fetched record that could not be read (`reason`), kept whole as `message`: it is
    /// handed out to the dead-letter topic, in its key's turn, instead of to a handler.
    pub fn push_undecodable(
        &mut self,
        partition: i32,
        offset: i64,
        message: Message,
        reason: String,
    ) -> bool {
        self.push_record(partition, offset, message, Some(reason))
    }

    fn push_record(
        &mut self,
        partition: i32,
        offset: i64,
        message: Message,
        undecodable: Option<String>,
    ) -> bool {
        let Some(part) = self.partitions.get_mut(&partition) else {
            return false;
        };
        if part.next_offset.is_some_and(|next| offset < next) {
            tracing::debug!(partition, offset, next = ?part.next_offset, "a record below the partition's next offset ignored");
            return false;
        }
        if part.next_offset.is_none() {
            tracing::debug!(
                partition,
                offset,
                prior_delivered_end = part.prior.delivered_end,
                "first record of the assignment"
            );
        }
        part.next_offset = Some(offset + 1);
        part.pending.insert(offset, 0);
        let attempt = match part.prior.attempts.get(&offset) {
            Some(&a) => a + 1,
            None if offset < part.prior.delivered_end => 2,
            None => 1,
        };
        let key = message
            .key
            .as_deref()
            .map(|k| (partition, Arc::<str>::from(k)));
        self.next_id += 1;
        let record = Record {
            partition,
            offset,
            message,
            undecodable,
        };
        let inserted = self.book.insert(self.next_id, key, attempt, record);
        debug_assert!(inserted.is_ok(), "arrival ids are unique");
        true
    }

    /// Hands out ready heads while fewer than `max_in_flight` are unsettled, at most
    /// `room` of them.
    pub fn dispatch(&mut self, room: usize) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        while out.len() < room {
            let Some(h) = self.book.hand_out() else {
                break;
            };
            let Some(entry) = self.book.get(h.id) else {
                continue;
            };
            let (partition, offset) = (entry.item.partition, entry.item.offset);
            let message = entry.item.message.clone();
            if let Some(part) = self.partitions.get_mut(&partition) {
                part.pending.insert(offset, h.attempt);
                part.delivered_end = part.delivered_end.max(offset + 1);
                self.commit_dirty = true;
            }
            let max = self.settings.max_deliveries;
            let undecodable = entry.item.undecodable.clone();
            out.push(Outgoing {
                id: h.id,
                token: h.token,
                partition,
                offset,
                attempt: h.attempt,
                message,
                dead_letter: (max > 0 && h.attempt > max) || undecodable.is_some(),
                undecodable,
            });
        }
        out
    }

    /// The delivery `token` is done.
    pub fn ack(&mut self, id: EntryId, token: u64) -> Result<(), Lost> {
        if self.closed {
            return Err(Lost);
        }
        let record = self.book.ack(id, token)?;
        if let Some(part) = self.partitions.get_mut(&record.partition) {
            part.pending.remove(&record.offset);
            self.commit_dirty = true;
        }
        Ok(())
    }

    /// The delivery `token` failed: redeliver after `delay` with the attempt raised.
    pub fn nack(
        &mut self,
        id: EntryId,
        token: u64,
        delay: Option<Duration>,
        now: Instant,
    ) -> Result<(), Lost> {
        if self.closed {
            return Err(Lost);
        }
        self.book.nack(id, token, delay, now)
    }

    /// Moves the delivery's deadline to `by` from now (never earlier than it was).
    pub fn extend(
        &mut self,
        id: EntryId,
        token: u64,
        by: Duration,
        now: Instant,
    ) -> Result<(), Lost> {
        if self.closed {
            return Err(Lost);
        }
        self.book.extend(id, token, by, now)
    }

    /// The earliest pending timer.
    pub fn next_timer(&self) -> Option<Instant> {
        self.book.next_timer()
    }

    /// Expires ack deadlines and ends nack delays due by `now`.
    pub fn fire_timers(&mut self, now: Instant) {
        self.book.fire_timers(now);
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

impl TakesHandouts for State {
    /// Records that the application took the delivery from the stream at `now`: its ack
    /// timeout starts then. Stale tokens are ignored (and the stream skips them).
    fn taken(&mut self, id: EntryId, token: u64, now: Instant) -> bool {
        !self.closed && self.book.taken(id, token, now)
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
        let mut s = State::new(settings(10));
        s.assign(0, PriorDeliveries::default());
        s.push(0, 0, msg(0, Some("a")));
        s.push(0, 1, msg(1, Some("a")));
        s.push(0, 2, msg(2, Some("b")));
        let out = s.dispatch(10);
        assert_eq!(out.iter().map(n).collect::<Vec<_>>(), vec![0, 2]);
        assert!(s.dispatch(10).is_empty());
        s.ack(out[0].id, out[0].token).unwrap();
        let next = s.dispatch(10);
        assert_eq!(next.iter().map(n).collect::<Vec<_>>(), vec![1]);
        assert_eq!(s.ack(out[0].id, out[0].token), Err(Lost));
    }

    #[test]
    fn only_the_contiguous_prefix_is_committed() {
        let mut s = State::new(settings(10));
        s.assign(0, PriorDeliveries::default());
        for o in 0..3 {
            s.push(0, 10 + o, msg(o as u32, None));
        }
        let out = s.dispatch(10);
        s.ack(out[1].id, out[1].token).unwrap();
        s.ack(out[2].id, out[2].token).unwrap();
        let c = s.commits(false);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].position, 10, "offset 10 is unacked");
        assert_eq!(c[0].delivered_end, 13);
        assert_eq!(PriorDeliveries::parse(&c[0].metadata).delivered_end, 13);
        s.ack(out[0].id, out[0].token).unwrap();
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
        let d = s.dispatch(10).remove(0);
        s.nack(d.id, d.token, Some(Duration::from_secs(1)), now)
            .unwrap();
        assert!(s.dispatch(10).is_empty(), "delayed head blocks its key");
        s.fire_timers(now + Duration::from_secs(1));
        let d = s.dispatch(10).remove(0);
        assert_eq!((n(&d), d.attempt), (0, 2));
        s.taken(d.id, d.token, now);
        // Not settled: the ack timeout brings it back.
        let later = now + Duration::from_secs(3);
        s.fire_timers(later);
        let d = s.dispatch(10).remove(0);
        assert_eq!((n(&d), d.attempt), (0, 3));
        s.taken(d.id, d.token, later);
        s.extend(d.id, d.token, Duration::from_secs(10), later)
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
        let d = s.dispatch(10).remove(0);
        // Waiting in the stream's buffer for three ack timeouts: it stays handed out.
        for i in 1..=3 {
            s.fire_timers(now + ack_timeout * i + Duration::from_millis(1));
        }
        assert_eq!(s.in_flight(), 1, "not taken yet, so not expired");
        let taken = now + ack_timeout * 3 + Duration::from_millis(2);
        s.taken(d.id, d.token, taken);
        s.fire_timers(taken + ack_timeout - Duration::from_millis(1));
        assert_eq!(s.in_flight(), 1, "within its ack timeout");
        s.fire_timers(taken + ack_timeout * 5);
        assert_eq!(
            s.in_flight(),
            0,
            "expired one ack timeout after it was taken"
        );
        let d = s.dispatch(10).remove(0);
        assert_eq!((n(&d), d.attempt), (0, 2));
    }

    #[test]
    fn a_new_owner_sees_earlier_deliveries_as_redeliveries() {
        let mut s = State::new(settings(10));
        s.assign(0, PriorDeliveries::default());
        s.push(0, 0, msg(0, Some("k")));
        s.push(0, 1, msg(1, None));
        let out = s.dispatch(10);
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
        let attempts: Vec<u32> = next.dispatch(10).iter().map(|o| o.attempt).collect();
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
        let attempts: Vec<u32> = next.dispatch(10).iter().map(|o| o.attempt).collect();
        assert_eq!(attempts, vec![2, 1]);
    }

    #[test]
    fn max_in_flight_and_room_bound_dispatch() {
        let mut s = State::new(settings(2));
        s.assign(0, PriorDeliveries::default());
        for o in 0..5 {
            s.push(0, o, msg(o as u32, None));
        }
        assert_eq!(s.dispatch(1).len(), 1);
        assert_eq!(s.dispatch(10).len(), 1);
        assert!(s.dispatch(10).is_empty());
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
