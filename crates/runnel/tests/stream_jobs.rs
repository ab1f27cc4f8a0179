//! Stream jobs on the store, on SQLite and on PostgreSQL: late records reach the late
//! output, idle sources advance the watermark, left joins wait for the bound, stream–table
//! joins read the table as of each record, closed windows leave no state, and outputs
//! appended to streams carry stable ids.

#[path = "pg_schema/mod.rs"]
mod pg_schema;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use runnel::connect::{open_stores, OpenMode, StoreUrl, Stores};
use runnel::core::clock::VirtualClock;
use runnel::core::{EventFilter, ExpectedRevision, NewEvent, Position, RecordedEvent, StreamName};
use runnel::stream::{
    job_status, processor_names, Agg, JobBuilder, JoinKind, JoinSpec, RunOptions, Sink, StreamJob,
    WindowSpec,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Reading {
    key: String,
    /// Event time, ms after `base()`.
    t: i64,
    v: i64,
}

fn base() -> DateTime<Utc> {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn time_of(e: &RecordedEvent) -> DateTime<Utc> {
    let r: Reading = serde_json::from_slice(&e.data).expect("a reading");
    base() + chrono::Duration::milliseconds(r.t)
}

fn read(e: runnel::stream::SourceEvent) -> Result<Reading, runnel::stream::StreamError> {
    Ok(serde_json::from_slice(&e.data)?)
}

async fn put(stores: &Stores, ty: &str, key: &str, t: i64, v: i64) {
    stores
        .events
        .append(
            &StreamName::new(format!("Input-{key}")).unwrap(),
            ExpectedRevision::Any,
            vec![NewEvent::json(
                ty,
                &serde_json::json!({"key": key, "t": t, "v": v}),
            )],
        )
        .await
        .unwrap();
}

/// Every event of `category`, as (type, data).
async fn outputs(stores: &Stores, category: &str) -> Vec<(String, serde_json::Value)> {
    stores
        .events
        .read_all(
            Position::START,
            &EventFilter::categories([category]),
            10_000,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.event_type.clone(), e.data_json().unwrap()))
        .collect()
}

fn options(clock: Arc<VirtualClock>) -> RunOptions {
    RunOptions {
        batch_events: 7,
        idle_after: Duration::from_secs(1),
        clock,
        ..RunOptions::default()
    }
}

/// Far enough for every source to be idle past any window in these tests.
const FAR: Duration = Duration::from_secs(3600 * 24 * 365 * 3);

async fn late_event_goes_to_late_output_never_dropped(stores: Stores) {
    let mut job = JobBuilder::new("late_sums");
    job.events(EventFilter::event_types(["Reading"]))
        .event_time(time_of)
        .try_map(read)
        .key_by(|r: &Reading| r.key.clone())
        .window(WindowSpec::tumbling(Duration::from_secs(10)).grace(Duration::from_secs(1)))
        .aggregate(Agg::sum(|r: &Reading| r.v))
        .to(Sink::stream("Sums", "WindowSummed"));
    let clock = Arc::new(VirtualClock::at(base()));
    let job = StreamJob::on(&stores, job.build().unwrap(), options(clock));
    put(&stores, "Reading", "a", 1_000, 1).await;
    put(&stores, "Reading", "a", 20_000, 2).await; // closes [0, 10)
    put(&stores, "Reading", "a", 5_000, 40).await; // late: its window has closed
    job.catch_up().await.unwrap();
    let sums = outputs(&stores, "Sums").await;
    assert_eq!(sums.len(), 1, "{sums:?}");
    assert_eq!(sums[0].1["value"], 1, "the late record changed nothing");
    let late = outputs(&stores, "StreamLate").await;
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0].0, "LateRecord");
    assert_eq!(late[0].1["value"]["v"], 40);
    assert_eq!(late[0].1["job"], "late_sums");
    let status = job_status(&stores, "late_sums").await.unwrap().unwrap();
    assert_eq!(status.late, 1);
    assert_eq!(status.records, 3);
    // Running again emits nothing twice.
    job.catch_up().await.unwrap();
    assert_eq!(outputs(&stores, "StreamLate").await.len(), 1);
    assert_eq!(outputs(&stores, "Sums").await.len(), 1);
}

