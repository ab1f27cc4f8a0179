//! The consumer's book: rows it has claimed but not yet handed to the application, each
//! holding one in-flight slot, and the decisions about them — whether a row waited so
//! long that its lease must be renewed before it is handed out, how long to sleep when
//! nothing is claimable. Pure state, no I/O: the consumer loop (`consumer.rs`) does the
//! talking to the backend.

use std::collections::VecDeque;
use std::time::Duration;

use runnel_core::chrono::{DateTime, Utc};
use runnel_core::Message;

use crate::backend::{ClaimedRow, Lease};
use crate::time::{after, until};

/// Extra sleep after the next row's visibility time: waking just before it is visible
/// would find nothing and sleep again.
pub(crate) const VISIBLE_MARGIN: Duration = Duration::from_millis(1);

/// A claimed row not yet handed to the application. It holds one in-flight slot `S`
/// (a semaphore permit in the engine), released when the delivery is settled or dropped.
#[derive(Debug)]
pub(crate) struct Buffered<L, S> {
    pub lease: L,
    pub message: Message,
    /// When the lease runs out unless renewed.
    pub lease_until: DateTime<Utc>,
    pub slot: S,
}

/// What to do with the next buffered row.
#[derive(Debug)]
pub(crate) enum Handout<L, S> {
    /// Its lease still covers most of an ack timeout: hand it out.
    Ready(Buffered<L, S>),
    /// It waited while the application was busy: renew the lease until `visible_at`
    /// first (the ack timeout starts when the application takes the delivery), then hand
    /// it out with [`ClaimBook::renewed`] — or drop it if someone else claimed it since.
    Renew {
        row: Buffered<L, S>,
        visible_at: DateTime<Utc>,
    },
}

/// The rows one consumer has claimed and not handed out, in claim order.
///
/// Invariants (checked with `debug_assert!`): never more rows than `max_in_flight` (each
/// holds a slot); a claim never brings more rows than slots were offered; no lease is
/// buffered twice (same row and attempt); every buffered attempt is at least 1.
#[derive(Debug)]
pub(crate) struct ClaimBook<L, S> {
    buffer: VecDeque<Buffered<L, S>>,
    max_in_flight: usize,
    ack_timeout: Duration,
}

