//! Leases of messages a consumer holds but has not yielded yet.
//!
//! The poller receives ahead of the application (up to `max_in_flight`). When the
//! application falls behind, those messages wait in the stream's buffer or in a key's lane
//! while their visibility timeout runs. Without renewal SQS would hand them out again: the
//! receive count (the attempt, and the road to the dead-letter queue) would climb for
//! messages nobody has seen, and a copy yielded just before its lease ran out would be
//! delivered twice.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use runnel_core::bus::{DeliveryStream, Publisher, StartPosition, SubscribeOptions, Subscriber};
use runnel_core::{GroupName, Message, TopicName};

/// The visibility timeout of these tests (whole seconds, as SQS counts them).
const ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the application does not read: several leases' worth.
const BEHIND_FOR: Duration = Duration::from_secs(10);
const KEYS: usize = 4;
const PER_KEY: usize = 5;
const NEXT_DEADLINE: Duration = Duration::from_secs(20);

fn names(what: &str) -> (TopicName, GroupName) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    (
        TopicName::new(format!("{what}.{id}")).expect("topic"),
        GroupName::new(format!("{what}-{id}")).expect("group"),
    )
}

fn number_of(m: &Message) -> usize {
    m.payload_json().expect("JSON payload")["n"]
        .as_u64()
        .expect("a numbered message") as usize
}

async fn next(stream: &mut DeliveryStream, what: &str) -> runnel_core::bus::Delivery {
    tokio::time::timeout(NEXT_DEADLINE, stream.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {NEXT_DEADLINE:?}"))
        .unwrap_or_else(|| panic!("{what}: the stream ended"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A consumer that does not read for more than three ack timeouts still gets every message
/// exactly once, each on its first receive: the messages waiting in its buffer (heads) and
/// in its lanes (later messages of the same key) kept their leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_waiting_for_a_slow_application_keep_their_leases() {
    let Some(endpoint) =
        common::endpoint("messages_waiting_for_a_slow_application_keep_their_leases")
    else {
        return;
    };
    let publisher = common::bus(&endpoint);
    let subscriber = common::bus(&endpoint);
    let (topic, group) = names("leases");
    let options = SubscribeOptions {
        max_in_flight: 64,
        ack_timeout: ACK_TIMEOUT,
        start: StartPosition::Latest,
    };
    let mut stream = subscriber
        .subscribe(&topic, &group, options)
        .await
        .expect("subscribe");
    let sent: Vec<Message> = (0..KEYS * PER_KEY)
        .map(|n| {
            Message::json("Numbered", &serde_json::json!({ "n": n }))
                .with_key(format!("key-{}", n % KEYS))
        })
        .collect();
    publisher
        .publish(&topic, sent.clone())
        .await
        .expect("publish");

    // The first delivery shows the poller has received; the rest wait behind it.
    let first = next(&mut stream, "the first delivery").await;
    assert_eq!(first.attempt, 1);
    let mut seen = vec![first.message.id.clone()];
    let mut order = vec![number_of(&first.message)];
    first.ack().await.expect("ack the first delivery");

    // The application falls behind: the stream is not read for several leases.
    tokio::time::sleep(BEHIND_FOR).await;

    while seen.len() < sent.len() {
        let d = next(
            &mut stream,
            &format!("delivery {} of {}", seen.len() + 1, sent.len()),
        )
        .await;
        assert_eq!(
            d.attempt, 1,
            "message {} was received again while it waited for the application",
            d.message.id
        );
        seen.push(d.message.id.clone());
        order.push(number_of(&d.message));
        d.ack().await.expect("ack");
    }
    for key in 0..KEYS {
        let of_key: Vec<usize> = order.iter().copied().filter(|n| n % KEYS == key).collect();
        let mut sorted = of_key.clone();
        sorted.sort_unstable();
        assert_eq!(of_key, sorted, "key-{key} out of order");
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a message was delivered twice");
    let expected: HashSet<&String> = sent.iter().map(|m| &m.id).collect();
    assert_eq!(unique, expected, "every message, once");

    // Nothing comes back once everything is acked, not even after a lease has passed.
    let quiet = ACK_TIMEOUT + Duration::from_secs(2);
    if let Ok(Some(extra)) = tokio::time::timeout(quiet, stream.next()).await {
        let extra = extra.map(|d| (d.message.id.clone(), d.attempt));
        panic!("after every message was acked, the stream still yielded {extra:?}");
    }
}
