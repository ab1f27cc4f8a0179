//! Injected waiting. The retry and dedup layers wait through a [`Sleeper`] so tests can
//! record or skip the waits instead of sleeping (the wall-clock time written into failure
//! records comes from a [`runnel_core::Clock`]).

use std::time::Duration;

use async_trait::async_trait;

/// Waits for a while.
#[async_trait]
pub trait Sleeper: Send + Sync + 'static {
    /// Returns after `duration`.
    async fn sleep(&self, duration: Duration);
}

/// Sleeps on tokio's timer (which tests can pause and advance with
/// `tokio::time::pause`/`advance`).
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioSleeper;

#[async_trait]
impl Sleeper for TokioSleeper {
    async fn sleep(&self, duration: Duration) {
        if !duration.is_zero() {
            tokio::time::sleep(duration).await;
        }
    }
}
