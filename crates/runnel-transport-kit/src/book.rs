//! [`KeyBook`]: the per-key head-of-line book of one subscription. Pure state: no I/O,
//! no clock of its own (every rule that needs the time takes `now`), so each rule below
//! is a unit test.
//!
//! Rules:
//! 1. An entry is something the broker gave this subscription and it has not settled.
//!    It has an id chosen by the transport (arrival order, or the broker's sequence);
//!    ids order the entries of a key.
//! 2. Entries with the same key form a line; the line's *head* is its lowest id. Only a
//!    head is handed out, and only while no entry of its key is out, delayed or awaiting
//!    a redelivery (the key's *active* entry). Keyless entries have no line: each may go
//!    at once.
//! 3. At most `max_in_flight` entries are out at a time; among the ready ones the lowest
//!    id goes first (so a redelivered head goes before newer keys).
//! 4. A hand-out carries a token; settling with an older token (the entry expired, was
//!    redelivered or forgotten since) is [`Lost`].
//! 5. An ack removes the entry and lets its key's next entry go.
//! 6. A nack keeps the key blocked. With [`Redelivery::Local`] the entry is held again
//!    with its attempt raised, at once or when its delay ends; with
//!    [`Redelivery::Broker`] it awaits the broker's redelivery ([`KeyBook::requeue`]).
//! 7. The ack timeout ([`Redelivery::Local`]) counts from when the application *takes*
//!    the delivery from the stream ([`KeyBook::taken`]); a delivery still waiting in the
//!    stream's buffer never expires. An expired entry is held again, attempt raised.
//!    An extension moves the deadline (never earlier).
//! 8. Entries the application has not taken yet (held here, or out but not taken) are
//!    *unyielded*: their broker lease is the transport's to keep alive
//!    ([`Entry::is_unyielded`]); a taken one's lease is the handler's ack timeout.
//!
//! Invariants (checked with `debug_assert!`s, in full on small books):
//! * `out` counts the entries out, `held` the entries held, and `out <= max_in_flight`;
//! * every line is non-empty, holds exactly the entries of its key, and its active
//!   entry (if any) is the one entry of the key that is not held;
//! * `ready` is exactly the held entries that are keyless or the head of a line without
//!   an active entry;
//! * `timers` holds exactly one `(when, id)` per entry with a running deadline (out and
//!   taken, or delayed) under [`Redelivery::Local`].

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The transport's id of an entry: the broker's sequence, or an arrival counter.
pub type EntryId = u64;

/// Books with at most this many entries are checked in full after every change in debug
/// builds; bigger ones get the local checks only (a full check is O(entries)).
const FULL_CHECK_MAX: usize = 64;

/// Who brings a nacked or timed-out message back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redelivery {
    /// The book does: it runs the ack timeout and nack delays on its timers and holds the
    /// entry again, attempt raised, for the transport to hand out (RabbitMQ, Kafka: the
    /// broker would otherwise only redeliver when the consumer goes away).
    Local { ack_timeout: Duration },
    /// The broker does (it runs the ack timeout and nack delays): a nacked entry keeps its
    /// key blocked until the broker delivers it again (NATS, SQS).
    Broker,
}

/// How a book hands out.
#[derive(Clone, Copy, Debug)]
pub struct BookSettings {
    /// Most entries out at once (the subscription's `max_in_flight`).
    pub max_in_flight: usize,
    pub redelivery: Redelivery,
}

/// Where an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Here, not handed out: behind its key's head, or ready.
    Held,
    /// Handed to the stream under `token`. `taken_at` is set once the application took
    /// it; `deadline` is when it expires (set from `taken_at`, moved by extensions).
    Out {
        token: u64,
        taken_at: Option<Instant>,
        deadline: Option<Instant>,
    },
    /// Nacked with a delay: held again at `until` ([`Redelivery::Local`]).
    Delayed { until: Instant },
    /// Nacked: the broker will deliver it again ([`Redelivery::Broker`]).
    Awaiting,
}

/// One tracked message: its key, attempt, phase, and the transport's own data.
#[derive(Debug)]
pub struct Entry<K, T> {
    key: Option<K>,
    attempt: u32,
    phase: Phase,
    /// The transport's data (message, receipt, reply subject, lease times...).
    pub item: T,
}

impl<K, T> Entry<K, T> {
    pub fn key(&self) -> Option<&K> {
        self.key.as_ref()
    }

    /// The attempt the next hand-out reports (1 = first delivery).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Held here or out but not yet taken by the application: the transport keeps its
    /// broker lease alive.
    pub fn is_unyielded(&self) -> bool {
        matches!(self.phase, Phase::Held | Phase::Out { taken_at: None, .. })
    }
}

/// A hand-out decided by [`KeyBook::hand_out`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handed {
    pub id: EntryId,
    pub token: u64,
    pub attempt: u32,
}

