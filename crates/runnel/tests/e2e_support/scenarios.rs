//! The end-to-end scenarios: each drives real consumers (the router with its default layer
//! stack) over a real [`Backend`] and asserts on what the backend holds afterwards.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnel::consumer::{Consumer, HandlerContext, HandlerError};
use runnel::core::dead_letter::DeadLetterFilter;
use runnel::core::Message;
use runnel::dead_letter::{ReplaySelection, ReplayTarget, Replayer};
use runnel::RetryPolicy;
use tokio::sync::Barrier;

use super::{
    group, numbered, options, topic, wait_drained, wait_for, Backend, Effect, Log,
    RecordingSubscriber, DEADLINE,
};

/// The ack timeout of consumers whose leases must not run out during a test.
const ACK_TIMEOUT_LONG: Duration = Duration::from_secs(30);
/// Shutdown grace at the end of a scenario (everything is settled by then).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn failure(text: String) -> HandlerError {
    HandlerError::retryable(std::io::Error::other(text))
}

/// Effects recorded by `consumer`, grouped by ordering key, each key's in commit order.
fn effects_by_key(effects: &[Effect], consumer: &str) -> BTreeMap<String, Vec<i64>> {
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for e in effects.iter().filter(|e| e.consumer == consumer) {
        by_key.entry(e.key.clone()).or_default().push(e.n);
    }
    by_key
}

/// How many effects each message id left.
fn effects_per_message(effects: &[Effect]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for e in effects {
        *counts.entry(e.message_id.clone()).or_insert(0) += 1;
    }
    counts
}

