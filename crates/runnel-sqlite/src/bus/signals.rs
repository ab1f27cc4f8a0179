//! In-process wake-ups for consumers: one `watch` counter per topic, bumped after a commit
//! that may have made a message claimable on that topic (a publish, an ack that promotes a
//! key's next message, an immediate nack, released leases). Held by the store, so every
//! bus built on clones of one store shares them. Other processes writing the same file
//! are noticed by the consumers' polling fallback instead.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// The wake-up counters, per topic name.
#[derive(Debug, Default)]
pub(crate) struct BusSignals {
    topics: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl BusSignals {
    /// A receiver that sees every later [`bump`](Self::bump) of `topic`.
    pub fn watch(&self, topic: &str) -> watch::Receiver<u64> {
        let mut topics = match self.topics.lock() {
            Ok(t) => t,
            // A panic while holding this lock left a plain map behind; it is still valid.
            Err(poisoned) => poisoned.into_inner(),
        };
        topics
            .entry(topic.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes every consumer of `topic` in this process.
    pub fn bump(&self, topic: &str) {
        let mut topics = match self.topics.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
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
}
