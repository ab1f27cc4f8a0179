//! A stream job fed from a bus topic, on the embedded bus and on NATS JetStream: each
//! message is ingested into the store once (a redelivered or republished message id is
//! recognised), carries its own time as event time, and is windowed like any event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use runnel::connect::{open_bus, open_stores, Bus, BusUrl, OpenMode, StoreUrl, Stores};
use runnel::consumer::Consumer;
use runnel::core::bus::{StartPosition, SubscribeOptions};
use runnel::core::clock::VirtualClock;
use runnel::core::{EventFilter, GroupName, Message, Position, TopicName};
use runnel::stream::{Agg, JobBuilder, RunOptions, Sink, StreamJob, TopicIngest, WindowSpec};

fn base() -> DateTime<Utc> {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn click(id: &str, page: &str, t_ms: i64) -> Message {
    let mut m = Message::json("Clicked", &serde_json::json!({"page": page}))
        .with_key(page)
        .with_id(id);
    m.time = Some(base() + chrono::Duration::milliseconds(t_ms));
    m
}

async fn count_of(stores: &Stores, category: &str) -> usize {
    stores
        .events
        .read_all(
            Position::START,
            &EventFilter::categories([category]),
            10_000,
        )
        .await
        .unwrap()
        .len()
}

async fn topic_job_counts_each_message_once(stores: Stores, bus: Bus, topic: TopicName) {
    let consumer = Consumer::builder(
        Arc::clone(&bus.subscriber),
        topic.clone(),
        GroupName::new("ingest").unwrap(),
    )
    .handler(TopicIngest::new(Arc::clone(&stores.events), "Clicks").unwrap())
    .dead_letters(Arc::clone(&stores.dead_letters))
    .subscribe_options(SubscribeOptions {
        start: StartPosition::Earliest,
        ..SubscribeOptions::default()
    })
    .start()
    .await
    .unwrap();

    let messages = vec![
        click("m1", "home", 1_000),
        click("m2", "home", 12_000),
        click("m3", "home", 3_000), // out of order, on time (5 s allowed)
        click("m4", "about", 2_000),
        click("m1", "home", 1_000), // the same message again
    ];
    bus.publisher.publish(&topic, messages).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_of(&stores, "Clicks").await < 4 {
        assert!(Instant::now() < deadline, "the messages were not ingested");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut job = JobBuilder::new("clicks_per_page");
    job.topic_events("Clicks")
        .out_of_orderness(Duration::from_secs(5))
        .key_by(|e| e.stream.id().to_string())
        .window(WindowSpec::tumbling(Duration::from_secs(10)))
        .aggregate(Agg::count())
        .to(Sink::stream("PageClicks", "Counted"));
    let clock = Arc::new(VirtualClock::at(base()));
    let job = StreamJob::on(
        &stores,
        job.build().unwrap(),
        RunOptions {
            clock: clock.clone(),
            ..RunOptions::default()
        },
    );
    job.catch_up().await.unwrap();
    clock.advance(Duration::from_secs(3600 * 24 * 365 * 3));
    job.catch_up().await.unwrap();
    job.catch_up().await.unwrap();
    let mut got: Vec<(String, i64, i64)> = stores
        .events
        .read_all(
            Position::START,
            &EventFilter::categories(["PageClicks"]),
            100,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            let d = e.data_json().unwrap();
            (
                d["key"].as_str().unwrap().to_string(),
                d["window"]["start"].as_i64().unwrap() - base().timestamp_millis(),
                d["value"].as_i64().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("about".into(), 0, 1),
            ("home".into(), 0, 2),
            ("home".into(), 10_000, 1)
        ],
        "the repeated message counted once, each in its own time's window"
    );
    assert_eq!(count_of(&stores, "Clicks").await, 4);
    consumer.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_feeds_a_job_once_per_message_on_the_embedded_bus() {
    let dir = tempfile::tempdir().unwrap();
    let stores = open_stores(
        &StoreUrl::sqlite(dir.path().join("app.db")),
        OpenMode::default(),
    )
    .await
    .unwrap();
    let bus = open_bus(&BusUrl::Embedded, &stores).await.unwrap();
    topic_job_counts_each_message_once(stores, bus, TopicName::new("clicks").unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_feeds_a_job_once_per_message_on_nats() {
    let url = match std::env::var("RUNNEL_TEST_NATS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "RUNNEL_TEST_NATS_URL is not set but RUNNEL_REQUIRE_SERVICES=1"
            );
            eprintln!("SKIPPED: RUNNEL_TEST_NATS_URL is not set");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let stores = open_stores(
        &StoreUrl::sqlite(dir.path().join("app.db")),
        OpenMode::default(),
    )
    .await
    .unwrap();
    let tag = runnel::core::uuid::Uuid::now_v7().simple().to_string();
    let tag = &tag[tag.len() - 12..];
    let sep = if url.contains('?') { '&' } else { '?' };
    let bus_url = format!("{url}{sep}subject_prefix=strm{tag}&stream_prefix=STRM{tag}");
    let bus = open_bus(&BusUrl::parse(&bus_url).unwrap(), &stores)
        .await
        .unwrap();
    topic_job_counts_each_message_once(stores, bus, TopicName::new("clicks").unwrap()).await;
}
