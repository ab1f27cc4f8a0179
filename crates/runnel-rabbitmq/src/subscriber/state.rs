//! The state of one subscription: the kit's per-key book over the messages the broker
//! gave this channel and it has not acked. The book runs the ack timeout and nack delays
//! itself ([`Redelivery::Local`]): the broker redelivers only when the channel goes.

use runnel_core::bus::SubscribeOptions;
use runnel_core::Message;
use runnel_transport_kit::book::{BookSettings, KeyBook, Redelivery};
use runnel_transport_kit::{EntryId, TakesHandouts};

/// What the book keeps of one unacknowledged delivery.
pub(crate) struct Item {
    pub acker: lapin::acker::Acker,
    pub message: Message,
}

pub(crate) struct RabbitState {
    pub book: KeyBook<String, Item>,
    /// Ids in arrival (queue) order; never reset, so a settlement from a lost channel can
    /// never match a new entry.
    next_id: EntryId,
}

impl RabbitState {
    pub fn new(options: &SubscribeOptions) -> Self {
        RabbitState {
            book: KeyBook::new(BookSettings {
                max_in_flight: options.max_in_flight,
                redelivery: Redelivery::Local {
                    ack_timeout: options.ack_timeout,
                },
            }),
            next_id: 0,
        }
    }

    /// A delivery from the broker, held until its key's turn.
    pub fn accept(&mut self, acker: lapin::acker::Acker, message: Message, attempt: u32) {
        self.next_id += 1;
        let key = message.ordering_key().map(str::to_string);
        let inserted = self
            .book
            .insert(self.next_id, key, attempt, Item { acker, message });
        debug_assert!(inserted.is_ok(), "arrival ids are unique");
    }
}

impl TakesHandouts for RabbitState {
    fn taken(&mut self, id: EntryId, token: u64, now: std::time::Instant) -> bool {
        self.book.taken(id, token, now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn msg(n: usize, key: Option<&str>) -> Message {
        let m = Message::json("T", &serde_json::json!({ "n": n }));
        match key {
            Some(k) => m.with_key(k),
            None => m,
        }
    }

    #[test]
    fn arrivals_keep_queue_order_per_key_and_a_timed_out_head_comes_back_first() {
        let options = SubscribeOptions {
            max_in_flight: 8,
            ack_timeout: Duration::from_secs(30),
            ..SubscribeOptions::default()
        };
        let mut st = RabbitState::new(&options);
        for (n, k) in [(0, "A"), (1, "A"), (2, "B")] {
            st.accept(lapin::acker::Acker::mock(), msg(n, Some(k)), 1);
        }
        let a = st.book.hand_out().expect("A's head");
        let b = st.book.hand_out().expect("B's head");
        assert!(st.book.hand_out().is_none(), "A's second waits");
        let now = Instant::now();
        assert!(st.taken(a.id, a.token, now));
        assert!(st.taken(b.id, b.token, now));
        st.book.fire_timers(now + options.ack_timeout);
        let again = st.book.hand_out().expect("A's head again");
        assert_eq!((again.id, again.attempt), (a.id, 2));
    }
}
