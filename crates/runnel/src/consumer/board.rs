//! The lag board: how far behind each consumer of this process is, for the admin API
//! (`GET /admin/consumers`) and the `runnel_consumer_lag_seconds` gauge.
//!
//! Two measures per topic and group:
//! - **messages**: what the bus's [`LagProbe`](super::LagProbe) last said (not delivered
//!   or not acknowledged yet); `None` where the transport cannot tell.
//! - **seconds**: the age of the newest message the group received, measured when it
//!   arrived (now minus its CloudEvents `time`) — how far behind real time the group is
//!   reading. It drops to 0 when the probe says nothing is left.
//!
//! Bounded: at most [`BOARD_ENTRIES_MAX`] topic/group pairs (a process runs a handful);
//! beyond, new pairs are not recorded and a warning is logged once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Most topic/group pairs the board holds.
pub const BOARD_ENTRIES_MAX: usize = 4096;
/// The gauge of [`ConsumerLag::seconds`], by topic and group.
pub const METRIC_LAG_SECONDS: &str = "runnel_consumer_lag_seconds";

/// One consumer group's lag in this process.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConsumerLag {
    pub topic: String,
    pub group: String,
    /// Messages behind, from the bus's probe; `None` if it cannot tell.
    pub messages: Option<u64>,
    /// Age of the newest message received when it arrived; 0 when caught up.
    pub seconds: f64,
    /// Deliveries received by this process.
    pub received: u64,
    /// When a delivery last arrived.
    pub last_received_at: Option<DateTime<Utc>>,
    /// When any of this changed.
    pub updated_at: DateTime<Utc>,
}

fn board() -> &'static Mutex<BTreeMap<(String, String), ConsumerLag>> {
    static BOARD: OnceLock<Mutex<BTreeMap<(String, String), ConsumerLag>>> = OnceLock::new();
    BOARD.get_or_init(|| Mutex::new(BTreeMap::new()))
}

static FULL_WARNED: AtomicBool = AtomicBool::new(false);

fn update(topic: &str, group: &str, f: impl FnOnce(&mut ConsumerLag)) {
    let mut board = board().lock().unwrap_or_else(|p| p.into_inner());
    let key = (topic.to_string(), group.to_string());
    if !board.contains_key(&key) && board.len() >= BOARD_ENTRIES_MAX {
        if !FULL_WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max = BOARD_ENTRIES_MAX,
                "the consumer lag board is full; further topic/group pairs are not shown"
            );
        }
        return;
    }
    let now = Utc::now();
    let entry = board.entry(key).or_insert_with(|| ConsumerLag {
        topic: topic.to_string(),
        group: group.to_string(),
        messages: None,
        seconds: 0.0,
        received: 0,
        last_received_at: None,
        updated_at: now,
    });
    f(entry);
    entry.updated_at = now;
    metrics::gauge!(METRIC_LAG_SECONDS, "topic" => topic.to_string(), "group" => group.to_string())
        .set(entry.seconds);
}

/// Records a delivery of a message written at `time` (its CloudEvents `time`).
pub(crate) fn received(topic: &str, group: &str, time: Option<DateTime<Utc>>) {
    let now = Utc::now();
    update(topic, group, |e| {
        e.received += 1;
        e.last_received_at = Some(now);
        if let Some(t) = time {
            e.seconds = ((now - t).num_milliseconds().max(0) as f64) / 1000.0;
        }
    });
}

/// Records what the lag probe said.
pub(crate) fn probed(topic: &str, group: &str, messages: u64) {
    update(topic, group, |e| {
        e.messages = Some(messages);
        if messages == 0 {
            e.seconds = 0.0;
        }
    });
}

/// Registers a consumer on the board (so an idle one shows too).
pub(crate) fn started(topic: &str, group: &str) {
    update(topic, group, |_| {});
}

/// Every consumer group of this process, by topic and group.
pub fn lag_board() -> Vec<ConsumerLag> {
    let board = board().lock().unwrap_or_else(|p| p.into_inner());
    board.values().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_follow_received_messages_and_drop_when_caught_up() {
        let (t, g) = ("board-test-topic", "board-test-group");
        started(t, g);
        received(t, g, Some(Utc::now() - chrono::Duration::seconds(30)));
        let e = lag_board()
            .into_iter()
            .find(|e| e.topic == t && e.group == g)
            .unwrap();
        assert!(e.seconds >= 29.0 && e.seconds < 60.0, "{e:?}");
        assert_eq!(e.received, 1);
        probed(t, g, 0);
        let e = lag_board()
            .into_iter()
            .find(|e| e.topic == t && e.group == g)
            .unwrap();
        assert_eq!((e.messages, e.seconds), (Some(0), 0.0));
    }
}
