//! The native dead-letter backstop: a message delivered `max_deliveries` times without
//! being settled (it keeps crashing or stalling its consumers) is moved to the topic
//! `<topic>.dlq` with headers naming the group and the attempts, and its offset is
//! released. [`DeadLetterDrain::drain_dead_letters`] moves those records into the one
//! [`DeadLetterStore`], where they are listed and replayed like the router's own dead
//! letters (`runnel dlq replay`).

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use runnel_core::bus::{DeadLetterDrain, StartPosition, SubscribeOptions, Subscriber};
use runnel_core::dead_letter::{DeadLetterStore, FailureRecord, NewDeadLetter};
use runnel_core::{BusError, GroupName, TopicName};

use crate::subscriber::dead_letter_topic;
use crate::KafkaBus;
use runnel_core::envelope::Envelope;

/// Header naming the group that gave up on a message.
pub const DLQ_GROUP_HEADER: &str = "runnel-dlq-group";
/// Header naming the topic the message came from.
pub const DLQ_TOPIC_HEADER: &str = "runnel-dlq-topic";
/// Header carrying how often the message was delivered.
pub const DLQ_ATTEMPTS_HEADER: &str = "runnel-dlq-attempts";
/// Header carrying why a record that could not be read was dead-lettered.
pub const DLQ_REASON_HEADER: &str = "runnel-dlq-reason";

/// How long a drain waits for the next record of `<topic>.dlq` before it decides the
/// topic is drained (a Kafka topic has no "empty": the drain reads until it goes quiet).
pub const DRAIN_IDLE: Duration = Duration::from_secs(3);

#[async_trait]
impl DeadLetterDrain for KafkaBus {
    /// Moves up to `max` of the records `group` left in `<topic>.dlq` into `store`,
    /// reading until `max` are moved or none arrives for [`DRAIN_IDLE`]. Each record is
    /// acknowledged (its offset committed for the drain's own group `<group>-dlq-drain`)
    /// only after the store accepted it, so a failed drain loses nothing. Records of other
    /// groups are skipped (and not counted). Returns how many were stored.
    async fn drain_dead_letters(
        &self,
        topic: &TopicName,
        group: &GroupName,
        store: &dyn DeadLetterStore,
        max: usize,
    ) -> Result<usize, BusError> {
        if max == 0 {
            return Ok(0);
        }
        drain(self, topic, group, store, max).await
    }
}

async fn drain(
    bus: &KafkaBus,
    topic: &TopicName,
    group: &GroupName,
    store: &dyn DeadLetterStore,
    max: usize,
) -> Result<usize, BusError> {
    let dlq = dead_letter_topic(topic)?;
    let drain_group = GroupName::new(format!("{group}-dlq-drain"))?;
    let mut stream = bus
        .subscribe(
            &dlq,
            &drain_group,
            SubscribeOptions {
                start: StartPosition::Earliest,
                // The transport writes dead letters as CloudEvents whatever the envelope.
                envelope: Some(Envelope::CloudEvents),
                ..SubscribeOptions::default()
            },
        )
        .await?;
    let mut stored = 0;
    while stored < max {
        let Ok(Some(item)) = tokio::time::timeout(DRAIN_IDLE, stream.next()).await else {
            break;
        };
        let delivery = item?;
        let (mut message, handle) = delivery.into_parts();
        let for_group = message.headers.remove(DLQ_GROUP_HEADER);
        let from_topic = message.headers.remove(DLQ_TOPIC_HEADER);
        let attempts = message
            .headers
            .remove(DLQ_ATTEMPTS_HEADER)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let undecodable = message.headers.remove(DLQ_REASON_HEADER);
        if for_group.as_deref() != Some(group.as_str())
            || from_topic.as_deref() != Some(topic.as_str())
        {
            handle.ack().await?;
            continue;
        }
        let dead_letter = NewDeadLetter {
            topic: topic.clone(),
            group: group.clone(),
            message,
            failures: vec![FailureRecord {
                attempt: attempts,
                at: runnel_core::chrono::Utc::now(),
                error: match undecodable {
                    Some(reason) => {
                        format!("undecodable, moved to {dlq} by the Kafka transport: {reason}")
                    }
                    None => format!(
                        "delivered {attempts} times without being settled (the consumer \
                         crashed or stalled each time); moved to {dlq} by the Kafka transport"
                    ),
                },
                permanent: false,
            }],
        };
        match store.put(dead_letter).await {
            Ok(_) => {
                handle.ack().await?;
                stored += 1;
            }
            Err(e) => {
                let _ = handle.nack(None).await;
                return Err(e.into());
            }
        }
    }
    Ok(stored)
}