/// Settling failed: the delivery was settled already, expired, redelivered or forgotten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost;

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the delivery is no longer current (settled, expired or redelivered)")
    }
}

impl std::error::Error for Lost {}

/// The entries of one key, by id; the first is the head.
#[derive(Debug, Default)]
struct Line {
    ids: BTreeSet<EntryId>,
    /// The entry of this key that is out, delayed or awaiting (at most one).
    active: Option<EntryId>,
}

/// The per-key head-of-line book of one subscription (see the module docs for its rules).
///
/// ```
/// use std::time::{Duration, Instant};
/// use runnel_transport_kit::book::{BookSettings, KeyBook, Redelivery};
///
/// let mut book: KeyBook<String, &str> = KeyBook::new(BookSettings {
///     max_in_flight: 8,
///     redelivery: Redelivery::Local { ack_timeout: Duration::from_secs(30) },
/// });
/// book.insert(1, Some("A".into()), 1, "A1").unwrap();
/// book.insert(2, Some("A".into()), 1, "A2").unwrap();
/// let first = book.hand_out().unwrap();
/// assert_eq!(first.id, 1);
/// assert!(book.hand_out().is_none(), "A2 waits for A1");
/// book.taken(first.id, first.token, Instant::now());
/// assert_eq!(book.ack(first.id, first.token), Ok("A1"));
/// assert_eq!(book.hand_out().map(|h| h.id), Some(2));
/// ```
#[derive(Debug)]
pub struct KeyBook<K, T> {
    settings: BookSettings,
    entries: HashMap<EntryId, Entry<K, T>>,
    lines: HashMap<K, Line>,
    ready: BTreeSet<EntryId>,
    timers: BTreeSet<(Instant, EntryId)>,
    out: usize,
    held: usize,
    next_token: u64,
}

impl<K: Clone + Eq + Hash + fmt::Debug, T> KeyBook<K, T> {
    pub fn new(settings: BookSettings) -> Self {
        debug_assert!(settings.max_in_flight > 0);
        KeyBook {
            settings,
            entries: HashMap::new(),
            lines: HashMap::new(),
            ready: BTreeSet::new(),
            timers: BTreeSet::new(),
            out: 0,
            held: 0,
            next_token: 0,
        }
    }

    pub fn settings(&self) -> &BookSettings {
        &self.settings
    }

    /// Entries tracked (held, out, delayed or awaiting).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries handed out and not settled.
    pub fn out(&self) -> usize {
        self.out
    }

    /// Entries held here (not handed out).
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn contains(&self, id: EntryId) -> bool {
        self.entries.contains_key(&id)
    }

    pub fn get(&self, id: EntryId) -> Option<&Entry<K, T>> {
        self.entries.get(&id)
    }

    pub fn get_mut(&mut self, id: EntryId) -> Option<&mut Entry<K, T>> {
        self.entries.get_mut(&id)
    }

    /// Every entry (in no particular order).
    pub fn entries(&self) -> impl Iterator<Item = (EntryId, &Entry<K, T>)> {
        self.entries.iter().map(|(id, e)| (*id, e))
    }

    /// Every entry (in no particular order), to scan for leases to keep alive.
    pub fn entries_mut(&mut self) -> impl Iterator<Item = (EntryId, &mut Entry<K, T>)> {
        self.entries.iter_mut().map(|(id, e)| (*id, e))
    }

    /// Whether `key` has entries here.
    pub fn has_key(&self, key: &K) -> bool {
        self.lines.contains_key(key)
    }