/// A poison message is retried `ATTEMPTS` times with backoff and then stored as a dead
/// letter with every failure — while every other key's messages are handled meanwhile, and
/// the messages queued behind it in its own key go on once it is dead-lettered.
pub async fn poison_message_dead_lettered_after_max_attempts_without_blocking_other_keys(
    backend: Arc<dyn Backend>,
) {
    const ATTEMPTS: u32 = 4;
    const KEYS: usize = 10;
    const PER_KEY: i64 = 5;
    let (t, g) = (topic("orders"), group("billing"));
    let poison_id = "order-poison-1";

    let mut messages = vec![
        numbered("Order-poison", 1).with_id(poison_id),
        numbered("Order-poison", 2),
        numbered("Order-poison", 3),
    ];
    let mut others = Vec::new();
    for n in 1..=PER_KEY {
        for k in 0..KEYS {
            let m = numbered(&format!("Order-{k}"), n);
            others.push(m.id.clone());
            messages.push(m);
        }
    }
    let others = Arc::new(others);

    let handled = Log::<String>::new();
    let poison_attempts = Log::<u32>::new();
    let others_handled_while_poison_retried = Arc::new(AtomicBool::new(false));
    let (b, h, p, o, flag) = (
        Arc::clone(&backend),
        Arc::clone(&handled),
        Arc::clone(&poison_attempts),
        Arc::clone(&others),
        Arc::clone(&others_handled_while_poison_retried),
    );
    let consumer = backend
        .with_inbox(Consumer::builder(
            backend.subscriber(),
            t.clone(),
            g.clone(),
        ))
        .handler(move |ctx: HandlerContext| {
            let (b, handled, poison_attempts, others, flag) = (
                Arc::clone(&b),
                Arc::clone(&h),
                Arc::clone(&p),
                Arc::clone(&o),
                Arc::clone(&flag),
            );
            async move {
                let id = ctx.message().id.clone();
                if id == poison_id {
                    poison_attempts.push(ctx.attempt());
                    if ctx.attempt() == ATTEMPTS {
                        // The last attempt ends only once every other key is handled: if
                        // the retrying key held up the others, this wait would time out.
                        let done = handled
                            .wait_until(|h| others.iter().all(|o| h.contains(o)))
                            .await;
                        flag.store(done, Ordering::SeqCst);
                    }
                    return Err(failure(format!("poison pill, attempt {}", ctx.attempt())));
                }
                let effect = Effect::of(&ctx)?;
                b.write_effect(&ctx, effect).await?;
                handled.push(id);
                Ok(())
            }
        })
        .dead_letters(backend.dead_letters())
        .retry(RetryPolicy {
            max_attempts: ATTEMPTS,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        })
        .max_concurrency(8)
        .subscribe_options(options(64, ACK_TIMEOUT_LONG))
        .start()
        .await
        .unwrap();

    backend.publisher().publish(&t, messages).await.unwrap();
    wait_drained(&*backend, &t, &g).await;
    consumer.shutdown(SHUTDOWN_GRACE).await.unwrap();

    assert_eq!(
        poison_attempts.snapshot(),
        (1..=ATTEMPTS).collect::<Vec<_>>(),
        "the poison message was not retried exactly up to the maximum"
    );
    assert!(
        others_handled_while_poison_retried.load(Ordering::SeqCst),
        "other keys were not all handled while the poison message was still being retried"
    );

    let dead = backend
        .dead_letters()
        .list(&DeadLetterFilter::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "exactly the poison message is dead-lettered");
    let dl = &dead[0];
    assert_eq!(dl.message.id, poison_id);
    assert_eq!((&dl.topic, &dl.group), (&t, &g));
    let attempts: Vec<u32> = dl.failures.iter().map(|f| f.attempt).collect();
    assert_eq!(attempts, (1..=ATTEMPTS).collect::<Vec<_>>(), "full history");
    for f in &dl.failures {
        assert!(!f.permanent);
        assert!(
            f.error
                .contains(&format!("poison pill, attempt {}", f.attempt)),
            "{f:?}"
        );
    }
    assert!(dl.first_failed_at <= dl.last_failed_at);
    assert_eq!(dl.first_failed_at, dl.failures[0].at);

    let effects = backend.effects().await;
    let per_message = effects_per_message(&effects);
    assert!(
        !per_message.contains_key(poison_id),
        "the poison left an effect"
    );
    for id in others.iter() {
        assert_eq!(per_message.get(id), Some(&1), "message {id}");
    }
    let by_key = effects_by_key(&effects, g.as_str());
    assert_eq!(
        by_key["Order-poison"],
        [2, 3],
        "the messages behind the poison in its key were not handled, in order, after it"
    );
    for k in 0..KEYS {
        assert_eq!(
            by_key[&format!("Order-{k}")],
            (1..=PER_KEY).collect::<Vec<_>>()
        );
    }
}

