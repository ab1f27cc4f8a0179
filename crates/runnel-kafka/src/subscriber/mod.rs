//! Subscribing: one Kafka group consumer per subscription, with Runnel's per-key
//! delivery state in front of it (see [`state`]) and a driver task behind it (see
//! [`driver`]).

pub mod driver;
pub mod start;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use runnel_core::bus::{DeliveryStream, StartPosition, SubscribeOptions};
use runnel_core::{BusError, GroupName, TopicName};
use tokio::sync::{mpsc, watch};

use crate::config::KafkaOptions;
use crate::error::bus_error;
use crate::publisher::Producer;
use driver::{Context, Driver, Shared};
use runnel_transport_kit::handout_stream;
use state::{Settings, State};

/// Longest wait in `subscribe` for the group to hand this consumer its partitions.
pub const ASSIGNMENT_WAIT: Duration = Duration::from_secs(30);

/// The Kafka group id of a Runnel group on a topic: `<group>:<topic>` (after the
/// options' `prefix`, see [`KafkaOptions::kafka_group`]). Each
/// subscription is its own Kafka group, so a rebalance on one topic never pauses a
/// group's other topics (':' cannot appear in Runnel names, so the id is unambiguous).
pub fn kafka_group_id(group: &GroupName, topic: &TopicName) -> String {
    format!("{group}:{topic}")
}

/// The topic where messages delivered `max_deliveries` times go: `<topic>.dlq`.
pub fn dead_letter_topic(topic: &TopicName) -> Result<TopicName, BusError> {
    TopicName::new(format!("{topic}.dlq"))
}

/// Joins `group` on `topic` and returns the deliveries once this consumer has its
/// partitions (so messages published after `subscribe` returns reach the group).
pub async fn subscribe(
    options: &KafkaOptions,
    producer: &Producer,
    topic: &TopicName,
    group: &GroupName,
    subscribe_options: SubscribeOptions,
) -> Result<DeliveryStream, BusError> {
    subscribe_options.validate()?;
    let kafka_topic = options.kafka_topic(topic);
    producer.topics.ensure(&kafka_topic).await?;
    let dead_letter_topic = dead_letter_topic(topic)?;
    let kafka_group = options.kafka_group(group, topic);
    if subscribe_options.start == StartPosition::Latest {
        let (options, kafka_group, kafka_topic) =
            (options.clone(), kafka_group.clone(), kafka_topic.clone());
        tokio::task::spawn_blocking(move || {
            start::fix_latest_start(&options, &kafka_group, &kafka_topic)
        })
        .await
        .map_err(|e| BusError::Backend(format!("fixing the start offsets: {e}")))??;
    }

    let side: driver::SideConsumer = options
        .consumer_config(&driver::side_group_id(&kafka_group))
        .create()
        .map_err(|e| bus_error("create the side-group client", &e))?;
    let side = Arc::new(side);
    let shared = Shared::new(State::new(Settings {
        max_in_flight: subscribe_options.max_in_flight,
        ack_timeout: subscribe_options.ack_timeout,
        max_deliveries: options.max_deliveries,
    }));
    let (assigned_tx, mut assigned_rx) = watch::channel(0u64);
    let context = Context {
        shared: shared.clone(),
        topic: kafka_topic.clone(),
        side: side.clone(),
        assigned: assigned_tx,
    };
    let consumer: StreamConsumer<Context> = options
        .consumer_config(&kafka_group)
        .create_with_context(context)
        .map_err(|e| bus_error("create the consumer", &e))?;
    consumer
        .subscribe(&[kafka_topic.as_str()])
        .map_err(|e| bus_error(&format!("subscribe to {topic}"), &e))?;
    // Twice max_in_flight: room for the live deliveries plus superseded copies (an
    // expired delivery the consumer has not read yet) without ever blocking the driver.
    let (out, rx) = mpsc::channel(2 * subscribe_options.max_in_flight);
    let driver = Driver {
        consumer: Arc::new(consumer),
        shared: shared.clone(),
        topic: topic.clone(),
        kafka_topic,
        group: group.clone(),
        out,
        producer: producer.clone(),
        dead_letter_topic,
        side,
        envelope: subscribe_options
            .envelope
            .clone()
            .unwrap_or_else(|| options.envelope.clone()),
    };
    tokio::spawn(driver.run());
    let mut rx = rx;
    let waited = tokio::time::timeout(ASSIGNMENT_WAIT, assigned_rx.wait_for(|n| *n > 0)).await;
    match waited {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return Err(BusError::Closed),
        Err(_) => {
            rx.close();
            return Err(BusError::Unavailable(format!(
                "group {group} on {topic}: no partition assignment within {ASSIGNMENT_WAIT:?}"
            )));
        }
    }
    Ok(handout_stream(rx, shared, ()))
}
