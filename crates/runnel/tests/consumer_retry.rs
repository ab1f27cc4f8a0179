//! The consumer router's failure path: retries with backoff, permanent errors, timeouts,
//! dead letters and what happens when the dead-letter store itself fails.

mod consumer_support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consumer_support::*;
use runnel::consumer::layers::DEAD_LETTER_STORE_FAILURE_NACK_DELAY;
use runnel::consumer::{Consumer, ErrorKind, HandlerContext, HandlerError};
use runnel::core::bus::SubscribeOptions;
use runnel::retry::{NoJitter, RetryPolicy};

fn policy(max_attempts: u32, base_ms: u64, max_ms: u64) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(base_ms),
        max_delay: Duration::from_millis(max_ms),
    }
}

#[tokio::test(start_paused = true)]
async fn poison_message_dead_lettered_after_max_attempts_without_blocking_other_keys() {
    let bus = FakeBus::new();
    let dead_letters = MemoryDeadLetters::new();
    let handled: Arc<Log<String>> = Log::new();
    let attempts_on_poison = Arc::new(AtomicU32::new(0));

    let (h, p) = (Arc::clone(&handled), Arc::clone(&attempts_on_poison));
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(move |ctx: HandlerContext| {
            let (handled, poison) = (Arc::clone(&h), Arc::clone(&p));
            async move {
                if ctx.message().id == "poison" {
                    poison.fetch_add(1, Ordering::SeqCst);
                    return Err(HandlerError::retryable(std::io::Error::other(
                        "boom: the payment gateway refused",
                    )));
                }
                handled.push(ctx.message().id.clone());
                Ok(())
            }
        })
        .dead_letters(dead_letters.clone())
        // Waits of 1 s, 2 s, 4 s (no jitter, for exact times) between 4 attempts.
        .retry(policy(4, 1000, 4000))
        .jitter(Arc::new(NoJitter))
        .clock(TokioClock::new())
        .start()
        .await
        .unwrap();

    let started = tokio::time::Instant::now();
    bus.deliver(msg("poison", Some("Order-A")));
    bus.deliver(msg("a-2", Some("Order-A")));
    bus.deliver(msg("b-1", Some("Order-B")));
    bus.deliver(msg("c-1", Some("Order-C")));

    // Other keys are handled while the poison message is still being retried.
    bus.wait_acked(&["b-1", "c-1"]).await;
    assert!(
        dead_letters.stored.snapshot().is_empty(),
        "other keys waited for the poison message to be dead-lettered"
    );
    assert!(attempts_on_poison.load(Ordering::SeqCst) < 4);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "other keys waited for a backoff"
    );
    assert!(
        !handled.snapshot().contains(&"a-2".to_string()),
        "a-2 overtook the earlier message of its key"
    );

    // The poison message is dead-lettered after its 4th attempt, then its key moves on.
    bus.wait_acked(&["poison", "a-2"]).await;
    assert_eq!(attempts_on_poison.load(Ordering::SeqCst), 4);
    let stored = dead_letters.stored.snapshot();
    assert_eq!(stored.len(), 1);
    let dl = &stored[0];
    assert_eq!(dl.message.id, "poison");
    assert_eq!(dl.topic, topic());
    assert_eq!(dl.group, group());
    let attempts: Vec<u32> = dl.failures.iter().map(|f| f.attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3, 4]);
    assert!(dl.failures.iter().all(|f| !f.permanent));
    assert!(dl
        .failures
        .iter()
        .all(|f| f.error.contains("payment gateway refused")));
    // First and last failure times are 1 + 2 + 4 = 7 s apart (virtual time).
    let first = dl.failures.first().unwrap().at;
    let last = dl.failures.last().unwrap().at;
    assert_eq!((last - first).num_milliseconds(), 7000);

    // Settlement order on key A: the poison message (dead-lettered = acked) before a-2.
    let order: Vec<String> = bus
        .settled
        .snapshot()
        .into_iter()
        .filter(|e| e.kind == SettleKind::Ack)
        .map(|e| e.message_id)
        .collect();
    let pos = |id: &str| order.iter().position(|x| x == id).unwrap();
    assert!(pos("poison") < pos("a-2"));
    assert_eq!(handled.snapshot().last().map(String::as_str), Some("a-2"));
    // Nothing was nacked or dropped: dead-lettered means acked.
    assert!(bus
        .settled
        .snapshot()
        .iter()
        .all(|e| e.kind == SettleKind::Ack));

    let report = consumer.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.acked, 4);
}

