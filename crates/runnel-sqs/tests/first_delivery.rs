//! A message waiting in a group's queue goes to the next consumer on its first receive,
//! with the default URL (long polling), even right after an earlier consumer of the group
//! stopped. A long poll cannot be called back: SQS and moto keep serving one whose client
//! has gone and hand it the next message, which then stays hidden for the visibility
//! timeout and comes back on attempt 2. So a consumer must not leave one behind when it
//! stops taking deliveries.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use runnel_core::bus::{Publisher, SubscribeOptions, Subscriber};
use runnel_core::{GroupName, Message, TopicName};
use runnel_sqs::SqsBus;

/// How soon the waiting message must be delivered after `subscribe` is called.
const FIRST_DELIVERY_DEADLINE: Duration = Duration::from_secs(1);
/// How long the earlier consumer lives on after its last step, as a process does while it
/// prints and exits: time enough for its poller to start another receive.
const LINGER: Duration = Duration::from_millis(500);
/// Longest wait for the earlier consumer's own message.
const RECEIVE_DEADLINE: Duration = Duration::from_secs(10);

/// The default URL: long polls of 20 s.
fn default_bus(endpoint: &str) -> Arc<SqsBus> {
    runnel_sqs::connect(&common::url(endpoint, "")).expect("connect to SQS/SNS")
}

fn names(test: &str) -> (TopicName, GroupName) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    (
        TopicName::new(format!("first.{test}.{id}")).expect("topic"),
        GroupName::new(format!("g-{id}")).expect("group"),
    )
}

fn message(key: &str) -> Message {
    Message::json("OrderPlaced", &serde_json::json!({ "key": key })).with_key(key)
}

/// Publishes one message while no consumer runs, then subscribes a new consumer with a new
/// client and checks it gets that message on attempt 1 within the deadline.
async fn waiting_message_goes_out_at_once(endpoint: &str, topic: &TopicName, group: &GroupName) {
    let waiting = message("Order-waiting");
    default_bus(endpoint)
        .publish(topic, vec![waiting.clone()])
        .await
        .expect("publish the waiting message");

    let bus = default_bus(endpoint);
    let subscribed_at = Instant::now();
    let mut stream = bus
        .subscribe(topic, group, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let delivery = tokio::time::timeout(FIRST_DELIVERY_DEADLINE, stream.next())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the waiting message was not delivered within {FIRST_DELIVERY_DEADLINE:?} of \
                 subscribing (taken by a long poll the earlier consumer left behind?)"
            )
        })
        .expect("a delivery")
        .expect("not an error");
    assert_eq!(delivery.message.id, waiting.id);
    assert_eq!(delivery.attempt, 1, "first delivery, not a redelivery");
    assert!(subscribed_at.elapsed() < FIRST_DELIVERY_DEADLINE);
    delivery.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_message_is_delivered_on_attempt_1_after_a_consumer_took_its_last_one() {
    let test = "waiting_message_is_delivered_on_attempt_1_after_a_consumer_took_its_last_one";
    let Some(endpoint) = common::endpoint(test) else {
        return;
    };
    let (topic, group) = names("took");
    // An earlier consumer creates the group, takes one message, acks it and stops (as
    // `runnel consume --count 1` does).
    let earlier = default_bus(&endpoint);
    let mut stream = earlier
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .expect("subscribe the earlier consumer");
    earlier
        .publish(&topic, vec![message("Order-first")])
        .await
        .expect("publish the first message");
    let first = tokio::time::timeout(RECEIVE_DEADLINE, stream.next())
        .await
        .expect("the earlier consumer gets its message")
        .expect("a delivery")
        .expect("not an error");
    first.ack().await.expect("ack");
    tokio::time::sleep(LINGER).await;
    drop(stream);

    waiting_message_goes_out_at_once(&endpoint, &topic, &group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_message_is_delivered_on_attempt_1_after_a_consumer_that_never_read() {
    let test = "waiting_message_is_delivered_on_attempt_1_after_a_consumer_that_never_read";
    let Some(endpoint) = common::endpoint(test) else {
        return;
    };
    let (topic, group) = names("unread");
    // An earlier consumer creates the group and stops without reading its stream.
    let earlier = default_bus(&endpoint);
    let stream = earlier
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .expect("subscribe the earlier consumer");
    tokio::time::sleep(LINGER).await;
    drop(stream);

    waiting_message_goes_out_at_once(&endpoint, &topic, &group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_message_is_delivered_on_attempt_1_to_the_first_consumer() {
    let test = "waiting_message_is_delivered_on_attempt_1_to_the_first_consumer";
    let Some(endpoint) = common::endpoint(test) else {
        return;
    };
    let (topic, group) = names("provisioned");
    default_bus(&endpoint)
        .provision_group(&topic, &group, Default::default())
        .await
        .expect("provision the group");

    waiting_message_goes_out_at_once(&endpoint, &topic, &group).await;
}
