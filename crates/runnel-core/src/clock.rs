//! Injected time. Anything that depends on "now" takes a [`Clock`], so tests can drive a
//! virtual clock instead of sleeping.

use chrono::{DateTime, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to: tests advance it to fire timers and expire leases
/// without sleeping.
///
/// ```
/// use std::time::Duration;
/// use runnel_core::clock::{Clock, VirtualClock};
/// let clock = VirtualClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::from_secs(30));
/// assert_eq!((clock.now() - t0).num_seconds(), 30);
/// ```
#[derive(Debug)]
pub struct VirtualClock(std::sync::Mutex<DateTime<Utc>>);

impl VirtualClock {
    /// A clock at the current wall-clock time (so stored times look real).
    pub fn new() -> Self {
        VirtualClock(std::sync::Mutex::new(Utc::now()))
    }

    /// A clock at `at`.
    pub fn at(at: DateTime<Utc>) -> Self {
        VirtualClock(std::sync::Mutex::new(at))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
    }
}

impl Default for VirtualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
