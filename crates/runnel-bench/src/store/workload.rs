//! What the write scenarios write and for how long.

use std::time::Duration;

/// The payload of every benchmark event (about 100 bytes of JSON, a typical small event).
pub const PAYLOAD: &[u8] = br#"{"order_id":"0190a3c4-bench","sku":"SKU-0042","quantity":3,"amount_cents":12999,"note":"runnel bench"}"#;
/// The event type of every benchmark event.
pub const EVENT_TYPE: &str = "BenchEventRecorded";
/// The category of every benchmark stream.
pub const CATEGORY: &str = "Bench";

/// How long a write scenario runs.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Stop starting new appends after this long...
    pub duration: Duration,
    /// ...unless fewer than this many events are written yet.
    pub events_min: u64,
    /// Never write more than this many events.
    pub events_max: u64,
}

/// The outcome of a write scenario.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteRun {
    pub events: u64,
    pub elapsed: Duration,
    /// Transactions committed (= fsyncs at full durability).
    pub commits: u64,
}

impl WriteRun {
    /// Two runs as one.
    pub fn plus(self, other: WriteRun) -> WriteRun {
        WriteRun {
            events: self.events + other.events,
            elapsed: self.elapsed + other.elapsed,
            commits: self.commits + other.commits,
        }
    }

    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn events_per_commit(&self) -> f64 {
        self.events as f64 / (self.commits.max(1)) as f64
    }
}

/// The outcome of a read scenario.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadRun {
    pub events: u64,
    pub elapsed: Duration,
}

impl ReadRun {
    /// Two runs as one.
    pub fn plus(self, other: ReadRun) -> ReadRun {
        ReadRun {
            events: self.events + other.events,
            elapsed: self.elapsed + other.elapsed,
        }
    }

    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The name of writer `writer`'s `index`-th stream (shared by Runnel and raw runs so both
/// store the same names).
pub fn stream_name(writer: usize, index: u64) -> String {
    format!("{CATEGORY}-w{writer}s{index}")
}