    /// The ids of `key`'s entries, head first.
    pub fn key_ids(&self, key: &K) -> Vec<EntryId> {
        self.lines
            .get(key)
            .map(|l| l.ids.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The held entries, lowest id first.
    pub fn held_ids(&self) -> Vec<EntryId> {
        let mut ids: Vec<EntryId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.phase == Phase::Held)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Starts tracking a message the broker gave us, held until its turn. `Err(item)`
    /// when `id` is tracked already (a redelivery: see [`KeyBook::requeue`]).
    pub fn insert(&mut self, id: EntryId, key: Option<K>, attempt: u32, item: T) -> Result<(), T> {
        if self.entries.contains_key(&id) {
            return Err(item);
        }
        if let Some(k) = &key {
            let line = self.lines.entry(k.clone()).or_default();
            if let Some(&old_head) = line.ids.first() {
                if id < old_head {
                    // A late lower id becomes the head; the old one waits again.
                    self.ready.remove(&old_head);
                }
            }
            line.ids.insert(id);
        }
        self.entries.insert(
            id,
            Entry {
                key: key.clone(),
                attempt: attempt.max(1),
                phase: Phase::Held,
                item,
            },
        );
        self.held += 1;
        self.refresh(id, key.as_ref());
        self.debug_check();
        Ok(())
    }

    /// The broker delivered a tracked entry again (after a nack or its ack timeout, or a
    /// copy of one still out): it is held again with the broker's `attempt`, any earlier
    /// hand-out superseded. Returns its data to update, `None` when it is not tracked.
    pub fn requeue(&mut self, id: EntryId, attempt: u32) -> Option<&mut T> {
        let entry = self.entries.get_mut(&id)?;
        let before = entry.phase;
        entry.attempt = attempt.max(1);
        entry.phase = Phase::Held;
        let key = entry.key.clone();
        match before {
            Phase::Held => {}
            Phase::Out { .. } | Phase::Delayed { .. } | Phase::Awaiting => {
                if let Phase::Out { .. } = before {
                    debug_assert!(self.out > 0);
                    self.out -= 1;
                }
                self.held += 1;
                self.stop_timer(id, before);
                self.deactivate(id, key.as_ref());
            }
        }
        self.refresh(id, key.as_ref());
        self.debug_check();
        self.entries.get_mut(&id).map(|e| &mut e.item)
    }

    /// Hands out the next ready entry if fewer than `max_in_flight` are out.
    pub fn hand_out(&mut self) -> Option<Handed> {
        let id = *self.ready.first()?;
        self.hand_out_id(id)
    }

    /// Hands out `id` if it is ready and fewer than `max_in_flight` are out: for a
    /// transport that must do I/O (renew a lease) before a particular head may go.
    pub fn hand_out_id(&mut self, id: EntryId) -> Option<Handed> {
        if self.out >= self.settings.max_in_flight || !self.ready.remove(&id) {
            return None;
        }
        self.next_token += 1;
        let token = self.next_token;
        let entry = self.entries.get_mut(&id)?;
        debug_assert_eq!(entry.phase, Phase::Held, "only held entries are ready");
        entry.phase = Phase::Out {
            token,
            taken_at: None,
            deadline: None,
        };
        let attempt = entry.attempt;
        if let Some(k) = &entry.key {
            if let Some(line) = self.lines.get_mut(k) {
                debug_assert_eq!(line.active, None, "a key has one entry out at most");
                debug_assert_eq!(line.ids.first(), Some(&id), "only a key's head goes");
                line.active = Some(id);
            }
        }
        debug_assert!(self.held > 0);
        self.held -= 1;
        self.out += 1;
        self.debug_check();
        Some(Handed { id, token, attempt })
    }

    /// Takes back a hand-out that never reached the stream (its channel was full): the
    /// entry is held again, first in line, its attempt unchanged.
    pub fn undo_hand_out(&mut self, id: EntryId, token: u64) -> bool {
        if !self.is_current(id, token) {
            return false;
        }
        let Some(entry) = self.entries.get_mut(&id) else {
            return false;
        };
        let before = entry.phase;
        entry.phase = Phase::Held;
        let key = entry.key.clone();
        self.stop_timer(id, before);
        self.out -= 1;
        self.held += 1;
        self.deactivate(id, key.as_ref());
        self.refresh(id, key.as_ref());
        self.debug_check();
        true
    }

    /// Whether the hand-out `(id, token)` is the entry's current one.
    pub fn is_current(&self, id: EntryId, token: u64) -> bool {
        self.entries
            .get(&id)
            .is_some_and(|e| matches!(e.phase, Phase::Out { token: t, .. } if t == token))
    }

    /// The application took the hand-out `(id, token)` from the stream at `now`: its ack
    /// timeout starts. False (and nothing changes) when the hand-out is stale; the
    /// stream then skips it.
    pub fn taken(&mut self, id: EntryId, token: u64, now: Instant) -> bool {
        if !self.is_current(id, token) {
            return false;
        }
        let ack_timeout = match self.settings.redelivery {
            Redelivery::Local { ack_timeout } => Some(ack_timeout),
            Redelivery::Broker => None,
        };
        let Some(entry) = self.entries.get_mut(&id) else {
            return false;
        };
        let Phase::Out {
            taken_at, deadline, ..
        } = &mut entry.phase
        else {
            return false;
        };
        if taken_at.is_some() {
            return true;
        }
        *taken_at = Some(now);
        if let Some(timeout) = ack_timeout {
            let due = now + timeout;
            debug_assert!(deadline.is_none(), "no deadline before the take");
            *deadline = Some(due);
            self.timers.insert((due, id));
        }
        self.debug_check();
        true
    }

    /// The hand-out `(id, token)` is done: the entry leaves the book and its key's next
    /// entry may go. Returns the entry's data.
    pub fn ack(&mut self, id: EntryId, token: u64) -> Result<T, Lost> {
        if !self.is_current(id, token) {
            return Err(Lost);
        }
        self.remove(id).ok_or(Lost)
    }

    /// The hand-out `(id, token)` failed; its key stays blocked (rule 6).
    pub fn nack(
        &mut self,
        id: EntryId,
        token: u64,
        delay: Option<Duration>,
        now: Instant,
    ) -> Result<(), Lost> {
        if !self.is_current(id, token) {
            return Err(Lost);
        }
        let redelivery = self.settings.redelivery;
        let Some(entry) = self.entries.get_mut(&id) else {
            return Err(Lost);
        };
        let before = entry.phase;
        let key = entry.key.clone();
        self.out -= 1;
        match redelivery {
            Redelivery::Broker => {
                entry.phase = Phase::Awaiting;
                self.stop_timer(id, before);
            }
            Redelivery::Local { .. } => {
                entry.attempt = entry.attempt.saturating_add(1);
                match delay.filter(|d| !d.is_zero()) {
                    Some(d) => {
                        let until = now + d;
                        entry.phase = Phase::Delayed { until };
                        self.stop_timer(id, before);
                        self.timers.insert((until, id));
                    }
                    None => {
                        entry.phase = Phase::Held;
                        self.stop_timer(id, before);
                        self.held += 1;
                        self.deactivate(id, key.as_ref());
                        self.refresh(id, key.as_ref());
                    }
                }
            }
        }
        self.debug_check();
        Ok(())
    }

    /// Keeps the hand-out `(id, token)` from expiring for `by` from `now` (a deadline is
    /// never moved earlier). Under [`Redelivery::Broker`] the deadline only records how
    /// long the transport keeps the broker's lease alive.
    pub fn extend(
        &mut self,
        id: EntryId,
        token: u64,
        by: Duration,
        now: Instant,
    ) -> Result<(), Lost> {
        if !self.is_current(id, token) {
            return Err(Lost);
        }
        let local = matches!(self.settings.redelivery, Redelivery::Local { .. });
        let Some(entry) = self.entries.get_mut(&id) else {
            return Err(Lost);
        };
        let Phase::Out {
            taken_at, deadline, ..
        } = &mut entry.phase
        else {
            return Err(Lost);
        };
        taken_at.get_or_insert(now);
        let wanted = now + by;
        match *deadline {
            Some(old) if old >= wanted => {}
            old => {
                *deadline = Some(wanted);
                if local {
                    if let Some(old) = old {
                        self.timers.remove(&(old, id));
                    }
                    self.timers.insert((wanted, id));
                }
            }
        }
        self.debug_check();
        Ok(())
    }

    /// The earliest running deadline or delay end ([`Redelivery::Local`]).
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Expires deadlines and ends delays due by `now` (rules 6 and 7). Returns how many
    /// entries were held again.
    pub fn fire_timers(&mut self, now: Instant) -> usize {
        let mut fired = 0;
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(entry) = self.entries.get_mut(&id) else {
                debug_assert!(false, "a timer of an entry no longer tracked");
                continue;
            };
            let key = entry.key.clone();
            match entry.phase {
                Phase::Out {
                    deadline: Some(d), ..
                } if d == at => {
                    entry.attempt = entry.attempt.saturating_add(1);
                    entry.phase = Phase::Held;
                    self.out -= 1;
                }
                Phase::Delayed { until } if until == at => {
                    entry.phase = Phase::Held;
                }
                _ => {
                    debug_assert!(false, "a timer that does not match its entry");
                    continue;
                }
            }
            self.held += 1;
            self.deactivate(id, key.as_ref());
            self.refresh(id, key.as_ref());
            fired += 1;
        }
        self.debug_check();
        fired
    }

    /// Forgets one entry, whatever its phase (dead-lettered, or its lease is gone); its
    /// key's next entry may go.
    pub fn remove(&mut self, id: EntryId) -> Option<T> {
        let entry = self.entries.remove(&id)?;
        self.ready.remove(&id);
        self.stop_timer(id, entry.phase);
        match entry.phase {
            Phase::Held => self.held -= 1,
            Phase::Out { .. } => self.out -= 1,
            Phase::Delayed { .. } | Phase::Awaiting => {}
        }
        if let Some(k) = &entry.key {
            let mut next = None;
            if let Some(line) = self.lines.get_mut(k) {
                line.ids.remove(&id);
                if line.active == Some(id) {
                    line.active = None;
                }
                next = line.ids.first().copied();
                if line.ids.is_empty() {
                    self.lines.remove(k);
                }
            } else {
                debug_assert!(false, "a keyed entry without its line");
            }
            if let Some(next) = next {
                self.refresh(next, Some(k));
            }
        }
        self.debug_check();
        Some(entry.item)
    }

    /// Forgets every entry of `key` (the broker took the key back); returns them, head
    /// first.
    pub fn remove_key(&mut self, key: &K) -> Vec<(EntryId, T)> {
        let ids = self.key_ids(key);
        ids.into_iter()
            .filter_map(|id| self.remove(id).map(|item| (id, item)))
            .collect()
    }

    /// Forgets every entry for which `keep` says false (partitions revoked, a lease
    /// lost); returns them, lowest id first.
    pub fn retain(
        &mut self,
        mut keep: impl FnMut(EntryId, &Entry<K, T>) -> bool,
    ) -> Vec<(EntryId, T)> {
        let mut gone: Vec<EntryId> = self
            .entries
            .iter()
            .filter(|(id, e)| !keep(**id, e))
            .map(|(id, _)| *id)
            .collect();
        gone.sort_unstable();
        gone.into_iter()
            .filter_map(|id| self.remove(id).map(|item| (id, item)))
            .collect()
    }

    /// Forgets everything (the channel or connection is gone: the broker gives it all
    /// out again).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.lines.clear();
        self.ready.clear();
        self.timers.clear();
        self.out = 0;
        self.held = 0;
    }

