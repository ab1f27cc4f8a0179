//! Dead letters from NATS land in the one `DeadLetterStore`: the router's (a handler that
//! keeps failing) directly, and the transport's native backstop (a message whose
//! consumers keep crashing, moved to the dead-letter stream after `max_deliveries`
//! deliveries) by the bus's `DeadLetterDrain`. Both replay through the NATS
//! publisher.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use runnel::consumer::{Consumer, HandlerContext, HandlerError};
use runnel::core::bus::{DeadLetterDrain, Publisher, SubscribeOptions, Subscriber};
use runnel::core::dead_letter::{DeadLetterFilter, DeadLetterStore};
use runnel::core::{GroupName, Message, TopicName};
use runnel::dead_letter::{ReplaySelection, ReplayTarget, Replayer};
use runnel::retry::RetryPolicy;
use runnel::sqlite::{SqliteDeadLetters, SqliteStore};

const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

fn nats_url() -> Option<String> {
    match std::env::var("RUNNEL_TEST_NATS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "RUNNEL_REQUIRE_SERVICES=1 but RUNNEL_TEST_NATS_URL is not set"
            );
            eprintln!("SKIPPED: RUNNEL_TEST_NATS_URL is not set");
            None
        }
    }
}

fn fresh(what: &str) -> (TopicName, GroupName) {
    let suffix = runnel::core::uuid::Uuid::now_v7().simple().to_string();
    (
        TopicName::new(format!("{what}.{suffix}")).expect("topic"),
        GroupName::new(format!("{what}-{suffix}")).expect("group"),
    )
}

async fn wait_until<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    runnel_testkit::harness::wait_until(DEADLINE, what, condition).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_dead_letters_land_in_the_store_and_replay_through_nats() {
    let Some(url) = nats_url() else { return };
    let bus = runnel_nats::connect(&url).await.expect("connect");
    let (topic, group) = fresh("dlq");
    let dead_letters: Arc<dyn DeadLetterStore> = Arc::new(SqliteDeadLetters::new(
        SqliteStore::open_temporary().expect("sqlite"),
    ));
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();

    let broken = Arc::new(AtomicBool::new(true));
    let (b, h) = (broken.clone(), handled.clone());
    let consumer = Consumer::builder(bus.clone(), topic.clone(), group.clone())
        .handler(move |ctx: HandlerContext| {
            let (broken, handled) = (b.clone(), h.clone());
            async move {
                if broken.load(Ordering::SeqCst) {
                    return Err(HandlerError::retryable(std::io::Error::other(
                        "the ledger is down",
                    )));
                }
                handled
                    .lock()
                    .expect("handled")
                    .push(ctx.message().id.clone());
                Ok(())
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
    wait_until("the dead letter", || {
        let (store, f) = (dead_letters.clone(), filter.clone());
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
    assert!(handled.lock().expect("handled").is_empty());

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
    wait_until("the replayed message handled", || {
        let h = handled.clone();
        async move { !h.lock().expect("handled").is_empty() }
    })
    .await;
    assert_eq!(handled.lock().expect("handled")[0], message.id);
    consumer
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_consumers_hit_max_deliver_and_the_native_dead_letter_drains_to_the_store() {
    let Some(url) = nats_url() else { return };
    let sep = if url.contains('?') { '&' } else { '?' };
    let bus = runnel_nats::connect(&format!("{url}{sep}max_deliveries=2"))
        .await
        .expect("connect");
    let (topic, group) = fresh("poison");
    let opts = SubscribeOptions {
        max_in_flight: 4,
        ack_timeout: Duration::from_secs(1),
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
        match tokio::time::timeout(Duration::from_secs(4), stream.next()).await {
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
            Err(_) => break, // no longer delivered: the backstop dead-lettered it
        }
        assert!(
            crashes <= 10,
            "the backstop never dead-lettered the message"
        );
    }
    assert_eq!(
        crashes, 2,
        "delivered max_deliveries times, then dead-lettered"
    );

    let store = SqliteDeadLetters::new(SqliteStore::open_temporary().expect("sqlite"));
    let filter = DeadLetterFilter {
        topic: Some(topic.clone()),
        group: Some(group.clone()),
        ..DeadLetterFilter::default()
    };
    // Through the transport-neutral trait, as `runnel dlq drain --bus URL` does.
    let drain: &dyn DeadLetterDrain = &*bus;
    let until = Instant::now() + DEADLINE;
    loop {
        drain
            .drain_dead_letters(&topic, &group, &store, 100)
            .await
            .expect("drain");
        if store.count(&filter).await.expect("count") > 0 {
            break;
        }
        assert!(Instant::now() < until, "no native dead letter");
        tokio::time::sleep(POLL).await;
    }
    let dead = store.list(&filter, None, 10).await.expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message, poison);
    assert!(
        dead[0].failures[0].error.contains("max_deliver"),
        "{}",
        dead[0].failures[0].error
    );
    assert_eq!(dead[0].failures[0].attempt, 3);

    // Replayed through the NATS publisher, it reaches the group again.
    let mut stream = bus
        .subscribe(&topic, &group, opts.clone())
        .await
        .expect("subscribe");
    let report = Replayer::new(Arc::new(store), bus.clone())
        .replay(
            &ReplaySelection::One(dead[0].id),
            &ReplayTarget::OwnGroup,
            &mut |_| {},
        )
        .await
        .expect("replay");
    assert_eq!(report.replayed, 1);
    let d = tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("the replayed message within the deadline")
        .expect("open")
        .expect("a delivery");
    assert_eq!(d.message.id, poison.id);
    d.ack().await.expect("ack");
}
