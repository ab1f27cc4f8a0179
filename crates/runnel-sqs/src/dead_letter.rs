//! Draining a group's native SQS dead-letter queue into a [`DeadLetterStore`].
//!
//! SQS moves a message to the group's DLQ after `max_deliveries` receives without a
//! delete: a consumer that crashes on it again and again never gets to nack it, so the
//! consumer router's own retry/dead-letter layer never sees it fail. The bus's
//! [`DeadLetterDrain`] closes that gap: it moves every message of the DLQ into the one `DeadLetterStore`
//! (where `runnel dlq list/replay` see it), deleting each from SQS only after the store
//! accepted it.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use runnel_core::bus::DeadLetterDrain;
use runnel_core::chrono::Utc;
use runnel_core::dead_letter::{DeadLetterStore, FailureRecord, NewDeadLetter};
use runnel_core::{BusError, GroupName, TopicName};

use crate::bus::{SqsBus, AWS_BATCH_MAX};
use crate::codec;
use crate::error::map_sdk;

/// Visibility a drained message gets while it is being copied into the store.
const DRAIN_VISIBILITY: Duration = Duration::from_secs(30);

#[async_trait]
impl DeadLetterDrain for SqsBus {
    /// Moves up to `max` messages from the native dead-letter queue of `group` on `topic`
    /// into `store`; returns how many were moved. Messages that are not CloudEvents are
    /// stored too, with their raw body as the payload, so nothing is lost.
    async fn drain_dead_letters(
        &self,
        topic: &TopicName,
        group: &GroupName,
        store: &dyn DeadLetterStore,
        max: usize,
    ) -> Result<usize, BusError> {
        drain(self, topic, group, store, max).await
    }
}

async fn drain(
    bus: &SqsBus,
    topic: &TopicName,
    group: &GroupName,
    store: &dyn DeadLetterStore,
    max: usize,
) -> Result<usize, BusError> {
    let sqs = &bus.clients.sqs;
    let name = bus.sqs_dead_letter_queue_name(topic, group);
    let url = sqs
        .get_queue_url()
        .queue_name(&name)
        .send()
        .await
        .map_err(|e| map_sdk("sqs:GetQueueUrl", e))?
        .queue_url()
        .unwrap_or_default()
        .to_string();
    let mut moved = 0;
    while moved < max {
        let want = (max - moved).min(AWS_BATCH_MAX) as i32;
        let out = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(want)
            .wait_time_seconds(0)
            .visibility_timeout(DRAIN_VISIBILITY.as_secs() as i32)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| map_sdk("sqs:ReceiveMessage", e))?;
        let messages = out.messages();
        if messages.is_empty() {
            break;
        }
        for m in messages {
            let body = m.body().unwrap_or_default();
            let attrs = m
                .message_attributes()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| v.string_value().map(|s| (k.clone(), s.to_string())));
            let facts = codec::broker_facts(m, topic.as_str());
            let (message, error) = match codec::decode(body, attrs, &bus.options.envelope, facts) {
                Ok(msg) => (
                    msg,
                    format!(
                        "exceeded the queue's maxReceiveCount ({}) without being acknowledged; \
                         moved to the SQS dead-letter queue {name}",
                        bus.options.max_receive_count
                    ),
                ),
                Err(e) => {
                    let mut msg =
                        runnel_core::Message::json("runnel.undecodable", &serde_json::Value::Null);
                    msg.id = m.message_id().unwrap_or("unknown").to_string();
                    msg.content_type = "text/plain".into();
                    msg.payload = body.as_bytes().to_vec();
                    (
                        msg,
                        format!(
                            "not a CloudEvent ({e}); moved to the SQS dead-letter queue {name}"
                        ),
                    )
                }
            };
            let attempts = bus.options.max_receive_count;
            store
                .put(NewDeadLetter {
                    topic: topic.clone(),
                    group: group.clone(),
                    message,
                    failures: vec![FailureRecord {
                        attempt: attempts,
                        at: Utc::now(),
                        error,
                        permanent: false,
                    }],
                })
                .await?;
            sqs.delete_message()
                .queue_url(&url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .map_err(|e| map_sdk("sqs:DeleteMessage", e))?;
            moved += 1;
        }
    }
    Ok(moved)
}
