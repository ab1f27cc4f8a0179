//! The durable bus on PostgreSQL: [`PostgresBus`] implements [`Publisher`] and
//! [`Subscriber`] with a table queue in the store's schema. Consumers claim rows with
//! `FOR UPDATE SKIP LOCKED`, so any number of processes can share one consumer group, and
//! wake on `LISTEN`/`NOTIFY` with a polling fallback. See the crate's DESIGN.md, "Bus".

mod consumer;
mod queue;
mod signals;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use runnel_core::bus::{validate_publish, DeliveryStream, Publisher, SubscribeOptions, Subscriber};
use runnel_core::message::MESSAGE_PAYLOAD_MAX_DEFAULT;
use runnel_core::{BusError, Clock, GroupName, Message, SystemClock, TopicName};
use sqlx::postgres::PgListener;

use crate::error_map::map_sqlx;
use crate::store::PostgresStore;
use consumer::Consumer;
use queue::{EncodedMessage, Lease, Settle, Settled, Statements};
use signals::BusSignals;

/// Default polling interval: how soon a consumer notices a message if its NOTIFY was lost
/// (the LISTEN connection dropped), and the longest it sleeps between looks.
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
/// bounds one publish statement.
pub const PUBLISH_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
/// Most rows one claim leases (also never more than the consumer's free in-flight slots).
pub const CLAIM_BATCH_MAX: usize = 64;
/// How often the retention sweep runs.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Most log rows one sweep transaction deletes (keeps the topic lock short).
pub const SWEEP_BATCH_MAX: usize = 5_000;
/// Pause after a failed claim before the consumer tries again.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(500);
/// Pause before the LISTEN connection is re-established after it failed.
const LISTEN_RETRY: Duration = Duration::from_millis(200);

/// How a [`PostgresBus`] behaves.
#[derive(Clone)]
pub struct BusOptions {
    /// Largest payload of one message, in bytes; larger ones are rejected with
    /// [`BusError::PayloadTooLarge`] (send them by reference: claim check).
    pub max_payload_bytes: usize,
    /// Largest total size of one publish call, in bytes.
    pub max_publish_bytes: usize,
    /// The longest an idle consumer sleeps before looking again without a notification.
    pub poll_interval: Duration,
    /// How long a published message stays in the log once no group needs it.
    /// `Duration::ZERO` deletes it at the next sweep after every group acknowledged it.
    pub retention: Duration,
    /// The time source for visibility timeouts, nack delays and retention. Processes that
    /// share a group should have synchronized clocks (NTP): a lease ends by the clock of
    /// the process that looks at it.
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

    /// Uses `clock` for every deadline.
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

/// The durable bus in a [`PostgresStore`]'s schema.
///
/// Cheap to clone; clones share one LISTEN connection. Buses in other processes on the
/// same schema share topics and groups: a group's messages are split between all its
/// consumers wherever they run.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use futures_util::StreamExt;
/// use runnel_core::bus::{Publisher, SubscribeOptions, Subscriber};
/// use runnel_core::{GroupName, Message, TopicName};
/// use runnel_postgres::bus::{BusOptions, PostgresBus};
///
/// let store = runnel_postgres::PostgresStore::connect("postgres://postgres@127.0.0.1/app").await?;
/// let bus = PostgresBus::new(store, BusOptions::default()).await?;
/// let topic = TopicName::new("orders")?;
/// let group = GroupName::new("billing")?;
/// let mut deliveries = bus.subscribe(&topic, &group, SubscribeOptions::default()).await?;
///
/// let placed = Message::json("OrderPlaced", &serde_json::json!({"order": 1})).with_key("Order-1");
/// bus.publish(&topic, vec![placed]).await?;
///
/// if let Some(delivery) = deliveries.next().await {
///     let delivery = delivery?;
///     delivery.ack().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresBus {
    inner: Arc<BusInner>,
}

pub(crate) struct BusInner {
    store: PostgresStore,
    options: BusOptions,
    sql: Statements,
    channel: String,
    signals: Arc<BusSignals>,
    sweeper_started: AtomicBool,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for BusInner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl fmt::Debug for PostgresBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBus")
            .field("schema", &self.inner.sql.schema())
            .field("options", &self.inner.options)
            .finish()
    }
}

impl PostgresBus {
    /// A bus in `store`'s schema (its tables are created with the store's migrations).
    /// Opens one LISTEN connection for wake-ups.
    pub async fn new(store: PostgresStore, options: BusOptions) -> Result<Self, BusError> {
        options.validate()?;
        let schema = store.schema().to_string();
        let channel = format!("runnel_{schema}_bus");
        let signals = Arc::new(BusSignals::default());
        let mut listener = PgListener::connect_with(store.pool())
            .await
            .map_err(map_sqlx)?;
        listener.listen(&channel).await.map_err(map_sqlx)?;
        let listener = tokio::spawn(listen(listener, Arc::clone(&signals)));
        Ok(PostgresBus {
            inner: Arc::new(BusInner {
                sql: Statements::new(&schema),
                store,
                options,
                channel,
                signals,
                sweeper_started: AtomicBool::new(false),
                listener,
            }),
        })
    }

