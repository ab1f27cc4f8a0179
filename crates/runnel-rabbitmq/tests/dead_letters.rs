//! Dead letters from RabbitMQ land in the one `DeadLetterStore`: the router's (a handler
//! that keeps failing) directly, and the broker's native ones (a message whose consumers
//! keep crashing, dead-lettered by the quorum queue's delivery limit) by draining the
//! group's dead-letter queue. Both replay through the RabbitMQ publisher.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use runnel::consumer::{Consumer, HandlerContext, HandlerError};
use runnel::core::bus::{DeadLetterDrain, Publisher, SubscribeOptions, Subscriber};
use runnel::core::dead_letter::{DeadLetterFilter, DeadLetterStore};
use runnel::core::{GroupName, Message, TopicName};
use runnel::dead_letter::{ReplaySelection, ReplayTarget, Replayer};
use runnel::retry::RetryPolicy;
use runnel::sqlite::SqliteDeadLetters;
use runnel_rabbitmq::{RabbitBus, RabbitOptions};

const DEADLINE: Duration = Duration::from_secs(30);

fn fresh(what: &str) -> (TopicName, GroupName) {
    let suffix = runnel::core::uuid::Uuid::now_v7().simple().to_string();
    (
        TopicName::new(format!("{what}.{suffix}")).expect("topic"),
        GroupName::new(format!("{what}-{suffix}")).expect("group"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_dead_letters_land_in_the_store_and_replay_through_rabbitmq() {
    let Some(options) = common::test_options() else {
        return;
    };
    let bus = RabbitBus::connect(options).await.expect("connect");
    let (topic, group) = fresh("dlq");
    let effects = Arc::new(common::Effects::new().await);
    let dead_letters: Arc<dyn DeadLetterStore> =
        Arc::new(SqliteDeadLetters::new(effects.store.clone()));

    let broken = Arc::new(AtomicBool::new(true));
    let b = broken.clone();
    let consumer = Consumer::builder(bus.clone(), topic.clone(), group.clone())
        .inbox(effects.inbox.clone())
        .handler(move |ctx: HandlerContext| {
            let broken = b.clone();
            async move {
                if broken.load(Ordering::SeqCst) {
                    return Err(HandlerError::retryable(std::io::Error::other(
                        "the ledger is down",
                    )));
                }
                common::Effects::write(&ctx).await
            }
        })
        .retry(RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        })
        .dead_letters(dead_letters.clone())
        .start()
        .await
        .expect("start the consumer");

    let message = Message::json("PaymentReceived", &serde_json::json!({"n": 1})).with_key("Pay-1");
    bus.publish(&topic, vec![message.clone()])
        .await
        .expect("publish");

    let filter = DeadLetterFilter {
        topic: Some(topic.clone()),
        group: Some(group.clone()),
        ..DeadLetterFilter::default()
    };
    let store = dead_letters.clone();
    let f = filter.clone();
    common::wait_for("the dead letter", DEADLINE, || {
        let (store, f) = (store.clone(), f.clone());
        async move { store.count(&f).await.unwrap_or(0) == 1 }
    })
    .await;
    let dead = dead_letters.list(&filter, None, 10).await.expect("list");
    assert_eq!(
        dead[0].message, message,
        "the dead letter keeps the whole message"
    );
    assert_eq!(dead[0].failures.len(), 3, "every attempt is in its history");
    assert!(dead[0].failures[2].error.contains("the ledger is down"));
    assert!(effects.all().await.is_empty());

    broken.store(false, Ordering::SeqCst);
    let report = Replayer::new(dead_letters.clone(), bus.clone())
        .replay(
            &ReplaySelection::One(dead[0].id),
            &ReplayTarget::OwnGroup,
            &mut |_| {},
        )
        .await
        .expect("replay");
    assert_eq!(report.replayed, 1);
    let e = effects.clone();
    common::wait_for("the replayed message handled", DEADLINE, || {
        let e = e.clone();
        async move { !e.all().await.is_empty() }
    })
    .await;
    assert_eq!(effects.all().await[0].message_id, message.id);
    consumer
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_consumers_hit_the_delivery_limit_and_the_native_dead_letter_drains_to_the_store()
{
    let Some(url) = common::test_url() else {
        return;
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let options = RabbitOptions::from_url(&format!("{url}{sep}max_deliveries=2&group_expires=10m"))
        .expect("options");
    let bus = RabbitBus::connect(options).await.expect("connect");
    let (topic, group) = fresh("poison");
    let opts = SubscribeOptions {
        max_in_flight: 4,
        ack_timeout: Duration::from_secs(30),
        ..SubscribeOptions::default()
    };
    // Create the group, then publish the message its consumers crash on.
    drop(
        bus.subscribe(&topic, &group, opts.clone())
            .await
            .expect("subscribe"),
    );
    let poison = Message::json("Poison", &serde_json::json!({"n": 666})).with_key("P-1");
    bus.publish(&topic, vec![poison.clone()])
        .await
        .expect("publish");

    let mut crashes = 0;
    loop {
        let mut stream = bus
            .subscribe(&topic, &group, opts.clone())
            .await
            .expect("subscribe");
        match tokio::time::timeout(Duration::from_secs(3), stream.next()).await {
            Ok(Some(Ok(d))) => {
                assert_eq!(d.message.id, poison.id);
                assert_eq!(
                    d.attempt as usize,
                    crashes + 1,
                    "each crash counts as an attempt"
                );
                crashes += 1;
                // The crash: the delivery and the stream dropped unacknowledged.
                drop(d);
                drop(stream);
            }
            Ok(other) => panic!("unexpected end of the subscription: {other:?}"),
            Err(_) => break, // no longer delivered: the broker dead-lettered it
        }
        assert!(
            crashes <= 10,
            "the delivery limit never dead-lettered the message"
        );
    }
    assert!(
        crashes >= 2,
        "delivered {crashes} times before it was dead-lettered"
    );

    let effects = common::Effects::new().await;
    let store = SqliteDeadLetters::new(effects.store.clone());
    // Through the transport-neutral trait, as `runnel dlq drain --bus URL` does.
    let drain: &dyn DeadLetterDrain = &*bus;
    let mut moved = 0;
    let until = std::time::Instant::now() + DEADLINE;
    while moved == 0 {
        moved += drain
            .drain_dead_letters(&topic, &group, &store, 100)
            .await
            .expect("drain");
        assert!(std::time::Instant::now() < until, "no native dead letter");
        if moved == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(moved, 1);
    let dead = store
        .list(&DeadLetterFilter::default(), None, 10)
        .await
        .expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message, poison);
    assert_eq!((&dead[0].topic, &dead[0].group), (&topic, &group));
    assert!(
        dead[0].failures[0].error.contains("delivery_limit"),
        "{}",
        dead[0].failures[0].error
    );
    // It replays like any other dead letter.
    let report = Replayer::new(Arc::new(store), bus.clone())
        .replay(
            &ReplaySelection::One(dead[0].id),
            &ReplayTarget::OwnGroup,
            &mut |_| {},
        )
        .await
        .expect("replay");
    assert_eq!(report.replayed, 1);
    let mut stream = bus
        .subscribe(&topic, &group, opts)
        .await
        .expect("subscribe");
    let d = tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("the replayed message")
        .expect("a delivery")
        .expect("no error");
    assert_eq!(d.message.id, poison.id);
    d.ack().await.expect("ack");
}
