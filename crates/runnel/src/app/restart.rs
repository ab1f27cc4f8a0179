//! The restart bookkeeping of one supervised task: pure state, no I/O.

use std::time::Duration;

use crate::retry::{Jitter, RetryPolicy};

/// How a supervised task is restarted after it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Backoff between restarts: exponential from `base_delay`, capped at `max_delay`,
    /// with full jitter. `max_attempts` is ignored: a task is restarted for as long as the
    /// application runs (each restart is logged and counted).
    pub backoff: RetryPolicy,
    /// A task that ran at least this long before failing is considered to have been
    /// healthy: its backoff starts again from the base delay.
    pub healthy_after: Duration,
}

/// Default first restart delay.
pub const RESTART_BASE_DELAY_DEFAULT: Duration = Duration::from_millis(100);
/// Default longest restart delay.
pub const RESTART_MAX_DELAY_DEFAULT: Duration = Duration::from_secs(30);
/// Default run time after which a failure counts as a fresh one.
pub const RESTART_HEALTHY_AFTER_DEFAULT: Duration = Duration::from_secs(60);

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            backoff: RetryPolicy {
                max_attempts: u32::MAX,
                base_delay: RESTART_BASE_DELAY_DEFAULT,
                max_delay: RESTART_MAX_DELAY_DEFAULT,
            },
            healthy_after: RESTART_HEALTHY_AFTER_DEFAULT,
        }
    }
}

/// One task's failures: how many in a row (for the backoff) and in all (for reports).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RestartBook {
    consecutive: u32,
    total: u64,
}

impl RestartBook {
    /// Records a failure after the task ran for `ran`; returns the delay before the next
    /// start.
    pub(crate) fn failed(
        &mut self,
        ran: Duration,
        policy: &RestartPolicy,
        jitter: &dyn Jitter,
    ) -> Duration {
        if ran >= policy.healthy_after {
            self.consecutive = 0;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        self.total = self.total.saturating_add(1);
        debug_assert!(u64::from(self.consecutive) <= self.total);
        policy
            .backoff
            .delay_for_attempt_with(self.consecutive, jitter)
    }

    /// Restarts so far.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ceiling;
    impl Jitter for Ceiling {
        fn draw(&self, ceiling: Duration) -> Duration {
            ceiling
        }
    }

    #[test]
    fn backoff_doubles_until_the_cap_and_resets_after_a_healthy_run() {
        let policy = RestartPolicy {
            backoff: RetryPolicy {
                max_attempts: u32::MAX,
                base_delay: Duration::from_millis(100),
                max_delay: Duration::from_millis(350),
            },
            healthy_after: Duration::from_secs(10),
        };
        let mut book = RestartBook::default();
        let quick = Duration::from_millis(5);
        let delays: Vec<_> = (0..4)
            .map(|_| book.failed(quick, &policy, &Ceiling))
            .collect();
        assert_eq!(
            delays,
            [100, 200, 350, 350].map(Duration::from_millis).to_vec()
        );
        assert_eq!(book.total(), 4);
        let after_healthy = book.failed(Duration::from_secs(11), &policy, &Ceiling);
        assert_eq!(after_healthy, Duration::from_millis(100));
        assert_eq!(book.total(), 5);
    }
}
