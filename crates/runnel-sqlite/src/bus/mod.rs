//! The embedded durable bus: [`SqliteBus`] implements [`Publisher`] and [`Subscriber`] on
//! the store's SQLite file. Topics and consumer groups are rows; every message is logged
//! once and queued once per group; a consumer leases rows through the store's group-commit
//! writer, so a publish is acknowledged only after its fsynced commit and nothing
//! acknowledged is lost in a crash. See the crate's DESIGN.md, "Bus", for the tables, the
//! claim query and why per-key order holds.

mod consumer;
mod queue;
mod signals;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use runnel_core::bus::{validate_publish, DeliveryStream, Publisher, SubscribeOptions, Subscriber};
use runnel_core::message::MESSAGE_PAYLOAD_MAX_DEFAULT;
use runnel_core::{BusError, Clock, GroupName, Message, SystemClock, TopicName};

use crate::store::{keep_all, SqliteStore, UnitOfWork};
use consumer::Consumer;
use queue::{EncodedMessage, Lease, Settle, Settled};
pub(crate) use signals::BusSignals;

/// Default polling interval: how soon a consumer notices messages written by another
/// process on the same file (same-process publishes wake consumers at once).
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
/// bounds what one queued publish holds in the writer's queue.
pub const PUBLISH_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
/// Most rows one claim leases (also never more than the consumer's free in-flight slots).
pub const CLAIM_BATCH_MAX: usize = 64;
/// How often the retention sweep runs.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Most log rows one sweep transaction deletes (keeps each writer job short).
pub const SWEEP_BATCH_MAX: usize = 5_000;
/// Pause after a failed claim before the consumer tries again.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(500);

/// How a [`SqliteBus`] behaves.
#[derive(Clone)]
pub struct BusOptions {
    /// Largest payload of one message, in bytes; larger ones are rejected with
    /// [`BusError::PayloadTooLarge`] (send them by reference: claim check).
    pub max_payload_bytes: usize,
    /// Largest total size of one publish call, in bytes.
    pub max_publish_bytes: usize,
    /// How often an idle consumer looks for messages it was not woken for (those written
    /// by other processes on the same file).
    pub poll_interval: Duration,
    /// How long a published message stays in the log once no group needs it.
    /// `Duration::ZERO` deletes it at the next sweep after every group acknowledged it
    /// (a message published while its topic has no group is then not kept either).
    pub retention: Duration,
    /// The time source for visibility timeouts, nack delays and retention.
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

/// What a consumer group still has to consume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupBacklog {
    /// Messages not yet acknowledged by the group (in flight, delayed or waiting).
    pub pending: u64,
    /// Of those, the ones leased to a consumer right now.
    pub in_flight: u64,
}

/// The embedded durable bus on a [`SqliteStore`]'s file.
///
/// Cheap to clone; clones share the store's writer. Several buses on clones of one store
/// share wake-ups; buses in other processes on the same file are noticed within
/// [`BusOptions::poll_interval`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use futures_util::StreamExt;
/// use runnel_core::bus::{Publisher, SubscribeOptions, Subscriber};
/// use runnel_core::{GroupName, Message, TopicName};
/// use runnel_sqlite::bus::{BusOptions, SqliteBus};
///
/// let store = runnel_sqlite::SqliteStore::open("app.db")?;
/// let bus = SqliteBus::new(store, BusOptions::default())?;
/// let topic = TopicName::new("orders")?;
/// let group = GroupName::new("billing")?;
/// let mut deliveries = bus.subscribe(&topic, &group, SubscribeOptions::default()).await?;
///
/// let placed = Message::json("OrderPlaced", &serde_json::json!({"order": 1})).with_key("Order-1");
/// bus.publish(&topic, vec![placed]).await?;
///
/// if let Some(delivery) = deliveries.next().await {
///     let delivery = delivery?;
///     assert_eq!(delivery.message.event_type, "OrderPlaced");
///     delivery.ack().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteBus {
    inner: Arc<BusInner>,
}

