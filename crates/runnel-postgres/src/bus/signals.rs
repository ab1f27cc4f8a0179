//! In-process wake-ups for consumers: one `watch` counter per topic, bumped when a commit
//! that may have made a message claimable on that topic is announced: by this process
//! directly, and by every process through the bus's LISTEN channel (the notification
//! carries the topic name).

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

    /// Wakes every consumer in this process (after notifications may have been lost).
    pub fn bump_all(&self) {
        let topics = match self.topics.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        for sender in topics.values() {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
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
