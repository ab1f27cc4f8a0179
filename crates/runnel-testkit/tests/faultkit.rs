//! The fault kit against real handlers: it catches a non-idempotent one, passes an
//! idempotent one, keeps per-key order when asked, redelivers after the effect, and repeats
//! a schedule from its seed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use runnel::consumer::layers::DedupLayer;
use runnel::consumer::{HandlerContext, HandlerError, HandlerService, Outcome};
use runnel::core::message::{Message, TopicName};
use runnel_testkit::dedup::InMemoryDedupStore;
use runnel_testkit::faultkit::{DeliveryKind, FaultKit, FaultKitError, FaultPlan, OrderGuarantee};
use tower::Layer;

/// `n` messages with stable ids `m-{i}`, keyed `k-{i % keys}`.
fn messages(n: usize, keys: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            Message::json("Deposited", &serde_json::json!({ "i": i }))
                .with_id(format!("m-{i}"))
                .with_key(format!("k-{}", i % keys))
        })
        .collect()
}

fn index_of(ctx: &HandlerContext) -> Result<usize, HandlerError> {
    let v: serde_json::Value = ctx.json()?;
    v["i"]
        .as_u64()
        .map(|i| i as usize)
        .ok_or_else(|| HandlerError::permanent(std::io::Error::other("no index")))
}

/// A handler that adds 1 per delivery: correct only if every message comes exactly once.
fn counting(count: Arc<Mutex<usize>>) -> impl runnel::consumer::Handler {
    move |_ctx: HandlerContext| {
        let count = Arc::clone(&count);
        async move {
            *count.lock().unwrap() += 1;
            Ok::<(), HandlerError>(())
        }
    }
}

/// The same, deduplicated by message id.
fn deduplicating(seen: Arc<Mutex<HashSet<String>>>) -> impl runnel::consumer::Handler {
    move |ctx: HandlerContext| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().insert(ctx.message().id.clone());
            Ok::<(), HandlerError>(())
        }
    }
}

#[tokio::test]
async fn duplicates_break_a_counting_handler() {
    let count = Arc::new(Mutex::new(0usize));
    let plan = FaultPlan {
        duplicate: 0.3,
        ..FaultPlan::default()
    };
    let report = FaultKit::new(plan)
        .run(counting(Arc::clone(&count)), messages(40, 4))
        .await
        .unwrap();
    assert!(report.duplicates > 0, "{report}");
    let count = *count.lock().unwrap();
    assert_ne!(count, 40, "the bug must show: {report}");
    assert_eq!(count, report.deliveries);
}

#[tokio::test]
#[should_panic(expected = "repeat it with `seed: 11`")]
async fn a_broken_invariant_fails_with_the_seed() {
    let count = Arc::new(Mutex::new(0usize));
    let observed = Arc::clone(&count);
    FaultKit::new(FaultPlan::chaotic(11))
        .check(counting(count), messages(30, 3), move |_| {
            let n = *observed.lock().unwrap();
            if n == 30 {
                Ok(())
            } else {
                Err(format!("counted {n} deposits, 30 were made"))
            }
        })
        .await;
}

#[tokio::test]
async fn an_idempotent_handler_passes_every_fault() {
    for seed in 0..50 {
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let observed = Arc::clone(&seen);
        let plan = FaultPlan {
            duplicate: 0.4,
            crash_after_effect: 0.3,
            ..FaultPlan::chaotic(seed)
        };
        let report = FaultKit::new(plan)
            .check(deduplicating(seen), messages(40, 4), move |r| {
                let n = observed.lock().unwrap().len();
                if n != 40 {
                    return Err(format!("{n} unique deposits, 40 were made"));
                }
                if !r.failed.is_empty() {
                    return Err(format!("failures: {:?}", r.failed));
                }
                Ok(())
            })
            .await;
        assert!(report.deliveries > 40, "{report}");
    }
}

#[tokio::test]
async fn a_dedup_layer_makes_the_counting_handler_pass() {
    let count = Arc::new(Mutex::new(0usize));
    let service = DedupLayer::new(Arc::new(InMemoryDedupStore::new()))
        .layer(HandlerService::new(counting(Arc::clone(&count))));
    let plan = FaultPlan {
        duplicate: 0.4,
        crash_after_effect: 0.4,
        ..FaultPlan::chaotic(5)
    };
    let report = FaultKit::new(plan)
        .run_service(service, messages(40, 4))
        .await
        .unwrap();
    assert_eq!(*count.lock().unwrap(), 40, "{report}");
    assert_eq!(report.detected_duplicates, report.deliveries - 40);
    assert!(report.detected_duplicates > 0);
}

#[tokio::test]
async fn keyed_order_is_never_broken_within_a_key() {
    let (mut cross_key_reorders, mut delayed) = (0, 0);
    for seed in 0..40 {
        let seen: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
        let handler = {
            let seen = Arc::clone(&seen);
            move |ctx: HandlerContext| {
                let seen = Arc::clone(&seen);
                async move {
                    let i = index_of(&ctx)?;
                    let key = ctx.message().ordering_key().unwrap_or("").to_string();
                    seen.lock().unwrap().push((key, i));
                    Ok::<(), HandlerError>(())
                }
            }
        };
        let plan = FaultPlan {
            reorder_window: 8,
            delay: 0.3,
            delay_max_deliveries: 10,
            duplicate: 0.3,
            crash_after_effect: 0.2,
            order: OrderGuarantee::KeyedOrderKept,
            ..FaultPlan::chaotic(seed)
        };
        let report = FaultKit::new(plan)
            .run(handler, messages(60, 3))
            .await
            .unwrap();
        assert_eq!(report.same_key_reorders, 0, "{report}");
        let mut last: HashMap<String, usize> = HashMap::new();
        for (key, i) in seen.lock().unwrap().iter() {
            let prev = last.insert(key.clone(), *i).unwrap_or(0);
            assert!(*i >= prev, "{key}: {i} after {prev}; {report}");
        }
        cross_key_reorders += report.reorders;
        delayed += report.delayed;
    }
    assert!(delayed > 0, "deliveries must have been delayed");
    assert!(
        cross_key_reorders > 0,
        "different keys must still be reordered"
    );
}

