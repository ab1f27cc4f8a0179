//! The embedded durable bus: [`SqliteBus`] implements [`Publisher`] and [`Subscriber`] on
//! the store's SQLite file. Topics and consumer groups are rows; every message is logged
//! once and queued once per group; a consumer leases rows through the store's group-commit
//! writer, so a publish is acknowledged only after its fsynced commit and nothing
//! acknowledged is lost in a crash. The consumer loop, wake-ups, options and settling are
//! runnel-bus-engine's; this module holds the SQL (`queue.rs`) and the backend that runs
//! it (`backend.rs`). See the crate's DESIGN.md, "Bus", for the tables, the claim query
//! and why per-key order holds.

mod backend;
mod queue;

use std::fmt;

use async_trait::async_trait;
use runnel_bus_engine::BusEngine;
use runnel_core::bus::{DeliveryStream, Publisher, SubscribeOptions, Subscriber};
use runnel_core::{BusError, GroupName, Message, TopicName};

use crate::store::{SqliteStore, UnitOfWork};
use backend::{micros, SqliteBackend};

pub use runnel_bus_engine::{
    BusOptions, GroupBacklog, CLAIM_BATCH_MAX, ERROR_BACKOFF, PAYLOAD_BYTES_LIMIT,
    POLL_INTERVAL_DEFAULT, POLL_INTERVAL_MAX, POLL_INTERVAL_MIN, PUBLISH_BYTES_MAX_DEFAULT,
    RETENTION_DEFAULT, RETENTION_MAX, SWEEP_BATCH_MAX, SWEEP_INTERVAL,
};

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
    engine: BusEngine<SqliteBackend>,
}

impl fmt::Debug for SqliteBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteBus")
            .field("path", &self.store().path())
            .field("options", self.options())
            .finish()
    }
}

impl SqliteBus {
    /// A bus on `store`'s file. The tables are created with the store's schema.
    pub fn new(store: SqliteStore, options: BusOptions) -> Result<Self, BusError> {
        Ok(SqliteBus {
            engine: BusEngine::new(SqliteBackend::new(store, options))?,
        })
    }

    /// The store this bus writes to.
    pub fn store(&self) -> &SqliteStore {
        self.engine.backend().store()
    }

    /// The options.
    pub fn options(&self) -> &BusOptions {
        self.engine.options()
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
        let encoded = self.engine.encode(messages)?;
        if encoded.is_empty() {
            return Ok(());
        }
        queue::publish_in_tx(
            uow.connection(),
            topic.as_str(),
            &encoded,
            micros(self.engine.now()),
        )
        .map_err(BusError::from)
    }

    /// Wakes this process's consumers of `topic` (after a unit of work that published).
    pub fn wake_consumers(&self, topic: &TopicName) {
        self.engine.wake_consumers(topic);
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

#[async_trait]
impl Publisher for SqliteBus {
    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        self.engine.publish(topic, messages).await
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
        self.engine.subscribe(topic, group, options).await
    }
}
