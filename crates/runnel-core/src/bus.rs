//! The transport traits: [`Publisher`] and [`Subscriber`]. Every transport — the embedded
//! bus on SQLite or PostgreSQL, NATS JetStream, RabbitMQ, Kafka, SQS/SNS — implements them
//! and passes the transport conformance suite in `runnel-testkit`.
//!
//! Semantics, whatever the broker:
//! * every consumer group of a topic receives every message published after the group was
//!   created (or, for [`StartPosition::Earliest`], every message still retained);
//! * within a group, each delivery goes to one consumer; a delivery that is neither acked
//!   nor nacked within the ack timeout comes back (at least once);
//! * messages with the same key are delivered to a group in publish order, and a key's next
//!   message is not delivered while an earlier one is unacknowledged;
//! * a nack with a delay makes the message come back after the delay, with its attempt
//!   number increased.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures_core::Stream;

use crate::dead_letter::DeadLetterStore;
use crate::message::{BusError, GroupName, Message, TopicName};

/// Default deliveries a consumer may hold unacknowledged.
pub const MAX_IN_FLIGHT_DEFAULT: usize = 64;
/// Upper bound for `max_in_flight`.
pub const MAX_IN_FLIGHT_MAX: usize = 10_000;
/// Default time a delivery may stay unacknowledged before it is redelivered.
pub const ACK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Longest delay a nack may ask for.
pub const NACK_DELAY_MAX: Duration = Duration::from_secs(12 * 60 * 60);

/// Publishes messages to topics.
///
/// ```
/// # async fn demo(bus: std::sync::Arc<dyn runnel_core::bus::Publisher>) -> Result<(), runnel_core::message::BusError> {
/// use runnel_core::message::{Message, TopicName};
/// let topic = TopicName::new("orders")?;
/// let msg = Message::json("OrderPlaced", &serde_json::json!({"order": 1})).with_key("Order-1");
/// bus.publish(&topic, vec![msg]).await?;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `messages` (in order) to `topic`. Returns once the bus has durably accepted
    /// every one of them; on error, some may have been accepted — republishing the same
    /// message ids is safe for idempotent consumers.
    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError>;

    /// Checks that the broker answers (one round trip where the transport has one), for
    /// readiness probes. The default, for buses that live in a store (whose own check
    /// covers them) and wrappers without a connection of their own, is `Ok`.
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}

/// Where a group created by its first subscription starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartPosition {
    /// Only messages published after the group exists.
    #[default]
    Latest,
    /// Every message the transport still retains.
    Earliest,
}

/// How a consumer subscribes.
#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    /// Deliveries this consumer may hold unacknowledged (the prefetch / back-pressure bound).
    pub max_in_flight: usize,
    /// An unacknowledged delivery comes back after this long (visibility timeout), counted
    /// from when the application takes it from the stream: messages a transport fetched
    /// ahead keep their lease while they wait for an application that fell behind.
    pub ack_timeout: Duration,
    /// Where a new group starts.
    pub start: StartPosition,
    /// How this subscription reads messages on the wire; `None` reads them as the bus was
    /// configured (its URL's `envelope` parameter, CloudEvents by default). Broker
    /// transports honour it; the embedded buses carry [`Message`]s as they are and ignore it.
    pub envelope: Option<crate::envelope::Envelope>,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            max_in_flight: MAX_IN_FLIGHT_DEFAULT,
            ack_timeout: ACK_TIMEOUT_DEFAULT,
            start: StartPosition::Latest,
            envelope: None,
        }
    }
}

impl SubscribeOptions {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), BusError> {
        if self.max_in_flight == 0 || self.max_in_flight > MAX_IN_FLIGHT_MAX {
            return Err(BusError::InvalidArgument(format!(
                "max_in_flight must be 1..={MAX_IN_FLIGHT_MAX}"
            )));
        }
        if self.ack_timeout < Duration::from_millis(100) {
            return Err(BusError::InvalidArgument(
                "ack_timeout must be at least 100 ms".into(),
            ));
        }
        Ok(())
    }
}

/// A stream of deliveries for one consumer. Dropping it stops consuming; deliveries not
/// yet acknowledged come back after their ack timeout.
pub type DeliveryStream = Pin<Box<dyn Stream<Item = Result<Delivery, BusError>> + Send>>;

/// Subscribes consumer groups to topics.
#[async_trait]
pub trait Subscriber: Send + Sync + 'static {
    /// Joins `group` on `topic` (creating the group if needed) and returns this consumer's
    /// deliveries.
    async fn subscribe(
        &self,
        topic: &TopicName,
        group: &GroupName,
        options: SubscribeOptions,
    ) -> Result<DeliveryStream, BusError>;
}

