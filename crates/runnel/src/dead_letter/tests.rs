//! Unit tests of the dead-letter tooling on in-memory fakes: the testkit's
//! `InMemoryDeadLetters` and a tiny in-memory bus defined here. The end-to-end version on
//! the embedded bus and the real router lives with them.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Utc;
use runnel_core::bus::Publisher;
use runnel_core::dead_letter::{
    DeadLetterFilter, DeadLetterId, DeadLetterStore, FailureRecord, NewDeadLetter,
};
use runnel_core::{BusError, GroupName, Message, TopicName};
use runnel_testkit::dead_letters::InMemoryDeadLetters;
use serde_json::json;

use super::*;

fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap()
}

/// One publish call as the fake bus saw it.
#[derive(Clone, Debug)]
struct Published {
    topic: TopicName,
    /// `Some` when delivered natively to one group.
    group: Option<GroupName>,
    message: Message,
}

/// An in-memory bus: records what is published, refuses payloads over `max_payload`,
/// fails with `Unavailable` while `down`, and runs an optional hook on every publish.
#[derive(Default)]
struct FakeBus {
    published: Mutex<VecDeque<Published>>,
    max_payload: Option<usize>,
    down: std::sync::atomic::AtomicBool,
    #[allow(clippy::type_complexity)]
    on_publish: Option<Box<dyn Fn(&TopicName, &[Message]) + Send + Sync>>,
}

impl FakeBus {
    fn accept(
        &self,
        topic: &TopicName,
        group: Option<&GroupName>,
        messages: Vec<Message>,
    ) -> Result<(), BusError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(BusError::Unavailable("the fake broker is down".into()));
        }
        let limit = self.max_payload.unwrap_or(usize::MAX);
        runnel_core::bus::validate_publish(&messages, limit)?;
        if let Some(hook) = &self.on_publish {
            hook(topic, &messages);
        }
        let mut published = self.published.lock().unwrap();
        for message in messages {
            published.push_back(Published {
                topic: topic.clone(),
                group: group.cloned(),
                message,
            });
        }
        Ok(())
    }

    fn take(&self) -> Vec<Published> {
        self.published.lock().unwrap().drain(..).collect()
    }
}

#[async_trait]
impl Publisher for FakeBus {
    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        self.accept(topic, None, messages)
    }
}

#[async_trait]
impl GroupTargetedPublisher for FakeBus {
    async fn publish_to_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
        messages: Vec<Message>,
    ) -> Result<(), BusError> {
        self.accept(topic, Some(group), messages)
    }
}

/// A consumer group with an idempotent handler (an inbox of handled message ids) that can
/// be broken and fixed, and the slice of router behaviour these tests need: retry up to
/// `MAX_ATTEMPTS`, then dead-letter with every failure; skip replays meant for others.
struct Group {
    name: GroupName,
    broken: bool,
    inbox: HashSet<String>,
    effects: BTreeMap<String, u32>,
}

const MAX_ATTEMPTS: u32 = 3;

impl Group {
    fn new(name: &str) -> Self {
        Group {
            name: group(name),
            broken: false,
            inbox: HashSet::new(),
            effects: BTreeMap::new(),
        }
    }

    async fn deliver(&mut self, topic: &TopicName, message: &Message, store: &dyn DeadLetterStore) {
        if replay_targets_other_group(message, &self.name) {
            return; // acked unhandled
        }
        let mut failures = Vec::new();
        for attempt in 1..=MAX_ATTEMPTS {
            if self.broken {
                failures.push(FailureRecord {
                    attempt,
                    at: Utc::now(),
                    error: format!("payment service refused order (attempt {attempt})"),
                    permanent: false,
                });
                continue;
            }
            if self.inbox.insert(message.id.clone()) {
                *self.effects.entry(message.id.clone()).or_default() += 1;
            }
            return;
        }
        store
            .put(NewDeadLetter {
                topic: topic.clone(),
                group: self.name.clone(),
                message: message.clone(),
                failures,
            })
            .await
            .unwrap();
    }
}

/// Delivers everything published (to the topic: every group; natively targeted: one).
async fn pump(bus: &FakeBus, groups: &mut [&mut Group], store: &dyn DeadLetterStore) {
    for p in bus.take() {
        for g in groups.iter_mut() {
            if p.group.as_ref().is_none_or(|target| *target == g.name) {
                g.deliver(&p.topic, &p.message, store).await;
            }
        }
    }
}

