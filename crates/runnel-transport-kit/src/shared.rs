//! [`Shared`]: a subscription's state behind one lock, with the wake-up its driver waits
//! on.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// The state of one subscription, shared by its driver task, its acknowledgers and its
/// delivery stream. Every method of the state finishes its update before returning, so
/// the state stays consistent even if a holder of the lock panicked: the lock is taken
/// past poisoning.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let shared = runnel_transport_kit::Shared::new(0u32);
/// *shared.lock() += 1;
/// shared.wake();
/// shared.woken().await; // returns at once: the wake-up was stored
/// assert_eq!(*shared.lock(), 1);
/// # }
/// ```
#[derive(Debug)]
pub struct Shared<S> {
    state: Mutex<S>,
    wake: Notify,
}

impl<S> Shared<S> {
    pub fn new(state: S) -> Arc<Self> {
        Arc::new(Shared {
            state: Mutex::new(state),
            wake: Notify::new(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the driver something changed (a settlement, a take): it looks at the state
    /// again. A wake-up given while the driver is busy is kept for its next wait.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits for the next [`Shared::wake`].
    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}
