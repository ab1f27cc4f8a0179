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