fn no_progress() -> impl FnMut(&ReplayProgress) + Send {
    |_| {}
}

#[tokio::test]
async fn dlq_replay_round_trip() {
    let store = Arc::new(InMemoryDeadLetters::new());
    let bus = Arc::new(FakeBus::default());
    let orders = topic("orders");
    let mut billing = Group::new("billing");
    let mut audit = Group::new("audit");
    billing.broken = true;

    // Fail: billing's handler is broken, audit handles the message.
    let placed = Message::json("OrderPlaced", &json!({"order": 1})).with_key("Order-1");
    bus.publish(&orders, vec![placed.clone()]).await.unwrap();
    pump(&bus, &mut [&mut billing, &mut audit], &*store).await;

    // Dead-lettered with its whole history.
    let pending = store
        .list(&DeadLetterFilter::pending(), None, 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    let dead = &pending[0];
    assert_eq!(dead.group, group("billing"));
    assert_eq!(dead.message.id, placed.id);
    assert_eq!(dead.failures.len(), MAX_ATTEMPTS as usize);
    assert!(billing.effects.is_empty());
    assert_eq!(audit.effects.get(&placed.id), Some(&1));

    // Fix the handler, replay.
    billing.broken = false;
    let replayer = Replayer::new(store.clone(), bus.clone());
    let mut seen = Vec::new();
    let report = replayer
        .replay(
            &ReplaySelection::all(),
            &ReplayTarget::OriginalTopic,
            &mut |p| seen.push(*p),
        )
        .await
        .unwrap();
    assert_eq!((report.total, report.replayed, report.skipped), (1, 1, 0));
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].last, dead.id);
    let republished = bus.published.lock().unwrap().clone();
    assert_eq!(republished.len(), 1);
    assert_eq!(
        republished[0].message.id, placed.id,
        "replay keeps the message id"
    );
    assert_eq!(republished[0].message.payload, placed.payload);
    assert_eq!(republished[0].topic, orders, "back to the original topic");
    pump(&bus, &mut [&mut billing, &mut audit], &*store).await;

    // Handled once by billing; audit saw a known id and applied nothing twice.
    assert_eq!(billing.effects.get(&placed.id), Some(&1));
    assert_eq!(audit.effects.get(&placed.id), Some(&1));
    assert_eq!(store.count(&DeadLetterFilter::pending()).await.unwrap(), 0);
    let replayed = store.get(dead.id).await.unwrap().unwrap();
    assert_eq!(replayed.replay_count, 1);
    assert!(replayed.last_replayed_at.is_some());

    // Nothing pending: a second bulk replay publishes nothing.
    let again = replayer
        .replay(
            &ReplaySelection::all(),
            &ReplayTarget::OriginalTopic,
            &mut no_progress(),
        )
        .await
        .unwrap();
    assert_eq!((again.total, again.replayed), (0, 0));
    // Replaying it by id once more is allowed, and still applied once.
    let one = replayer
        .replay(
            &ReplaySelection::One(dead.id),
            &ReplayTarget::OriginalTopic,
            &mut no_progress(),
        )
        .await
        .unwrap();
    assert_eq!(one.replayed, 1);
    pump(&bus, &mut [&mut billing, &mut audit], &*store).await;
    assert_eq!(billing.effects.get(&placed.id), Some(&1));
    assert_eq!(store.get(dead.id).await.unwrap().unwrap().replay_count, 2);
}

