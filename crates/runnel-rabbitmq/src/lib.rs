//! Runnel's RabbitMQ transport (AMQP 0-9-1 through [lapin]): the [`Publisher`] and
//! [`Subscriber`] of `runnel_core::bus` on RabbitMQ's native objects.
//!
//! * a topic is a durable **topic exchange**; messages are **persistent** and every
//!   publish awaits its **publisher confirms**;
//! * a consumer group is a durable **quorum queue** bound to it, with
//!   **single active consumer**, `x-delivery-limit` and a **dead-letter exchange**;
//! * consumers use manual acks and a prefetch derived from `max_in_flight`; per-key order,
//!   nack delays and ack timeouts are kept by the client (see `DESIGN.md` in the crate);
//! * messages follow the CloudEvents AMQP binding: written in binary mode, so any AMQP
//!   client can read them (`cloudEvents:`-prefixed headers, the data as the body); read in
//!   binary mode (`cloudEvents:` or `cloudEvents_`) and structured mode
//!   (`application/cloudevents+json`); messages that are not CloudEvents are read and
//!   written through a mapped envelope (`?envelope=json-event|outbox-record|raw|mapped`,
//!   `runnel_core::envelope`), and without one are dead-lettered with the reason;
//! * connections are reopened with back-off after they are lost: publishers resend what
//!   was not confirmed, consumers resubscribe.
//!
//! # Configuration
//!
//! `amqp://user:password@host:port/vhost?knob=value` (`amqps://` for TLS); the knobs are
//! listed on [`RabbitOptions`]. Credentials stay in the URL and are never logged.
//!
//! ```no_run
//! # async fn demo() -> Result<(), runnel_core::BusError> {
//! use runnel_core::bus::{Publisher, Subscriber, SubscribeOptions};
//! use runnel_core::{GroupName, Message, TopicName};
//! use futures_util::StreamExt;
//!
//! let bus = runnel_rabbitmq::connect("amqp://guest:guest@127.0.0.1:5672/%2f?max_deliveries=10").await?;
//! let topic = TopicName::new("orders")?;
//! let mut deliveries = bus
//!     .subscribe(&topic, &GroupName::new("billing")?, SubscribeOptions::default())
//!     .await?;
//! bus.publish(&topic, vec![Message::json("OrderPlaced", &serde_json::json!({"id": 1})).with_key("Order-1")])
//!     .await?;
//! if let Some(delivery) = deliveries.next().await {
//!     delivery?.ack().await?;
//! }
//! # Ok(()) }
//! ```
//!
//! [lapin]: https://docs.rs/lapin

mod codec;
mod config;
mod connection;
mod dead_letter;
mod error;
mod publisher;
mod subscriber;
pub mod topology;

use std::sync::Arc;

use async_trait::async_trait;
use runnel_core::bus::{DeliveryStream, Publisher, SubscribeOptions, Subscriber};
use runnel_core::{BusError, GroupName, Message, TopicName};

pub use config::{
    RabbitOptions, DELIVERY_LIMIT_DEFAULT, PUBLISH_TIMEOUT_DEFAULT, RETENTION_DEFAULT,
};
pub use dead_letter::DRAIN_BATCH_MAX;

use connection::Link;
use publisher::PublishSide;

/// Connects to RabbitMQ at `url` (see [`RabbitOptions`]) and checks the connection.
pub async fn connect(url: &str) -> Result<Arc<RabbitBus>, BusError> {
    RabbitBus::connect(RabbitOptions::from_url(url)?).await
}

/// A RabbitMQ client: publishes and subscribes over one connection (one channel per
/// subscription plus one for publishing), reopened when lost.
pub struct RabbitBus {
    link: Arc<Link>,
    publish: PublishSide,
}

impl std::fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBus")
            .field("options", self.link.options())
            .finish()
    }
}

impl RabbitBus {
    /// Connects with `options` (one attempt, so a wrong address or password shows now).
    pub async fn connect(options: RabbitOptions) -> Result<Arc<RabbitBus>, BusError> {
        let bus = RabbitBus {
            link: Arc::new(Link::new(Arc::new(options), "bus")),
            publish: PublishSide::new(),
        };
        bus.link.connection().await?;
        Ok(Arc::new(bus))
    }

    /// The options the bus was built with.
    pub fn options(&self) -> &RabbitOptions {
        self.link.options()
    }

    /// Closes the publishing channel and the connection for good: publishing then fails
    /// with `BusError::Closed` and each subscription's stream yields `Closed` and ends.
    pub async fn close(&self) {
        self.publish.close().await;
        self.link.close().await;
    }
}

#[async_trait]
impl Publisher for RabbitBus {
    /// The publishing connection is open (or opens now, one attempt).
    async fn ping(&self) -> Result<(), BusError> {
        self.link.connection().await.map(|_| ())
    }

    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        self.publish.publish(&self.link, topic, messages).await
    }
}

#[async_trait]
impl Subscriber for RabbitBus {
    async fn subscribe(
        &self,
        topic: &TopicName,
        group: &GroupName,
        options: SubscribeOptions,
    ) -> Result<DeliveryStream, BusError> {
        subscriber::subscribe(self.link.clone(), topic, group, options).await
    }
}