/// One message, three deliveries — a redelivery after the ack timeout while the first
/// delivery is still being handled, and the same message published again afterwards — and
/// exactly one effect: the inbox mark commits with the handler's row, so every other
/// delivery finds it (at begin, or at commit) and is acknowledged without a second row.
pub async fn duplicate_delivery_has_single_effect(backend: Arc<dyn Backend>) {
    /// Short, so the first delivery's lease runs out while its handler is held.
    const ACK_TIMEOUT_SHORT: Duration = Duration::from_millis(300);
    let (t, g) = (topic("payments"), group("ledger"));
    // No ordering key: the redelivery may be handled while the first delivery still runs.
    let message =
        Message::json("PaymentReceived", &serde_json::json!({ "n": 1 })).with_id("payment-1");
    let id = message.id.clone();

    let recording = RecordingSubscriber::new(backend.subscriber());
    let deliveries = Arc::clone(&recording.deliveries);
    let runs = Arc::new(AtomicU32::new(0));
    let held_until_redelivered = Arc::new(AtomicBool::new(false));
    let (b, r, d, held) = (
        Arc::clone(&backend),
        Arc::clone(&runs),
        Arc::clone(&deliveries),
        Arc::clone(&held_until_redelivered),
    );
    let consumer = backend
        .with_inbox(Consumer::builder(recording.clone(), t.clone(), g.clone()))
        .handler(move |ctx: HandlerContext| {
            let (b, runs, deliveries, held) = (
                Arc::clone(&b),
                Arc::clone(&r),
                Arc::clone(&d),
                Arc::clone(&held),
            );
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                    // The first run waits until the bus, its lease over, has delivered the
                    // message again: two deliveries of one message are now in the router.
                    let id = ctx.message().id.clone();
                    let redelivered = deliveries
                        .wait_until(|seen| seen.iter().any(|(m, a)| *m == id && *a >= 2))
                        .await;
                    held.store(redelivered, Ordering::SeqCst);
                }
                let effect = Effect::of(&ctx)?;
                b.write_effect(&ctx, effect).await
            }
        })
        .dead_letters(backend.dead_letters())
        .subscribe_options(options(8, ACK_TIMEOUT_SHORT))
        .handler_timeout(DEADLINE)
        .start()
        .await
        .unwrap();

    backend
        .publisher()
        .publish(&t, vec![message.clone()])
        .await
        .unwrap();
    wait_drained(&*backend, &t, &g).await;
    assert!(
        held_until_redelivered.load(Ordering::SeqCst),
        "the message was not redelivered after its ack timeout"
    );
    // The redelivery was acked after one of the two attempts committed (the first
    // delivery's own ack is refused: its lease was taken over). The same message published
    // a second time is a new delivery, found processed before the handler.
    backend
        .publisher()
        .publish(&t, vec![message])
        .await
        .unwrap();
    deliveries
        .wait_until(|seen| seen.iter().filter(|(m, _)| *m == id).count() >= 3)
        .await;
    wait_drained(&*backend, &t, &g).await;
    let runs_before_shutdown = runs.load(Ordering::SeqCst);
    consumer.shutdown(SHUTDOWN_GRACE).await.unwrap();

    let effects = backend.effects().await;
    assert_eq!(
        effects,
        vec![Effect {
            consumer: g.to_string(),
            message_id: id.clone(),
            key: String::new(),
            n: 1,
        }],
        "three deliveries must leave exactly one effect"
    );
    assert!(
        (1..=2).contains(&runs_before_shutdown),
        "the handler ran {runs_before_shutdown} times: the republished copy should have been \
         skipped before the handler"
    );
    let dead = backend
        .dead_letters()
        .count(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(dead, 0, "a duplicate was dead-lettered");
}

