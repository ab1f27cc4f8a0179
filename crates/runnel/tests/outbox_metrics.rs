//! Relay metrics: published rows, relay errors by kind, and the backlog gauges.

mod outbox_support;

use std::sync::Arc;
use std::time::Duration;

use metrics::{SharedString, Unit};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use runnel::core::outbox::OutboxStore;
use runnel::core::TopicName;
use runnel::outbox::metrics::{
    METRIC_OLDEST_PENDING_SECONDS, METRIC_PENDING, METRIC_PUBLISHED, METRIC_RELAY_ERRORS,
};
use runnel::outbox::{Relay, RelayOptions};
use runnel::sqlite::bus::{BusOptions, SqliteBus};
use runnel::sqlite::{SqliteOutbox, SqliteStore};

use outbox_support::{keyed_messages, FlakyPublisher};

type Snapshot = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

fn find<'a>(
    s: &'a Snapshot,
    kind: MetricKind,
    name: &str,
    label: Option<(&str, &str)>,
) -> Option<&'a DebugValue> {
    s.iter()
        .find(|(k, _, _, _)| {
            k.kind() == kind
                && k.key().name() == name
                && label.is_none_or(|(lk, lv)| {
                    k.key().labels().any(|l| l.key() == lk && l.value() == lv)
                })
        })
        .map(|(_, _, _, v)| v)
}

/// Snapshots taken one after another as one: counters summed, the latest value of the
/// rest.
fn merged(snapshots: Vec<Snapshot>) -> Snapshot {
    let mut out: Snapshot = Vec::new();
    for entry in snapshots.into_iter().flatten() {
        match out.iter_mut().find(|e| e.0 == entry.0) {
            Some(existing) => match (&mut existing.3, entry.3) {
                (DebugValue::Counter(total), DebugValue::Counter(n)) => *total += n,
                (slot, value) => *slot = value,
            },
            None => out.push(entry),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_records_published_errors_and_backlog() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this binary");

    let store = SqliteStore::open_temporary().unwrap();
    let bus = SqliteBus::new(store.clone(), BusOptions::default()).unwrap();
    let outbox = SqliteOutbox::new(store);
    let flaky = FlakyPublisher::new(Arc::new(bus));
    flaky.set_down(true);
    let topic = TopicName::new("metered").unwrap();
    outbox.enqueue(keyed_messages(&topic, 10, 2)).await.unwrap();
    let mut options = RelayOptions::default()
        .name("metered-relay")
        .poll_interval(Duration::from_millis(20))
        .backoff(runnel::RetryPolicy {
            max_attempts: u32::MAX,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        });
    options.status_interval = Duration::from_millis(10);
    let relay = Relay::new(Arc::new(outbox.clone()), flaky.clone(), options)
        .unwrap()
        .start();
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while flaky.failures.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    flaky.set_down(false);
    while outbox.status().await.unwrap().pending > 0 {
        assert!(tokio::time::Instant::now() < until, "never drained");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The relay refreshes the backlog gauges every 10 ms while idle: wait for the drained
    // backlog to show. A snapshot takes the counters' increments with it, so every
    // snapshot is kept and merged below.
    let mut snapshots: Vec<Snapshot> = Vec::new();
    runnel_testkit::harness::wait_until(Duration::from_secs(30), "the pending gauge at 0", || {
        let s = snapshotter.snapshot().into_vec();
        let drained = matches!(
            find(&s, MetricKind::Gauge, METRIC_PENDING, None),
            Some(DebugValue::Gauge(v)) if v.into_inner() == 0.0
        );
        snapshots.push(s);
        async move { drained }
    })
    .await;
    relay.shutdown().await.unwrap();
    snapshots.push(snapshotter.snapshot().into_vec());
    let s = merged(snapshots);

    match find(
        &s,
        MetricKind::Counter,
        METRIC_PUBLISHED,
        Some(("relay", "metered-relay")),
    ) {
        Some(DebugValue::Counter(n)) => assert_eq!(*n, 10),
        other => panic!("published: {other:?}"),
    }
    match find(
        &s,
        MetricKind::Counter,
        METRIC_RELAY_ERRORS,
        Some(("kind", "publish_unavailable")),
    ) {
        Some(DebugValue::Counter(n)) => assert!(*n >= 2, "{n}"),
        other => panic!("errors: {other:?}"),
    }
    match find(&s, MetricKind::Gauge, METRIC_PENDING, None) {
        Some(DebugValue::Gauge(v)) => assert_eq!(v.into_inner(), 0.0),
        other => panic!("pending: {other:?}"),
    }
    assert!(find(&s, MetricKind::Gauge, METRIC_OLDEST_PENDING_SECONDS, None).is_some());
}