    /// Marks `id` ready if it is held and may go (keyless, or its line's head with no
    /// active entry).
    fn refresh(&mut self, id: EntryId, key: Option<&K>) {
        let Some(entry) = self.entries.get(&id) else {
            return;
        };
        if entry.phase != Phase::Held {
            return;
        }
        let may_go = match key {
            None => true,
            Some(k) => self
                .lines
                .get(k)
                .is_some_and(|l| l.active.is_none() && l.ids.first() == Some(&id)),
        };
        if may_go {
            self.ready.insert(id);
        }
    }

    /// `id` is no longer its key's active entry.
    fn deactivate(&mut self, id: EntryId, key: Option<&K>) {
        if let Some(line) = key.and_then(|k| self.lines.get_mut(k)) {
            if line.active == Some(id) {
                line.active = None;
            }
        }
    }

    fn stop_timer(&mut self, id: EntryId, phase: Phase) {
        match phase {
            Phase::Out {
                deadline: Some(d), ..
            } => {
                self.timers.remove(&(d, id));
            }
            Phase::Delayed { until } => {
                self.timers.remove(&(until, id));
            }
            _ => {}
        }
    }

    fn debug_check(&self) {
        debug_assert!(
            self.out <= self.settings.max_in_flight,
            "over max_in_flight"
        );
        debug_assert!(self.out + self.held <= self.entries.len());
        debug_assert!(self.ready.len() <= self.held);
        if cfg!(debug_assertions) && self.entries.len() <= FULL_CHECK_MAX {
            self.check();
        }
    }

