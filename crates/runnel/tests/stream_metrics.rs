//! Stream job metrics through the `metrics` facade. Its own test binary: it installs the
//! process-wide recorder. Records, outputs and late records are counted per job; the
//! watermark, the lag and the cached rows are gauges.

use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use runnel::connect::{open_stores, OpenMode, StoreUrl};
use runnel::core::clock::VirtualClock;
use runnel::core::{EventFilter, ExpectedRevision, NewEvent, StreamName};
use runnel::stream::{
    Agg, JobBuilder, RunOptions, Sink, StreamJob, WindowSpec, METRIC_LAG_EVENTS, METRIC_LATE,
    METRIC_OUTPUTS, METRIC_RECORDS, METRIC_STATE_ROWS, METRIC_WATERMARK,
};

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn value(snapshot: &Snapshot, kind: MetricKind, name: &str) -> Option<f64> {
    snapshot
        .iter()
        .find(|(key, _, _, _)| {
            let k = key.key();
            key.kind() == kind
                && k.name() == name
                && k.labels()
                    .any(|l| l.key() == "job" && l.value() == "metered")
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(n) => *n as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_outputs_late_records_and_the_watermark_are_measured() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this binary");

    let dir = tempfile::tempdir().unwrap();
    let stores = open_stores(
        &StoreUrl::sqlite(dir.path().join("app.db")),
        OpenMode::default(),
    )
    .await
    .unwrap();
    let base: chrono::DateTime<chrono::Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    let mut job = JobBuilder::new("metered");
    job.events(EventFilter::event_types(["Reading"]))
        .event_time(move |e| {
            let t = e.data_json().unwrap()["t"].as_i64().unwrap();
            base + chrono::Duration::milliseconds(t)
        })
        .key_by(|e| e.stream.to_string())
        .window(WindowSpec::tumbling(Duration::from_secs(10)))
        .aggregate(Agg::count())
        .to(Sink::table());
    let job = StreamJob::on(
        &stores,
        job.build().unwrap(),
        RunOptions {
            clock: Arc::new(VirtualClock::at(base)),
            ..RunOptions::default()
        },
    );
    for t in [1_000, 25_000, 2_000] {
        stores
            .events
            .append(
                &StreamName::new("Sensor-1").unwrap(),
                ExpectedRevision::Any,
                vec![NewEvent::json("Reading", &serde_json::json!({"t": t}))],
            )
            .await
            .unwrap();
    }
    job.catch_up().await.unwrap();
    let snapshot = snapshotter.snapshot().into_vec();
    assert_eq!(
        value(&snapshot, MetricKind::Counter, METRIC_RECORDS),
        Some(3.0)
    );
    assert_eq!(
        value(&snapshot, MetricKind::Counter, METRIC_OUTPUTS),
        Some(1.0)
    );
    assert_eq!(
        value(&snapshot, MetricKind::Counter, METRIC_LATE),
        Some(1.0)
    );
    assert_eq!(
        value(&snapshot, MetricKind::Gauge, METRIC_WATERMARK),
        Some((base.timestamp_millis() + 25_000) as f64 / 1000.0)
    );
    assert_eq!(
        value(&snapshot, MetricKind::Gauge, METRIC_LAG_EVENTS),
        Some(0.0)
    );
    assert!(value(&snapshot, MetricKind::Gauge, METRIC_STATE_ROWS).unwrap() >= 1.0);
}
