//! Consumer lag: how far a group is behind its topic, for transports that can tell (the
//! embedded bus knows its queue depth, Kafka its offsets, SQS its approximate message
//! count; NATS and RabbitMQ report pending counts per consumer/queue).

use async_trait::async_trait;
use runnel_core::message::{BusError, GroupName, TopicName};

/// Default interval between lag probes.
pub const LAG_PROBE_INTERVAL_DEFAULT: std::time::Duration = std::time::Duration::from_secs(15);

/// Reports how many messages of `topic` the group has not been delivered or has not
/// acknowledged yet. The consumer polls it (see
/// [`ConsumerBuilder::lag_probe`](super::ConsumerBuilder::lag_probe)) and publishes the
/// `runnel_consumer_lag_messages` gauge.
///
/// ```
/// use runnel::async_trait;
/// use runnel::consumer::LagProbe;
/// use runnel::core::message::{BusError, GroupName, TopicName};
///
/// struct FixedLag(u64);
///
/// #[async_trait]
/// impl LagProbe for FixedLag {
///     async fn lag(&self, _topic: &TopicName, _group: &GroupName) -> Result<Option<u64>, BusError> {
///         Ok(Some(self.0))
///     }
/// }
/// ```
#[async_trait]
pub trait LagProbe: Send + Sync + 'static {
    /// Messages behind, or `None` if the transport cannot tell right now.
    async fn lag(&self, topic: &TopicName, group: &GroupName) -> Result<Option<u64>, BusError>;
}

/// The embedded SQLite bus knows each group's backlog exactly: lag = messages the group
/// has not acknowledged (waiting, delayed or in flight).
#[cfg(feature = "sqlite")]
#[async_trait]
impl LagProbe for runnel_sqlite::SqliteBus {
    async fn lag(&self, topic: &TopicName, group: &GroupName) -> Result<Option<u64>, BusError> {
        Ok(self.group_backlog(topic, group).await?.map(|b| b.pending))
    }
}

/// The PostgreSQL bus, likewise.
#[cfg(feature = "postgres")]
#[async_trait]
impl LagProbe for runnel_postgres::PostgresBus {
    async fn lag(&self, topic: &TopicName, group: &GroupName) -> Result<Option<u64>, BusError> {
        Ok(self.group_backlog(topic, group).await?.map(|b| b.pending))
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use runnel_core::bus::{Publisher, SubscribeOptions, Subscriber};
    use runnel_core::message::Message;
    use runnel_sqlite::bus::BusOptions;
    use runnel_sqlite::{SqliteBus, SqliteStore};

    #[tokio::test]
    async fn embedded_bus_lag_is_the_groups_unacknowledged_backlog() {
        let store = SqliteStore::open_temporary().unwrap();
        let bus = SqliteBus::new(store, BusOptions::default()).unwrap();
        let (topic, group) = (
            TopicName::new("lagged").unwrap(),
            GroupName::new("g").unwrap(),
        );
        assert_eq!(
            bus.lag(&topic, &group).await.unwrap(),
            None,
            "no such group yet"
        );
        // Subscribing creates the group; dropping the stream leaves it in place.
        drop(
            bus.subscribe(&topic, &group, SubscribeOptions::default())
                .await
                .unwrap(),
        );
        let messages = (0..3)
            .map(|i| Message::json("Lagged", &serde_json::json!({ "i": i })))
            .collect();
        bus.publish(&topic, messages).await.unwrap();
        assert_eq!(bus.lag(&topic, &group).await.unwrap(), Some(3));
    }
}
