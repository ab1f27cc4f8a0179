//! How often and how patiently to retry: exponential backoff with full jitter, shared by the
//! aggregate [`Repository`](crate::Repository) (conflicts, transient store errors) and the
//! consumer router's [retry layer](crate::consumer::layers::RetryLayer) (failed handlers).

use std::fmt;
use std::time::Duration;

/// Retry policy for optimistic-concurrency conflicts and transient store errors:
/// at most `max_attempts` tries, waiting between tries with exponential backoff and full
/// jitter (a random delay in `[0, min(max_delay, base_delay * 2^(attempt - 1))]`), so that
/// writers that collided once do not collide again in lockstep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most tries in total, the first included. `0` is treated as `1`.
    pub max_attempts: u32,
    /// The backoff ceiling after the first failed try.
    pub base_delay: Duration,
    /// The largest backoff ceiling.
    pub max_delay: Duration,
}

/// Default most tries per command.
pub const RETRY_ATTEMPTS_MAX_DEFAULT: u32 = 5;
/// Default backoff ceiling after the first failed try.
pub const RETRY_BASE_DELAY_DEFAULT: Duration = Duration::from_millis(10);
/// Default largest backoff ceiling.
pub const RETRY_MAX_DELAY_DEFAULT: Duration = Duration::from_secs(1);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: RETRY_ATTEMPTS_MAX_DEFAULT,
            base_delay: RETRY_BASE_DELAY_DEFAULT,
            max_delay: RETRY_MAX_DELAY_DEFAULT,
        }
    }
}

impl RetryPolicy {
    /// One try, no retries.
    pub fn no_retry() -> Self {
        RetryPolicy {
            max_attempts: 1,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    /// `max_attempts` tries with no wait in between (for tests and in-process stores).
    pub fn immediate(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    /// The number of tries this policy allows (at least 1).
    pub fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }

    /// The upper bound of the wait after failed try number `attempt` (1-based).
    pub fn delay_ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.base_delay
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// A random wait in `[0, delay_ceiling(attempt)]` (full jitter).
    pub fn delay_for_attempt(&self, attempt: u32) -> Duration {
        self.delay_for_attempt_with(attempt, &FullJitter)
    }

    /// The wait after failed try number `attempt`, drawn by `jitter` from
    /// `[0, delay_ceiling(attempt)]`; tests pass a scripted [`Jitter`] to make it exact.
    pub fn delay_for_attempt_with(&self, attempt: u32, jitter: &dyn Jitter) -> Duration {
        let ceiling = self.delay_ceiling(attempt);
        let drawn = jitter.draw(ceiling);
        debug_assert!(drawn <= ceiling, "jitter drew {drawn:?} over {ceiling:?}");
        drawn.min(ceiling)
    }
}

/// Draws a wait from `[0, ceiling]`. The production source is [`FullJitter`] (uniformly
/// random); tests inject a scripted source so backoff is deterministic.
pub trait Jitter: Send + Sync + 'static {
    /// A wait in `[0, ceiling]` (values above `ceiling` are clamped by the caller).
    fn draw(&self, ceiling: Duration) -> Duration;
}

/// "Full jitter": a uniformly random wait in `[0, ceiling]`, so that many clients that
/// failed together do not retry together.
#[derive(Clone, Copy, Debug, Default)]
pub struct FullJitter;

impl Jitter for FullJitter {
    fn draw(&self, ceiling: Duration) -> Duration {
        let ceiling_ns = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if ceiling_ns == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rand::random_range(0..=ceiling_ns))
    }
}

/// No jitter: always the ceiling (deterministic exponential backoff).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoJitter;

impl Jitter for NoJitter {
    fn draw(&self, ceiling: Duration) -> Duration {
        ceiling
    }
}

impl fmt::Debug for dyn Jitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Jitter")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_ceiling_doubles_up_to_the_maximum() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        };
        assert_eq!(p.delay_ceiling(1), Duration::from_millis(10));
        assert_eq!(p.delay_ceiling(2), Duration::from_millis(20));
        assert_eq!(p.delay_ceiling(3), Duration::from_millis(40));
        assert_eq!(p.delay_ceiling(4), Duration::from_millis(50));
        assert_eq!(p.delay_ceiling(u32::MAX), Duration::from_millis(50));
    }

    #[test]
    fn jittered_delay_stays_within_the_ceiling() {
        let p = RetryPolicy::default();
        for attempt in 1..=8 {
            for _ in 0..50 {
                assert!(p.delay_for_attempt(attempt) <= p.delay_ceiling(attempt));
            }
        }
        assert_eq!(RetryPolicy::no_retry().delay_for_attempt(3), Duration::ZERO);
    }

    #[test]
    fn full_jitter_spreads_waits_over_the_whole_range() {
        let ceiling = Duration::from_secs(1);
        let draws: Vec<Duration> = (0..200).map(|_| FullJitter.draw(ceiling)).collect();
        assert!(draws.iter().all(|d| *d <= ceiling));
        // 200 uniform draws all landing in one half has probability 2^-199.
        assert!(draws.iter().any(|d| *d < ceiling / 2));
        assert!(draws.iter().any(|d| *d > ceiling / 2));
    }

    #[test]
    fn injected_jitter_makes_the_delay_exact() {
        let p = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
        };
        assert_eq!(
            p.delay_for_attempt_with(3, &NoJitter),
            Duration::from_millis(300)
        );
        assert_eq!(
            p.delay_for_attempt_with(2, &NoJitter),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn zero_attempts_means_one_try() {
        assert_eq!(RetryPolicy::immediate(0).attempts(), 1);
    }
}
