//! Dead letters over SNS/SQS: the consumer router's dead-letter layer writes to the one
//! `DeadLetterStore` and a replay through the SQS publisher is handled; the native SQS
//! dead-letter queue (redrive after `max_deliveries` receives) drains into the same store.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use runnel::consumer::{Consumer, HandlerContext, HandlerError};
use runnel::dead_letter::{ReplaySelection, ReplayTarget, Replayer};
use runnel_core::bus::{DeadLetterDrain, Publisher, StartPosition, SubscribeOptions, Subscriber};
use runnel_core::dead_letter::{DeadLetterFilter, DeadLetterStore};
use runnel_core::{GroupName, Message, TopicName};
use runnel_sqlite::{SqliteDeadLetters, SqliteStore};

const DEADLINE: Duration = Duration::from_secs(30);

fn fresh(what: &str) -> (TopicName, GroupName) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    (
        TopicName::new(format!("dlq.{what}.{id}")).expect("topic"),
        GroupName::new(format!("{what}-{id}")).expect("group"),
    )
}

async fn wait_until<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    runnel_testkit::harness::wait_until(DEADLINE, what, check).await;
}

fn store() -> Arc<SqliteDeadLetters> {
    Arc::new(SqliteDeadLetters::new(
        SqliteStore::open_temporary().expect("temporary SQLite store"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_dead_letters_reach_the_store_and_replay_through_sqs() {
    let Some(endpoint) =
        common::endpoint("router_dead_letters_reach_the_store_and_replay_through_sqs")
    else {
        return;
    };
    let bus = common::bus(&endpoint);
    let (topic, group) = fresh("router");
    let dead = store();
    let broken = Arc::new(AtomicBool::new(true));
    let handled = Arc::new(Mutex::new(Vec::<String>::new()));
    let (b, h) = (broken.clone(), handled.clone());
    let consumer = Consumer::builder(bus.clone(), topic.clone(), group.clone())
        .handler(move |ctx: HandlerContext| {
            let (broken, handled) = (b.clone(), h.clone());
            async move {
                if broken.load(Ordering::SeqCst) {
                    return Err(HandlerError::permanent(std::io::Error::other(
                        "billing rejects the order: unknown customer c-9",
                    )));
                }
                handled.lock().expect("log").push(ctx.message().id.clone());
                Ok(())
            }
        })
        .dead_letters(dead.clone())
        .subscribe_options(SubscribeOptions {
            max_in_flight: 8,
            ack_timeout: Duration::from_secs(30),
            start: StartPosition::Latest,
            ..Default::default()
        })
        .start()
        .await
        .expect("start the consumer");

    let placed = Message::json("OrderPlaced", &serde_json::json!({"order": 7})).with_key("Order-7");
    bus.publish(&topic, vec![placed.clone()])
        .await
        .expect("publish");
    let filter = DeadLetterFilter {
        topic: Some(topic.clone()),
        group: Some(group.clone()),
        ..DeadLetterFilter::default()
    };
    wait_until("the dead letter", || async {
        dead.count(&filter).await.unwrap_or(0) == 1
    })
    .await;
    let letters = dead.list(&filter, None, 10).await.expect("list");
    assert_eq!(letters[0].message.id, placed.id);
    assert_eq!(letters[0].message.payload, placed.payload);
    assert!(letters[0].failures[0].error.contains("unknown customer"));
    assert!(handled.lock().expect("log").is_empty());

    broken.store(false, Ordering::SeqCst);
    let replayer = Replayer::new(dead.clone(), bus.clone());
    replayer
        .replay(
            &ReplaySelection::One(letters[0].id),
            &ReplayTarget::OwnGroup,
            &mut |_| {},
        )
        .await
        .expect("replay");
    wait_until("the replayed message to be handled", || async {
        handled.lock().expect("log").contains(&placed.id)
    })
    .await;
    consumer
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_dead_letter_queue_drains_into_the_store() {
    let Some(endpoint) = common::endpoint("native_dead_letter_queue_drains_into_the_store") else {
        return;
    };
    let bus =
        runnel_sqs::connect(&common::url(&endpoint, "&wait=0s&max_deliveries=2")).expect("connect");
    let (topic, group) = fresh("native");
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
    let crashing = Message::json("Crashes", &serde_json::json!({"boom": true})).with_key("k");
    bus.publish(&topic, vec![crashing.clone()])
        .await
        .expect("publish");
    // A consumer that "crashes" on it every time: never acked, never nacked.
    for attempt in 1..=2u32 {
        let d = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("a delivery in time")
            .expect("the stream is open")
            .expect("a delivery");
        assert_eq!(
            (d.message.id.clone(), d.attempt),
            (crashing.id.clone(), attempt)
        );
        drop(d);
    }
    drop(stream);
    let dead = store();
    let mut moved = 0;
    let start = Instant::now();
    while moved == 0 {
        assert!(start.elapsed() < DEADLINE, "nothing reached the native DLQ");
        // SQS moves the message when it would be received a third time: poll the group
        // (as any consumer would) to let that happen, then drain.
        let mut s = bus
            .subscribe(&topic, &group, SubscribeOptions::default())
            .await
            .expect("subscribe again");
        if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(1500), s.next()).await {
            panic!(
                "message delivered a third time (attempt {}) instead of going to the DLQ",
                d.attempt
            );
        }
        drop(s);
        // Through the transport-neutral trait, as `runnel dlq drain --bus URL` does.
        let drain: &dyn DeadLetterDrain = &*bus;
        moved = drain
            .drain_dead_letters(&topic, &group, &*dead, 10)
            .await
            .expect("drain");
    }
    assert_eq!(moved, 1);
    let letters = dead
        .list(&DeadLetterFilter::default(), None, 10)
        .await
        .expect("list");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message, crashing);
    assert_eq!((&letters[0].topic, &letters[0].group), (&topic, &group));
    assert!(letters[0].failures[0].error.contains("maxReceiveCount"));
}