impl<L: Lease, S> ClaimBook<L, S> {
    pub fn new(max_in_flight: usize, ack_timeout: Duration) -> Self {
        debug_assert!(max_in_flight >= 1);
        ClaimBook {
            buffer: VecDeque::new(),
            max_in_flight,
            ack_timeout,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    /// Takes in the rows of one claim, leased until `lease_until`, each with one of
    /// `slots`. Slots left over (fewer rows than asked for) are returned to be freed.
    pub fn admit(
        &mut self,
        rows: Vec<ClaimedRow<L>>,
        lease_until: DateTime<Utc>,
        slots: Vec<S>,
    ) -> Vec<S> {
        debug_assert!(
            rows.len() <= slots.len(),
            "a claim brings at most one row per slot"
        );
        debug_assert!(
            self.buffer.len() + rows.len() <= self.max_in_flight,
            "more rows buffered than in-flight slots"
        );
        let mut slots = slots.into_iter();
        for (row, slot) in rows.into_iter().zip(slots.by_ref()) {
            debug_assert!(row.lease.attempt() >= 1, "a claim counts an attempt");
            debug_assert!(
                !self.holds(&row.lease),
                "row {} attempt {} buffered twice",
                row.lease.seq(),
                row.lease.attempt()
            );
            self.buffer.push_back(Buffered {
                lease: row.lease,
                message: row.message,
                lease_until,
                slot,
            });
        }
        slots.collect()
    }

    fn holds(&self, lease: &L) -> bool {
        self.buffer
            .iter()
            .any(|b| b.lease.seq() == lease.seq() && b.lease.attempt() == lease.attempt())
    }

    /// The next row to hand out as of `now`, oldest claim first.
    pub fn next(&mut self, now: DateTime<Utc>) -> Option<Handout<L, S>> {
        let row = self.buffer.pop_front()?;
        // Renew once a quarter of the ack timeout is gone: the handler then gets (almost)
        // the whole timeout, and a prompt application never pays for a renewal.
        let renew_below = after(now, self.ack_timeout - self.ack_timeout / 4);
        if row.lease_until >= renew_below {
            Some(Handout::Ready(row))
        } else {
            Some(Handout::Renew {
                row,
                visible_at: after(now, self.ack_timeout),
            })
        }
    }

    /// A row whose lease was renewed until `visible_at`, ready to hand out.
    pub fn renewed(mut row: Buffered<L, S>, visible_at: DateTime<Utc>) -> Buffered<L, S> {
        row.lease_until = visible_at;
        row
    }

    /// Puts a row back at the front (its renewal failed; it is tried again first).
    pub fn put_back(&mut self, row: Buffered<L, S>) {
        debug_assert!(self.buffer.len() < self.max_in_flight);
        self.buffer.push_front(row);
    }

    /// Empties the book, returning the leases to release (the consumer is going away).
    pub fn drain_leases(&mut self) -> Vec<L> {
        self.buffer.drain(..).map(|b| b.lease).collect()
    }
}

/// How long an idle consumer sleeps as of `now`: until the next head row becomes visible
/// (plus [`VISIBLE_MARGIN`]), never longer than `poll`.
pub(crate) fn idle_wait(
    next_visible: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    poll: Duration,
) -> Duration {
    match next_visible {
        Some(t) => (until(now, t) + VISIBLE_MARGIN).min(poll),
        None => poll,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq)]
    struct TestLease {
        seq: i64,
        attempt: u32,
    }

    impl Lease for TestLease {
        fn seq(&self) -> i64 {
            self.seq
        }
        fn attempt(&self) -> u32 {
            self.attempt
        }
    }

    const ACK_TIMEOUT: Duration = Duration::from_secs(40);

    fn row(seq: i64, attempt: u32) -> ClaimedRow<TestLease> {
        ClaimedRow {
            lease: TestLease { seq, attempt },
            message: Message::json("Tested", &serde_json::json!({ "seq": seq })),
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn book() -> ClaimBook<TestLease, u32> {
        ClaimBook::new(8, ACK_TIMEOUT)
    }

    #[test]
    fn rows_are_handed_out_in_claim_order_and_spare_slots_come_back() {
        let mut book = book();
        let lease_until = after(t0(), ACK_TIMEOUT);
        let spare = book.admit(vec![row(1, 1), row(2, 1)], lease_until, vec![10, 11, 12]);
        assert_eq!(spare, vec![12], "the slot no row took is returned");
        assert_eq!(book.len(), 2);
        let seqs: Vec<(i64, u32)> = std::iter::from_fn(|| match book.next(t0()) {
            Some(Handout::Ready(b)) => Some((b.lease.seq, b.slot)),
            _ => None,
        })
        .collect();
        assert_eq!(seqs, vec![(1, 10), (2, 11)]);
        assert!(book.is_empty());
    }

    #[test]
    fn a_row_that_waited_over_a_quarter_of_the_ack_timeout_is_renewed_first() {
        let mut book = book();
        book.admit(
            vec![row(1, 1), row(2, 1)],
            after(t0(), ACK_TIMEOUT),
            vec![0, 1],
        );
        // Exactly a quarter gone: still handed out as is.
        let quarter = after(t0(), ACK_TIMEOUT / 4);
        assert!(matches!(book.next(quarter), Some(Handout::Ready(_))));
        // A moment later: renewed for a whole ack timeout from now.
        let later = after(quarter, Duration::from_millis(1));
        match book.next(later) {
            Some(Handout::Renew { row, visible_at }) => {
                assert_eq!(visible_at, after(later, ACK_TIMEOUT));
                let row = ClaimBook::<TestLease, u32>::renewed(row, visible_at);
                assert_eq!(row.lease_until, visible_at);
            }
            other => panic!("expected a renewal, got {other:?}"),
        }
    }

    #[test]
    fn an_expired_lease_is_renewed_not_handed_out() {
        let mut book = book();
        book.admit(vec![row(1, 1)], after(t0(), ACK_TIMEOUT), vec![0]);
        let long_after = after(t0(), ACK_TIMEOUT * 3);
        assert!(matches!(book.next(long_after), Some(Handout::Renew { .. })));
    }

    #[test]
    fn a_row_put_back_is_next_again() {
        let mut book = book();
        book.admit(vec![row(1, 1), row(2, 1)], t0(), vec![0, 1]);
        let Some(Handout::Renew { row, .. }) = book.next(after(t0(), ACK_TIMEOUT)) else {
            panic!("a lease that ran out is renewed");
        };
        assert_eq!(row.lease.seq, 1);
        book.put_back(row);
        assert_eq!(book.len(), 2);
        assert_eq!(
            book.drain_leases(),
            vec![
                TestLease { seq: 1, attempt: 1 },
                TestLease { seq: 2, attempt: 1 }
            ]
        );
        assert!(book.is_empty());
    }

    #[test]
    fn the_same_row_may_be_buffered_again_under_a_newer_attempt() {
        // Its first lease ran out while it waited and this consumer claimed it again: the
        // old attempt's renewal will fail and drop it; both may sit in the book meanwhile.
        let mut book = book();
        book.admit(vec![row(1, 1)], t0(), vec![0]);
        book.admit(vec![row(1, 2)], after(t0(), ACK_TIMEOUT), vec![1]);
        assert_eq!(book.len(), 2);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "buffered twice")]
    fn the_same_lease_twice_is_a_bug() {
        let mut book = book();
        book.admit(vec![row(1, 1)], t0(), vec![0]);
        book.admit(vec![row(1, 1)], t0(), vec![1]);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "one row per slot")]
    fn more_rows_than_slots_is_a_bug() {
        let mut book = book();
        book.admit(vec![row(1, 1), row(2, 1)], t0(), vec![0]);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "more rows buffered than in-flight slots")]
    fn more_rows_than_in_flight_slots_is_a_bug() {
        let mut book: ClaimBook<TestLease, u32> = ClaimBook::new(1, ACK_TIMEOUT);
        book.admit(vec![row(1, 1)], t0(), vec![0]);
        book.admit(vec![row(2, 1)], t0(), vec![1]);
    }

    #[test]
    fn an_idle_consumer_sleeps_until_the_next_row_or_the_poll_interval() {
        let poll = Duration::from_millis(500);
        assert_eq!(idle_wait(None, t0(), poll), poll);
        let soon = after(t0(), Duration::from_millis(20));
        assert_eq!(
            idle_wait(Some(soon), t0(), poll),
            Duration::from_millis(20) + VISIBLE_MARGIN
        );
        let late = after(t0(), Duration::from_secs(60));
        assert_eq!(idle_wait(Some(late), t0(), poll), poll);
        // Already visible (another consumer's claim raced ours): look again almost at once.
        let past = before_t0();
        assert_eq!(idle_wait(Some(past), t0(), poll), VISIBLE_MARGIN);
    }

    fn before_t0() -> DateTime<Utc> {
        crate::time::before(t0(), Duration::from_secs(1))
    }
}
