//! The consumer router's scheduling: per-key order, parallelism across keys, the
//! concurrency bound, back-pressure and graceful shutdown.

mod consumer_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consumer_support::*;
use runnel::consumer::{Consumer, HandlerContext, HandlerError};
use runnel::core::bus::SubscribeOptions;
use runnel::retry::{NoJitter, RetryPolicy};
use tokio::sync::{Notify, Semaphore};

/// Lets everything runnable run: under paused time, a virtual sleep returns only once the
/// runtime is otherwise idle.
async fn settle_down() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Per-message gates a handler waits on until the test opens them.
#[derive(Default)]
struct Gates(Mutex<HashMap<String, Arc<Notify>>>);

impl Gates {
    fn gate(&self, id: &str) -> Arc<Notify> {
        Arc::clone(self.0.lock().unwrap().entry(id.to_string()).or_default())
    }
    fn open(&self, id: &str) {
        self.gate(id).notify_one();
    }
}

#[tokio::test(start_paused = true)]
async fn same_key_messages_are_handled_in_order_while_other_keys_run_in_parallel() {
    let bus = FakeBus::new();
    let events: Arc<Log<String>> = Log::new();
    let gates = Arc::new(Gates::default());
    let (e, g) = (Arc::clone(&events), Arc::clone(&gates));
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(move |ctx: HandlerContext| {
            let (events, gates) = (Arc::clone(&e), Arc::clone(&g));
            async move {
                let id = ctx.message().id.clone();
                events.push(format!("start {id}"));
                if id == "a-1" {
                    gates.gate("a-1").notified().await;
                }
                events.push(format!("end {id}"));
                Ok::<(), HandlerError>(())
            }
        })
        .dead_letters(MemoryDeadLetters::new())
        .no_handler_timeout()
        .start()
        .await
        .unwrap();

    for id in ["a-1", "a-2", "a-3"] {
        bus.deliver(msg(id, Some("Order-A")));
    }
    for id in ["b-1", "b-2"] {
        bus.deliver(msg(id, Some("Order-B")));
    }

    // Key B finishes while key A's first message is still running: parallel across keys.
    bus.wait_acked(&["b-1", "b-2"]).await;
    settle_down().await;
    let seen = events.snapshot();
    assert!(seen.contains(&"start a-1".to_string()));
    assert!(!seen.contains(&"end a-1".to_string()));
    assert!(
        !seen.contains(&"start a-2".to_string()),
        "a-2 started while a-1 was still running: {seen:?}"
    );

    gates.open("a-1");
    bus.wait_acked(&["a-1", "a-2", "a-3"]).await;
    let a_events: Vec<String> = events
        .snapshot()
        .into_iter()
        .filter(|e| e.ends_with(" a-1") || e.ends_with(" a-2") || e.ends_with(" a-3"))
        .collect();
    assert_eq!(
        a_events,
        [
            "start a-1",
            "end a-1",
            "start a-2",
            "end a-2",
            "start a-3",
            "end a-3"
        ],
        "key A was not handled one at a time in delivery order"
    );
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn concurrency_bound_is_respected() {
    const BOUND: usize = 3;
    const MESSAGES: usize = 10;
    let bus = FakeBus::new();
    let running = Arc::new(AtomicUsize::new(0));
    let running_max = Arc::new(AtomicUsize::new(0));
    let started: Arc<Log<String>> = Log::new();
    let release = Arc::new(Semaphore::new(0));
    let (r, m, s, rel) = (
        Arc::clone(&running),
        Arc::clone(&running_max),
        Arc::clone(&started),
        Arc::clone(&release),
    );
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(move |ctx: HandlerContext| {
            let (running, running_max, started, release) = (
                Arc::clone(&r),
                Arc::clone(&m),
                Arc::clone(&s),
                Arc::clone(&rel),
            );
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                running_max.fetch_max(now, Ordering::SeqCst);
                started.push(ctx.message().id.clone());
                let permit = release.acquire().await.map_err(HandlerError::retryable)?;
                permit.forget();
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .dead_letters(MemoryDeadLetters::new())
        .max_concurrency(BOUND)
        .no_handler_timeout()
        .start()
        .await
        .unwrap();

    let ids: Vec<String> = (0..MESSAGES).map(|i| format!("m-{i}")).collect();
    for id in &ids {
        bus.deliver(msg(id, Some(&format!("key-{id}")))); // all different keys
    }
    started
        .wait_until("the first handlers to start", |s| s.len() >= BOUND)
        .await;
    settle_down().await;
    assert_eq!(
        started.snapshot().len(),
        BOUND,
        "more than {BOUND} handlers started"
    );
    assert_eq!(running.load(Ordering::SeqCst), BOUND);

    release.add_permits(MESSAGES);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    bus.wait_acked(&refs).await;
    assert_eq!(running_max.load(Ordering::SeqCst), BOUND);
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_full_key_queue_stops_pulling_from_the_subscription() {
    let bus = FakeBus::new();
    let gates = Arc::new(Gates::default());
    let started: Arc<Log<String>> = Log::new();
    let (g, s) = (Arc::clone(&gates), Arc::clone(&started));
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(move |ctx: HandlerContext| {
            let (gates, started) = (Arc::clone(&g), Arc::clone(&s));
            async move {
                let id = ctx.message().id.clone();
                started.push(id.clone());
                if id == "a-1" {
                    gates.gate("a-1").notified().await;
                }
                Ok(())
            }
        })
        .dead_letters(MemoryDeadLetters::new())
        .per_key_queue(2)
        .no_handler_timeout()
        .start()
        .await
        .unwrap();
    // a-1 blocks; a-2 fills key A's queue (2); b-1 must not even be pulled until a-1 ends.
    bus.deliver(msg("a-1", Some("A")));
    bus.deliver(msg("a-2", Some("A")));
    bus.deliver(msg("b-1", Some("B")));
    started.wait_until("a-1 to start", |s| !s.is_empty()).await;
    settle_down().await;
    assert_eq!(started.snapshot(), vec!["a-1".to_string()]);
    gates.open("a-1");
    bus.wait_acked(&["a-1", "a-2", "b-1"]).await;
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_in_flight_and_acks_nothing_unfinished() {
    let bus = FakeBus::new();
    let gates = Arc::new(Gates::default());
    let started: Arc<Log<String>> = Log::new();
    let (g, s) = (Arc::clone(&gates), Arc::clone(&started));
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(move |ctx: HandlerContext| {
            let (gates, started) = (Arc::clone(&g), Arc::clone(&s));
            async move {
                let id = ctx.message().id.clone();
                started.push(format!("{id}#{}", ctx.attempt()));
                match id.as_str() {
                    // In flight at shutdown; finishes within the grace period.
                    "finishing" => gates.gate("finishing").notified().await,
                    // In flight at shutdown; never finishes.
                    "stuck" => std::future::pending::<()>().await,
                    // Waiting in a 60 s retry backoff at shutdown.
                    "retrying" => {
                        return Err(HandlerError::retryable(std::io::Error::other("flaky")))
                    }
                    _ => {}
                }
                Ok(())
            }
        })
        .dead_letters(MemoryDeadLetters::new())
        .retry(RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_secs(60),
            max_delay: Duration::from_secs(60),
        })
        .jitter(Arc::new(NoJitter))
        .subscribe_options(SubscribeOptions {
            ack_timeout: Duration::from_secs(600),
            ..SubscribeOptions::default()
        })
        .no_handler_timeout()
        .start()
        .await
        .unwrap();

    bus.deliver(msg("finishing", Some("A")));
    bus.deliver(msg("queued", Some("A"))); // behind "finishing": not started at shutdown
    bus.deliver(msg("stuck", Some("C")));
    bus.deliver(msg("retrying", Some("D")));
    started
        .wait_until("every in-flight handler to start", |s| {
            ["finishing#1", "stuck#1", "retrying#1"]
                .iter()
                .all(|x| s.contains(&x.to_string()))
        })
        .await;

    let shutting_down = tokio::spawn(consumer.shutdown(Duration::from_secs(5)));
    settle_down().await; // the consumer has seen the signal and stopped pulling
    bus.deliver(msg("late", Some("E"))); // arrives after shutdown began: never handled
    gates.open("finishing");
    let report = tokio::time::timeout(WAIT_LIMIT, shutting_down)
        .await
        .expect("shutdown did not respect its deadline")
        .unwrap()
        .unwrap();

    // The in-flight handler that finished within the grace period is acked.
    assert_eq!(bus.events_for("finishing"), vec![SettleKind::Ack]);
    // Unfinished work is never acked: not-started and cut-off deliveries are left for
    // redelivery, and the one in backoff is handed back with the rest of its wait.
    assert_eq!(bus.events_for("queued"), vec![SettleKind::Dropped]);
    assert_eq!(bus.events_for("stuck"), vec![SettleKind::Dropped]);
    match bus.events_for("retrying").as_slice() {
        [SettleKind::Nack(Some(delay))] => {
            assert!(*delay <= Duration::from_secs(60) && *delay > Duration::ZERO)
        }
        other => panic!("retrying: {other:?}"),
    }
    assert!(!started.snapshot().iter().any(|s| s.starts_with("queued")));
    assert!(!started.snapshot().iter().any(|s| s.starts_with("late")));
    assert_eq!(bus.acks("late"), 0);
    assert!(bus.is_closed(), "the subscription was not released");
    assert_eq!(report.acked, 1);
    assert_eq!(report.nacked, 1);
    assert_eq!(report.left_unsettled, 2);
}

#[tokio::test(start_paused = true)]
async fn the_consumer_stops_when_its_subscription_ends() {
    let bus = FakeBus::new();
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(|_ctx: HandlerContext| async { Ok(()) })
        .dead_letters(MemoryDeadLetters::new())
        .start()
        .await
        .unwrap();
    bus.deliver(msg("m-1", None));
    bus.wait_acked(&["m-1"]).await;
    bus.close();
    let report = tokio::time::timeout(WAIT_LIMIT, consumer.join())
        .await
        .expect("the consumer kept running after its subscription ended")
        .unwrap();
    assert_eq!(report.acked, 1);
}