#[tokio::test(start_paused = true)]
async fn retry_backoff_grows_with_full_jitter_and_caps_at_max_delay() {
    // Scripted jitter: the whole ceiling four times, then half, then a quarter.
    let bus = FakeBus::new();
    let sleeper = Arc::new(RecordingSleeper::default());
    let dead_letters = MemoryDeadLetters::new();
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(|_ctx: HandlerContext| async {
            Err(HandlerError::retryable(std::io::Error::other("down")))
        })
        .dead_letters(dead_letters.clone())
        .retry(policy(7, 100, 500))
        .jitter(ScriptedJitter::new(&[1.0, 1.0, 1.0, 1.0, 0.5, 0.25]))
        .sleeper(sleeper.clone())
        .start()
        .await
        .unwrap();
    bus.deliver(msg("m-1", Some("k")));
    bus.wait_acked(&["m-1"]).await;
    let waits = sleeper.waits.lock().unwrap().clone();
    let ms = |n| Duration::from_millis(n);
    // Ceilings 100, 200, 400, then capped at 500; the draws are fractions of the ceiling.
    assert_eq!(
        waits,
        vec![ms(100), ms(200), ms(400), ms(500), ms(250), ms(125)]
    );
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();

    // With the real full jitter every wait lies in [0, ceiling] and never above max_delay,
    // and the waits are spread rather than all equal to the ceiling.
    let bus = FakeBus::new();
    let sleeper = Arc::new(RecordingSleeper::default());
    let p = policy(40, 100, 500);
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(|_ctx: HandlerContext| async {
            Err(HandlerError::retryable(std::io::Error::other("down")))
        })
        .dead_letters(MemoryDeadLetters::new())
        .retry(p)
        .sleeper(sleeper.clone())
        .start()
        .await
        .unwrap();
    bus.deliver(msg("m-2", Some("k")));
    bus.wait_acked(&["m-2"]).await;
    let waits = sleeper.waits.lock().unwrap().clone();
    assert_eq!(waits.len(), 39);
    for (i, wait) in waits.iter().enumerate() {
        let attempt = u32::try_from(i).unwrap() + 1;
        assert!(*wait <= p.delay_ceiling(attempt), "wait {i}: {wait:?}");
        assert!(*wait <= ms(500));
    }
    assert!(
        waits.iter().any(|w| *w < ms(250)),
        "39 draws and none in the lower half: not full jitter"
    );
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn retry_wait_longer_than_the_ack_timeout_extends_the_lease() {
    let bus = FakeBus::new();
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(move |_ctx: HandlerContext| {
            let calls = Arc::clone(&c);
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(HandlerError::retryable(std::io::Error::other("flaky")))
                } else {
                    Ok(())
                }
            }
        })
        .dead_letters(MemoryDeadLetters::new())
        .subscribe_options(SubscribeOptions {
            ack_timeout: Duration::from_secs(1),
            ..SubscribeOptions::default()
        })
        .handler_timeout(Duration::from_millis(500))
        // The first wait is 5 s: far longer than the 1 s lease.
        .retry(policy(3, 5000, 5000))
        .jitter(Arc::new(NoJitter))
        .start()
        .await
        .unwrap();
    bus.deliver(msg("m-1", Some("k")));
    bus.wait_acked(&["m-1"]).await;
    assert_eq!(
        bus.events_for("m-1"),
        vec![
            SettleKind::Extend(Duration::from_secs(6)), // the 5 s wait + a fresh 1 s lease
            SettleKind::Ack
        ]
    );
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn permanent_error_skips_retries() {
    let bus = FakeBus::new();
    let dead_letters = MemoryDeadLetters::new();
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(move |ctx: HandlerContext| {
            let calls = Arc::clone(&c);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                match ctx.message().id.as_str() {
                    "rule" => Err(HandlerError::permanent(std::io::Error::other(
                        "order total is negative",
                    ))),
                    // `?` on a JSON error: permanent by the default classifier.
                    _ => {
                        serde_json::from_str::<u32>("not json")?;
                        Ok(())
                    }
                }
            }
        })
        .dead_letters(dead_letters.clone())
        .retry(policy(5, 1000, 1000))
        .start()
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    bus.deliver(msg("rule", Some("a")));
    bus.deliver(msg("json", Some("b")));
    bus.wait_acked(&["rule", "json"]).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a permanent error was retried"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "waited for a backoff"
    );
    let stored = dead_letters.stored.snapshot();
    assert_eq!(stored.len(), 2);
    for dl in &stored {
        assert_eq!(dl.failures.len(), 1);
        assert_eq!(dl.failures[0].attempt, 1);
        assert!(dl.failures[0].permanent);
    }
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn classify_hook_decides_errors_returned_with_question_mark() {
    let bus = FakeBus::new();
    let dead_letters = MemoryDeadLetters::new();
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(move |_ctx: HandlerContext| {
            let calls = Arc::clone(&c);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "forbidden",
                ))?;
                Ok(())
            }
        })
        .classify(|e: &(dyn std::error::Error + 'static)| {
            match e.downcast_ref::<std::io::Error>() {
                Some(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
                    ErrorKind::Permanent
                }
                _ => ErrorKind::Retryable,
            }
        })
        .dead_letters(dead_letters.clone())
        .retry(policy(5, 10, 10))
        .start()
        .await
        .unwrap();
    bus.deliver(msg("m", Some("k")));
    bus.wait_acked(&["m"]).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(dead_letters.stored.snapshot()[0].failures[0].permanent);
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn handler_timeout_counts_as_retryable_failure() {
    let bus = FakeBus::new();
    let dead_letters = MemoryDeadLetters::new();
    let attempts: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let a = Arc::clone(&attempts);
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(move |ctx: HandlerContext| {
            let attempts = Arc::clone(&a);
            async move {
                let id = ctx.message().id.clone();
                attempts.lock().unwrap().push((id.clone(), ctx.attempt()));
                // "slow-once" hangs on its first attempt only; "always-slow" every time.
                if id == "always-slow" || ctx.attempt() == 1 {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                Ok(())
            }
        })
        .dead_letters(dead_letters.clone())
        .handler_timeout(Duration::from_secs(1))
        .retry(policy(3, 100, 100))
        .jitter(Arc::new(NoJitter))
        .start()
        .await
        .unwrap();
    bus.deliver(msg("slow-once", Some("a")));
    bus.deliver(msg("always-slow", Some("b")));
    bus.wait_acked(&["slow-once", "always-slow"]).await;

    let attempts = attempts.lock().unwrap().clone();
    let of = |id: &str| {
        attempts
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of("slow-once"),
        vec![1, 2],
        "the timed-out attempt was not retried"
    );
    assert_eq!(of("always-slow"), vec![1, 2, 3]);
    let stored = dead_letters.stored.snapshot();
    assert_eq!(
        stored.len(),
        1,
        "only the always-slow message is dead-lettered"
    );
    assert_eq!(stored[0].message.id, "always-slow");
    assert_eq!(stored[0].failures.len(), 3);
    for f in &stored[0].failures {
        assert!(!f.permanent);
        assert!(f.error.contains("timed out after 1s"), "{}", f.error);
    }
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dead_letter_store_failure_nacks_instead_of_dropping() {
    let bus = FakeBus::new();
    let dead_letters = MemoryDeadLetters::failing();
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(|_ctx: HandlerContext| async {
            Err(HandlerError::permanent(std::io::Error::other("bad order")))
        })
        .dead_letters(dead_letters)
        .start()
        .await
        .unwrap();
    bus.deliver(msg("m-1", Some("k")));
    let settled = bus.wait_settled("m-1").await;
    assert_eq!(
        settled,
        SettleKind::Nack(Some(DEAD_LETTER_STORE_FAILURE_NACK_DELAY)),
        "a message whose dead letter could not be stored must come back"
    );
    assert_eq!(bus.acks("m-1"), 0);
    let report = consumer.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!((report.acked, report.nacked), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn without_a_dead_letter_store_failures_are_nacked_not_dropped() {
    let bus = FakeBus::new();
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(|_ctx: HandlerContext| async {
            Err(HandlerError::permanent(std::io::Error::other("bad order")))
        })
        .start()
        .await
        .unwrap();
    bus.deliver(msg("m-1", Some("k")));
    assert!(matches!(
        bus.wait_settled("m-1").await,
        SettleKind::Nack(Some(_))
    ));
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_is_a_retryable_failure() {
    let bus = FakeBus::new();
    let dead_letters = MemoryDeadLetters::new();
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(|ctx: HandlerContext| async move {
            if ctx.attempt() < 3 {
                panic!("crashing handler");
            }
            Ok(())
        })
        .dead_letters(dead_letters.clone())
        .retry(policy(3, 10, 10))
        .start()
        .await
        .unwrap();
    bus.deliver(msg("m-1", Some("k")));
    bus.wait_acked(&["m-1"]).await;
    assert!(dead_letters.stored.snapshot().is_empty());
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn application_layers_run_once_per_attempt() {
    let bus = FakeBus::new();
    let seen = Arc::new(AtomicU32::new(0));
    let s = Arc::clone(&seen);
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(|ctx: HandlerContext| async move {
            if ctx.attempt() == 1 {
                return Err(HandlerError::retryable(std::io::Error::other("flaky")));
            }
            Ok(())
        })
        .layer(tower::util::MapRequestLayer::new(
            move |ctx: HandlerContext| {
                s.fetch_add(1, Ordering::SeqCst);
                ctx
            },
        ))
        .dead_letters(MemoryDeadLetters::new())
        .retry(RetryPolicy::immediate(3))
        .start()
        .await
        .unwrap();
    bus.deliver(msg("m-1", Some("k")));
    bus.wait_acked(&["m-1"]).await;
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();
}
