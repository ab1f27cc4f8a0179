//! Stream jobs wired into an application (`App::stream_job`), on a temporary SQLite store:
//! the job runs under the app's supervisor from its start, its results appear while the
//! app runs, shutdown stops it in time and gives its lease up; a job publishing to a topic
//! gets the outbox relay and a line in the catalog.

use std::time::Duration;

use chrono::{DateTime, Utc};
use runnel::app::App;
use runnel::catalog::PublisherKind;
use runnel::connect::{open_bus, open_stores, BusUrl, OpenMode, StoreUrl};
use runnel::consumer::{HandlerContext, HandlerError};
use runnel::core::clock::VirtualClock;
use runnel::core::{
    EventFilter, EventStore, ExpectedRevision, GroupName, NewEvent, Position, RecordedEvent,
    StreamName, TopicName,
};
use runnel::stream::{job_status, Agg, Emit, JobBuilder, RunOptions, Sink, WindowSpec};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Longest wait for anything these tests observe.
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Sale {
    product: String,
    cents: i64,
    /// Event time, seconds after `base()`.
    at_s: i64,
}

fn base() -> DateTime<Utc> {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn sale_time(e: &RecordedEvent) -> DateTime<Utc> {
    let s: Sale = serde_json::from_slice(&e.data).expect("a sale");
    base() + chrono::Duration::seconds(s.at_s)
}

/// Revenue per product per minute of event time, emitted once each minute closes.
fn revenue_job(sink: Sink) -> runnel::stream::Job {
    let mut job = JobBuilder::new("app_revenue");
    job.events(EventFilter::event_types(["Sold"]))
        .event_time(sale_time)
        .out_of_orderness(Duration::from_secs(5))
        .try_map(|e| Ok(serde_json::from_slice::<Sale>(&e.data)?))
        .key_by(|s: &Sale| s.product.clone())
        .window(WindowSpec::tumbling(Duration::from_secs(60)).grace(Duration::from_secs(5)))
        .aggregate(Agg::sum(|s: &Sale| s.cents))
        .emit(Emit::OnClose)
        .to(sink);
    job.build().unwrap()
}

/// The job's clock stands still: its sources never count as idle, so only event times
/// move the watermark and every result is the one the events decide.
fn still_clock() -> RunOptions {
    RunOptions {
        clock: std::sync::Arc::new(VirtualClock::at(base())),
        ..RunOptions::default()
    }
}

async fn app_on_sqlite(dir: &tempfile::TempDir) -> App {
    let stores = open_stores(
        &StoreUrl::sqlite(dir.path().join("app.db")),
        OpenMode::default(),
    )
    .await
    .unwrap();
    let bus = open_bus(&BusUrl::parse("embedded").unwrap(), &stores)
        .await
        .unwrap();
    App::with(stores, bus)
}

async fn sell(events: &dyn EventStore, product: &str, cents: i64, at_s: i64) {
    let sale = Sale {
        product: product.into(),
        cents,
        at_s,
    };
    events
        .append(
            &StreamName::new(format!("Till-{}", uuid::Uuid::now_v7().simple())).unwrap(),
            ExpectedRevision::NoStream,
            vec![NewEvent::json(
                "Sold",
                &serde_json::to_value(&sale).unwrap(),
            )],
        )
        .await
        .unwrap();
}

/// The events of `category` once there are at least `n`, waiting on appends up to
/// [`DEADLINE`].
async fn wait_for_events(events: &dyn EventStore, category: &str, n: usize) -> Vec<RecordedEvent> {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let found = events
            .read_all(Position::START, &EventFilter::categories([category]), 1000)
            .await
            .unwrap();
        if found.len() >= n {
            return found;
        }
        let head = events.head_position().await.unwrap();
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "only {} events of {category} within {DEADLINE:?}, expected {n}",
            found.len()
        );
        events
            .wait_for_events(head, left.min(Duration::from_millis(200)))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn stream_job_runs_under_the_app_and_stops_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app_on_sqlite(&dir).await;
    app.stream_job_with(
        revenue_job(Sink::stream("Revenue", "RevenuePerMinute")),
        still_clock(),
    );
    assert_eq!(app.task_names(), ["stream-job:app_revenue:v1"]);
    let running = app.start().await.unwrap();
    let events = std::sync::Arc::clone(&running.stores().events);

    // Minute 0: tea 300 + 200, coffee 150; then a sale at 2:10 moves the watermark
    // (2:10 − 5 s of out-of-orderness) past minute 0's end plus its grace, not minute 2's.
    sell(events.as_ref(), "tea", 300, 10).await;
    sell(events.as_ref(), "tea", 200, 40).await;
    sell(events.as_ref(), "coffee", 150, 59).await;
    sell(events.as_ref(), "tea", 999, 130).await;

    let results = wait_for_events(events.as_ref(), "Revenue", 2).await;
    let mut by_product: Vec<(String, serde_json::Value)> = results
        .iter()
        .map(|e| {
            assert_eq!(e.event_type, "RevenuePerMinute");
            let d = e.data_json().unwrap();
            assert_eq!(d["kind"], "final");
            assert_eq!(d["window"]["start"], base().timestamp_millis());
            (d["key"].as_str().unwrap().to_string(), d["value"].clone())
        })
        .collect();
    by_product.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        by_product,
        [
            ("coffee".to_string(), serde_json::json!(150)),
            ("tea".to_string(), serde_json::json!(500)),
        ]
    );

    let report = running.shutdown(DEADLINE).await;
    assert!(report.all_stopped_in_time(), "{report:?}");
    assert_eq!(report.restarts(), 0, "{report:?}");
    assert_eq!(report.tasks[0].name, "stream-job:app_revenue:v1");

    // Stopped cleanly: the lease is given up, and the checkpoint holds every event read.
    let stores = open_stores(
        &StoreUrl::sqlite(dir.path().join("app.db")),
        OpenMode::default(),
    )
    .await
    .unwrap();
    let status = job_status(&stores, "app_revenue").await.unwrap().unwrap();
    assert_eq!(status.lease_owner, None, "{status:?}");
    assert_eq!(status.records, 4, "{status:?}");
}

