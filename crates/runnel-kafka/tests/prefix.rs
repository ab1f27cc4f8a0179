//! `?prefix=`: applications (or test runs) sharing one cluster keep apart. Two buses
//! with different prefixes use the same Runnel topic and group names without seeing each
//! other's messages, and the Kafka topic is `<prefix>.<topic>`.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use runnel_core::bus::{DeliveryStream, Publisher, StartPosition, SubscribeOptions, Subscriber};
use runnel_core::Message;
use runnel_kafka::{KafkaBus, KafkaOptions};
use serde_json::json;

/// Longest wait for one delivery.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(30);

fn prefixed(brokers: &str, prefix: &str) -> KafkaBus {
    KafkaBus::new(
        KafkaOptions::from_url(&format!("kafka://{brokers}?prefix={prefix}")).expect("a URL"),
    )
    .expect("bus")
}

async fn next_type(stream: &mut DeliveryStream) -> String {
    let delivery = tokio::time::timeout(DELIVERY_DEADLINE, stream.next())
        .await
        .expect("a delivery before the deadline")
        .expect("the stream is open")
        .expect("a delivery");
    let kind = delivery.message.event_type.clone();
    delivery.ack().await.expect("ack");
    kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buses_with_different_prefixes_share_names_but_never_messages() {
    let Some(brokers) =
        support::brokers("buses_with_different_prefixes_share_names_but_never_messages")
    else {
        return;
    };
    let run = uuid::Uuid::now_v7().simple().to_string();
    let (prefix_a, prefix_b) = (format!("a{}", &run[..16]), format!("b{}", &run[..16]));
    let bus_a = prefixed(&brokers, &prefix_a);
    let bus_b = prefixed(&brokers, &prefix_b);
    // The same Runnel names on both.
    let topic = support::fresh_topic("prefixed");
    let group = support::fresh_group("billing");
    let options = || SubscribeOptions {
        start: StartPosition::Earliest,
        ..SubscribeOptions::default()
    };
    let mut on_a = bus_a
        .subscribe(&topic, &group, options())
        .await
        .expect("subscribe a");
    let mut on_b = bus_b
        .subscribe(&topic, &group, options())
        .await
        .expect("subscribe b");

    // One key, so were the topics shared every message would sit in one partition, in
    // publish order, between the other bus's messages.
    let message = |kind: &str| Message::json(kind, &json!({})).with_key("k");
    bus_a
        .publish(&topic, vec![message("a1")])
        .await
        .expect("publish");
    bus_b
        .publish(&topic, vec![message("b1")])
        .await
        .expect("publish");
    bus_a
        .publish(&topic, vec![message("a2")])
        .await
        .expect("publish");
    bus_b
        .publish(&topic, vec![message("b2")])
        .await
        .expect("publish");

    assert_eq!(next_type(&mut on_a).await, "a1");
    assert_eq!(next_type(&mut on_a).await, "a2", "bus a never sees b1");
    assert_eq!(next_type(&mut on_b).await, "b1");
    assert_eq!(next_type(&mut on_b).await, "b2", "bus b never sees a2");
    // Each delivery names the Runnel topic, not the Kafka one.
    bus_a
        .publish(&topic, vec![message("a3")])
        .await
        .expect("publish");
    let delivery = tokio::time::timeout(DELIVERY_DEADLINE, on_a.next())
        .await
        .expect("a delivery")
        .expect("open")
        .expect("a delivery");
    assert_eq!(delivery.topic, topic);
    delivery.ack().await.expect("ack");

    // On the broker: the prefixed topics exist, the bare name was never created.
    let metadata_client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("a metadata client");
    let names: Vec<String> = tokio::task::spawn_blocking(move || {
        let metadata = metadata_client
            .fetch_metadata(None, Duration::from_secs(10))
            .expect("cluster metadata");
        metadata
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .collect()
    })
    .await
    .expect("the metadata task");
    for expected in [format!("{prefix_a}.{topic}"), format!("{prefix_b}.{topic}")] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    assert!(!names.contains(&topic.to_string()), "no unprefixed {topic}");
}
