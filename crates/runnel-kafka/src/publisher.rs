//! Publishing: the idempotent producer (acks from all in-sync replicas, retries without
//! duplicates or reordering) and explicit topic creation.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use runnel_core::{BusError, Message, TopicName};

use crate::codec::{encode, to_headers};
use crate::config::{KafkaOptions, REQUEST_TIMEOUT_DEFAULT};
use crate::error::bus_error;
use runnel_core::envelope::Envelope;

/// Topics remembered as existing (beyond it the memory is cleared and topics are checked
/// again, which is harmless: creating an existing topic is a no-op).
pub const KNOWN_TOPICS_MAX: usize = 10_000;
/// Pause before enqueueing again when the producer's local queue is full.
pub const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(2);

/// Creates topics on first use (brokers such as tansu do not auto-create them, and
/// production clusters should not).
pub struct Topics {
    admin: AdminClient<DefaultClientContext>,
    known: Mutex<HashSet<String>>,
    partitions: i32,
    replication_factor: i32,
}

impl Topics {
    pub fn new(options: &KafkaOptions) -> Result<Topics, BusError> {
        let admin = options
            .client_config()
            .create()
            .map_err(|e| bus_error("create the admin client", &e))?;
        Ok(Topics {
            admin,
            known: Mutex::new(HashSet::new()),
            partitions: options.partitions,
            replication_factor: options.replication_factor,
        })
    }

    fn is_known(&self, topic: &str) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(topic)
    }

    /// Makes sure `topic` exists (created with the configured partitions and replication
    /// factor when missing).
    pub async fn ensure(&self, topic: &str) -> Result<(), BusError> {
        if self.is_known(topic) {
            return Ok(());
        }
        let new = NewTopic::new(
            topic,
            self.partitions,
            TopicReplication::Fixed(self.replication_factor),
        );
        let opts = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT_DEFAULT));
        let results = self
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| bus_error(&format!("create topic {topic}"), &e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    let err = KafkaError::AdminOp(code);
                    return Err(match code {
                        RDKafkaErrorCode::InvalidTopic
                        | RDKafkaErrorCode::InvalidPartitions
                        | RDKafkaErrorCode::InvalidReplicationFactor => {
                            BusError::InvalidArgument(format!("create topic {topic}: {err}"))
                        }
                        _ => bus_error(&format!("create topic {topic}"), &err),
                    });
                }
            }
        }
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= KNOWN_TOPICS_MAX {
            known.clear();
        }
        known.insert(topic.to_string());
        Ok(())
    }
}

/// The idempotent producer plus topic creation, shared by the publisher and the
/// subscribers (which move messages to dead-letter topics).
#[derive(Clone)]
pub struct Producer {
    pub(crate) producer: FutureProducer,
    pub(crate) topics: Arc<Topics>,
    /// Maps Runnel topics to Kafka topics (the `prefix`).
    pub(crate) options: Arc<KafkaOptions>,
}

impl Producer {
    pub fn new(options: &KafkaOptions) -> Result<Producer, BusError> {
        let producer = options
            .producer_config()
            .create()
            .map_err(|e| bus_error("create the producer", &e))?;
        Ok(Producer {
            producer,
            topics: Arc::new(Topics::new(options)?),
            options: Arc::new(options.clone()),
        })
    }

    /// Sends `messages` to the Kafka topic of `topic`, in order, and waits until every one is acknowledged by the
    /// cluster. Enqueueing all before waiting keeps them pipelined; the idempotent
    /// producer keeps their order per partition even when it retries.
    pub async fn send_all(
        &self,
        topic: &TopicName,
        messages: &[Message],
        envelope: &Envelope,
    ) -> Result<(), BusError> {
        // A mapped envelope can refuse a message: encode the whole batch first so a refusal
        // sends nothing. CloudEvents never refuses; its headers are built as records go out.
        let mut encoded = if envelope.is_cloudevents() {
            None
        } else {
            Some(
                messages
                    .iter()
                    .map(|m| encode(m, envelope).map(Some))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let kafka_topic = self.options.kafka_topic(topic);
        self.topics.ensure(&kafka_topic).await?;
        let mut pending: Vec<DeliveryFuture> = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let (headers, value) = match encoded.as_mut().and_then(|e| e[i].take()) {
                Some(wire) => wire,
                None => (to_headers(m), None),
            };
            let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&kafka_topic)
                .payload(value.as_deref().unwrap_or(&m.payload))
                .headers(headers);
            if let Some(key) = m.key.as_deref() {
                record = record.key(key);
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(future) => {
                        pending.push(future);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                    }
                    Err((e, _)) => return Err(bus_error(&format!("publish to {topic}"), &e)),
                }
            }
        }
        let mut first_error = None;
        for future in pending {
            let outcome = match future.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(bus_error(&format!("publish to {topic}"), &e)),
                Err(_) => Err(BusError::Closed),
            };
            if let (Err(e), None) = (outcome, &first_error) {
                first_error = Some(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
