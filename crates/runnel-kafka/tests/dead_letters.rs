//! Dead letters from the Kafka transport land in the one `DeadLetterStore` and replay
//! through `runnel::dead_letter` (what `runnel dlq replay` runs):
//! * the router's dead-letter layer: retries exhausted → stored with the failures →
//!   handler fixed → replayed to its group → handled once;
//! * the transport's native backstop: a message delivered `max_deliveries` times without
//!   being settled moves to `<topic>.dlq`, the bus's `DeadLetterDrain` moves it into the
//!   store, and a replay brings it back.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use runnel::consumer::{Consumer, HandlerContext, HandlerError};
use runnel::dead_letter::{ReplaySelection, ReplayTarget, Replayer};
use runnel::RetryPolicy;
use runnel_core::bus::{DeadLetterDrain, Publisher, StartPosition, SubscribeOptions, Subscriber};
use runnel_core::dead_letter::{DeadLetterFilter, DeadLetterStore};
use runnel_core::Message;
use runnel_kafka::{KafkaBus, KafkaOptions};
use serde_json::json;
use support::SqliteSide;

/// Longest wait for one delivery.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn router_dead_letters_land_in_the_store_and_replay_through_kafka() {
    let Some(brokers) =
        support::brokers("router_dead_letters_land_in_the_store_and_replay_through_kafka")
    else {
        return;
    };
    let bus = Arc::new(KafkaBus::new(KafkaOptions::new(&brokers)).expect("bus"));
    let side = Arc::new(SqliteSide::new().await);
    let topic = support::fresh_topic("dlq-router");
    let group = support::fresh_group("billing");
    let broken = Arc::new(AtomicBool::new(true));
    let b = broken.clone();
    let consumer = Consumer::builder(bus.clone(), topic.clone(), group.clone())
        .inbox(side.inbox.clone())
        .handler(move |ctx: HandlerContext| {
            let broken = b.clone();
            async move {
                if broken.load(Ordering::SeqCst) {
                    return Err(HandlerError::retryable(std::io::Error::other(
                        "billing is down: payment gateway unreachable",
                    )));
                }
                SqliteSide::write_effect(&ctx).await
            }
        })
        .retry(RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
        })
        .dead_letters(side.dead_letters.clone())
        .subscribe_options(SubscribeOptions {
            start: StartPosition::Earliest,
            ..SubscribeOptions::default()
        })
        .start()
        .await
        .expect("start the consumer");

    let order = Message::json("OrderPlaced", &json!({ "n": 7 })).with_key("Order-7");
    bus.publish(&topic, vec![order.clone()])
        .await
        .expect("publish");

    let of_group = DeadLetterFilter {
        topic: Some(topic.clone()),
        group: Some(group.clone()),
        ..DeadLetterFilter::default()
    };
    support::wait_for("the failing message to be dead-lettered", || async {
        side.dead_letters.count(&of_group).await.expect("count") == 1
    })
    .await;
    let dead = side
        .dead_letters
        .list(&of_group, None, 10)
        .await
        .expect("list");
    assert_eq!(dead[0].message.id, order.id);
    assert_eq!(dead[0].message.key.as_deref(), Some("Order-7"));
    assert_eq!(dead[0].failures.len(), 3, "every attempt recorded");
    assert!(dead[0].failures[2]
        .error
        .contains("payment gateway unreachable"));
    assert!(side.effects().await.is_empty());

    broken.store(false, Ordering::SeqCst);
    let replayer = Replayer::new(side.dead_letters.clone(), bus.clone());
    let report = replayer
        .replay(
            &ReplaySelection::One(dead[0].id),
            &ReplayTarget::OwnGroup,
            &mut |_| {},
        )
        .await
        .expect("replay");
    assert_eq!((report.replayed, report.skipped), (1, 0));
    support::wait_for("the replayed message to be handled", || async {
        !side.effects().await.is_empty()
    })
    .await;
    consumer
        .shutdown(Duration::from_secs(10))
        .await
        .expect("shut down");
    let effects = side.effects().await;
    assert_eq!(effects.len(), 1, "handled once: {effects:?}");
    assert_eq!(effects[0].message_id, order.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_over_max_deliveries_move_to_the_native_dlq_and_drain_into_the_store() {
    let Some(brokers) = support::brokers(
        "messages_over_max_deliveries_move_to_the_native_dlq_and_drain_into_the_store",
    ) else {
        return;
    };
    let mut options = KafkaOptions::new(&brokers);
    options.max_deliveries = 2;
    // Under a prefix: the dead-letter topic and the drain's group are namespaced too.
    options.prefix = format!("dlqrun{}", uuid::Uuid::now_v7().simple());
    let bus = Arc::new(KafkaBus::new(options).expect("bus"));
    let side = SqliteSide::new().await;
    let topic = support::fresh_topic("dlq-native");
    let group = support::fresh_group("crashy");
    let mut stream = bus
        .subscribe(
            &topic,
            &group,
            SubscribeOptions {
                max_in_flight: 4,
                ack_timeout: Duration::from_secs(1),
                start: StartPosition::Latest,
                ..Default::default()
            },
        )
        .await
        .expect("subscribe");
    let poison = Message::json("PoisonPill", &json!({ "n": 1 })).with_key("k");
    let next = Message::json("Healthy", &json!({ "n": 2 })).with_key("k");
    bus.publish(&topic, vec![poison.clone(), next.clone()])
        .await
        .expect("publish");

    // Two deliveries that are never settled (the handler "crashes" each time).
    let mut held = Vec::new();
    for attempt in 1..=2u32 {
        let d = tokio::time::timeout(DELIVERY_DEADLINE, stream.next())
            .await
            .expect("a delivery")
            .expect("open")
            .expect("ok");
        assert_eq!(
            (d.message.id.as_str(), d.attempt),
            (poison.id.as_str(), attempt)
        );
        held.push(d);
    }
    // Then the key moves on: the poison went to the dead-letter topic.
    let d = tokio::time::timeout(DELIVERY_DEADLINE, stream.next())
        .await
        .expect("the next message of the key")
        .expect("open")
        .expect("ok");
    assert_eq!(d.message.id, next.id);
    d.ack().await.expect("ack");

    let store: Arc<dyn DeadLetterStore> = side.dead_letters.clone();
    // Through the transport-neutral trait, as `runnel dlq drain --bus URL` does.
    let drain: &dyn DeadLetterDrain = &*bus;
    let moved = drain
        .drain_dead_letters(&topic, &group, &*store, 100)
        .await
        .expect("drain");
    assert_eq!(moved, 1);
    let dead = store
        .list(&DeadLetterFilter::default(), None, 10)
        .await
        .expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message, poison, "the message is stored unchanged");
    assert_eq!((&dead[0].topic, &dead[0].group), (&topic, &group));
    assert_eq!(dead[0].failures[0].attempt, 2);

    // Replayed to its group, it is delivered again (a new record, attempt 1).
    let replayer = Replayer::new(store.clone(), bus.clone());
    let report = replayer
        .replay(
            &ReplaySelection::One(dead[0].id),
            &ReplayTarget::OwnGroup,
            &mut |_| {},
        )
        .await
        .expect("replay");
    assert_eq!(report.replayed, 1);
    let d = tokio::time::timeout(DELIVERY_DEADLINE, stream.next())
        .await
        .expect("the replayed message")
        .expect("open")
        .expect("ok");
    assert_eq!(d.message.id, poison.id);
    assert_eq!(d.attempt, 1);
    d.ack().await.expect("ack");
    drop(held);
}
