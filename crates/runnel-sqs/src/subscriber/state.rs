//! The state of one consumer: the kit's per-key book over the messages it received and
//! has not settled, one line per message group (= key). SQS itself keeps a group's next
//! message back while one is in flight, to any consumer, and runs the visibility timeout
//! and nack delays ([`Redelivery::Broker`]); the book adds what one `ReceiveMessage` call
//! needs when it returns several messages of one group: the first goes, the rest wait
//! here (still in flight, so no other consumer gets them) until it is acked.
//!
//! A line has an *epoch*: SQS handing a group out again in a later receive means the
//! earlier line's lease ended, so that line is replaced; a late settlement of its old
//! head must not advance or release the new one.

use std::time::{Duration, Instant};

use runnel_core::Message;
use runnel_transport_kit::book::{BookSettings, KeyBook, Redelivery};
use runnel_transport_kit::{EntryId, Handed, Phase, TakesHandouts};
use tokio::sync::OwnedSemaphorePermit;

/// A held message is surfaced only if its lease has at least this much left; otherwise
/// the key is handed back to SQS (its lease may already be gone).
pub const HELD_LEASE_MARGIN: Duration = Duration::from_millis(500);

/// What the book keeps of one received message.
pub(crate) struct Item {
    /// The message until it is handed out.
    pub message: Option<Message>,
    pub receipt: String,
    /// When the current visibility timeout ends (an instant in the past once SQS said
    /// the receipt is no longer valid).
    pub lease_until: Instant,
    /// One of the consumer's `max_in_flight` permits, until handed out (then the
    /// acknowledger holds it).
    pub permit: Option<OwnedSemaphorePermit>,
    /// The line's epoch.
    pub epoch: u64,
}

/// What became of a received message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// It opened its group's line: hand it out.
    Head(EntryId),
    /// It waits behind its group's head from the same receive.
    Held,
    /// Its group's line closed meanwhile (the head was nacked): SQS hands the group out
    /// again from its head; this lease lapses.
    Dropped,
}

/// A head handed out: what the stream and the acknowledger need.
pub(crate) struct HeadOut {
    pub handed: Handed,
    pub message: Message,
    pub receipt: String,
    pub permit: Option<OwnedSemaphorePermit>,
}

pub(crate) struct SqsState {
    pub book: KeyBook<String, Item>,
    next_id: EntryId,
    next_epoch: u64,
}

impl SqsState {
    pub fn new() -> Self {
        SqsState {
            book: KeyBook::new(BookSettings {
                // The consumer's permits bound what it holds; the book never refuses.
                max_in_flight: usize::MAX,
                redelivery: Redelivery::Broker,
            }),
            next_id: 0,
            next_epoch: 0,
        }
    }