#[tokio::test]
async fn replay_to_one_group_reaches_only_that_group_with_the_header_fallback() {
    let store = Arc::new(InMemoryDeadLetters::new());
    let bus = Arc::new(FakeBus::default());
    let mut billing = Group::new("billing");
    let mut audit = Group::new("audit");
    billing.broken = true;
    audit.broken = true;
    let m = Message::json("OrderPlaced", &json!({"order": 2}));
    bus.publish(&topic("orders"), vec![m.clone()])
        .await
        .unwrap();
    pump(&bus, &mut [&mut billing, &mut audit], &*store).await;
    assert_eq!(store.count(&DeadLetterFilter::pending()).await.unwrap(), 2);

    billing.broken = false;
    audit.broken = false;
    // Audit has no inbox entry for m, so only the header keeps it from handling it.
    let replayer = Replayer::new(store.clone(), bus.clone());
    let only_billing = DeadLetterFilter {
        group: Some(group("billing")),
        ..Default::default()
    };
    let report = replayer
        .replay(
            &ReplaySelection::Matching(only_billing),
            &ReplayTarget::Group(group("billing")),
            &mut no_progress(),
        )
        .await
        .unwrap();
    assert_eq!(report.replayed, 1);
    let published = bus.published.lock().unwrap().clone();
    assert_eq!(
        published[0].group, None,
        "no native targeting: published to the topic"
    );
    assert_eq!(
        published[0]
            .message
            .headers
            .get(REPLAY_GROUP_HEADER)
            .map(String::as_str),
        Some("billing")
    );
    pump(&bus, &mut [&mut billing, &mut audit], &*store).await;
    assert_eq!(billing.effects.get(&m.id), Some(&1));
    assert!(
        audit.effects.is_empty(),
        "audit skipped a replay meant for billing"
    );
    assert_eq!(
        store.count(&DeadLetterFilter::pending()).await.unwrap(),
        1,
        "audit's dead letter waits"
    );
}

#[tokio::test]
async fn replay_to_own_group_uses_native_group_delivery_when_available() {
    let store = Arc::new(InMemoryDeadLetters::new());
    let bus = Arc::new(FakeBus::default());
    for g in ["billing", "audit"] {
        store
            .put(NewDeadLetter {
                topic: topic("orders"),
                group: group(g),
                message: Message::json("OrderPlaced", &json!({})),
                failures: vec![FailureRecord {
                    attempt: 1,
                    at: Utc::now(),
                    error: "boom".into(),
                    permanent: true,
                }],
            })
            .await
            .unwrap();
    }
    let replayer = Replayer::new(store.clone(), bus.clone()).with_group_publisher(bus.clone());
    let report = replayer
        .replay(
            &ReplaySelection::all(),
            &ReplayTarget::OwnGroup,
            &mut no_progress(),
        )
        .await
        .unwrap();
    assert_eq!(report.replayed, 2);
    let targets: Vec<_> = bus.take().into_iter().map(|p| p.group).collect();
    assert_eq!(targets, vec![Some(group("billing")), Some(group("audit"))]);
}

