//! [`Shutdown`]: the signal every supervised task watches.

use tokio::sync::watch;

/// Fires once, when the application shuts down. Cloning is cheap; every clone fires
/// together.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// Fires a [`Shutdown`]: for running a task (a saga runtime, a relay) outside an
/// application and stopping it on your own terms.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl ShutdownTrigger {
    /// A trigger and the signal it fires.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Fires the signal (every clone of it).
    pub fn fire(&self) {
        // send_replace: fires even when no receiver is left.
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Whether shutdown was asked.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when shutdown is asked (at once if it was already). Cancel-safe.
    pub async fn requested(&self) {
        let mut rx = self.0.clone();
        // A dropped trigger without a shutdown (`never`) is read as "never".
        if rx.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// A signal that never fires, for running a task outside an application (tests).
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        drop(tx);
        Shutdown(rx)
    }
}
