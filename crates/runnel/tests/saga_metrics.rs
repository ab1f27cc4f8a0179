//! Saga metrics through the `metrics` facade. Its own test binary: it installs the
//! process-wide recorder. A parked instance is counted in `runnel_saga_parked_total`, a
//! duplicate reply in `runnel_saga_ignored_total`, transitions by status in
//! `runnel_saga_transitions_total`, local step durations in `runnel_saga_step_seconds`.

mod saga_support;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use runnel::core::processor::InstanceStatus;
use runnel::saga::{
    LateReplyPolicy, METRIC_IGNORED, METRIC_PARKED, METRIC_STEP_SECONDS, METRIC_TRANSITIONS,
};
use saga_support::{driver, inventory, sqlite, Order, World, NAME};

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn sum(snapshot: &Snapshot, kind: MetricKind, name: &str, label: Option<(&str, &str)>) -> u64 {
    snapshot
        .iter()
        .filter(|(key, _, _, _)| {
            let k = key.key();
            key.kind() == kind
                && k.name() == name
                && k.labels().any(|l| l.key() == "saga" && l.value() == NAME)
                && label.is_none_or(|(lk, lv)| k.labels().any(|l| l.key() == lk && l.value() == lv))
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(n) => *n,
            DebugValue::Histogram(values) => values.len() as u64,
            DebugValue::Gauge(_) => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_instances_duplicates_and_transitions_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this binary");

    let stores = sqlite();
    let world = World::default();
    {
        let mut f = world.faults.lock().unwrap();
        f.fail_confirm = true;
        f.refund_failures = 1000;
    }
    let test = driver(&stores, &world, 1, LateReplyPolicy::Ignore);
    test.start("m-1", Order::new("m-1")).await.unwrap();
    test.run_due().await.unwrap();
    let command = test.take_sent().await.remove(0).message;
    let (_, reply) =
        runnel::saga::reply_to(&command, "InventoryReserved", &serde_json::json!({}), true)
            .unwrap();
    test.deliver(&reply).await.unwrap();
    // Another message with the same answer: the step is not awaited any more.
    test.reply(&command, "InventoryReserved", serde_json::json!({}), true)
        .await
        .unwrap();
    let parked = test.settle("m-1", &inventory(false)).await.unwrap();
    assert_eq!(parked.record.status, InstanceStatus::CompensationFailed);

    let snapshot: Snapshot = snapshotter.snapshot().into_vec();
    assert_eq!(
        sum(
            &snapshot,
            MetricKind::Counter,
            METRIC_PARKED,
            Some(("status", "compensation-failed"))
        ),
        1
    );
    assert!(
        sum(
            &snapshot,
            MetricKind::Counter,
            METRIC_IGNORED,
            Some(("reason", "not-awaited"))
        ) >= 1
    );
    assert!(
        sum(
            &snapshot,
            MetricKind::Counter,
            METRIC_TRANSITIONS,
            Some(("status", "running"))
        ) >= 3
    );
    assert!(
        sum(
            &snapshot,
            MetricKind::Counter,
            METRIC_TRANSITIONS,
            Some(("status", "compensating"))
        ) >= 1
    );
    assert!(
        sum(
            &snapshot,
            MetricKind::Histogram,
            METRIC_STEP_SECONDS,
            Some(("step", "charge-payment"))
        ) >= 1,
        "local step durations are recorded"
    );
}
