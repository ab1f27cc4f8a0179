//! Whether the application is waiting on the stream with nothing to take: the poller
//! long-polls only then.
//!
//! Why: a `ReceiveMessage` long poll cannot be called back. When its consumer stops (the
//! stream is dropped, the process exits), SQS — and moto — keep the request open on their
//! side for the rest of its `wait` and hand the next message that arrives to the closed
//! connection: the message is in flight to nobody, hidden for a whole visibility timeout,
//! and its receive count (the attempt) is spent. A consumer that had just taken its last
//! message (`runnel consume --count 1`) or never read its stream used to leave exactly such
//! a poll behind, because the poller long-polled again whenever a permit was free, so the
//! next consumer got the next message only 30 s later, on attempt 2. Now a long poll runs
//! only while the application waits for a delivery; otherwise the poller prefetches with a
//! short poll, which SQS answers at once, and then waits for the application to ask.
//!
//! Level-triggered: set when the stream returns `Pending`, cleared when a delivery (or an
//! error) is queued for the application, and when it takes one.

use tokio::sync::watch;

pub(crate) struct Demand {
    waiting: watch::Sender<bool>,
}

impl Demand {
    pub fn new() -> Self {
        Demand {
            waiting: watch::Sender::new(false),
        }
    }

    /// The application found nothing to take and waits.
    pub fn wanted(&self) {
        self.waiting
            .send_if_modified(|waiting| !std::mem::replace(waiting, true));
    }

    /// Something is (about to be) ready for the application. Called before it is queued,
    /// so a `wanted` of the application's next, empty-handed poll is never overwritten.
    pub fn met(&self) {
        self.waiting
            .send_if_modified(|waiting| std::mem::replace(waiting, false));
    }

    /// Whether the application is waiting now.
    pub fn is_waiting(&self) -> bool {
        *self.waiting.borrow()
    }

    /// Returns once the application waits (at once if it already does).
    pub async fn until_waiting(&self) {
        let mut waiting = self.waiting.subscribe();
        // Err only once the sender is gone, and `self` holds it.
        let _ = waiting.wait_for(|w| *w).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_only_while_the_application_waits() {
        let demand = Demand::new();
        assert!(!demand.is_waiting());
        let early = tokio::time::timeout(Duration::from_millis(20), demand.until_waiting());
        assert!(early.await.is_err(), "nobody asked yet");
        demand.wanted();
        assert!(demand.is_waiting());
        demand.until_waiting().await;
        demand.met();
        assert!(!demand.is_waiting());
        // A waiter parked before the application asks is woken by the ask.
        let demand = std::sync::Arc::new(demand);
        let parked = tokio::spawn({
            let demand = demand.clone();
            async move { demand.until_waiting().await }
        });
        tokio::task::yield_now().await;
        demand.wanted();
        tokio::time::timeout(Duration::from_secs(5), parked)
            .await
            .expect("woken")
            .expect("joined");
    }
}
