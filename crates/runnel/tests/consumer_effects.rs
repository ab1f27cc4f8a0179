//! What a handler's work leaves behind: published effects carry correlation and causation,
//! and duplicates are absorbed by the dedup window and the transactional inbox.

mod consumer_support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use consumer_support::*;
use runnel::consumer::inbox::{InboxKey, MemoryInbox, MemoryInboxScope};
use runnel::consumer::layers::DedupLayer;
use runnel::consumer::{Consumer, HandlerContext, HandlerError, HandlerService, Outcome};
use runnel::core::bus::Publisher;
use runnel::core::idempotency::{DedupClaim, DedupStore};
use runnel::core::message::{Message, TopicName};
use runnel::retry::RetryPolicy;
use tokio::sync::Barrier;
use tower::{ServiceBuilder, ServiceExt};

fn effects_topic() -> TopicName {
    TopicName::new("effects").unwrap()
}

#[tokio::test(start_paused = true)]
async fn published_effects_carry_correlation_and_causation() {
    let bus = FakeBus::new();
    let publisher = Arc::new(RecordingPublisher::default());
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(|ctx: HandlerContext| async move {
            let effect = Message::json("InvoiceRequested", &serde_json::json!({}));
            if ctx.message().id == "m-1" {
                ctx.publish(&effects_topic(), vec![effect]).await?;
                // The first attempt fails after publishing: its effect must not escape.
                if ctx.attempt() == 1 {
                    return Err(HandlerError::retryable(std::io::Error::other("flaky")));
                }
            } else {
                // Through the wrapper as a plain `Publisher`, as library code would.
                let publisher: Arc<dyn Publisher> = Arc::new(ctx.publisher());
                publisher.publish(&effects_topic(), vec![effect]).await?;
            }
            Ok(())
        })
        .publisher(publisher.clone())
        .dead_letters(MemoryDeadLetters::new())
        .retry(RetryPolicy::immediate(3))
        .start()
        .await
        .unwrap();

    let mut m1 = msg("m-1", Some("Order-1"));
    m1.correlation_id = Some("corr-1".into());
    m1.causation_id = Some("the-command".into());
    m1.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    m1 = m1.with_header("userid", "user-7");
    bus.deliver(m1.clone());
    bus.deliver(msg("m-2", Some("Order-2"))); // no correlation id of its own
    bus.wait_acked(&["m-1", "m-2"]).await;

    let published = publisher.published.lock().unwrap().clone();
    assert_eq!(
        published.len(),
        2,
        "a failed attempt's effect was published: {published:#?}"
    );
    let of = |cause: &str| {
        published
            .iter()
            .find(|(_, m)| m.causation_id.as_deref() == Some(cause))
            .unwrap_or_else(|| panic!("no effect caused by {cause}"))
            .clone()
    };
    let (topic1, e1) = of("m-1");
    assert_eq!(topic1, effects_topic());
    assert_eq!(e1.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(e1.traceparent, m1.traceparent);
    assert_eq!(e1.headers.get("userid").map(String::as_str), Some("user-7"));
    let (_, e2) = of("m-2");
    // A message without a correlation id starts one: its own id.
    assert_eq!(e2.correlation_id.as_deref(), Some("m-2"));
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dedup_layer_returns_cached_result_for_duplicate() {
    let store = Arc::new(MemoryDedup::default());
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let handler = move |ctx: HandlerContext| {
        let calls = Arc::clone(&c);
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            ctx.set_result(b"receipt-42".to_vec());
            Ok::<(), HandlerError>(())
        }
    };
    // The layer alone, over the handler, called directly the tower way.
    let svc = ServiceBuilder::new()
        .layer(DedupLayer::new(store.clone()))
        .service(HandlerService::new(handler));
    let ctx = || HandlerContext::detached(msg("charge-1", Some("k")), topic(), group());

    assert_eq!(svc.clone().oneshot(ctx()).await.unwrap(), Outcome::Handled);
    assert_eq!(
        svc.clone().oneshot(ctx()).await.unwrap(),
        Outcome::Duplicate {
            cached_result: Some(b"receipt-42".to_vec())
        }
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the duplicate ran the handler"
    );

    // A concurrent holder: the duplicate waits for its result instead of running.
    let key = format!("{}/{}/charge-2", topic(), group());
    let DedupClaim::Acquired { token } = store.claim(&key, Duration::from_secs(60)).await.unwrap()
    else {
        panic!("the key was taken")
    };
    let holder = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(350)).await;
            store
                .complete(
                    &key,
                    &token,
                    b"receipt-43".to_vec(),
                    Duration::from_secs(60),
                )
                .await
                .unwrap();
        })
    };
    let dup = HandlerContext::detached(msg("charge-2", Some("k")), topic(), group());
    assert_eq!(
        svc.clone().oneshot(dup).await.unwrap(),
        Outcome::Duplicate {
            cached_result: Some(b"receipt-43".to_vec())
        }
    );
    holder.await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(
        store.claims.load(Ordering::SeqCst) >= 4,
        "the waiter did not poll the claim"
    );

    // And in a consumer: the redelivered duplicate is acknowledged without a second run.
    let bus = FakeBus::new();
    let consumer_calls = Arc::new(AtomicU32::new(0));
    let cc = Arc::clone(&consumer_calls);
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(move |ctx: HandlerContext| {
            let calls = Arc::clone(&cc);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                ctx.set_result(b"done".to_vec());
                Ok(())
            }
        })
        .dedup(store.clone())
        .dead_letters(MemoryDeadLetters::new())
        .start()
        .await
        .unwrap();
    bus.deliver(msg("charge-1", Some("k"))); // handled above: a duplicate
    bus.deliver(msg("charge-3", Some("k"))); // new
    bus.wait_acked(&["charge-1", "charge-3"]).await;
    assert_eq!(
        consumer_calls.load(Ordering::SeqCst),
        1,
        "the duplicate ran the handler"
    );
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dedup_lock_is_released_when_the_handler_fails() {
    let store = Arc::new(MemoryDedup::default());
    let svc = ServiceBuilder::new()
        .layer(DedupLayer::new(store.clone()))
        .service(HandlerService::new(|_ctx: HandlerContext| async {
            Err(HandlerError::retryable(std::io::Error::other("smtp down")))
        }));
    let ctx = HandlerContext::detached(msg("mail-1", None), topic(), group());
    assert!(svc.oneshot(ctx).await.is_err());
    let key = format!("{}/{}/mail-1", topic(), group());
    assert!(matches!(
        store.claim(&key, Duration::from_secs(1)).await.unwrap(),
        DedupClaim::Acquired { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn duplicate_delivery_has_single_effect() {
    let bus = FakeBus::new();
    let inbox = Arc::new(MemoryInbox::new());
    let runs = Arc::new(AtomicU32::new(0));
    // Two copies of "twin" are handled at the same time (no key): both wait here.
    let twins_meet = Arc::new(Barrier::new(2));
    let (r, b) = (Arc::clone(&runs), Arc::clone(&twins_meet));
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(move |ctx: HandlerContext| {
            let (runs, barrier) = (Arc::clone(&r), Arc::clone(&b));
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let id = ctx.message().id.clone();
                if id == "twin" {
                    barrier.wait().await;
                }
                let mut scope = ctx.scope::<MemoryInboxScope>().await?;
                scope.record(format!("invoice for {id}"));
                Ok(())
            }
        })
        .inbox(inbox.clone())
        .dead_letters(MemoryDeadLetters::new())
        .start()
        .await
        .unwrap();

    // A redelivery after the first was handled: skipped before the handler.
    bus.deliver(msg("order-1", Some("Order-1")));
    bus.wait_acked(&["order-1"]).await;
    bus.deliver_attempt(msg("order-1", Some("Order-1")), 2);
    bus.settled
        .wait_until("the duplicate's ack", |e| {
            e.iter()
                .filter(|e| e.message_id == "order-1" && e.kind == SettleKind::Ack)
                .count()
                == 2
        })
        .await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the known duplicate ran the handler"
    );

    // Two concurrent copies: both run, one commits, the other's writes are discarded.
    bus.deliver(msg("twin", None));
    bus.deliver(msg("twin", None));
    bus.settled
        .wait_until("both twins' acks", |e| {
            e.iter()
                .filter(|e| e.message_id == "twin" && e.kind == SettleKind::Ack)
                .count()
                == 2
        })
        .await;
    assert_eq!(runs.load(Ordering::SeqCst), 3);

    assert_eq!(
        inbox.effects(),
        vec![
            "invoice for order-1".to_string(),
            "invoice for twin".to_string()
        ],
        "a duplicate delivery left a second effect"
    );
    assert!(inbox.is_processed(&InboxKey {
        handler: format!("{}/{}", topic(), group()),
        message_id: "twin".into(),
    }));
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failed_attempt_commits_nothing_to_the_inbox() {
    let bus = FakeBus::new();
    let inbox = Arc::new(MemoryInbox::new());
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(|ctx: HandlerContext| async move {
            {
                let mut scope = ctx.scope::<MemoryInboxScope>().await?;
                scope.record(format!("attempt {}", ctx.attempt()));
            }
            if ctx.attempt() == 1 {
                return Err(HandlerError::retryable(std::io::Error::other("flaky")));
            }
            Ok(())
        })
        .inbox(inbox.clone())
        .dead_letters(MemoryDeadLetters::new())
        .retry(RetryPolicy::immediate(2))
        .start()
        .await
        .unwrap();
    bus.deliver(msg("m-1", Some("k")));
    bus.wait_acked(&["m-1"]).await;
    assert_eq!(inbox.effects(), vec!["attempt 2".to_string()]);
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn asking_for_a_scope_without_an_inbox_is_a_clear_permanent_error() {
    let ctx = HandlerContext::detached(msg("m", None), topic(), group());
    let err = ctx.scope::<MemoryInboxScope>().await.unwrap_err();
    assert_eq!(err.kind(), runnel::consumer::ErrorKind::Permanent);
    assert!(err.to_string().contains("no inbox layer"), "{err}");
}