async fn put_letter(
    store: &InMemoryDeadLetters,
    t: &str,
    g: &str,
    error: &str,
    payload_bytes: usize,
) -> DeadLetterId {
    let mut message = Message::json("Tested", &json!({}));
    message.payload = format!("\"{}\"", "x".repeat(payload_bytes.saturating_sub(2))).into_bytes();
    store
        .put(NewDeadLetter {
            topic: topic(t),
            group: group(g),
            message,
            failures: vec![FailureRecord {
                attempt: 1,
                at: Utc::now(),
                error: error.into(),
                permanent: false,
            }],
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn filtered_replay_counts_replayed_and_skipped() {
    let store = Arc::new(InMemoryDeadLetters::new());
    let bus = Arc::new(FakeBus {
        max_payload: Some(100),
        ..Default::default()
    });
    let timeout_a = put_letter(&store, "orders", "billing", "Timeout calling inventory", 10).await;
    put_letter(&store, "orders", "billing", "card declined", 10).await;
    let too_big = put_letter(&store, "orders", "shipping", "TIMEOUT again", 500).await;
    let timeout_b = put_letter(&store, "orders", "shipping", "timeout", 10).await;
    put_letter(&store, "payments", "billing", "timeout", 10).await;

    let replayer = Replayer::new(store.clone(), bus.clone())
        .with_batch_size(2)
        .unwrap();
    let filter = DeadLetterFilter {
        topic: Some(topic("orders")),
        error_contains: Some("timeout".into()),
        ..Default::default()
    };
    let mut progress = Vec::new();
    let report = replayer
        .replay(
            &ReplaySelection::Matching(filter.clone()),
            &ReplayTarget::OriginalTopic,
            &mut |p| progress.push(*p),
        )
        .await
        .unwrap();
    assert_eq!(report.total, 3);
    assert_eq!(report.replayed, 2);
    assert_eq!(report.skipped, 1);
    assert_eq!(report.skipped_details.len(), 1);
    assert_eq!(report.skipped_details[0].id, too_big);
    assert!(
        report.skipped_details[0].reason.contains("claim-check"),
        "{:?}",
        report.skipped_details
    );
    assert_eq!(progress.len(), 3, "one progress report per dead letter");
    assert_eq!(progress.last().map(|p| p.done()), Some(3));
    let published: Vec<_> = bus
        .take()
        .into_iter()
        .map(|p| p.message.headers[REPLAY_OF_HEADER].clone())
        .collect();
    assert_eq!(
        published,
        vec![timeout_a.to_string(), timeout_b.to_string()]
    );
    // The skipped one stays pending; the others of the topic are untouched.
    assert_eq!(store.count(&filter).await.unwrap(), 1);
    assert_eq!(
        store
            .count(&DeadLetterFilter {
                topic: Some(topic("orders")),
                ..Default::default()
            })
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.count(&DeadLetterFilter::pending()).await.unwrap(), 3);
}

#[tokio::test]
async fn replay_ends_even_when_replayed_messages_are_dead_lettered_again() {
    let store = Arc::new(InMemoryDeadLetters::new());
    for _ in 0..5 {
        put_letter(&store, "orders", "billing", "boom", 10).await;
    }
    // Every publish fails again at once and is dead-lettered anew (still broken).
    let again = store.clone();
    let bus = Arc::new(FakeBus {
        on_publish: Some(Box::new(move |t, messages| {
            for m in messages {
                let store = again.clone();
                let dead = NewDeadLetter {
                    topic: t.clone(),
                    group: group("billing"),
                    message: m.clone(),
                    failures: vec![FailureRecord {
                        attempt: 1,
                        at: Utc::now(),
                        error: "still broken".into(),
                        permanent: false,
                    }],
                };
                futures_util::FutureExt::now_or_never(store.put(dead))
                    .expect("the in-memory store answers at once")
                    .unwrap();
            }
        })),
        ..Default::default()
    });
    let replayer = Replayer::new(store.clone(), bus)
        .with_batch_size(2)
        .unwrap();
    let report = replayer
        .replay(
            &ReplaySelection::all(),
            &ReplayTarget::OriginalTopic,
            &mut no_progress(),
        )
        .await
        .unwrap();
    assert_eq!((report.total, report.replayed), (5, 5));
    assert_eq!(
        store.count(&DeadLetterFilter::pending()).await.unwrap(),
        5,
        "the new dead letters wait for the next replay"
    );
}

#[tokio::test]
async fn replay_stops_with_counts_when_the_bus_is_down() {
    let store = Arc::new(InMemoryDeadLetters::new());
    put_letter(&store, "orders", "billing", "boom", 10).await;
    let bus = Arc::new(FakeBus::default());
    bus.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = Replayer::new(store.clone(), bus)
        .replay(
            &ReplaySelection::all(),
            &ReplayTarget::OriginalTopic,
            &mut no_progress(),
        )
        .await
        .unwrap_err();
    match err {
        DeadLetterError::ReplayInterrupted { report, source } => {
            assert_eq!(report.replayed, 0);
            assert!(source.is_transient());
        }
        other => panic!("expected ReplayInterrupted, got {other:?}"),
    }
    assert_eq!(
        store.count(&DeadLetterFilter::pending()).await.unwrap(),
        1,
        "nothing marked"
    );
}

#[tokio::test]
async fn replay_of_an_unknown_id_is_not_found() {
    let store = Arc::new(InMemoryDeadLetters::new());
    let err = Replayer::new(store, Arc::new(FakeBus::default()))
        .replay(
            &ReplaySelection::One(DeadLetterId(42)),
            &ReplayTarget::OriginalTopic,
            &mut no_progress(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeadLetterError::NotFound(DeadLetterId(42))),
        "{err:?}"
    );
}

#[test]
fn threshold_alert_fires_once_when_crossing_and_rearms_below() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let store = Arc::new(InMemoryDeadLetters::new());
            let bus = Arc::new(FakeBus::default());
            let alerts = topic("runnel.alerts");
            let monitor = ThresholdMonitor::new(
                store.clone(),
                vec![
                    ThresholdRule::total(2),
                    ThresholdRule::group(topic("orders"), group("billing"), 0),
                ],
            )
            .unwrap()
            .publish_alerts_to(bus.clone(), alerts.clone());

            for _ in 0..2 {
                put_letter(&store, "payments", "ledger", "boom", 10).await;
            }
            assert!(
                monitor.check().await.unwrap().is_empty(),
                "2 is not above 2"
            );

            let billing = put_letter(&store, "orders", "billing", "boom", 10).await;
            let fired = monitor.check().await.unwrap();
            assert_eq!(fired.len(), 2, "both rules crossed: {fired:?}");
            assert_eq!(fired[0].scope, AlertScope::Total);
            assert_eq!((fired[0].pending, fired[0].threshold), (3, 2));
            let published = bus.take();
            assert_eq!(published.len(), 2);
            assert!(published.iter().all(|p| p.topic == alerts));
            let event = DeadLetterThresholdExceeded::from_message(&published[0].message).unwrap();
            assert_eq!(event, fired[0]);
            assert_eq!(
                published[0].message.event_type,
                DeadLetterThresholdExceeded::EVENT_TYPE
            );

            // Still above: quiet.
            put_letter(&store, "payments", "ledger", "boom", 10).await;
            assert!(monitor.check().await.unwrap().is_empty());
            assert!(bus.take().is_empty());

            // Back under (a replay and a purge), then above again: fires again.
            store.mark_replayed(billing, Utc::now()).await.unwrap();
            let cutoff = Utc::now() + chrono::TimeDelta::seconds(1);
            let ledger = DeadLetterFilter {
                topic: Some(topic("payments")),
                ..Default::default()
            };
            assert_eq!(purge(&*store, &ledger, cutoff).await.unwrap(), 3);
            assert!(
                monitor.check().await.unwrap().is_empty(),
                "re-armed, nothing above"
            );
            for _ in 0..3 {
                put_letter(&store, "payments", "ledger", "boom", 10).await;
            }
            let fired = monitor.check().await.unwrap();
            assert_eq!(fired.len(), 1);
            assert_eq!(fired[0].scope, AlertScope::Total);
        })
    });

    let mut alerts_total = 0;
    let mut total_gauge = None;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<_> = key
            .key()
            .labels()
            .map(|l| (l.key().to_string(), l.value().to_string()))
            .collect();
        let is_total = labels.contains(&("scope".into(), "total".into()));
        match (key.key().name(), value) {
            (METRIC_THRESHOLD_ALERTS, metrics_util::debugging::DebugValue::Counter(n)) => {
                alerts_total += n
            }
            (METRIC_PENDING, metrics_util::debugging::DebugValue::Gauge(v)) if is_total => {
                total_gauge = Some(v.into_inner())
            }
            _ => {}
        }
    }
    assert_eq!(
        alerts_total, 3,
        "two alerts at the first crossing, one at the second"
    );
    assert_eq!(total_gauge, Some(3.0));
}

