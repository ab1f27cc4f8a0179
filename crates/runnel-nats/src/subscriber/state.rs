//! The state of one member: the kit's per-key book over the messages it pulled and has
//! not settled (by stream sequence, so a key's head is its lowest tracked sequence), and
//! the sequences it acked recently. JetStream runs the ack timeout and nack delays
//! ([`Redelivery::Broker`]): a nacked head stays tracked, awaiting its redelivery, and
//! keeps its key blocked.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use async_nats::Subject;
use runnel_core::Message;
use runnel_transport_kit::book::{BookSettings, KeyBook, Redelivery};
use runnel_transport_kit::{EntryId, TakesHandouts};

/// Sequences of recently acknowledged messages remembered, so a redelivery of one (its
/// ack lost in an outage) is acked again instead of handled again out of order.
pub const RECENTLY_ACKED_MAX: usize = 4096;

/// What the book keeps of one pulled message.
pub(crate) struct Item {
    /// Where its acks go (the latest delivery's).
    pub reply: Subject,
    /// The message while it is held here; handed out, it is the application's.
    pub message: Option<Box<Message>>,
    /// When the server's ack timer for it was last reset.
    pub touched: Instant,
}

pub(crate) struct NatsState {
    pub book: KeyBook<String, Item>,
    recently_acked: VecDeque<EntryId>,
    recently_acked_set: HashSet<EntryId>,
}

impl NatsState {
    pub fn new(max_in_flight: usize) -> Self {
        NatsState {
            book: KeyBook::new(BookSettings {
                max_in_flight,
                redelivery: Redelivery::Broker,
            }),
            recently_acked: VecDeque::new(),
            recently_acked_set: HashSet::new(),
        }
    }

    /// A message pulled from the server: new, or a redelivery of a tracked one (which
    /// supersedes any earlier hand-out of it).
    pub fn receive(
        &mut self,
        stream_seq: EntryId,
        delivered: u32,
        reply: Subject,
        message: Message,
        now: Instant,
    ) {
        let key = message.ordering_key().map(str::to_string);
        let item = Item {
            reply,
            message: Some(Box::new(message)),
            touched: now,
        };
        if let Err(item) = self.book.insert(stream_seq, key, delivered, item) {
            if let Some(tracked) = self.book.requeue(stream_seq, delivered) {
                *tracked = item;
            }
        }
    }

    pub fn was_recently_acked(&self, stream_seq: EntryId) -> bool {
        self.recently_acked_set.contains(&stream_seq)
    }

    pub fn remember_acked(&mut self, stream_seq: EntryId) {
        if self.recently_acked_set.insert(stream_seq) {
            self.recently_acked.push_back(stream_seq);
            if self.recently_acked.len() > RECENTLY_ACKED_MAX {
                if let Some(old) = self.recently_acked.pop_front() {
                    self.recently_acked_set.remove(&old);
                }
            }
        }
        debug_assert_eq!(self.recently_acked.len(), self.recently_acked_set.len());
    }
}

impl TakesHandouts for NatsState {
    fn taken(&mut self, id: EntryId, token: u64, now: Instant) -> bool {
        self.book.taken(id, token, now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use runnel_transport_kit::Phase;

    use super::*;

    fn pull(st: &mut NatsState, seq: u64, key: Option<&str>, delivered: u32) {
        let m = Message::json("T", &serde_json::json!({ "seq": seq }));
        let m = match key {
            Some(k) => m.with_key(k),
            None => m,
        };
        st.receive(seq, delivered, Subject::from("reply"), m, Instant::now());
    }

    #[test]
    fn a_nacked_head_awaits_its_redelivery_and_keeps_its_key_blocked() {
        let mut st = NatsState::new(8);
        pull(&mut st, 1, Some("A"), 1);
        pull(&mut st, 2, Some("B"), 1);
        pull(&mut st, 3, Some("A"), 1);
        let a = st.book.hand_out().expect("A's head");
        let b = st.book.hand_out().expect("B's head");
        assert_eq!((a.id, b.id), (1, 2));
        assert!(
            st.book.hand_out().is_none(),
            "A's second waits for its first"
        );
        st.book
            .nack(a.id, a.token, Some(Duration::from_secs(1)), Instant::now())
            .expect("current");
        assert_eq!(st.book.get(1).map(|e| e.phase()), Some(Phase::Awaiting));
        assert!(st.book.hand_out().is_none());
        // Redelivered by the server, it is the head again; acked, the next one goes.
        pull(&mut st, 1, Some("A"), 2);
        let again = st.book.hand_out().expect("redelivered head");
        assert_eq!((again.id, again.attempt), (1, 2));
        st.book.ack(again.id, again.token).expect("current");
        st.remember_acked(1);
        assert_eq!(st.book.hand_out().map(|h| h.id), Some(3));
        assert!(st.was_recently_acked(1));
    }

    #[test]
    fn recently_acked_memory_is_bounded() {
        let mut st = NatsState::new(8);
        for seq in 0..(RECENTLY_ACKED_MAX as u64 + 10) {
            st.remember_acked(seq);
        }
        assert_eq!(st.recently_acked.len(), RECENTLY_ACKED_MAX);
        assert!(!st.was_recently_acked(0));
        assert!(st.was_recently_acked(RECENTLY_ACKED_MAX as u64 + 9));
    }
}