pub(crate) struct BusInner {
    store: SqliteStore,
    options: BusOptions,
    sweeper_started: AtomicBool,
}

impl fmt::Debug for SqliteBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteBus")
            .field("path", &self.inner.store.path())
            .field("options", &self.inner.options)
            .finish()
    }
}

impl SqliteBus {
    /// A bus on `store`'s file. The tables are created with the store's schema.
    pub fn new(store: SqliteStore, options: BusOptions) -> Result<Self, BusError> {
        options.validate()?;
        Ok(SqliteBus {
            inner: Arc::new(BusInner {
                store,
                options,
                sweeper_started: AtomicBool::new(false),
            }),
        })
    }

    /// The store this bus writes to.
    pub fn store(&self) -> &SqliteStore {
        &self.inner.store
    }

    /// The options.
    pub fn options(&self) -> &BusOptions {
        &self.inner.options
    }

    /// Publishes inside a unit of work: the messages commit together with everything else
    /// in it, or not at all — a transactional outbox with no relay. Consumers in this
    /// process see them within the polling interval, or at once after
    /// [`wake_consumers`](Self::wake_consumers) is called when the unit has returned.
    ///
    /// ```no_run
    /// # async fn demo(bus: runnel_sqlite::bus::SqliteBus) -> Result<(), runnel_core::BusError> {
    /// use runnel_core::{Message, TopicName};
    /// let topic = TopicName::new("orders")?;
    /// let inner_bus = bus.clone();
    /// let inner_topic = topic.clone();
    /// bus.store()
    ///     .unit_of_work(move |uow| -> Result<(), runnel_core::BusError> {
    ///         // ... the application's own rows via uow.connection() ...
    ///         let msg = Message::json("OrderPlaced", &serde_json::json!({"order": 1}));
    ///         inner_bus.publish_in(uow, &inner_topic, vec![msg])
    ///     })
    ///     .await?;
    /// bus.wake_consumers(&topic);
    /// # Ok(()) }
    /// ```
    pub fn publish_in(
        &self,
        uow: &UnitOfWork<'_>,
        topic: &TopicName,
        messages: Vec<Message>,
    ) -> Result<(), BusError> {
        let encoded = self.encode(messages)?;
        if encoded.is_empty() {
            return Ok(());
        }
        queue::publish_in_tx(
            uow.connection(),
            topic.as_str(),
            &encoded,
            self.inner.now_micros(),
        )
        .map_err(BusError::from)
    }

    /// Wakes this process's consumers of `topic` (after a unit of work that published).
    pub fn wake_consumers(&self, topic: &TopicName) {
        self.inner.store.bus_signals().bump(topic.as_str());
    }

    /// Removes a consumer group and every message it had still to consume. Consumers of
    /// the group still running get [`BusError::DeliveryLost`] when they settle. Returns
    /// whether the group existed.
    pub async fn delete_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> Result<bool, BusError> {
        let (t, g) = (topic.to_string(), group.to_string());
        Ok(self
            .inner
            .store
            .submit(0, keep_all, move |conn, _| {
                queue::delete_group(conn, &t, &g)
            })
            .await?)
    }

    /// What `group` still has to consume on `topic` (the consumer lag), or `None` if the
    /// group does not exist.
    pub async fn group_backlog(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> Result<Option<GroupBacklog>, BusError> {
        let (t, g) = (topic.to_string(), group.to_string());
        let now = self.inner.now_micros();
        let backlog = self
            .inner
            .store
            .read(move |conn| queue::group_backlog(conn, &t, &g, now))
            .await?;
        Ok(backlog.map(|(pending, in_flight)| GroupBacklog { pending, in_flight }))
    }

    /// Runs the retention sweep now (it also runs every [`SWEEP_INTERVAL`] while the bus
    /// is used): deletes log rows older than the retention that no group still needs.
    /// Returns how many were deleted.
    pub async fn sweep_retained(&self) -> Result<usize, BusError> {
        self.inner.sweep().await
    }

    fn encode(&self, messages: Vec<Message>) -> Result<Vec<EncodedMessage>, BusError> {
        validate_publish(&messages, self.inner.options.max_payload_bytes)?;
        let encoded = messages
            .into_iter()
            .map(EncodedMessage::encode)
            .collect::<Result<Vec<_>, _>>()?;
        let total_bytes: usize = encoded
            .iter()
            .map(|m| m.payload.len() + m.envelope.len())
            .sum();
        if total_bytes > self.inner.options.max_publish_bytes {
            return Err(BusError::InvalidArgument(format!(
                "the publish carries {total_bytes} bytes, over the {}-byte limit per call; split it",
                self.inner.options.max_publish_bytes
            )));
        }
        Ok(encoded)
    }
}

impl BusInner {
    fn now_micros(&self) -> i64 {
        self.options.clock.now().timestamp_micros()
    }

