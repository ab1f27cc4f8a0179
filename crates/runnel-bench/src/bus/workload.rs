//! What the bus scenarios send, and what they measure: message counts, time, commits and
//! a latency histogram per run.

use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use runnel_core::Message;

/// The payload of every benchmark message: 256 bytes of JSON, a typical small event.
pub const PAYLOAD: &[u8; PAYLOAD_BYTES] = br#"{"order_id":"0190a3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d","customer_id":"cust-004217","sku":"SKU-0042","quantity":3,"amount_cents":12999,"currency":"EUR","channel":"web","note":"runnel bench bus: a 256-byte JSON payload, as a small domain event carries........."}"#;
/// Bytes in [`PAYLOAD`].
pub const PAYLOAD_BYTES: usize = 256;
/// The event type of every benchmark message.
pub const EVENT_TYPE: &str = "BenchMessagePublished";
/// Messages spread over this many ordering keys (`Order-{n % KEYS}`): enough that the
/// messages in flight rarely share a key, as with many independent orders.
pub const KEYS: u64 = 4096;
/// The header that carries a message's send time (ns since the run's epoch) in the
/// end-to-end scenarios.
pub const SENT_HEADER: &str = "benchsentns";

/// Longest latency the histograms hold (longer ones are clamped to it).
const LATENCY_NANOS_MAX: u64 = 600 * 1_000_000_000;

/// The `n`-th benchmark message: a fresh UUIDv7 id, the current time, key `Order-{n % KEYS}`.
pub fn message(n: u64) -> Message {
    let mut m = Message::json(EVENT_TYPE, &serde_json::Value::Null);
    m.payload = PAYLOAD.to_vec();
    m.with_key(format!("Order-{}", n % KEYS))
}

/// How long a scenario runs.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Stop starting new work after this long...
    pub duration: Duration,
    /// ...or once this many messages were sent.
    pub messages_max: u64,
}

/// Latencies in nanoseconds.
#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

impl Latency {
    pub fn new() -> anyhow::Result<Self> {
        Histogram::new_with_bounds(1, LATENCY_NANOS_MAX, 3)
            .map(Latency)
            .context("cannot create a latency histogram")
    }

    /// Records one latency (clamped to the histogram's range).
    pub fn record(&mut self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.saturating_record(nanos.clamp(1, LATENCY_NANOS_MAX));
    }

    /// Records `count` equal latencies.
    pub fn record_n(&mut self, d: Duration, count: u64) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Cannot fail: the value is clamped into the histogram's bounds.
        let _ = self.0.record_n(nanos.clamp(1, LATENCY_NANOS_MAX), count);
    }

    /// Adds `other`'s samples.
    pub fn add(&mut self, other: &Latency) -> anyhow::Result<()> {
        self.0
            .add(&other.0)
            .context("cannot merge latency histograms")
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    fn quantile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.0.value_at_quantile(q))
    }

    /// `p50 1.2 ms · p99 3.4 ms`, or `no samples`.
    pub fn summary(&self) -> String {
        if self.len() == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {} · p99 {}",
            human(self.quantile(0.50)),
            human(self.quantile(0.99))
        )
    }
}

/// A duration with a unit that keeps three significant digits or so.
pub fn human(d: Duration) -> String {
    let nanos = d.as_nanos() as f64;
    if nanos < 1_000.0 {
        format!("{nanos:.0} ns")
    } else if nanos < 1_000_000.0 {
        format!("{:.1} µs", nanos / 1e3)
    } else if nanos < 1_000_000_000.0 {
        format!("{:.2} ms", nanos / 1e6)
    } else {
        format!("{:.2} s", nanos / 1e9)
    }
}

/// The outcome of a throughput scenario.
#[derive(Clone, Debug)]
pub struct Run {
    pub messages: u64,
    pub elapsed: Duration,
    /// Transactions committed (= fsyncs at full durability), where counted.
    pub commits: u64,
    /// Per call (publish), per transaction (raw) or per message (end to end).
    pub latency: Latency,
}

impl Run {
    pub fn empty() -> anyhow::Result<Run> {
        Ok(Run {
            messages: 0,
            elapsed: Duration::ZERO,
            commits: 0,
            latency: Latency::new()?,
        })
    }

    /// Adds `other` (a later round of the same scenario).
    pub fn add(&mut self, other: &Run) -> anyhow::Result<()> {
        self.messages += other.messages;
        self.elapsed += other.elapsed;
        self.commits += other.commits;
        self.latency.add(&other.latency)
    }

    pub fn per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn per_commit(&self) -> f64 {
        self.messages as f64 / self.commits.max(1) as f64
    }

    /// Mean time per message.
    pub fn nanos_per_message(&self) -> f64 {
        self.elapsed.as_nanos() as f64 / self.messages.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_256_bytes_of_json() {
        assert_eq!(PAYLOAD.len(), PAYLOAD_BYTES);
        let value: serde_json::Value = serde_json::from_slice(PAYLOAD).unwrap();
        assert!(value.is_object());
        let m = message(4097);
        assert_eq!(m.payload.len(), PAYLOAD_BYTES);
        assert_eq!(m.ordering_key(), Some("Order-1"));
        m.validate(1024).unwrap();
    }

    #[test]
    fn latencies_print_with_a_fitting_unit() {
        assert_eq!(human(Duration::from_nanos(850)), "850 ns");
        assert_eq!(human(Duration::from_micros(12)), "12.0 µs");
        assert_eq!(human(Duration::from_micros(2_345)), "2.35 ms");
        let mut l = Latency::new().unwrap();
        assert_eq!(l.summary(), "no samples");
        l.record(Duration::from_millis(1));
        l.record_n(Duration::from_millis(3), 3);
        assert_eq!(l.len(), 4);
        assert!(l.summary().starts_with("p50 3.0"), "{}", l.summary());
    }
}