    /// Checks every invariant of the module docs (O(entries)); panics on a violation.
    pub fn check(&self) {
        let (mut out, mut held) = (0, 0);
        let local = matches!(self.settings.redelivery, Redelivery::Local { .. });
        let mut timers = BTreeSet::new();
        for (&id, e) in &self.entries {
            match e.phase {
                Phase::Held => held += 1,
                Phase::Out { deadline, .. } => {
                    out += 1;
                    if let (true, Some(d)) = (local, deadline) {
                        timers.insert((d, id));
                    }
                }
                Phase::Delayed { until } => {
                    assert!(local, "delays run on the book's timers only when local");
                    timers.insert((until, id));
                }
                Phase::Awaiting => assert!(!local, "awaiting the broker when local"),
            }
            match &e.key {
                None => {}
                Some(k) => {
                    let line = self.lines.get(k).expect("a keyed entry has its line");
                    assert!(line.ids.contains(&id), "the line holds its entries");
                    let active = e.phase != Phase::Held;
                    assert_eq!(
                        line.active == Some(id),
                        active,
                        "the active entry is the one not held"
                    );
                }
            }
            let may_go = e.phase == Phase::Held
                && match &e.key {
                    None => true,
                    Some(k) => self
                        .lines
                        .get(k)
                        .is_some_and(|l| l.active.is_none() && l.ids.first() == Some(&id)),
                };
            assert_eq!(
                self.ready.contains(&id),
                may_go,
                "ready = held heads and keyless"
            );
        }
        for (k, line) in &self.lines {
            assert!(!line.ids.is_empty(), "no empty lines");
            for id in &line.ids {
                let e = self.entries.get(id).expect("a line's ids are tracked");
                assert_eq!(e.key.as_ref(), Some(k), "a line holds its key's entries");
            }
        }
        assert_eq!(out, self.out, "out counts the entries out");
        assert_eq!(held, self.held, "held counts the entries held");
        assert!(self.out <= self.settings.max_in_flight);
        assert_eq!(timers, self.timers, "one timer per running deadline");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACK_TIMEOUT: Duration = Duration::from_secs(30);

    fn local(max_in_flight: usize) -> KeyBook<&'static str, u32> {
        KeyBook::new(BookSettings {
            max_in_flight,
            redelivery: Redelivery::Local {
                ack_timeout: ACK_TIMEOUT,
            },
        })
    }

