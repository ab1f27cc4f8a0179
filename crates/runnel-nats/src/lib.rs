//! Runnel transport over NATS JetStream.
//!
//! * A **topic** is a JetStream stream (`RUNNEL_<topic>`) capturing one subject
//!   (`runnel.<topic>`), created on first use and its limits (max age, max messages, max
//!   bytes, duplicate window) updated from configuration.
//! * A **group** is a durable pull consumer on that stream with explicit acks; its
//!   `ack_wait` is the subscription's ack timeout. Nacks are JetStream `-NAK` (with a
//!   delay when asked), extensions are `+WPI`, the attempt number is JetStream's delivery
//!   count.
//! * **Publishing** sets `Nats-Msg-Id` to the message id, so a retried publish inside the
//!   stream's duplicate window is stored once; every publish waits for its JetStream ack.
//! * **Per-key order** across every consumer of a group: one member of the group holds a
//!   lease (a JetStream KV key) and is the only one pulling; it hands a key's next message
//!   out only after the previous one is settled. See `DESIGN.md`.
//! * **Partitioned groups** (`?partitions=N`): a topic's messages go to N partition
//!   subjects by a hash of their ordering key; each group has one durable consumer and
//!   one lease per partition, balanced over the group's live members, so a group's work
//!   spreads over processes while each key keeps one partition and its order.
//! * **Poison messages**: a message delivered more than `max_deliveries` times is copied to
//!   the dead-letter stream `RUNNEL_DLQ` and terminated; the bus's
//!   [`DeadLetterDrain`](runnel_core::bus::DeadLetterDrain) moves a group's copies into a
//!   `DeadLetterStore`.
//! * Messages follow the CloudEvents NATS binding: written in binary mode (`ce-`
//!   headers); read in binary and structured mode. Messages that are not CloudEvents are
//!   read and written through a mapped envelope
//!   (`?envelope=json-event|outbox-record|raw|mapped`, `runnel_core::envelope`), and
//!   without one are dead-lettered with the reason.
//!
//! ## Configuration URL
//!
//! `nats://[user:password@]host[:port][,host2:port...][?param=value&...]` (or `tls://`);
//! see [`NatsOptions::from_url`] for every parameter. Credentials are never logged.
//!
//! ```no_run
//! # async fn demo() -> Result<(), runnel_core::BusError> {
//! use runnel_core::bus::Publisher;
//! use runnel_core::{Message, TopicName};
//! let bus = runnel_nats::connect("nats://127.0.0.1:4222?retention=7d").await?;
//! let topic = TopicName::new("orders")?;
//! bus.publish(&topic, vec![Message::json("OrderPlaced", &serde_json::json!({"id": 1})).with_key("Order-1")]).await?;
//! # Ok(()) }
//! ```

mod bus;
mod codec;
mod dead_letter;
mod lease;
mod names;
mod options;
mod subscriber;

use std::sync::Arc;

pub use bus::{NatsBus, ENSURED_STREAMS_MAX, JS_REQUEST_TIMEOUT};
pub use codec::{broker_facts, encode, from_nats, to_headers, MSG_ID_HEADER};
pub use dead_letter::DRAIN_BATCH_MAX;
pub use names::{
    consumer_name, escape, lease_key, member_key, partition_consumer_name, partition_of,
    partition_subject, partition_subjects, stream_name, subject,
};
pub use options::{
    NatsOptions, Retention, Storage, DUPLICATE_WINDOW_DEFAULT, LEASE_TTL_DEFAULT,
    MAX_DELIVER_DEFAULT, PARTITIONS_MAX, PUBLISH_RETRY_DEADLINE_DEFAULT, STREAM_PREFIX_DEFAULT,
    SUBJECT_PREFIX_DEFAULT,
};
pub use subscriber::{CONSUMER_MAX_ACK_PENDING, PULL_BATCH_MAX};

use runnel_core::BusError;

/// Connects to NATS from a configuration URL (see [`NatsOptions::from_url`]).
pub async fn connect(url: &str) -> Result<Arc<NatsBus>, BusError> {
    let options = NatsOptions::from_url(url)?;
    Ok(Arc::new(NatsBus::connect(options).await?))
}