#[test]
fn threshold_rules_are_validated() {
    let store: Arc<dyn DeadLetterStore> = Arc::new(InMemoryDeadLetters::new());
    assert!(ThresholdMonitor::new(store.clone(), vec![]).is_err());
    assert!(ThresholdMonitor::new(
        store,
        vec![ThresholdRule::total(1), ThresholdRule::total(5)]
    )
    .is_err());
}

#[test]
fn summaries_show_the_last_error_on_one_line() {
    let message = Message::json("OrderPlaced", &json!({})).with_key("Order-9");
    let letter = runnel_core::dead_letter::DeadLetter {
        id: DeadLetterId(9),
        topic: topic("orders"),
        group: group("billing"),
        message,
        failures: vec![
            FailureRecord {
                attempt: 1,
                at: Utc::now(),
                error: "first".into(),
                permanent: false,
            },
            FailureRecord {
                attempt: 5,
                at: Utc::now(),
                error: "declined\n  at payment.rs:10".into(),
                permanent: true,
            },
        ],
        first_failed_at: Utc::now(),
        last_failed_at: Utc::now(),
        dead_lettered_at: Utc::now(),
        replay_count: 0,
        last_replayed_at: None,
    };
    let s = DeadLetterSummary::from(&letter);
    assert_eq!(s.attempts, 5);
    assert_eq!(s.last_error, "declined…");
    assert!(s.permanent);
    assert_eq!(s.key.as_deref(), Some("Order-9"));
}