async fn idle_source_advances_the_watermark(stores: Stores) {
    let mut job = JobBuilder::new("idle_counts");
    job.events(EventFilter::event_types(["Reading"]))
        .key_by(|e| e.stream.to_string())
        .window(WindowSpec::tumbling(Duration::from_secs(60)))
        .aggregate(Agg::count())
        .to(Sink::stream("Counts", "Counted"));
    // The events' time is `recorded_at` (now): the clock starts now too.
    let clock = Arc::new(VirtualClock::new());
    let job = StreamJob::on(&stores, job.build().unwrap(), options(Arc::clone(&clock)));
    put(&stores, "Reading", "a", 0, 1).await;
    job.catch_up().await.unwrap();
    assert!(
        outputs(&stores, "Counts").await.is_empty(),
        "the minute is open"
    );
    let status = job_status(&stores, "idle_counts").await.unwrap().unwrap();
    assert!(status.state_rows >= 1, "{status:?}");
    // Nothing new arrives; the clock moves past the minute: the watermark follows it.
    clock.advance(Duration::from_secs(121));
    job.catch_up().await.unwrap();
    let counts = outputs(&stores, "Counts").await;
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(counts[0].1["value"], 1);
    assert_eq!(counts[0].1["kind"], "final");
}

async fn left_join_emits_unmatched_only_after_window_closes(stores: Stores) {
    let mut job = JobBuilder::new("unpaid");
    let orders = job
        .events(EventFilter::event_types(["OrderPlaced"]))
        .event_time(time_of)
        .try_map(read)
        .key_by(|r: &Reading| r.key.clone());
    let payments = job
        .events(EventFilter::event_types(["PaymentMade"]))
        .event_time(time_of)
        .try_map(read)
        .key_by(|r: &Reading| r.key.clone());
    orders
        .join(
            payments,
            JoinSpec::left(Duration::from_secs(900)).grace(Duration::from_secs(30)),
            |k, o, p| serde_json::json!({"order": k, "paid": p.is_some(), "amount": o.map(|o| o.v)}),
        )
        .to(Sink::stream("Unpaid", "OrderChecked"));
    let clock = Arc::new(VirtualClock::at(base()));
    let job = StreamJob::on(&stores, job.build().unwrap(), options(Arc::clone(&clock)));
    put(&stores, "OrderPlaced", "o1", 0, 10).await;
    put(&stores, "OrderPlaced", "o2", 1_000, 20).await;
    put(&stores, "PaymentMade", "o2", 100_000, 20).await;
    // Both sides move to 15 min: o1's bound (15 min) has passed, its grace has not.
    put(&stores, "OrderPlaced", "z", 900_000, 0).await;
    put(&stores, "PaymentMade", "z", 900_000, 0).await;
    job.catch_up().await.unwrap();
    let out = outputs(&stores, "Unpaid").await;
    assert!(
        out.iter().all(|(_, d)| d["value"]["paid"] == true),
        "no unmatched result before the bound plus grace: {out:?}"
    );
    assert_eq!(out.len(), 2, "o2 and z paired: {out:?}");
    put(&stores, "OrderPlaced", "y", 930_000, 0).await;
    put(&stores, "PaymentMade", "y", 930_000, 0).await;
    job.catch_up().await.unwrap();
    let out = outputs(&stores, "Unpaid").await;
    let unpaid: Vec<_> = out
        .iter()
        .filter(|(_, d)| d["value"]["paid"] == false)
        .map(|(_, d)| d["value"]["order"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(unpaid, vec!["o1".to_string()], "{out:?}");
}

async fn stream_table_join_uses_table_as_of_event_time(stores: Stores) {
    let mut job = JobBuilder::new("priced_sales");
    let prices = job
        .events(EventFilter::event_types(["PriceSet"]))
        .event_time(time_of)
        .try_map(read)
        .key_by(|r: &Reading| r.key.clone())
        .into_table();
    job.events(EventFilter::event_types(["Sold"]))
        .event_time(time_of)
        .try_map(read)
        .key_by(|r: &Reading| r.key.clone())
        .join_table(
            prices,
            Duration::from_secs(5),
            JoinKind::Left,
            |_, s, p| serde_json::json!({"at": s.map(|s| s.t), "price": p.map(|p| p.v)}),
        )
        .to(Sink::stream("Priced", "SalePriced"));
    let clock = Arc::new(VirtualClock::at(base()));
    let job = StreamJob::on(&stores, job.build().unwrap(), options(Arc::clone(&clock)));
    put(&stores, "PriceSet", "tea", 0, 100).await;
    put(&stores, "PriceSet", "tea", 10_000, 200).await;
    put(&stores, "Sold", "tea", 5_000, 0).await;
    put(&stores, "Sold", "tea", 12_000, 0).await;
    job.catch_up().await.unwrap();
    // A price for 11 s arrives late, within the grace: the sale at 12 s must see it.
    put(&stores, "PriceSet", "tea", 11_000, 150).await;
    put(&stores, "Sold", "coffee", 13_000, 0).await; // no price at all
    put(&stores, "PriceSet", "tea", 30_000, 300).await;
    put(&stores, "Sold", "tea", 31_000, 0).await;
    job.catch_up().await.unwrap();
    clock.advance(FAR);
    job.catch_up().await.unwrap();
    job.catch_up().await.unwrap();
    let got: Vec<(i64, Option<i64>)> = outputs(&stores, "Priced")
        .await
        .into_iter()
        .map(|(_, d)| {
            (
                d["value"]["at"].as_i64().unwrap(),
                d["value"]["price"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (5_000, Some(100)),
            (12_000, Some(150)),
            (13_000, None),
            (31_000, Some(300))
        ]
    );
}

async fn closed_window_state_is_deleted(stores: Stores) {
    let mut job = JobBuilder::new("state_bound");
    job.events(EventFilter::event_types(["Reading"]))
        .event_time(time_of)
        .out_of_orderness(Duration::from_secs(2))
        .try_map(read)
        .key_by(|r: &Reading| r.key.clone())
        .window(WindowSpec::tumbling(Duration::from_secs(10)).grace(Duration::from_secs(1)))
        .aggregate(Agg::max(|r: &Reading| r.v))
        .to(Sink::table());
    let clock = Arc::new(VirtualClock::at(base()));
    let job = StreamJob::on(
        &stores,
        job.build().unwrap(),
        RunOptions {
            cache_rows: 3, // far fewer than the keys: rows go back and forth to the store
            ..options(Arc::clone(&clock))
        },
    );
    let mut most = 0;
    // 60 windows of history over 8 keys: the state must follow the open windows only.
    for w in 0..60i64 {
        for k in 0..8 {
            put(
                &stores,
                "Reading",
                &format!("k{k}"),
                w * 10_000 + k * 100,
                w + k,
            )
            .await;
        }
        if w % 10 == 9 {
            job.catch_up().await.unwrap();
            let s = job_status(&stores, "state_bound").await.unwrap().unwrap();
            most = most.max(s.state_rows);
        }
    }
    assert!(
        most <= 8,
        "at most one row per key (its open window): {most}"
    );
    clock.advance(FAR);
    job.catch_up().await.unwrap();
    job.catch_up().await.unwrap();
    let s = job_status(&stores, "state_bound").await.unwrap().unwrap();
    assert_eq!(s.state_rows, 0, "every window closed, nothing kept: {s:?}");
    assert_eq!(
        s.outputs,
        60 * 8,
        "one final result per key and window: {s:?}"
    );
    assert_eq!(s.late, 0);
    assert_eq!(s.records, 60 * 8);
    let names = processor_names(&*stores.projections).await.unwrap();
    assert_eq!(names, vec!["state_bound".to_string()]);
}

async fn a_bad_event_faults_the_job_until_it_is_skipped(stores: Stores) {
    let build = || {
        let mut job = JobBuilder::new("strict");
        job.events(EventFilter::event_types(["Reading"]))
            .try_map(read)
            .key_by(|r: &Reading| r.key.clone())
            .aggregate(Agg::sum(|r: &Reading| r.v))
            .to(Sink::stream("Strict", "Summed"));
        job.build().unwrap()
    };
    let clock = Arc::new(VirtualClock::at(base()));
    let job = StreamJob::on(&stores, build(), options(Arc::clone(&clock)));
    put(&stores, "Reading", "a", 0, 1).await;
    put(&stores, "Reading", "a", 0, 2).await;
    stores
        .events
        .append(
            &StreamName::new("Input-bad").unwrap(),
            ExpectedRevision::Any,
            vec![NewEvent::json(
                "Reading",
                &serde_json::json!({"not": "a reading"}),
            )],
        )
        .await
        .unwrap();
    put(&stores, "Reading", "a", 0, 4).await;
    job.catch_up().await.unwrap();
    let s = job_status(&stores, "strict").await.unwrap().unwrap();
    assert_eq!(s.status, "faulted", "{s:?}");
    assert!(
        s.last_error
            .as_deref()
            .unwrap_or("")
            .contains("cannot read"),
        "{s:?}"
    );
    assert_eq!(
        s.records, 2,
        "the events before the bad one committed: {s:?}"
    );
    let sums: Vec<i64> = outputs(&stores, "Strict")
        .await
        .iter()
        .map(|(_, d)| d["value"].as_i64().unwrap())
        .collect();
    assert_eq!(sums, vec![1, 3]);
    // Faulted: nothing moves until an operator acts.
    job.catch_up().await.unwrap();
    assert_eq!(
        job_status(&stores, "strict")
            .await
            .unwrap()
            .unwrap()
            .records,
        2
    );
    // Skipping the bad event skips it and nothing else.
    assert!(stores
        .projections
        .skip_failed(job.projection_name(), s.version, 0)
        .await
        .unwrap());
    job.catch_up().await.unwrap();
    let s = job_status(&stores, "strict").await.unwrap().unwrap();
    assert_eq!((s.status.as_str(), s.records), ("running", 3), "{s:?}");
    let sums: Vec<i64> = outputs(&stores, "Strict")
        .await
        .iter()
        .map(|(_, d)| d["value"].as_i64().unwrap())
        .collect();
    assert_eq!(sums, vec![1, 3, 7]);
}

async fn one_process_at_a_time_runs_a_job(stores: Stores) {
    let build = || {
        let mut job = JobBuilder::new("single");
        job.events(EventFilter::event_types(["Reading"]))
            .try_map(read)
            .key_by(|r: &Reading| r.key.clone())
            .aggregate(Agg::count())
            .to(Sink::stream("Single", "Counted"));
        job.build().unwrap()
    };
    let opts = |owner: &str| RunOptions {
        lease: Duration::from_secs(1),
        poll: Duration::from_millis(10),
        owner: Some(owner.into()),
        ..RunOptions::default()
    };
    let a = Arc::new(StreamJob::on(&stores, build(), opts("a")));
    let b = StreamJob::on(&stores, build(), opts("b"));
    for i in 0..20 {
        put(&stores, "Reading", "k", i, 1).await;
    }
    let (_stop, shutdown) = runnel::app::ShutdownTrigger::new();
    let running = tokio::spawn({
        let a = Arc::clone(&a);
        async move { a.run(shutdown).await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while job_status(&stores, "single")
        .await
        .unwrap()
        .map_or(0, |s| s.records)
        < 20
    {
        assert!(std::time::Instant::now() < deadline, "a never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // `a` holds the lease: `b` applies nothing.
    assert_eq!(b.catch_up().await.unwrap(), 0);
    // `a` dies without giving the lease up (its task is cut off, like a kill).
    running.abort();
    let _ = running.await;
    put(&stores, "Reading", "k", 100, 1).await;
    // Once the lease runs out, `b` takes over from `a`'s last commit.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if b.catch_up().await.unwrap() > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "b never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counts: Vec<i64> = outputs(&stores, "Single")
        .await
        .iter()
        .map(|(_, d)| d["value"].as_i64().unwrap())
        .collect();
    assert_eq!(
        counts,
        (1..=21).collect::<Vec<_>>(),
        "each event counted once, in order"
    );
}

async fn late_records_can_go_to_the_dead_letters(stores: Stores) {
    let mut job = JobBuilder::new("late_dlq");
    job.late_output(runnel::stream::LateOutput::DeadLetters);
    job.events(EventFilter::event_types(["Reading"]))
        .event_time(time_of)
        .try_map(read)
        .key_by(|r: &Reading| r.key.clone())
        .window(WindowSpec::tumbling(Duration::from_secs(10)))
        .aggregate(Agg::count())
        .to(Sink::table());
    let clock = Arc::new(VirtualClock::at(base()));
    let job = StreamJob::on(&stores, job.build().unwrap(), options(clock));
    put(&stores, "Reading", "a", 1_000, 1).await;
    put(&stores, "Reading", "a", 30_000, 1).await;
    put(&stores, "Reading", "a", 2_000, 7).await; // late
    job.catch_up().await.unwrap();
    job.catch_up().await.unwrap();
    let filter = runnel::core::dead_letter::DeadLetterFilter {
        topic: Some(runnel::core::TopicName::new(runnel::stream::LATE_TOPIC).unwrap()),
        ..Default::default()
    };
    let dead = stores.dead_letters.list(&filter, None, 100).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].group.as_str(), "late_dlq");
    let record: serde_json::Value = serde_json::from_slice(&dead[0].message.payload).unwrap();
    assert_eq!(record["value"]["v"], 7);
    assert!(
        dead[0].failures[0].error.contains("late"),
        "{:?}",
        dead[0].failures
    );
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let stores = open_stores(
                        &StoreUrl::sqlite(dir.path().join("stream.db")),
                        OpenMode::default(),
                    )
                    .await
                    .unwrap();
                    super::$name(stores).await;
                }
            )*
        }

        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some((_store, guard)) = pg_schema::fresh_store("strm", 2).await else {
                        return;
                    };
                    let url = std::env::var("RUNNEL_TEST_POSTGRES_URL").unwrap();
                    let sep = if url.contains('?') { '&' } else { '?' };
                    let url = StoreUrl::parse(&format!("{url}{sep}schema={}&pool_size=4", guard.schema)).unwrap();
                    let stores = open_stores(&url, OpenMode::default()).await.unwrap();
                    super::$name(stores).await;
                    drop(guard);
                }
            )*
        }
    };
}

on_both!(
    late_event_goes_to_late_output_never_dropped,
    idle_source_advances_the_watermark,
    left_join_emits_unmatched_only_after_window_closes,
    stream_table_join_uses_table_as_of_event_time,
    closed_window_state_is_deleted,
    a_bad_event_faults_the_job_until_it_is_skipped,
    one_process_at_a_time_runs_a_job,
    late_records_can_go_to_the_dead_letters,
);