/// Moves the messages a broker dead-lettered by itself (after its own delivery limit, the
/// backstop behind the router's dead-letter layer) into a [`DeadLetterStore`], where they
/// can be listed, inspected and replayed like every other dead letter. Every broker
/// transport implements it; the embedded buses need not, because the router dead-letters
/// straight into the store.
///
/// A message is removed from the broker only after the store accepted it: a crash in
/// between stores it twice, never loses it.
///
/// ```
/// # async fn demo(drain: &dyn runnel_core::bus::DeadLetterDrain, store: &dyn runnel_core::dead_letter::DeadLetterStore) -> Result<(), runnel_core::message::BusError> {
/// use runnel_core::message::{GroupName, TopicName};
/// let moved = drain
///     .drain_dead_letters(&TopicName::new("orders")?, &GroupName::new("billing")?, store, 100)
///     .await?;
/// println!("{moved} dead letters moved into the store");
/// # Ok(()) }
/// ```
#[async_trait]
pub trait DeadLetterDrain: Send + Sync + 'static {
    /// Moves up to `max` of the messages the broker dead-lettered for `group` on `topic`
    /// into `store`; returns how many were moved (0 when there are none).
    async fn drain_dead_letters(
        &self,
        topic: &TopicName,
        group: &GroupName,
        store: &dyn DeadLetterStore,
        max: usize,
    ) -> Result<usize, BusError>;
}

/// Settles one delivery with the transport.
#[async_trait]
pub trait Acknowledger: Send + Sync + 'static {
    /// The message is done: it will not be delivered to this group again.
    async fn ack(&self) -> Result<(), BusError>;
    /// The message failed: deliver it again after `delay` (at once for `None`).
    async fn nack(&self, delay: Option<Duration>) -> Result<(), BusError>;
    /// Keeps the delivery from timing out for `by` more (a long-running handler).
    async fn extend(&self, by: Duration) -> Result<(), BusError>;
}

/// One delivery of a message to a consumer.
pub struct Delivery {
    pub message: Message,
    pub topic: TopicName,
    pub group: GroupName,
    /// 1 for the first delivery, 2 for the first redelivery, ...
    pub attempt: u32,
    acknowledger: Box<dyn Acknowledger>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("attempt", &self.attempt)
            .field("message", &self.message)
            .finish()
    }
}

impl Delivery {
    /// Built by transports.
    pub fn new(
        message: Message,
        topic: TopicName,
        group: GroupName,
        attempt: u32,
        acknowledger: Box<dyn Acknowledger>,
    ) -> Self {
        debug_assert!(attempt >= 1);
        Delivery {
            message,
            topic,
            group,
            attempt,
            acknowledger,
        }
    }

    /// Acknowledges: the message is done for this group.
    pub async fn ack(self) -> Result<(), BusError> {
        self.acknowledger.ack().await
    }

    /// Negative acknowledgement: redeliver after `delay`.
    pub async fn nack(self, delay: Option<Duration>) -> Result<(), BusError> {
        check_nack_delay(delay)?;
        self.acknowledger.nack(delay).await
    }

    /// Extends the ack deadline by `by`.
    pub async fn extend(&self, by: Duration) -> Result<(), BusError> {
        self.acknowledger.extend(by).await
    }

    /// Splits into the message and a handle that settles it later.
    pub fn into_parts(self) -> (Message, DeliveryHandle) {
        (
            self.message,
            DeliveryHandle {
                topic: self.topic,
                group: self.group,
                attempt: self.attempt,
                acknowledger: self.acknowledger,
            },
        )
    }
}

/// The settling half of a [`Delivery`].
pub struct DeliveryHandle {
    pub topic: TopicName,
    pub group: GroupName,
    pub attempt: u32,
    acknowledger: Box<dyn Acknowledger>,
}

impl DeliveryHandle {
    pub async fn ack(self) -> Result<(), BusError> {
        self.acknowledger.ack().await
    }
    pub async fn nack(self, delay: Option<Duration>) -> Result<(), BusError> {
        check_nack_delay(delay)?;
        self.acknowledger.nack(delay).await
    }
    pub async fn extend(&self, by: Duration) -> Result<(), BusError> {
        self.acknowledger.extend(by).await
    }
}

/// A nack delay over [`NACK_DELAY_MAX`] is an invalid argument (checked on both the
/// [`Delivery`] and the [`DeliveryHandle`] path, before the transport is asked).
fn check_nack_delay(delay: Option<Duration>) -> Result<(), BusError> {
    match delay {
        Some(d) if d > NACK_DELAY_MAX => Err(BusError::InvalidArgument(format!(
            "nack delay {d:?} is over the {NACK_DELAY_MAX:?} maximum"
        ))),
        _ => Ok(()),
    }
}

/// Validates a publish call: topic already typed; batch size and each message.
pub fn validate_publish(messages: &[Message], max_payload_bytes: usize) -> Result<(), BusError> {
    if messages.len() > crate::message::PUBLISH_BATCH_MAX {
        return Err(BusError::TooManyMessages {
            count: messages.len(),
            limit: crate::message::PUBLISH_BATCH_MAX,
        });
    }
    for m in messages {
        m.validate(max_payload_bytes)?;
    }
    Ok(())
}
