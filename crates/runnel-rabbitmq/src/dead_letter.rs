//! The broker's native dead letters: a group's quorum queue dead-letters a message the
//! broker gave out `max_deliveries` times without an ack (consumers that crash on it,
//! or messages no consumer can read) through the `runnel.dead-letter` exchange into the
//! group's `…:$dead` queue. [`DeadLetterDrain::drain_dead_letters`] moves them into the one
//! [`DeadLetterStore`], where they are listed and replayed like every other dead letter.

use async_trait::async_trait;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use runnel_core::bus::DeadLetterDrain;
use runnel_core::chrono::Utc;
use runnel_core::dead_letter::{DeadLetterStore, FailureRecord, NewDeadLetter};
use runnel_core::{BusError, GroupName, Message, TopicName};

use crate::codec::{broker_attempt, from_amqp};
use crate::error::from_lapin;
use crate::topology::dead_letter_queue_name;
use crate::RabbitBus;

/// Most dead letters one [`DeadLetterDrain::drain_dead_letters`] call moves.
pub const DRAIN_BATCH_MAX: usize = 10_000;

#[async_trait]
impl DeadLetterDrain for RabbitBus {
    /// Moves up to `max` (at most [`DRAIN_BATCH_MAX`] per call; 0 moves nothing) messages
    /// from the native dead-letter queue of `group` on `topic` into `store`; returns how
    /// many. Each is acked at the broker only after the store accepted it (a crash in
    /// between stores it twice, never loses it).
    async fn drain_dead_letters(
        &self,
        topic: &TopicName,
        group: &GroupName,
        store: &dyn DeadLetterStore,
        max: usize,
    ) -> Result<usize, BusError> {
        let max = max.min(DRAIN_BATCH_MAX);
        if max == 0 {
            return Ok(0);
        }
        let connection = self.link.connection().await?;
        let channel = connection.create_channel().await.map_err(from_lapin)?;
        let queue = dead_letter_queue_name(topic, group);
        let mut moved = 0;
        while moved < max {
            let Some(got) = channel
                .basic_get(&queue, BasicGetOptions { no_ack: false })
                .await
                .map_err(from_lapin)?
            else {
                break;
            };
            let delivery = got.delivery;
            let failure = failure_of(&delivery.properties, delivery.redelivered);
            let message = match from_amqp(
                &delivery.properties,
                delivery.data.clone(),
                &self.link.options().envelope,
                topic.as_str(),
            ) {
                Ok(m) => m,
                Err(e) => unreadable(&delivery.properties, delivery.data.clone(), &e),
            };
            let dead = NewDeadLetter {
                topic: topic.clone(),
                group: group.clone(),
                message,
                failures: vec![failure],
            };
            if let Err(e) = store.put(dead).await {
                let _ = delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
                return Err(e.into());
            }
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(from_lapin)?;
            moved += 1;
        }
        let _ = channel.close(200, "drained").await;
        Ok(moved)
    }
}

/// The failure the broker recorded: why (`x-first-death-reason`, e.g. `delivery_limit`
/// or `rejected`) and after how many deliveries.
fn failure_of(properties: &BasicProperties, redelivered: bool) -> FailureRecord {
    let reason = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-first-death-reason").cloned())
        .map(|v| match v {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => format!("{other:?}"),
        })
        .unwrap_or_else(|| "unknown".into());
    let attempt = broker_attempt(properties, redelivered)
        .saturating_sub(1)
        .max(1);
    FailureRecord {
        attempt,
        at: Utc::now(),
        error: format!(
            "dead-lettered by RabbitMQ ({reason}): the broker handed the message out {attempt} \
             time(s) without an ack (consumers crashed or could not read it)"
        ),
        permanent: reason != "delivery_limit",
    }
}

/// A message that is not a readable CloudEvent, kept whole so it can be inspected.
fn unreadable(properties: &BasicProperties, body: Vec<u8>, error: &BusError) -> Message {
    let mut m = Message::json("runnel.UnreadableAmqpMessage", &serde_json::Value::Null);
    if let Some(id) = properties.message_id() {
        m.id = id.to_string();
    }
    m.content_type = properties
        .content_type()
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_else(|| "application/octet-stream".into());
    m.payload = body;
    m.headers
        .insert("runnelreaderror".into(), error.to_string());
    m
}