/// Fail → dead letter with its history → fix the handler → replay to the failing group
/// only → handled exactly once there, and never handed to the other group's handler.
pub async fn dlq_replay_round_trip(backend: Arc<dyn Backend>) {
    let t = topic("orders");
    let (billing, shipping) = (group("billing"), group("shipping"));
    let placed = numbered("Order-7", 1).with_id("order-7-placed");
    let id = placed.id.clone();

    // Billing rejects the order until "fixed"; its effects go through the inbox.
    let broken = Arc::new(AtomicBool::new(true));
    let (b, br) = (Arc::clone(&backend), Arc::clone(&broken));
    let billing_consumer = backend
        .with_inbox(Consumer::builder(
            backend.subscriber(),
            t.clone(),
            billing.clone(),
        ))
        .handler(move |ctx: HandlerContext| {
            let (b, broken) = (Arc::clone(&b), Arc::clone(&br));
            async move {
                if broken.load(Ordering::SeqCst) {
                    return Err(HandlerError::permanent(std::io::Error::other(
                        "billing rejects the order: unknown customer c-9",
                    )));
                }
                let effect = Effect::of(&ctx)?;
                b.write_effect(&ctx, effect).await
            }
        })
        .dead_letters(backend.dead_letters())
        .subscribe_options(options(16, ACK_TIMEOUT_LONG))
        .start()
        .await
        .unwrap();

    // Shipping has no inbox (think: it calls a carrier's API), so any delivery that reached
    // its handler would show up here — the replay for billing must not.
    let shipped = Log::<String>::new();
    let s = Arc::clone(&shipped);
    let shipping_consumer = Consumer::builder(backend.subscriber(), t.clone(), shipping.clone())
        .handler(move |ctx: HandlerContext| {
            let shipped = Arc::clone(&s);
            async move {
                shipped.push(ctx.message().id.clone());
                Ok(())
            }
        })
        .dead_letters(backend.dead_letters())
        .subscribe_options(options(16, ACK_TIMEOUT_LONG))
        .start()
        .await
        .unwrap();

    backend
        .publisher()
        .publish(&t, vec![placed.clone()])
        .await
        .unwrap();
    wait_drained(&*backend, &t, &billing).await;
    wait_drained(&*backend, &t, &shipping).await;

    // Dead-lettered with its history: one permanent failure, no retries.
    let of_billing = DeadLetterFilter {
        topic: Some(t.clone()),
        group: Some(billing.clone()),
        ..DeadLetterFilter::default()
    };
    let dead = backend
        .dead_letters()
        .list(&of_billing, None, 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "billing's failure was not dead-lettered");
    let dl = runnel::dead_letter::show(&*backend.dead_letters(), dead[0].id)
        .await
        .unwrap();
    assert_eq!(dl.message.id, id);
    assert_eq!(dl.message.payload, placed.payload);
    assert_eq!(dl.message.key, placed.key);
    assert_eq!(dl.failures.len(), 1);
    assert!(dl.failures[0].permanent);
    assert_eq!(dl.failures[0].attempt, 1);
    assert!(dl.failures[0].error.contains("unknown customer c-9"));
    assert!(backend.effects().await.is_empty());
    assert_eq!(shipped.snapshot(), std::slice::from_ref(&id));

    // Fix the handler, replay to billing only.
    broken.store(false, Ordering::SeqCst);
    let replayer = Replayer::new(backend.dead_letters(), backend.publisher());
    let report = replayer
        .replay(
            &ReplaySelection::One(dl.id),
            &ReplayTarget::OwnGroup,
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!((report.replayed, report.skipped), (1, 0));
    wait_for("billing to handle the replay", || async {
        !backend.effects().await.is_empty()
    })
    .await;
    wait_drained(&*backend, &t, &billing).await;
    // Shipping received the replay too (one topic) and acknowledged it unhandled.
    wait_drained(&*backend, &t, &shipping).await;

    // Replaying once more is harmless: billing's inbox knows the message.
    replayer
        .replay(
            &ReplaySelection::One(dl.id),
            &ReplayTarget::OwnGroup,
            &mut |_| {},
        )
        .await
        .unwrap();
    wait_drained(&*backend, &t, &billing).await;
    wait_drained(&*backend, &t, &shipping).await;

    billing_consumer.shutdown(SHUTDOWN_GRACE).await.unwrap();
    shipping_consumer.shutdown(SHUTDOWN_GRACE).await.unwrap();

    let effects = backend.effects().await;
    assert_eq!(
        effects,
        vec![Effect {
            consumer: billing.to_string(),
            message_id: id.clone(),
            key: "Order-7".into(),
            n: 1,
        }],
        "the replayed message must be handled exactly once by billing"
    );
    assert_eq!(
        shipped.snapshot(),
        std::slice::from_ref(&id),
        "a replay for billing reached shipping's handler"
    );
    let after = backend.dead_letters().get(dl.id).await.unwrap().unwrap();
    assert_eq!(after.replay_count, 2);
    assert_eq!(
        backend.dead_letters().count(&of_billing).await.unwrap(),
        0,
        "the replayed dead letter still counts as pending"
    );
}

/// Removes a key from the set of keys being handled when an attempt ends, however it ends.
struct Busy {
    keys: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.keys.lock().unwrap().remove(&self.key);
    }
}