#[tokio::test]
async fn stream_job_publishing_to_a_topic_gets_the_outbox_relay_and_a_catalog_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app_on_sqlite(&dir).await;
    let topic = TopicName::new("revenue.per-minute").unwrap();
    app.stream_job_with(revenue_job(Sink::topic(topic.clone())), still_clock());
    let (seen, mut seen_rx) = mpsc::channel(16);
    app.consumer(
        topic.clone(),
        GroupName::new("finance").unwrap(),
        move |consumer| {
            let seen = seen.clone();
            consumer.handler(move |ctx: HandlerContext| {
                let seen = seen.clone();
                async move {
                    let body: serde_json::Value = ctx.json()?;
                    let _ = seen.send(body).await;
                    Ok::<_, HandlerError>(())
                }
            })
        },
    );
    let running = app.start().await.unwrap();
    let entry = running
        .catalog()
        .topics
        .into_iter()
        .find(|t| t.topic == topic.as_str())
        .expect("the job's topic is in the catalog");
    assert!(
        entry
            .publishers
            .iter()
            .any(|p| p.name == "stream-job:app_revenue" && p.kind == PublisherKind::StreamJob),
        "{entry:?}"
    );

    let events = std::sync::Arc::clone(&running.stores().events);
    sell(events.as_ref(), "tea", 300, 10).await;
    sell(events.as_ref(), "tea", 100, 70).await;
    sell(events.as_ref(), "tea", 100, 200).await;
    // Minutes 0 and 1 close; nothing but the outbox relay the app started for the job
    // carries the results to the consumer.
    let mut values = Vec::new();
    while values.len() < 2 {
        let body = tokio::time::timeout(DEADLINE, seen_rx.recv())
            .await
            .expect("the job's results reached the topic in time")
            .unwrap();
        values.push((
            body["window"]["start"].as_i64().unwrap(),
            body["value"].clone(),
        ));
    }
    values.sort_by_key(|v| v.0);
    let minute = |m: i64| base().timestamp_millis() + m * 60_000;
    assert_eq!(
        values,
        [
            (minute(0), serde_json::json!(300)),
            (minute(1), serde_json::json!(100))
        ]
    );

    let report = running.shutdown(DEADLINE).await;
    assert!(report.all_stopped_in_time(), "{report:?}");
    assert!(
        report
            .tasks
            .iter()
            .any(|t| t.name.starts_with("outbox-relay:")),
        "{report:?}"
    );
}
