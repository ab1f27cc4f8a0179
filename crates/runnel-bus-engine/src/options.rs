//! [`BusOptions`]: one type for both embedded buses, with its bounds and defaults.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use runnel_core::message::MESSAGE_PAYLOAD_MAX_DEFAULT;
use runnel_core::{BusError, Clock, SystemClock};

/// Default polling interval: the longest an idle consumer sleeps before looking again
/// without a wake-up (how soon it notices a message written by another process whose
/// wake-up did not reach it).
pub const POLL_INTERVAL_DEFAULT: Duration = Duration::from_millis(500);
/// Shortest accepted polling interval.
pub const POLL_INTERVAL_MIN: Duration = Duration::from_millis(10);
/// Longest accepted polling interval.
pub const POLL_INTERVAL_MAX: Duration = Duration::from_secs(60);
/// Default retention: how long a message stays in the log after publication (for groups
/// created later with `StartPosition::Earliest`). A message some group has not yet
/// acknowledged is kept regardless.
pub const RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest accepted retention.
pub const RETENTION_MAX: Duration = Duration::from_secs(366 * 24 * 60 * 60);
/// Largest payload limit that may be configured, in bytes.
pub const PAYLOAD_BYTES_LIMIT: usize = 64 * 1024 * 1024;
/// Default largest total size of one publish call (payloads plus envelopes), in bytes:
/// bounds what one publish holds in memory and writes in one transaction.
pub const PUBLISH_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
/// Most rows one claim leases (also never more than the consumer's free in-flight slots).
pub const CLAIM_BATCH_MAX: usize = 64;
/// How often the retention sweep runs.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Most log rows one sweep transaction deletes (keeps each write short).
pub const SWEEP_BATCH_MAX: usize = 5_000;
/// Pause after a failed claim before the consumer tries again.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(500);

/// How an embedded bus (SQLite or PostgreSQL) behaves.
///
/// ```
/// use std::time::Duration;
/// use runnel_bus_engine::BusOptions;
///
/// let options = BusOptions::default()
///     .poll_interval(Duration::from_millis(100))
///     .retention(Duration::from_secs(3600));
/// assert!(options.validate().is_ok());
/// assert!(BusOptions::default().max_payload_bytes(0).validate().is_err());
/// ```
#[derive(Clone)]
pub struct BusOptions {
    /// Largest payload of one message, in bytes; larger ones are rejected with
    /// [`BusError::PayloadTooLarge`] (send them by reference: claim check).
    pub max_payload_bytes: usize,
    /// Largest total size of one publish call, in bytes.
    pub max_publish_bytes: usize,
    /// The longest an idle consumer sleeps before looking again without a wake-up: how
    /// soon it notices messages written by other processes when their wake-up is lost
    /// (SQLite has none across processes; PostgreSQL's `NOTIFY` can be lost on a
    /// reconnect).
    pub poll_interval: Duration,
    /// How long a published message stays in the log once no group needs it.
    /// `Duration::ZERO` deletes it at the next sweep after every group acknowledged it
    /// (a message published while its topic has no group is then not kept either).
    pub retention: Duration,
    /// The time source for visibility timeouts, nack delays and retention (tests drive a
    /// virtual clock). Processes that share a group should have synchronized clocks
    /// (NTP): a lease ends by the clock of the process that looks at it.
    pub clock: Arc<dyn Clock>,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            max_payload_bytes: MESSAGE_PAYLOAD_MAX_DEFAULT,
            max_publish_bytes: PUBLISH_BYTES_MAX_DEFAULT,
            poll_interval: POLL_INTERVAL_DEFAULT,
            retention: RETENTION_DEFAULT,
            clock: Arc::new(SystemClock),
        }
    }
}

impl fmt::Debug for BusOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusOptions")
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("max_publish_bytes", &self.max_publish_bytes)
            .field("poll_interval", &self.poll_interval)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl BusOptions {
    /// Sets the payload limit.
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// Sets the polling interval.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets the retention.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Uses `clock` for every deadline (tests drive a virtual clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), BusError> {
        if self.max_payload_bytes == 0 || self.max_payload_bytes > PAYLOAD_BYTES_LIMIT {
            return Err(BusError::InvalidArgument(format!(
                "max_payload_bytes must be 1..={PAYLOAD_BYTES_LIMIT}"
            )));
        }
        if self.max_publish_bytes < self.max_payload_bytes {
            return Err(BusError::InvalidArgument(
                "max_publish_bytes must be at least max_payload_bytes".into(),
            ));
        }
        if !(POLL_INTERVAL_MIN..=POLL_INTERVAL_MAX).contains(&self.poll_interval) {
            return Err(BusError::InvalidArgument(format!(
                "poll_interval must be {POLL_INTERVAL_MIN:?}..={POLL_INTERVAL_MAX:?}"
            )));
        }
        if self.retention > RETENTION_MAX {
            return Err(BusError::InvalidArgument(format!(
                "retention must be at most {RETENTION_MAX:?}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(BusOptions::default().validate().is_ok());
    }

    #[test]
    fn out_of_bounds_options_are_refused() {
        let d = BusOptions::default;
        assert!(d().max_payload_bytes(0).validate().is_err());
        assert!(d()
            .max_payload_bytes(PAYLOAD_BYTES_LIMIT + 1)
            .validate()
            .is_err());
        let mut small_publish = d();
        small_publish.max_publish_bytes = small_publish.max_payload_bytes - 1;
        assert!(small_publish.validate().is_err());
        assert!(d()
            .poll_interval(POLL_INTERVAL_MIN - Duration::from_millis(1))
            .validate()
            .is_err());
        assert!(d()
            .poll_interval(POLL_INTERVAL_MAX + Duration::from_millis(1))
            .validate()
            .is_err());
        assert!(d()
            .retention(RETENTION_MAX + Duration::from_secs(1))
            .validate()
            .is_err());
        assert!(d().retention(Duration::ZERO).validate().is_ok());
    }
}