#[tokio::test]
async fn unordered_plans_reorder_the_same_key() {
    let plan = FaultPlan {
        order: OrderGuarantee::Unordered,
        reorder_window: 6,
        ..FaultPlan::chaotic(1)
    };
    let count = Arc::new(Mutex::new(0usize));
    let report = FaultKit::new(plan)
        .run(counting(count), messages(40, 1))
        .await
        .unwrap();
    assert!(report.same_key_reorders > 0, "{report}");
}

#[tokio::test]
async fn crash_after_effect_redelivers_after_the_effect() {
    let topic = TopicName::new("receipts").unwrap();
    let effects = Arc::new(Mutex::new(Vec::<usize>::new()));
    let handler = {
        let effects = Arc::clone(&effects);
        let topic = topic.clone();
        move |ctx: HandlerContext| {
            let effects = Arc::clone(&effects);
            let topic = topic.clone();
            async move {
                let i = index_of(&ctx)?;
                effects.lock().unwrap().push(i); // the local effect
                let receipt = Message::json("ReceiptSent", &serde_json::json!({ "i": i }));
                ctx.publish(&topic, vec![receipt]).await // the published one
            }
        }
    };
    let plan = FaultPlan {
        crash_after_effect: 1.0,
        redeliveries_max: 1,
        ..FaultPlan::default()
    };
    let report = FaultKit::new(plan)
        .run(handler, messages(10, 2))
        .await
        .unwrap();
    assert_eq!(report.redeliveries_after_effect, 10, "{report}");
    assert_eq!(report.deliveries, 20);
    // Each message: delivered, handled (effect done), then delivered again.
    for i in 0..10 {
        let kinds: Vec<DeliveryKind> = report
            .schedule
            .iter()
            .filter(|d| d.index == i)
            .map(|d| d.kind)
            .collect();
        assert_eq!(kinds, vec![DeliveryKind::First, DeliveryKind::AfterEffect]);
    }
    assert!(report
        .schedule
        .iter()
        .all(|d| d.result == Ok(Outcome::Handled)));
    // Both effects happened twice: the redelivery came after them, not instead of them.
    let effects = effects.lock().unwrap();
    for i in 0..10 {
        assert_eq!(effects.iter().filter(|&&e| e == i).count(), 2);
    }
    assert_eq!(report.published.len(), 20);
    assert!(report.published.iter().all(|(t, m)| t == &topic
        && m.causation_id
            .as_deref()
            .is_some_and(|c| c.starts_with("m-"))));
}

#[tokio::test]
async fn the_seed_repeats_the_schedule() {
    let run = |seed| async move {
        let count = Arc::new(Mutex::new(0usize));
        FaultKit::new(FaultPlan::chaotic(seed))
            .run(counting(count), messages(50, 5))
            .await
            .unwrap()
            .order()
    };
    let a = run(42).await;
    assert_eq!(a, run(42).await);
    assert_ne!(a, run(43).await);
}

#[tokio::test]
async fn retryable_errors_are_retried_and_permanent_ones_reported() {
    let tries: Arc<Mutex<HashMap<usize, u32>>> = Arc::default();
    let handler = {
        let tries = Arc::clone(&tries);
        move |ctx: HandlerContext| {
            let tries = Arc::clone(&tries);
            async move {
                let i = index_of(&ctx)?;
                let n = {
                    let mut t = tries.lock().unwrap();
                    let n = t.entry(i).or_insert(0);
                    *n += 1;
                    *n
                };
                match i {
                    // Fails once, then succeeds.
                    0 if n == 1 => Err(HandlerError::retryable(std::io::Error::other("flaky"))),
                    1 => Err(HandlerError::permanent(std::io::Error::other("bad data"))),
                    2 => Err(HandlerError::retryable(std::io::Error::other("down"))),
                    _ => Ok(()),
                }
            }
        }
    };
    let plan = FaultPlan {
        redeliveries_max: 3,
        ..FaultPlan::default()
    };
    let report = FaultKit::new(plan)
        .run(handler, messages(4, 4))
        .await
        .unwrap();
    let tries = tries.lock().unwrap();
    assert_eq!(tries[&0], 2);
    assert_eq!(tries[&1], 1);
    assert_eq!(tries[&2], 4, "first try plus 3 redeliveries");
    assert_eq!(report.retries, 1 + 3);
    let failed: Vec<usize> = report.failed.iter().map(|f| f.index).collect();
    assert_eq!(failed, vec![1, 2], "{report}");
}

#[tokio::test]
async fn invalid_plans_and_oversized_runs_are_refused() {
    let count = Arc::new(Mutex::new(0usize));
    let plan = FaultPlan {
        crash_after_effect: -0.1,
        ..FaultPlan::default()
    };
    let err = FaultKit::new(plan)
        .run(counting(Arc::clone(&count)), messages(1, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, FaultKitError::ProbabilityOutOfRange { .. }));
    let too_many = runnel_testkit::faultkit::MESSAGES_MAX + 1;
    let many: Vec<Message> = (0..too_many)
        .map(|_| Message::json("X", &serde_json::json!({})))
        .collect();
    let err = FaultKit::new(FaultPlan::default())
        .run(counting(count), many)
        .await
        .unwrap_err();
    assert!(matches!(err, FaultKitError::TooManyMessages { .. }));
}
