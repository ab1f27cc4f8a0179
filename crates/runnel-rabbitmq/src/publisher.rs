//! Publishing: persistent messages to the topic's exchange on a confirm-mode channel,
//! every publisher confirm awaited; through an outage the unconfirmed rest of a batch is
//! sent again after a reconnect, until the publish timeout.

use std::collections::HashSet;
use std::time::Instant;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};
use runnel_core::bus::validate_publish;
use runnel_core::{BusError, Message, TopicName};
use tokio::sync::Mutex;

use crate::codec::encode;
use crate::connection::{Backoff, Link};
use crate::error::from_lapin;
use crate::topology::{check_confirm, declare_topic, exchange_name};

/// Topics whose exchange this client declared (a cache: past the bound it starts over).
const DECLARED_TOPICS_MAX: usize = 10_000;
/// Longest AMQP routing key.
const ROUTING_KEY_MAX: usize = 255;

/// The publishing half of a [`crate::RabbitBus`].
pub(crate) struct PublishSide {
    channel: Mutex<Option<Channel>>,
    declared: std::sync::Mutex<HashSet<TopicName>>,
}

impl PublishSide {
    pub(crate) fn new() -> Self {
        PublishSide {
            channel: Mutex::new(None),
            declared: std::sync::Mutex::new(HashSet::new()),
        }
    }

    pub(crate) async fn publish(
        &self,
        link: &Link,
        topic: &TopicName,
        messages: Vec<Message>,
    ) -> Result<(), BusError> {
        let options = link.options().clone();
        validate_publish(&messages, options.max_payload_bytes)?;
        if messages.is_empty() {
            return Ok(());
        }
        let exchange = exchange_name(topic);
        let encoded: Vec<(String, BasicProperties, Option<Vec<u8>>)> = messages
            .iter()
            .map(|m| {
                let (properties, body) = encode(m, &options.envelope)?;
                Ok((routing_key(m), properties, body))
            })
            .collect::<Result<_, BusError>>()?;
        let deadline = Instant::now() + options.publish_timeout;
        let mut backoff = Backoff::new(&options);
        let mut from = 0;
        loop {
            let (confirmed, result) = self
                .try_publish(link, topic, &exchange, &messages[from..], &encoded[from..])
                .await;
            from += confirmed;
            if result.is_err() {
                // The exchange may be gone (deleted by an admin): declare it again.
                if let Ok(mut d) = self.declared.lock() {
                    d.remove(topic);
                }
            }
            match result {
                Ok(()) => {
                    debug_assert_eq!(from, messages.len());
                    return Ok(());
                }
                Err(e) if e.is_transient() => {
                    *self.channel.lock().await = None;
                    let delay = backoff.next_delay();
                    if Instant::now() + delay > deadline {
                        return Err(BusError::Unavailable(format!(
                            "{} of {} messages to {topic} unconfirmed after {:?}: {e}",
                            messages.len() - from,
                            messages.len(),
                            options.publish_timeout
                        )));
                    }
                    tracing::warn!(%topic, error = %e, ?delay, unconfirmed = messages.len() - from, "publish failed; resending after a reconnect");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `messages` and awaits their confirms; returns how many from the start were
    /// confirmed, and the first error.
    async fn try_publish(
        &self,
        link: &Link,
        topic: &TopicName,
        exchange: &str,
        messages: &[Message],
        encoded: &[(String, BasicProperties, Option<Vec<u8>>)],
    ) -> (usize, Result<(), BusError>) {
        let channel = match self.channel(link, topic).await {
            Ok(c) => c,
            Err(e) => return (0, Err(e)),
        };
        let mut confirms = Vec::with_capacity(messages.len());
        for (m, (key, properties, body)) in messages.iter().zip(encoded) {
            match channel
                .basic_publish(
                    exchange,
                    key,
                    BasicPublishOptions::default(),
                    body.as_deref().unwrap_or(&m.payload),
                    properties.clone(),
                )
                .await
            {
                Ok(c) => confirms.push(c),
                Err(e) => {
                    // Those sent before may still be confirmed; count the confirmed prefix.
                    return (confirmed_prefix(confirms).await, Err(from_lapin(e)));
                }
            }
        }
        let mut confirmed = 0;
        for c in confirms {
            match c.await.map_err(from_lapin).and_then(check_confirm) {
                Ok(()) => confirmed += 1,
                Err(e) => return (confirmed, Err(e)),
            }
        }
        (confirmed, Ok(()))
    }

    /// The confirm-mode channel, opened (and the topic declared) when needed.
    async fn channel(&self, link: &Link, topic: &TopicName) -> Result<Channel, BusError> {
        let mut slot = self.channel.lock().await;
        let channel = match slot.as_ref() {
            Some(c) if c.status().connected() => c.clone(),
            _ => {
                let connection = link.connection().await?;
                let c = connection.create_channel().await.map_err(from_lapin)?;
                c.confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(from_lapin)?;
                *slot = Some(c.clone());
                c
            }
        };
        drop(slot);
        let known = self
            .declared
            .lock()
            .map(|d| d.contains(topic))
            .unwrap_or(false);
        if !known {
            declare_topic(&channel, topic, link.options()).await?;
            if let Ok(mut d) = self.declared.lock() {
                if d.len() >= DECLARED_TOPICS_MAX {
                    d.clear();
                }
                d.insert(topic.clone());
            }
        }
        Ok(channel)
    }

    pub(crate) async fn close(&self) {
        if let Some(c) = self.channel.lock().await.take() {
            let _ = c.close(200, "closed by runnel").await;
        }
    }
}

async fn confirmed_prefix(confirms: Vec<lapin::publisher_confirm::PublisherConfirm>) -> usize {
    let mut n = 0;
    for c in confirms {
        match c.await {
            Ok(c) if c.is_ack() || !c.is_nack() => n += 1,
            _ => break,
        }
    }
    n
}

/// The routing key: the event type (plain AMQP consumers can bind to what they need);
/// groups bind with `#`.
fn routing_key(message: &Message) -> String {
    if message.event_type.len() <= ROUTING_KEY_MAX {
        message.event_type.clone()
    } else {
        String::new()
    }
}
