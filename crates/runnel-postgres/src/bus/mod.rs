//! The durable bus on PostgreSQL: [`PostgresBus`] implements [`Publisher`] and
//! [`Subscriber`] with a table queue in the store's schema. Consumers claim rows with
//! `FOR UPDATE SKIP LOCKED`, so any number of processes can share one consumer group, and
//! wake on `LISTEN`/`NOTIFY` with a polling fallback. The consumer loop, wake-ups, options
//! and settling are runnel-bus-engine's; this module holds the SQL (`queue.rs`), the
//! backend that runs it (`backend.rs`) and the `LISTEN` task. See the crate's DESIGN.md,
//! "Bus".

mod backend;
mod batch;
mod notifier;
mod queue;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use runnel_bus_engine::{BusEngine, BusSignals};
use runnel_core::bus::{DeliveryStream, Publisher, SubscribeOptions, Subscriber};
use runnel_core::{BusError, GroupName, Message, TopicName};
use sqlx::postgres::PgListener;

use crate::error_map::map_sqlx;
use crate::store::PostgresStore;
use backend::PostgresBackend;

pub use runnel_bus_engine::{
    BusOptions, GroupBacklog, CLAIM_BATCH_MAX, ERROR_BACKOFF, PAYLOAD_BYTES_LIMIT,
    POLL_INTERVAL_DEFAULT, POLL_INTERVAL_MAX, POLL_INTERVAL_MIN, PUBLISH_BYTES_MAX_DEFAULT,
    RETENTION_DEFAULT, RETENTION_MAX, SWEEP_BATCH_MAX, SWEEP_INTERVAL,
};

/// Pause before the LISTEN connection is re-established after it failed.
const LISTEN_RETRY: Duration = Duration::from_millis(200);

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
    engine: BusEngine<PostgresBackend>,
}

impl fmt::Debug for PostgresBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBus")
            .field("schema", &self.engine.backend().schema())
            .field("options", self.options())
            .finish()
    }
}

impl PostgresBus {
    /// A bus in `store`'s schema (its tables are created with the store's migrations).
    /// Opens one LISTEN connection for wake-ups.
    pub async fn new(store: PostgresStore, options: BusOptions) -> Result<Self, BusError> {
        // Refuse bad options before opening a connection (the engine checks them again).
        options.validate()?;
        let channel = format!("runnel_{}_bus", store.schema());
        let signals = Arc::new(BusSignals::default());
        let mut listener = PgListener::connect_with(store.pool())
            .await
            .map_err(map_sqlx)?;
        listener.listen(&channel).await.map_err(map_sqlx)?;
        let listener = tokio::spawn(listen(listener, Arc::clone(&signals)));
        let backend = PostgresBackend::new(store, options, channel, signals, listener);
        Ok(PostgresBus {
            engine: BusEngine::new(backend)?,
        })
    }

    /// The store whose schema holds the bus.
    pub fn store(&self) -> &PostgresStore {
        self.engine.backend().store()
    }

    /// The options.
    pub fn options(&self) -> &BusOptions {
        self.engine.options()
    }

    /// Removes a consumer group and every message it had still to consume. Consumers of
    /// the group still running get [`BusError::DeliveryLost`] when they settle. Returns
    /// whether the group existed.
    pub async fn delete_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> Result<bool, BusError> {
        self.engine.delete_group(topic, group).await
    }

    /// What `group` still has to consume on `topic` (the consumer lag), or `None` if the
    /// group does not exist.
    pub async fn group_backlog(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> Result<Option<GroupBacklog>, BusError> {
        self.engine.group_backlog(topic, group).await
    }

    /// Runs the retention sweep now (it also runs every [`SWEEP_INTERVAL`] while the bus
    /// is used): deletes log rows older than the retention that no group still needs.
    /// Returns how many were deleted.
    pub async fn sweep_retained(&self) -> Result<usize, BusError> {
        self.engine.sweep_retained().await
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

#[async_trait]
impl Publisher for PostgresBus {
    /// Publishes in one transaction (shared with this process's concurrent publishes to
    /// the topic) and returns after its commit; the engine then wakes this process's
    /// consumers, and a `NOTIFY` right after the commit wakes the other processes'.
    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        self.engine.publish(topic, messages).await
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
        self.engine.subscribe(topic, group, options).await
    }
}
