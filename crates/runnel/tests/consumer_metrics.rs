//! Consumer metrics through the `metrics` facade. Its own test binary: it installs the
//! process-wide recorder.

mod consumer_support;

use std::sync::Arc;
use std::time::Duration;

use consumer_support::*;
use metrics::{SharedString, Unit};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use runnel::consumer::layers::{
    METRIC_DEAD_LETTERED, METRIC_FAILED, METRIC_HANDLED, METRIC_HANDLING_SECONDS, METRIC_IN_FLIGHT,
    METRIC_LAG, METRIC_REPLAYS_SKIPPED, METRIC_RETRIED,
};
use runnel::consumer::{Consumer, HandlerContext, HandlerError, LagProbe};
use runnel::core::async_trait;
use runnel::core::message::{BusError, GroupName, TopicName};
use runnel::dead_letter::REPLAY_GROUP_HEADER;
use runnel::retry::RetryPolicy;

struct FixedLag(u64);

#[async_trait]
impl LagProbe for FixedLag {
    async fn lag(&self, _: &TopicName, _: &GroupName) -> Result<Option<u64>, BusError> {
        Ok(Some(self.0))
    }
}

type Snapshot = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

/// The value of metric `name` labelled with this test's topic and group.
fn value<'a>(snapshot: &'a Snapshot, kind: MetricKind, name: &str) -> Option<&'a DebugValue> {
    snapshot
        .iter()
        .find(|(key, _, _, _)| {
            let k = key.key();
            key.kind() == kind
                && k.name() == name
                && k.labels()
                    .any(|l| l.key() == "topic" && l.value() == topic().as_str())
                && k.labels()
                    .any(|l| l.key() == "group" && l.value() == group().as_str())
        })
        .map(|(_, _, _, v)| v)
}

fn counter(snapshot: &Snapshot, name: &str) -> u64 {
    match value(snapshot, MetricKind::Counter, name) {
        Some(DebugValue::Counter(n)) => *n,
        None => 0,
        other => panic!("{name}: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn metrics_are_recorded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this binary");

    let bus = FakeBus::new();
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(|ctx: HandlerContext| async move {
            match ctx.message().id.as_str() {
                "flaky" if ctx.attempt() == 1 => {
                    Err(HandlerError::retryable(std::io::Error::other("flaky")))
                }
                "poison" => Err(HandlerError::permanent(std::io::Error::other("bad"))),
                _ => Ok(()),
            }
        })
        .dead_letters(MemoryDeadLetters::new())
        .retry(RetryPolicy::immediate(3))
        .lag_probe(Arc::new(FixedLag(42)), Some(Duration::from_secs(1)))
        .start()
        .await
        .unwrap();
    bus.deliver(msg("ok", Some("a")));
    bus.deliver(msg("flaky", Some("b")));
    bus.deliver(msg("poison", Some("c")));
    bus.deliver(msg("replay", Some("d")).with_header(REPLAY_GROUP_HEADER, "another-group"));
    bus.wait_acked(&["ok", "flaky", "poison", "replay"]).await;

    // One snapshot: the debugging recorder resets what it reports.
    let snapshot = snapshotter.snapshot().into_vec();
    assert_eq!(counter(&snapshot, METRIC_HANDLED), 2);
    assert_eq!(counter(&snapshot, METRIC_FAILED), 2); // flaky's 1st + poison's only
    assert_eq!(counter(&snapshot, METRIC_RETRIED), 1);
    assert_eq!(counter(&snapshot, METRIC_DEAD_LETTERED), 1);
    assert_eq!(counter(&snapshot, METRIC_REPLAYS_SKIPPED), 1);
    match value(&snapshot, MetricKind::Histogram, METRIC_HANDLING_SECONDS) {
        Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 3),
        other => panic!("handling time: {other:?}"),
    }
    match value(&snapshot, MetricKind::Gauge, METRIC_IN_FLIGHT) {
        Some(DebugValue::Gauge(g)) => assert_eq!(g.into_inner(), 0.0),
        other => panic!("in flight: {other:?}"),
    }
    match value(&snapshot, MetricKind::Gauge, METRIC_LAG) {
        Some(DebugValue::Gauge(g)) => assert_eq!(g.into_inner(), 42.0),
        other => panic!("lag: {other:?}"),
    }
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();
}
