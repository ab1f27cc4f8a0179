//! [`BusEngine`]: the bus over a [`BusBackend`] — publish and subscribe, wake-ups after
//! commits, settling, group administration and the retention sweeper.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use runnel_core::bus::{DeliveryStream, SubscribeOptions};
use runnel_core::chrono::{DateTime, Utc};
use runnel_core::{BusError, GroupName, Message, TopicName};

use crate::backend::{BusBackend, Lease, Settle, Settled};
use crate::consumer::Consumer;
use crate::envelope::{encode_publish, EncodedMessage};
use crate::time::before;
use crate::{BusOptions, GroupBacklog, SWEEP_INTERVAL};

/// The embedded bus over one backend. Cheap to clone; clones share the backend and its
/// retention sweeper. Consumers keep the engine alive until their stream is dropped.
pub struct BusEngine<B: BusBackend> {
    inner: Arc<Inner<B>>,
}

struct Inner<B> {
    backend: B,
    sweeper_started: AtomicBool,
}

impl<B: BusBackend> Clone for BusEngine<B> {
    fn clone(&self) -> Self {
        BusEngine {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B: BusBackend> BusEngine<B> {
    /// The engine over `backend`, once its options are checked.
    pub fn new(backend: B) -> Result<Self, BusError> {
        backend.options().validate()?;
        Ok(BusEngine {
            inner: Arc::new(Inner {
                backend,
                sweeper_started: AtomicBool::new(false),
            }),
        })
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.inner.backend
    }

    /// The options.
    pub fn options(&self) -> &BusOptions {
        self.inner.backend.options()
    }

    /// Now, by the options' clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.options().clock.now()
    }

    /// Checks a publish call against the options and encodes its messages (for backends
    /// that also publish inside their own transactions).
    pub fn encode(&self, messages: Vec<Message>) -> Result<Vec<EncodedMessage>, BusError> {
        encode_publish(self.options(), messages)
    }

    /// Publishes `messages` on `topic`, durably, then wakes this process's consumers of it.
    pub async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        let encoded = self.encode(messages)?;
        if encoded.is_empty() {
            return Ok(());
        }
        self.start_sweeper();
        self.backend().publish(topic, encoded).await?;
        // Committed: only now may consumers see it.
        self.wake_consumers(topic);
        Ok(())
    }

    /// Subscribes `group` to `topic`: a stream of deliveries, creating the group on first
    /// use.
    pub async fn subscribe(
        &self,
        topic: &TopicName,
        group: &GroupName,
        options: SubscribeOptions,
    ) -> Result<DeliveryStream, BusError> {
        options.validate()?;
        self.start_sweeper();
        // Watch before the group exists, so no publish after it is missed.
        let wake = self.backend().signals().watch(topic.as_str());
        let group_id = self
            .backend()
            .ensure_group(topic, group, options.start)
            .await?;
        Ok(Consumer::new(
            self.clone(),
            topic.clone(),
            group.clone(),
            group_id,
            options,
            wake,
        )
        .into_stream())
    }

    /// Wakes this process's consumers of `topic`.
    pub fn wake_consumers(&self, topic: &TopicName) {
        self.backend().signals().bump(topic.as_str());
    }

    /// Removes a consumer group and every message it had still to consume. Consumers of
    /// the group still running get [`BusError::DeliveryLost`] when they settle. Returns
    /// whether the group existed.
    pub async fn delete_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> Result<bool, BusError> {
        self.backend().delete_group(topic, group).await
    }

    /// What `group` still has to consume on `topic` (the consumer lag), or `None` if the
    /// group does not exist.
    pub async fn group_backlog(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> Result<Option<GroupBacklog>, BusError> {
        self.backend().backlog(topic, group, self.now()).await
    }

    /// Runs the retention sweep now: deletes log rows older than the retention that no
    /// group still needs. Returns how many were deleted.
    pub async fn sweep_retained(&self) -> Result<usize, BusError> {
        let cutoff = before(self.now(), self.options().retention);
        self.backend().sweep(cutoff).await
    }

    /// Settles a lease and wakes this process's consumers of the topic if a row became
    /// claimable.
    pub(crate) async fn settle(
        &self,
        topic: &TopicName,
        lease: &B::Lease,
        how: Settle,
    ) -> Result<Settled, BusError> {
        debug_assert!(lease.attempt() >= 1, "only claimed rows are settled");
        let settled = self.backend().settle(topic, lease, how).await?;
        debug_assert!(
            settled.held || !settled.wake,
            "a lost lease changes nothing"
        );
        if settled.wake {
            self.wake_consumers(topic);
        }
        Ok(settled)
    }

    /// Starts the retention sweeper on the current runtime, once. It stops when the last
    /// handle to this engine is gone, or when the backend is closed.
    fn start_sweeper(&self) {
        if self.inner.sweeper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Inner<B>> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            // The first sweep one interval from now: starting a bus does no work.
            let first = tokio::time::Instant::now() + SWEEP_INTERVAL;
            let mut tick = tokio::time::interval_at(first, SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let engine = BusEngine { inner };
                match engine.sweep_retained().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(deleted = n, "bus retention sweep"),
                    Err(BusError::Closed) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "bus retention sweep failed; retrying later")
                    }
                }
            }
        });
    }
}
