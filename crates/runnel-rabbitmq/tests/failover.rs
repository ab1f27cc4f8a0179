//! Per-key order across a consumer crash: the group's queue has a single active
//! consumer, so when the consumer holding a key's head (and, buffered behind it, the
//! key's later messages) dies, the next consumer — on another connection — gets the head
//! again first (as a redelivery) and the rest in publish order.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use runnel::core::bus::{DeliveryStream, Publisher, SubscribeOptions, Subscriber};
use runnel::core::{GroupName, Message, TopicName};
use runnel_rabbitmq::RabbitBus;

const WAIT: Duration = Duration::from_secs(15);

async fn next(stream: &mut DeliveryStream) -> runnel::core::bus::Delivery {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a delivery within the deadline")
        .expect("the subscription is open")
        .expect("no error")
}

fn n_of(m: &Message) -> u64 {
    m.payload_json().expect("JSON")["n"].as_u64().expect("n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_consumers_keys_continue_in_order_on_another_connection() {
    let Some(options) = common::test_options() else {
        return;
    };
    let publisher = RabbitBus::connect(options.clone())
        .await
        .expect("publisher");
    let first = RabbitBus::connect(options.clone()).await.expect("first");
    let second = RabbitBus::connect(options).await.expect("second");
    let suffix = runnel::core::uuid::Uuid::now_v7().simple().to_string();
    let topic = TopicName::new(format!("failover.{suffix}")).expect("topic");
    let group = GroupName::new(format!("failover-{suffix}")).expect("group");
    let opts = SubscribeOptions {
        max_in_flight: 8,
        ack_timeout: Duration::from_secs(30),
        ..SubscribeOptions::default()
    };
    let mut crashing = first
        .subscribe(&topic, &group, opts.clone())
        .await
        .expect("subscribe");
    let mut survivor = second
        .subscribe(&topic, &group, opts)
        .await
        .expect("subscribe");

    let sent: Vec<Message> = (0..6)
        .map(|n| {
            let key = if n % 2 == 0 { "A" } else { "B" };
            Message::json("Counted", &serde_json::json!({ "n": n })).with_key(key)
        })
        .collect();
    publisher
        .publish(&topic, sent.clone())
        .await
        .expect("publish");

    // The active consumer handles A:0, holds B:1, and crashes with A:2.. buffered.
    let d = next(&mut crashing).await;
    assert_eq!(n_of(&d.message), 0);
    d.ack().await.expect("ack A:0");
    let held_b = next(&mut crashing).await;
    let held_a = next(&mut crashing).await;
    let mut held: Vec<u64> = vec![n_of(&held_b.message), n_of(&held_a.message)];
    held.sort_unstable();
    assert_eq!(held, vec![1, 2], "one head per key is out");
    drop((held_a, held_b, crashing));

    let mut per_key: std::collections::BTreeMap<String, Vec<(u64, u32)>> = Default::default();
    for _ in 1..6 {
        let d = next(&mut survivor).await;
        per_key
            .entry(d.message.key.clone().unwrap_or_default())
            .or_default()
            .push((n_of(&d.message), d.attempt));
        d.ack().await.expect("ack");
    }
    let a: Vec<u64> = per_key["A"].iter().map(|(n, _)| *n).collect();
    let b: Vec<u64> = per_key["B"].iter().map(|(n, _)| *n).collect();
    assert_eq!(a, vec![2, 4], "key A continues in order");
    assert_eq!(b, vec![1, 3, 5], "key B continues in order");
    assert!(
        per_key["A"][0].1 >= 2 && per_key["B"][0].1 >= 2,
        "the heads come back as redeliveries: {per_key:?}"
    );
}