    /// The store whose schema holds the bus.
    pub fn store(&self) -> &PostgresStore {
        &self.inner.store
    }

    /// The options.
    pub fn options(&self) -> &BusOptions {
        &self.inner.options
    }

    /// Removes a consumer group and every message it had still to consume. Consumers of
    /// the group still running get [`BusError::DeliveryLost`] when they settle. Returns
    /// whether the group existed.
    pub async fn delete_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> Result<bool, BusError> {
        let pool = self.inner.store.pool();
        Ok(self
            .inner
            .sql
            .delete_group(pool, topic.as_str(), group.as_str())
            .await?)
    }

    /// What `group` still has to consume on `topic` (the consumer lag), or `None` if the
    /// group does not exist.
    pub async fn group_backlog(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> Result<Option<GroupBacklog>, BusError> {
        let backlog = self
            .inner
            .sql
            .backlog(
                self.inner.store.pool(),
                topic.as_str(),
                group.as_str(),
                self.inner.now(),
            )
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

/// Follows NOTIFY on the bus channel (payload = topic name) and wakes that topic's
/// consumers. On a lost connection notifications sent meanwhile are lost, so it wakes
/// every consumer (they look again) — and consumers poll anyway.
async fn listen(mut listener: PgListener, signals: Arc<BusSignals>) {
    loop {
        match listener.recv().await {
            Ok(n) => signals.bump(n.payload()),
            Err(e) => {
                tracing::warn!(error = %e, "bus LISTEN connection lost; reconnecting");
                signals.bump_all();
                tokio::time::sleep(LISTEN_RETRY).await;
            }
        }
    }
}

impl BusInner {
    fn now(&self) -> DateTime<Utc> {
        self.options.clock.now()
    }

    /// Settles a lease and wakes this process's consumers of the topic if a row became
    /// claimable (other processes are notified by the database).
    async fn settle(
        &self,
        topic: &TopicName,
        lease: Lease,
        how: Settle,
    ) -> Result<Settled, BusError> {
        let settled = self
            .sql
            .settle(
                self.store.pool(),
                &lease,
                how,
                self.now(),
                &self.channel,
                topic.as_str(),
            )
            .await?;
        if settled.wake {
            self.signals.bump(topic.as_str());
        }
        Ok(settled)
    }

    async fn sweep(&self) -> Result<usize, BusError> {
        let cutoff = before(self.now(), self.options.retention);
        Ok(self
            .sql
            .sweep(self.store.pool(), cutoff, SWEEP_BATCH_MAX)
            .await?)
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
                    Err(e) => {
                        tracing::warn!(error = %e, "bus retention sweep failed; retrying later")
                    }
                }
            }
        });
    }
}

#[async_trait]
impl Publisher for PostgresBus {
    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        let encoded = self.encode(messages)?;
        if encoded.is_empty() {
            return Ok(());
        }
        self.inner.start_sweeper();
        self.inner
            .sql
            .publish(
                self.inner.store.pool(),
                topic.as_str(),
                &self.inner.channel,
                encoded,
                self.inner.now(),
            )
            .await?;
        // Committed: wake this process's consumers now rather than after the NOTIFY's
        // round trip (which still reaches every other process).
        self.inner.signals.bump(topic.as_str());
        Ok(())
    }
}

#[async_trait]
impl Subscriber for PostgresBus {
    async fn subscribe(
        &self,
        topic: &TopicName,
        group: &GroupName,
        options: SubscribeOptions,
    ) -> Result<DeliveryStream, BusError> {
        options.validate()?;
        self.inner.start_sweeper();
        // Watch before the group exists, so no publish after it is missed.
        let wake = self.inner.signals.watch(topic.as_str());
        let (topic_id, group_id) = self
            .inner
            .sql
            .subscribe(
                self.inner.store.pool(),
                topic.as_str(),
                group.as_str(),
                options.start,
                self.inner.now(),
            )
            .await?;
        Ok(Consumer::new(
            Arc::clone(&self.inner),
            topic.clone(),
            group.clone(),
            topic_id,
            group_id,
            &options,
            wake,
        )
        .into_stream())
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// `t + d`, saturating at the latest representable time.
pub(crate) fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(delta(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t - d`, saturating at the earliest representable time.
fn before(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_sub_signed(delta(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}