    /// Records a received message of `group_id`. `opens` says whether it is the first of
    /// its group in this receive (a later one joins the line that first one opened).
    pub fn receive(
        &mut self,
        group_id: &str,
        opens: bool,
        attempt: u32,
        mut item: Item,
    ) -> Received {
        let key = group_id.to_string();
        if opens {
            // A group SQS hands out anew: any older line of it lost its lease.
            self.book.remove_key(&key);
            self.next_epoch += 1;
            item.epoch = self.next_epoch;
        } else {
            match self.epoch_of(&key) {
                Some(epoch) => item.epoch = epoch,
                None => return Received::Dropped,
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        if self.book.insert(id, Some(key), attempt, item).is_err() {
            debug_assert!(false, "arrival ids are unique");
            return Received::Dropped;
        }
        if opens {
            Received::Head(id)
        } else {
            Received::Held
        }
    }

    /// The epoch of `group_id`'s line, if it has one.
    pub fn epoch_of(&self, group_id: &str) -> Option<u64> {
        let head = *self.book.key_ids(&group_id.to_string()).first()?;
        self.book.get(head).map(|e| e.item.epoch)
    }

    /// Hands out `id` if it is its line's ready head.
    pub fn hand_out(&mut self, id: EntryId) -> Option<HeadOut> {
        let handed = self.book.hand_out_id(id)?;
        let entry = self.book.get_mut(id)?;
        let Some(message) = entry.item.message.take() else {
            debug_assert!(false, "a held message has its body");
            return None;
        };
        Some(HeadOut {
            handed,
            message,
            receipt: entry.item.receipt.clone(),
            permit: entry.item.permit.take(),
        })
    }

    /// The head `(id, token)` was deleted at SQS: the next held message of its line, if
    /// it is current, with its receipt and whether its lease is still fresh at `now`.
    pub fn acked(
        &mut self,
        id: EntryId,
        token: u64,
        now: Instant,
    ) -> Option<(EntryId, String, bool)> {
        let key = self.book.get(id)?.key()?.clone();
        self.book.ack(id, token).ok()?;
        let next = *self.book.key_ids(&key).first()?;
        let entry = self.book.get(next)?;
        debug_assert_eq!(entry.phase(), Phase::Held, "the line's next waits");
        let fresh = entry.item.lease_until > now + HELD_LEASE_MARGIN;
        Some((next, entry.item.receipt.clone(), fresh))
    }

    /// Forgets `group_id`'s line if it is still of `epoch`; returns the receipts of its
    /// held messages, to make visible again.
    pub fn release(&mut self, group_id: &str, epoch: u64) -> Vec<String> {
        if self.epoch_of(group_id) != Some(epoch) {
            return Vec::new();
        }
        self.book
            .remove_key(&group_id.to_string())
            .into_iter()
            .filter(|(_, item)| item.message.is_some())
            .map(|(_, item)| item.receipt)
            .collect()
    }

    /// Unyielded messages (held, or in the stream's buffer) whose lease ends before
    /// `renew_before`.
    pub fn due_leases(&self, renew_before: Instant) -> Vec<(EntryId, String)> {
        self.book
            .entries()
            .filter(|(_, e)| e.is_unyielded() && e.item.lease_until < renew_before)
            .map(|(id, e)| (id, e.item.receipt.clone()))
            .collect()
    }

    /// Records a renewed lease (`Some(until)`) or a lost one (`None`): a lost one looks
    /// expired, so advancing to it hands the key back and the stream drops it.
    pub fn set_lease(&mut self, id: EntryId, receipt: &str, until: Option<Instant>, now: Instant) {
        if let Some(e) = self.book.get_mut(id) {
            if e.item.receipt == receipt {
                e.item.lease_until = until.unwrap_or(now);
            }
        }
    }

    /// The held successors of `group_id`'s line of `epoch` (they must not time out
    /// behind an extended head).
    pub fn held_receipts(&self, group_id: &str, epoch: u64) -> Vec<(EntryId, String)> {
        if self.epoch_of(group_id) != Some(epoch) {
            return Vec::new();
        }
        self.book
            .key_ids(&group_id.to_string())
            .into_iter()
            .filter_map(|id| {
                let e = self.book.get(id)?;
                (e.phase() == Phase::Held).then(|| (id, e.item.receipt.clone()))
            })
            .collect()
    }
}

impl TakesHandouts for SqsState {
    /// A head in the stream's buffer may be yielded only if its line is current (the
    /// entry is still the hand-out's) and its lease has time left; a stale one is dropped
    /// by the stream, which hands its line back to SQS.
    fn taken(&mut self, id: EntryId, token: u64, now: Instant) -> bool {
        let fresh = self
            .book
            .get(id)
            .is_some_and(|e| e.item.lease_until > now + HELD_LEASE_MARGIN);
        fresh && self.book.taken(id, token, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(receipt: &str, lease_until: Instant) -> Item {
        Item {
            message: Some(Message::json("T", &serde_json::json!({ "r": receipt }))),
            receipt: receipt.to_string(),
            lease_until,
            permit: None,
            epoch: 0,
        }
    }

    #[test]
    fn one_receive_delivers_a_groups_first_and_holds_the_rest_until_it_is_acked() {
        let now = Instant::now();
        let lease = now + Duration::from_secs(30);
        let mut st = SqsState::new();
        let head = match st.receive("g", true, 1, item("r1", lease)) {
            Received::Head(id) => id,
            other => panic!("{other:?}"),
        };
        assert_eq!(st.receive("g", false, 1, item("r2", lease)), Received::Held);
        let out = st.hand_out(head).expect("the head goes");
        assert!(st.taken(out.handed.id, out.handed.token, now));
        assert_eq!(
            st.due_leases(lease + Duration::from_secs(1)).len(),
            1,
            "only r2 is unyielded"
        );
        let (next, receipt, fresh) = st.acked(head, out.handed.token, now).expect("next");
        assert_eq!((receipt.as_str(), fresh), ("r2", true));
        assert!(st.hand_out(next).is_some());
    }

    #[test]
    fn a_later_receive_of_a_group_replaces_its_line_and_stale_settlements_do_nothing() {
        let now = Instant::now();
        let lease = now + Duration::from_secs(30);
        let mut st = SqsState::new();
        let Received::Head(old) = st.receive("g", true, 1, item("r1", lease)) else {
            panic!("head");
        };
        st.receive("g", false, 1, item("r2", lease));
        let out = st.hand_out(old).expect("out");
        let old_epoch = st.epoch_of("g").expect("line");
        // SQS hands the group out again (the head's lease ran out): a new line.
        let Received::Head(new) = st.receive("g", true, 2, item("r1b", lease)) else {
            panic!("head");
        };
        assert!(
            st.acked(old, out.handed.token, now).is_none(),
            "the old head is stale"
        );
        assert!(
            st.release("g", old_epoch).is_empty(),
            "not the old line's to release"
        );
        assert!(st.hand_out(new).is_some());
    }

    #[test]
    fn a_lost_or_short_lease_is_not_yielded_and_a_closed_line_drops_late_joiners() {
        let now = Instant::now();
        let mut st = SqsState::new();
        let Received::Head(id) =
            st.receive("g", true, 1, item("r1", now + Duration::from_secs(30)))
        else {
            panic!("head");
        };
        let out = st.hand_out(id).expect("out");
        st.set_lease(id, "r1", None, now);
        assert!(!st.taken(id, out.handed.token, now), "its receipt is gone");
        let epoch = st.epoch_of("g").expect("line");
        assert!(st.release("g", epoch).is_empty(), "no held successors");
        assert_eq!(
            st.receive("g", false, 1, item("r2", now + Duration::from_secs(30))),
            Received::Dropped
        );
    }
}