/// Many keys, interleaved, with injected retryable failures: each key's effects commit in
/// publish order, no two attempts of one key ever overlap, different keys do run at the
/// same time, and every message is handled exactly once with nothing dead-lettered.
pub async fn per_key_order_is_kept_end_to_end_under_concurrency_with_retries(
    backend: Arc<dyn Backend>,
) {
    const KEYS: usize = 20;
    const PER_KEY: i64 = 30;
    let (t, g) = (topic("stock"), group("projector"));
    let key = |k: usize| format!("Sku-{k:02}");

    let mut messages = Vec::new();
    for n in 1..=PER_KEY {
        for k in 0..KEYS {
            messages.push(numbered(&key(k), n));
        }
    }
    let total = messages.len();

    let busy_keys = Arc::new(Mutex::new(HashSet::<String>::new()));
    let overlaps = Arc::new(AtomicU32::new(0));
    let injected = Arc::new(AtomicU32::new(0));
    // The first messages of two keys must be in their handlers at the same time to pass.
    let first_two_keys_meet = Arc::new(Barrier::new(2));
    let keys_met = Arc::new(AtomicU32::new(0));
    let first_keys = [key(0), key(1)];
    let (b, bk, ov, inj, meet, met) = (
        Arc::clone(&backend),
        Arc::clone(&busy_keys),
        Arc::clone(&overlaps),
        Arc::clone(&injected),
        Arc::clone(&first_two_keys_meet),
        Arc::clone(&keys_met),
    );
    let consumer = backend
        .with_inbox(Consumer::builder(
            backend.subscriber(),
            t.clone(),
            g.clone(),
        ))
        .handler(move |ctx: HandlerContext| {
            let (b, busy_keys, overlaps, injected, meet, met) = (
                Arc::clone(&b),
                Arc::clone(&bk),
                Arc::clone(&ov),
                Arc::clone(&inj),
                Arc::clone(&meet),
                Arc::clone(&met),
            );
            let first_keys = first_keys.clone();
            async move {
                let effect = Effect::of(&ctx)?;
                if !busy_keys.lock().unwrap().insert(effect.key.clone()) {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                let _busy = Busy {
                    keys: Arc::clone(&busy_keys),
                    key: effect.key.clone(),
                };
                let first_of_its_key =
                    effect.n == 1 && ctx.attempt() == 1 && first_keys.contains(&effect.key);
                if first_of_its_key && tokio::time::timeout(DEADLINE, meet.wait()).await.is_ok() {
                    met.fetch_add(1, Ordering::SeqCst);
                }
                // Retryable failures: every 4th message fails once, every 9th twice.
                let fails = u32::from(effect.n % 4 == 0) + u32::from(effect.n % 9 == 0);
                if ctx.attempt() <= fails {
                    injected.fetch_add(1, Ordering::SeqCst);
                    return Err(failure(format!(
                        "injected failure {} of {}",
                        ctx.attempt(),
                        effect.message_id
                    )));
                }
                b.write_effect(&ctx, effect).await
            }
        })
        .dead_letters(backend.dead_letters())
        .retry(RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(10),
        })
        .max_concurrency(8)
        .subscribe_options(options(64, ACK_TIMEOUT_LONG))
        .start()
        .await
        .unwrap();

    backend.publisher().publish(&t, messages).await.unwrap();
    wait_drained(&*backend, &t, &g).await;
    consumer.shutdown(SHUTDOWN_GRACE).await.unwrap();

    let effects = backend.effects().await;
    assert_eq!(effects.len(), total, "every message exactly once");
    assert!(effects_per_message(&effects).values().all(|&c| c == 1));
    let by_key = effects_by_key(&effects, g.as_str());
    assert_eq!(by_key.len(), KEYS);
    for (k, ns) in &by_key {
        assert_eq!(
            *ns,
            (1..=PER_KEY).collect::<Vec<_>>(),
            "key {k}'s effects are out of publish order"
        );
    }
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "two attempts of one key overlapped"
    );
    assert_eq!(
        keys_met.load(Ordering::SeqCst),
        2,
        "two keys were never handled at the same time"
    );
    assert!(injected.load(Ordering::SeqCst) > 0);
    assert_eq!(
        backend
            .dead_letters()
            .count(&DeadLetterFilter::default())
            .await
            .unwrap(),
        0,
        "a retried message was dead-lettered"
    );
}