    fn broker(max_in_flight: usize) -> KeyBook<&'static str, u32> {
        KeyBook::new(BookSettings {
            max_in_flight,
            redelivery: Redelivery::Broker,
        })
    }

    fn all_out(book: &mut KeyBook<&'static str, u32>) -> Vec<Handed> {
        std::iter::from_fn(|| book.hand_out()).collect()
    }

    fn ids(handed: &[Handed]) -> Vec<EntryId> {
        handed.iter().map(|h| h.id).collect()
    }

    #[test]
    fn only_a_keys_head_goes_and_other_keys_flow() {
        let mut book = local(8);
        book.insert(1, Some("A"), 1, 0).unwrap();
        book.insert(2, Some("B"), 1, 0).unwrap();
        book.insert(3, Some("A"), 1, 0).unwrap();
        book.insert(4, None, 1, 0).unwrap();
        let out = all_out(&mut book);
        assert_eq!(ids(&out), vec![1, 2, 4]);
        assert_eq!((book.out(), book.held()), (3, 1));
        book.check();
    }

    #[test]
    fn an_ack_releases_the_keys_next_entry() {
        let mut book = local(8);
        book.insert(1, Some("A"), 1, 10).unwrap();
        book.insert(2, Some("A"), 1, 20).unwrap();
        let h = book.hand_out().unwrap();
        assert_eq!(book.ack(h.id, h.token), Ok(10));
        assert_eq!(book.ack(h.id, h.token), Err(Lost), "settled twice");
        let next = book.hand_out().unwrap();
        assert_eq!((next.id, next.attempt), (2, 1));
        book.check();
    }

    #[test]
    fn keyless_entries_go_at_once() {
        let mut book = local(8);
        for id in 1..=3 {
            book.insert(id, None, 1, 0).unwrap();
        }
        assert_eq!(ids(&all_out(&mut book)), vec![1, 2, 3]);
    }

    #[test]
    fn max_in_flight_bounds_what_is_out() {
        let mut book = local(2);
        for id in 1..=4 {
            book.insert(id, None, 1, 0).unwrap();
        }
        let out = all_out(&mut book);
        assert_eq!(ids(&out), vec![1, 2]);
        book.ack(out[0].id, out[0].token).unwrap();
        assert_eq!(book.hand_out().map(|h| h.id), Some(3));
        assert!(book.hand_out().is_none());
    }

    #[test]
    fn a_local_nack_holds_the_head_again_one_attempt_later_before_newer_keys() {
        let mut book = local(8);
        let now = Instant::now();
        book.insert(1, Some("A"), 1, 0).unwrap();
        book.insert(2, Some("A"), 1, 0).unwrap();
        let h = book.hand_out().unwrap();
        book.insert(3, Some("B"), 1, 0).unwrap();
        book.nack(h.id, h.token, None, now).unwrap();
        assert_eq!(
            book.ack(h.id, h.token),
            Err(Lost),
            "the old hand-out is stale"
        );
        let again = all_out(&mut book);
        assert_eq!(
            ids(&again),
            vec![1, 3],
            "the nacked head first, A2 still waits"
        );
        assert_eq!(again[0].attempt, 2);
        book.check();
    }

    #[test]
    fn a_delayed_nack_blocks_its_key_until_the_delay_ends() {
        let mut book = local(8);
        let now = Instant::now();
        book.insert(1, Some("A"), 1, 0).unwrap();
        book.insert(2, Some("A"), 1, 0).unwrap();
        book.insert(3, Some("B"), 1, 0).unwrap();
        let out = all_out(&mut book);
        book.nack(out[0].id, out[0].token, Some(Duration::from_secs(5)), now)
            .unwrap();
        assert_eq!(book.next_timer(), Some(now + Duration::from_secs(5)));
        assert!(book.hand_out().is_none(), "A is delayed, B is out");
        assert_eq!(book.fire_timers(now + Duration::from_secs(4)), 0);
        assert!(book.hand_out().is_none());
        assert_eq!(book.fire_timers(now + Duration::from_secs(5)), 1);
        let h = book.hand_out().unwrap();
        assert_eq!((h.id, h.attempt), (1, 2));
        book.check();
    }

    #[test]
    fn a_zero_delay_is_no_delay() {
        let mut book = local(8);
        book.insert(1, Some("A"), 1, 0).unwrap();
        let h = book.hand_out().unwrap();
        book.nack(h.id, h.token, Some(Duration::ZERO), Instant::now())
            .unwrap();
        assert_eq!(book.next_timer(), None);
        assert_eq!(book.hand_out().map(|h| h.id), Some(1));
    }

    #[test]
    fn the_ack_timeout_counts_from_when_the_application_takes_the_delivery() {
        let mut book = local(8);
        let start = Instant::now();
        book.insert(1, Some("A"), 1, 0).unwrap();
        let h = book.hand_out().unwrap();
        // Waiting in the stream's buffer for three ack timeouts: no timer, no expiry.
        assert_eq!(book.next_timer(), None);
        assert_eq!(book.fire_timers(start + ACK_TIMEOUT * 3), 0);
        assert_eq!(book.out(), 1);
        let taken = start + ACK_TIMEOUT * 3;
        assert!(book.taken(h.id, h.token, taken));
        assert_eq!(book.next_timer(), Some(taken + ACK_TIMEOUT));
        assert_eq!(
            book.fire_timers(taken + ACK_TIMEOUT - Duration::from_millis(1)),
            0
        );
        assert_eq!(book.fire_timers(taken + ACK_TIMEOUT), 1);
        assert_eq!(book.out(), 0);
        assert!(
            !book.taken(h.id, h.token, taken),
            "a stale hand-out is not taken"
        );
        let again = book.hand_out().unwrap();
        assert_eq!((again.id, again.attempt), (1, 2));
        book.check();
    }

    #[test]
    fn an_extension_moves_the_deadline_never_earlier() {
        let mut book = local(8);
        let now = Instant::now();
        book.insert(1, None, 1, 0).unwrap();
        let h = book.hand_out().unwrap();
        book.taken(h.id, h.token, now);
        book.extend(h.id, h.token, Duration::from_secs(100), now)
            .unwrap();
        assert_eq!(book.next_timer(), Some(now + Duration::from_secs(100)));
        book.extend(h.id, h.token, Duration::from_secs(1), now)
            .unwrap();
        assert_eq!(book.next_timer(), Some(now + Duration::from_secs(100)));
        assert_eq!(book.fire_timers(now + Duration::from_secs(99)), 0);
        assert_eq!(book.out(), 1, "the extension kept it");
        book.check();
    }

    #[test]
    fn repeated_extensions_keep_one_timer_per_entry() {
        let mut book = local(8);
        let now = Instant::now();
        book.insert(1, None, 1, 0).unwrap();
        let h = book.hand_out().unwrap();
        book.taken(h.id, h.token, now);
        for i in 0..10_000u64 {
            book.extend(h.id, h.token, Duration::from_secs(60 + i), now)
                .unwrap();
        }
        assert_eq!(book.timers.len(), 1);
    }

    #[test]
    fn a_broker_nack_awaits_the_redelivery_and_keeps_the_key_blocked() {
        let mut book = broker(8);
        let now = Instant::now();
        book.insert(10, Some("A"), 1, 0).unwrap();
        book.insert(11, Some("A"), 1, 0).unwrap();
        let h = book.hand_out().unwrap();
        book.nack(h.id, h.token, Some(Duration::from_secs(5)), now)
            .unwrap();
        assert_eq!(book.get(10).map(|e| e.phase()), Some(Phase::Awaiting));
        assert_eq!(book.next_timer(), None, "the broker runs the delay");
        assert!(
            book.hand_out().is_none(),
            "A waits for its head to come back"
        );
        *book.requeue(10, 2).unwrap() = 7;
        let again = book.hand_out().unwrap();
        assert_eq!((again.id, again.attempt), (10, 2));
        assert_eq!(book.ack(again.id, again.token), Ok(7));
        assert_eq!(book.hand_out().map(|h| h.id), Some(11));
        book.check();
    }

    #[test]
    fn a_broker_redelivery_of_an_entry_out_supersedes_the_old_hand_out() {
        let mut book = broker(8);
        book.insert(10, Some("A"), 1, 0).unwrap();
        let old = book.hand_out().unwrap();
        assert!(book.insert(10, Some("A"), 2, 0).is_err(), "already tracked");
        book.requeue(10, 2).unwrap();
        assert!(!book.is_current(old.id, old.token));
        assert_eq!(book.ack(old.id, old.token), Err(Lost));
        let new = book.hand_out().unwrap();
        assert_eq!((new.id, new.attempt), (10, 2));
        assert_eq!(book.out(), 1);
        book.check();
    }

    #[test]
    fn a_late_lower_id_becomes_the_head_but_waits_for_the_active_entry() {
        let mut book = broker(8);
        book.insert(5, Some("A"), 1, 0).unwrap();
        book.insert(7, Some("A"), 1, 0).unwrap();
        // Before 5 goes, 3 arrives: 3 is the head now.
        book.insert(3, Some("A"), 1, 0).unwrap();
        let h = book.hand_out().unwrap();
        assert_eq!(h.id, 3);
        // While 3 is out, 1 arrives: it waits until 3 is settled.
        book.insert(1, Some("A"), 1, 0).unwrap();
        assert!(book.hand_out().is_none());
        book.ack(h.id, h.token).unwrap();
        assert_eq!(book.hand_out().map(|h| h.id), Some(1));
        book.check();
    }

    #[test]
    fn a_chosen_head_goes_only_when_ready() {
        let mut book = broker(8);
        book.insert(1, Some("A"), 1, 0).unwrap();
        book.insert(2, Some("A"), 1, 0).unwrap();
        book.insert(3, Some("B"), 1, 0).unwrap();
        assert_eq!(book.hand_out_id(2), None, "A2 is behind A1");
        assert_eq!(book.hand_out_id(3).map(|h| h.id), Some(3));
        assert_eq!(book.hand_out_id(3), None, "already out");
        assert_eq!(book.hand_out().map(|h| h.id), Some(1));
        book.check();
    }

    #[test]
    fn an_undone_hand_out_is_held_again_first_in_line() {
        let mut book = local(8);
        book.insert(1, Some("A"), 1, 0).unwrap();
        book.insert(2, Some("A"), 1, 0).unwrap();
        let h = book.hand_out().unwrap();
        assert!(book.undo_hand_out(h.id, h.token));
        assert!(!book.undo_hand_out(h.id, h.token), "only once");
        let again = book.hand_out().unwrap();
        assert_eq!((again.id, again.attempt), (1, 1));
        book.check();
    }

    #[test]
    fn removing_an_entry_releases_its_key_and_frees_its_slot() {
        let mut book = local(1);
        book.insert(1, Some("A"), 1, 0).unwrap();
        book.insert(2, Some("A"), 1, 0).unwrap();
        let h = book.hand_out().unwrap();
        assert_eq!(book.remove(h.id), Some(0));
        assert_eq!(book.out(), 0);
        assert_eq!(book.hand_out().map(|h| h.id), Some(2));
        book.check();
    }

    #[test]
    fn removing_a_key_or_a_selection_forgets_exactly_those() {
        let mut book = local(8);
        book.insert(1, Some("A"), 1, 1).unwrap();
        book.insert(2, Some("A"), 1, 2).unwrap();
        book.insert(3, Some("B"), 1, 3).unwrap();
        book.insert(4, None, 1, 4).unwrap();
        let _ = all_out(&mut book);
        assert_eq!(book.remove_key(&"A"), vec![(1, 1), (2, 2)]);
        assert!(!book.has_key(&"A"));
        assert_eq!(book.retain(|_, e| e.item != 4), vec![(4, 4)]);
        assert_eq!((book.len(), book.out(), book.held()), (1, 1, 0));
        book.clear();
        assert!(book.is_empty());
        book.check();
    }

    #[test]
    fn unyielded_entries_are_the_held_and_the_untaken() {
        let mut book = broker(8);
        book.insert(1, Some("A"), 1, 0).unwrap();
        book.insert(2, Some("A"), 1, 0).unwrap();
        book.insert(3, None, 1, 0).unwrap();
        let out = all_out(&mut book);
        book.taken(out[0].id, out[0].token, Instant::now());
        let mut unyielded: Vec<EntryId> = book
            .entries_mut()
            .filter(|(_, e)| e.is_unyielded())
            .map(|(id, _)| id)
            .collect();
        unyielded.sort_unstable();
        assert_eq!(
            unyielded,
            vec![2, 3],
            "1 was taken: its lease is the handler's"
        );
    }

    #[test]
    fn many_keys_stay_consistent_through_a_random_walk() {
        // A deterministic walk over every operation, checking all invariants each step.
        let mut book = local(4);
        let mut live: Vec<Handed> = Vec::new();
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let keys = ["A", "B", "C"];
        let now = Instant::now();
        let mut id = 0;
        for step in 0..2_000u64 {
            let t = now + Duration::from_millis(step * 10);
            match next() % 7 {
                0 | 1 => {
                    id += 1;
                    let r = next() % 4;
                    let key = keys.get(r as usize).copied();
                    book.insert(id, key, 1, 0).unwrap();
                }
                2 => live.extend(book.hand_out()),
                3 if !live.is_empty() => {
                    let h = live.swap_remove((next() % live.len() as u64) as usize);
                    let _ = book.ack(h.id, h.token);
                }
                4 if !live.is_empty() => {
                    let h = live.swap_remove((next() % live.len() as u64) as usize);
                    let delay = (next() % 2 == 0).then(|| Duration::from_millis(50));
                    let _ = book.nack(h.id, h.token, delay, t);
                }
                5 if !live.is_empty() => {
                    let h = live[(next() % live.len() as u64) as usize];
                    book.taken(h.id, h.token, t);
                }
                _ => {
                    book.fire_timers(t);
                }
            }
            book.check();
            // No key ever has two entries out.
            let mut active = std::collections::HashSet::new();
            for h in live.iter().filter(|h| book.is_current(h.id, h.token)) {
                if let Some(k) = book.get(h.id).and_then(|e| e.key()) {
                    assert!(active.insert(*k), "two entries of {k} out at once");
                }
            }
        }
    }
}
