//! In-process wake-ups for consumers: one `watch` counter per topic, bumped after a commit
//! that may have made a message claimable on that topic (a publish, an ack that promotes a
//! key's next row, an immediate nack, released leases). Who holds them is the backend's
//! choice: the SQLite store (shared by every bus on clones of it), a PostgreSQL bus (fed
//! by its `LISTEN` connection too). Wake-ups that cannot reach a consumer are covered by
//! its polling fallback.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

/// The wake-up counters, per topic name.
#[derive(Debug, Default)]
pub struct BusSignals {
    topics: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl BusSignals {
    fn topics(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        match self.topics.lock() {
            Ok(t) => t,
            // A panic while holding this lock left a plain map behind; it is still valid.
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A receiver that sees every later [`bump`](Self::bump) of `topic`.
    pub fn watch(&self, topic: &str) -> watch::Receiver<u64> {
        self.topics()
            .entry(topic.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes every consumer of `topic` in this process.
    pub fn bump(&self, topic: &str) {
        let mut topics = self.topics();
        if let Some(sender) = topics.get(topic) {
            if sender.receiver_count() == 0 {
                // Nobody consumes this topic any more; forget it so the map stays as small
                // as the set of topics being consumed.
                topics.remove(topic);
            } else {
                sender.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Wakes every consumer in this process (after wake-ups from elsewhere may have been
    /// lost).
    pub fn bump_all(&self) {
        for sender in self.topics().values() {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// How many topics have a counter (for tests: the map forgets unwatched topics).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.topics().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bump_wakes_only_its_topic() {
        let signals = BusSignals::default();
        let mut orders = signals.watch("orders");
        let billing = signals.watch("billing");
        signals.bump("orders");
        assert!(orders.has_changed().unwrap_or(false));
        assert!(!billing.has_changed().unwrap_or(true));
        orders.borrow_and_update();
        signals.bump_all();
        assert!(orders.has_changed().unwrap_or(false));
        assert!(billing.has_changed().unwrap_or(false));
    }

    #[test]
    fn an_unwatched_topic_is_forgotten_at_its_next_bump() {
        let signals = BusSignals::default();
        drop(signals.watch("orders"));
        assert_eq!(signals.len(), 1);
        signals.bump("orders");
        assert_eq!(signals.len(), 0);
        // Bumping a topic nobody ever watched creates nothing.
        signals.bump("never");
        assert_eq!(signals.len(), 0);
    }
}