    /// Settles a lease through the writer and wakes the topic's consumers if a row became
    /// claimable.
    async fn settle(
        self: &Arc<Self>,
        topic: &TopicName,
        lease: Lease,
        how: Settle,
    ) -> Result<Settled, BusError> {
        let bus = Arc::clone(self);
        let settled = self
            .store
            .submit(0, keep_all, move |conn, _| {
                queue::settle(conn, &lease, how, bus.now_micros())
            })
            .await?;
        if settled.wake {
            self.store.bus_signals().bump(topic.as_str());
        }
        Ok(settled)
    }

    async fn sweep(&self) -> Result<usize, BusError> {
        let cutoff = self
            .now_micros()
            .saturating_sub(duration_micros(self.options.retention));
        let mut total = 0;
        loop {
            let deleted = self
                .store
                .submit(0, keep_all, move |conn, _| {
                    queue::sweep(conn, cutoff, SWEEP_BATCH_MAX)
                })
                .await?;
            total += deleted;
            if deleted < SWEEP_BATCH_MAX {
                return Ok(total);
            }
        }
    }

    /// Starts the retention sweeper on the current runtime, once. It stops when the last
    /// handle to this bus is gone.
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<BusInner> = Arc::downgrade(self);
        tokio::spawn(async move {
            // The first sweep one interval from now: starting a bus does no work.
            let first = tokio::time::Instant::now() + SWEEP_INTERVAL;
            let mut tick = tokio::time::interval_at(first, SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(bus) = weak.upgrade() else {
                    return;
                };
                match bus.sweep().await {
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

#[async_trait]
impl Publisher for SqliteBus {
    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        let encoded = self.encode(messages)?;
        if encoded.is_empty() {
            return Ok(());
        }
        self.inner.start_sweeper();
        let count = encoded.len();
        let bus = Arc::clone(&self.inner);
        let name = topic.to_string();
        self.inner
            .store
            .submit(count, keep_all, move |conn, _| {
                queue::publish_in_tx(conn, &name, &encoded, bus.now_micros())
            })
            .await?;
        // Committed (and fsynced): only now may consumers see it.
        self.inner.store.bus_signals().bump(topic.as_str());
        Ok(())
    }
}

#[async_trait]
impl Subscriber for SqliteBus {
    async fn subscribe(
        &self,
        topic: &TopicName,
        group: &GroupName,
        options: SubscribeOptions,
    ) -> Result<DeliveryStream, BusError> {
        options.validate()?;
        self.inner.start_sweeper();
        // Watch before the group exists, so no publish after it is missed.
        let wake = self.inner.store.bus_signals().watch(topic.as_str());
        let bus = Arc::clone(&self.inner);
        let (t, g, start) = (topic.to_string(), group.to_string(), options.start);
        let group_id = self
            .inner
            .store
            .submit(0, keep_all, move |conn, _| {
                queue::ensure_group(conn, &t, &g, start, bus.now_micros())
            })
            .await?;
        Ok(Consumer::new(
            Arc::clone(&self.inner),
            topic.clone(),
            group.clone(),
            group_id,
            &options,
            wake,
        )
        .into_stream())
    }
}

/// `d` in microseconds, saturating.
pub(crate) fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
