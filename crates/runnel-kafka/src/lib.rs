//! Runnel's transport over Kafka (any Kafka-protocol broker), with rdkafka (librdkafka,
//! bundled build).
//!
//! * A Runnel topic is a Kafka topic (created on first use with the configured
//!   partitions); a message's key is the record key, so a key always lands in one
//!   partition; keyless messages spread over partitions.
//! * Messages follow the CloudEvents Kafka binding: written in binary mode (`ce_`
//!   headers), so any Kafka client can read them; read in binary and structured mode.
//!   Records that are not CloudEvents are read through a mapped envelope
//!   (`?envelope=json-event|outbox-record|raw|mapped`, see `runnel_core::envelope`);
//!   without one they go to the dead-letter topic with the reason.
//! * Publishing uses the idempotent producer (`enable.idempotence`, `acks=all`).
//! * With `?prefix=p` every Kafka topic is `p.<topic>` and every group id
//!   `p.<group>:<topic>`, so applications or test runs sharing a cluster keep apart.
//! * A group is a Kafka consumer group (`<group>:<topic>`) with offsets committed only
//!   by Runnel: deliveries are handled in parallel across keys, one at a time per key,
//!   and only the contiguous handled prefix of each partition is committed. Nacks, delays
//!   and ack timeouts are local timers: a waiting key holds only itself, never its
//!   partition. On a rebalance the revoked partitions' prefix is committed (with metadata
//!   recording what was delivered above it) and the rest is left to the next owner, which
//!   reports those messages as redeliveries.
//! * A message delivered `max_deliveries` times goes to `<topic>.dlq`;
//!   [`KafkaBus`]'s [`DeadLetterDrain`](runnel_core::bus::DeadLetterDrain) moves those
//!   into a `DeadLetterStore`.
//!
//! Connect with a URL (format and parameters: [`KafkaOptions`]):
//!
//! ```no_run
//! # async fn demo() -> Result<(), runnel_core::BusError> {
//! use futures_util::StreamExt;
//! use runnel_core::bus::{Publisher, SubscribeOptions, Subscriber};
//! use runnel_core::{GroupName, Message, TopicName};
//!
//! let bus = runnel_kafka::connect("kafka://127.0.0.1:9092?partitions=8")?;
//! let topic = TopicName::new("orders")?;
//! let mut deliveries = bus
//!     .subscribe(&topic, &GroupName::new("billing")?, SubscribeOptions::default())
//!     .await?;
//! let placed = Message::json("OrderPlaced", &serde_json::json!({"order": 1})).with_key("Order-1");
//! bus.publish(&topic, vec![placed]).await?;
//! if let Some(delivery) = deliveries.next().await {
//!     let delivery = delivery?;
//!     println!("{} (attempt {})", delivery.message.event_type, delivery.attempt);
//!     delivery.ack().await?;
//! }
//! # Ok(()) }
//! ```

mod codec;
mod config;
mod dead_letter;
mod error;
mod publisher;
mod subscriber;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use runnel_core::bus::{validate_publish, DeliveryStream, Publisher, SubscribeOptions, Subscriber};
use runnel_core::{BusError, GroupName, Message, TopicName};

pub use config::{
    Credentials, KafkaOptions, HEARTBEAT_INTERVAL_DEFAULT, LINGER_DEFAULT, MAX_DELIVERIES_DEFAULT,
    PARTITIONS_DEFAULT, PARTITIONS_MAX, REPLICATION_FACTOR_DEFAULT, SESSION_TIMEOUT_DEFAULT,
};
pub use dead_letter::{DLQ_ATTEMPTS_HEADER, DLQ_GROUP_HEADER, DLQ_TOPIC_HEADER, DRAIN_IDLE};
pub use subscriber::driver::{BUFFERED_RECORDS_MAX, COMMIT_INTERVAL};
pub use subscriber::{dead_letter_topic, kafka_group_id, ASSIGNMENT_WAIT};

/// A Kafka bus: one idempotent producer shared by all publishes, one group consumer per
/// subscription. Cheap to share behind an `Arc`.
pub struct KafkaBus {
    options: KafkaOptions,
    producer: publisher::Producer,
}

impl fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBus")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl KafkaBus {
    /// A bus with `options`. Connections are made lazily (and re-made after outages).
    pub fn new(options: KafkaOptions) -> Result<KafkaBus, BusError> {
        let producer = publisher::Producer::new(&options)?;
        Ok(KafkaBus { options, producer })
    }

    /// The options the bus was built with.
    pub fn options(&self) -> &KafkaOptions {
        &self.options
    }

    /// Creates `topic` if it does not exist yet (publish and subscribe do this on first
    /// use too).
    pub async fn ensure_topic(&self, topic: &TopicName) -> Result<(), BusError> {
        self.producer
            .topics
            .ensure(&self.options.kafka_topic(topic))
            .await
    }
}

/// A bus from a `kafka://` URL (see [`KafkaOptions`]).
pub fn connect(url: &str) -> Result<Arc<KafkaBus>, BusError> {
    Ok(Arc::new(KafkaBus::new(KafkaOptions::from_url(url)?)?))
}

#[async_trait]
impl Publisher for KafkaBus {
    /// Fetches the cluster's broker list (metadata for no topic), within 5 seconds.
    async fn ping(&self) -> Result<(), BusError> {
        use rdkafka::producer::Producer as _;
        let producer = self.producer.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, std::time::Duration::from_secs(5))
                .map(|_| ())
                .map_err(|e| BusError::Unavailable(format!("Kafka did not answer: {e}")))
        })
        .await
        .map_err(|e| BusError::Unavailable(format!("the Kafka ping task failed: {e}")))?
    }

    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        validate_publish(&messages, self.options.max_payload_bytes)?;
        if messages.is_empty() {
            return Ok(());
        }
        self.producer
            .send_all(topic, &messages, &self.options.envelope)
            .await
    }
}

#[async_trait]
impl Subscriber for KafkaBus {
    async fn subscribe(
        &self,
        topic: &TopicName,
        group: &GroupName,
        options: SubscribeOptions,
    ) -> Result<DeliveryStream, BusError> {
        subscriber::subscribe(&self.options, &self.producer, topic, group, options).await
    }
}
