//! Consuming: one channel per subscription on the group's single-active-consumer quorum
//! queue, manual acks, and the per-key head-of-line book of `runnel-transport-kit` kept in
//! the client ([`state`]), fed by a driver task ([`driver`]).
//!
//! The broker hands the active consumer up to `prefetch` messages in queue order. The
//! book releases to the application at most `max_in_flight` at a time and at most one
//! per key: a key's next message waits (unacknowledged at the broker, held here) until
//! the one before it is acked. A nack — with or without a delay — and an ack timeout keep
//! the message at the head of its key and hand it out again from the client, with the
//! attempt number increased; nothing reaches the broker until the ack. If the consumer or
//! its connection dies, the broker gives every unacknowledged message (the key's head
//! first, in queue order) to the next active consumer with `x-delivery-count` increased.

mod driver;
mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lapin::options::BasicAckOptions;
use runnel_core::bus::{Acknowledger, DeliveryStream, SubscribeOptions};
use runnel_core::{BusError, GroupName, TopicName};
use runnel_transport_kit::{check_extension, handout_stream, EntryId, Shared};
use tokio::sync::mpsc;

use crate::connection::Link;
use state::RabbitState;

/// Joins `group` on `topic` and returns the consumer's deliveries.
pub(crate) async fn subscribe(
    link: Arc<Link>,
    topic: &TopicName,
    group: &GroupName,
    options: SubscribeOptions,
) -> Result<DeliveryStream, BusError> {
    options.validate()?;
    let session =
        driver::open_session(&link, topic, group, options.start, options.max_in_flight).await?;
    let (out_tx, out_rx) = mpsc::channel(options.max_in_flight);
    let shared = Shared::new(RabbitState::new(&options));
    let task = driver::Driver {
        link,
        topic: topic.clone(),
        group: group.clone(),
        options,
        out: out_tx,
        shared: shared.clone(),
    };
    tokio::spawn(task.run(session));
    Ok(handout_stream(out_rx, shared, ()))
}

/// Settles one delivery in the shared book; an ack then goes to the broker.
struct RabbitAcknowledger {
    shared: Arc<Shared<RabbitState>>,
    id: EntryId,
    token: u64,
    message_id: String,
}

impl RabbitAcknowledger {
    fn lost(&self) -> BusError {
        BusError::DeliveryLost(self.message_id.clone())
    }
}

#[async_trait]
impl Acknowledger for RabbitAcknowledger {
    async fn ack(&self) -> Result<(), BusError> {
        let item = self
            .shared
            .lock()
            .book
            .ack(self.id, self.token)
            .map_err(|_| self.lost())?;
        // The book has let the key's next message go; the ack frame follows.
        self.shared.wake();
        item.acker
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(|err| {
                tracing::warn!(error = %err, "ack failed; the message will be redelivered");
                self.lost()
            })
    }

    async fn nack(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.shared
            .lock()
            .book
            .nack(self.id, self.token, delay, Instant::now())
            .map_err(|_| self.lost())?;
        self.shared.wake();
        Ok(())
    }

    async fn extend(&self, by: Duration) -> Result<(), BusError> {
        check_extension(by)?;
        self.shared
            .lock()
            .book
            .extend(self.id, self.token, by, Instant::now())
            .map_err(|_| self.lost())?;
        self.shared.wake();
        Ok(())
    }
}
