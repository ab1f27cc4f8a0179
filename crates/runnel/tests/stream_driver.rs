//! Stream processing semantics on the in-memory test driver: windows of every shape,
//! emit strategies, lateness and corrections, joins, idle watermarks, state cleanup — and a
//! property test that checks every final window against a straightforward recomputation.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use runnel::core::{EventFilter, EventId, Metadata, Position, RecordedEvent, StreamName};
use runnel::stream::{
    Agg, Emit, JobBuilder, JoinKind, JoinSpec, Output, ResultKind, Sink, StreamError, TestDriver,
    WindowSpec,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Reading {
    key: String,
    t: i64,
    v: i64,
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A job over `Reading` events whose time is their `t` (ms since the driver's epoch).
fn readings(name: &str, ooo: Duration) -> (JobBuilder, runnel::stream::KeyedStream<Reading>) {
    let mut job = JobBuilder::new(name);
    let keyed = job
        .events(EventFilter::event_types(["Reading"]))
        .event_time(|e| {
            let r: Reading = serde_json::from_slice(&e.data).expect("a reading");
            epoch() + chrono::Duration::milliseconds(r.t)
        })
        .out_of_orderness(ooo)
        .try_map(|e| Ok(serde_json::from_slice::<Reading>(&e.data)?))
        .key_by(|r: &Reading| r.key.clone());
    (job, keyed)
}

fn epoch() -> DateTime<Utc> {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn ms(t: i64) -> i64 {
    epoch().timestamp_millis() + t
}

fn send(d: &mut TestDriver, key: &str, t: i64, v: i64) {
    d.send(
        "Sensor-1",
        "Reading",
        &serde_json::json!({"key": key, "t": t, "v": v}),
        epoch(),
    )
    .unwrap();
}

fn finals(out: &[Output]) -> Vec<(String, i64, i64, serde_json::Value)> {
    out.iter()
        .filter(|o| o.kind == ResultKind::Final)
        .map(|o| {
            let w = o.window.expect("a window");
            (
                o.key.clone(),
                w.start - epoch().timestamp_millis(),
                w.end - epoch().timestamp_millis(),
                o.value.clone(),
            )
        })
        .collect()
}

#[test]
fn tumbling_window_emits_once_when_the_watermark_passes_end_plus_grace() {
    let (job, keyed) = readings("tumble", secs(0));
    keyed
        .window(WindowSpec::tumbling(secs(10)).grace(secs(2)))
        .aggregate(Agg::sum(|r: &Reading| r.v))
        .to(Sink::Discard);
    let mut d = TestDriver::new(job.build().unwrap());
    send(&mut d, "a", 1_000, 5);
    send(&mut d, "a", 9_000, 7);
    send(&mut d, "a", 11_000, 1); // watermark 11 s: [0, 10) is in its grace
    assert!(finals(d.outputs()).is_empty(), "not before end + grace");
    send(&mut d, "a", 8_000, 100); // on time within the grace
    send(&mut d, "a", 12_000, 1); // watermark 12 s = 10 s + 2 s: closes
    assert_eq!(
        finals(&d.take_outputs()),
        vec![("a".into(), 0, 10_000, serde_json::json!(112))]
    );
    send(&mut d, "a", 30_000, 1);
    assert_eq!(
        finals(&d.take_outputs()),
        vec![("a".into(), 10_000, 20_000, serde_json::json!(2))]
    );
}

#[test]
fn emit_on_update_sends_every_running_result() {
    let (job, keyed) = readings("updates", secs(0));
    keyed
        .window(WindowSpec::tumbling(secs(10)))
        .aggregate(Agg::count())
        .emit(Emit::OnUpdate)
        .to(Sink::Discard);
    let mut d = TestDriver::new(job.build().unwrap());
    send(&mut d, "a", 1_000, 0);
    send(&mut d, "a", 2_000, 0);
    let values: Vec<_> = d
        .take_outputs()
        .into_iter()
        .map(|o| (o.kind, o.value))
        .collect();
    assert_eq!(
        values,
        vec![
            (ResultKind::Update, serde_json::json!(1)),
            (ResultKind::Update, serde_json::json!(2))
        ]
    );
}

#[test]
fn hopping_windows_count_each_record_in_every_window_it_falls_in() {
    let (job, keyed) = readings("hops", secs(0));
    keyed
        .window(WindowSpec::hopping(secs(10), secs(5)))
        .aggregate(Agg::count())
        .to(Sink::Discard);
    let mut d = TestDriver::new(job.build().unwrap());
    send(&mut d, "a", 7_000, 0); // [0,10) and [5,15)
    send(&mut d, "a", 12_000, 0); // [5,15) and [10,20)
    d.advance_clock(Duration::from_secs(3600 * 24 * 365 * 2));
    let mut f = finals(&d.take_outputs());
    f.sort_by_key(|x| (x.0.clone(), x.1, x.2));
    assert_eq!(
        f,
        vec![
            ("a".into(), 0, 10_000, serde_json::json!(1)),
            ("a".into(), 5_000, 15_000, serde_json::json!(2)),
            ("a".into(), 10_000, 20_000, serde_json::json!(1)),
        ]
    );
}

#[test]
fn session_windows_merge_when_a_record_bridges_the_gap() {
    let (job, keyed) = readings("sessions", secs(60));
    keyed
        .window(WindowSpec::session(secs(10)))
        .aggregate(Agg::sum(|r: &Reading| r.v))
        .to(Sink::Discard);
    let mut d = TestDriver::new(job.build().unwrap());
    send(&mut d, "a", 0, 1);
    send(&mut d, "a", 15_000, 2); // a second session: the gap is 15 s
    send(&mut d, "a", 8_000, 4); // bridges both: [0, 25)
    send(&mut d, "a", 100_000, 8);
    d.advance_clock(Duration::from_secs(3600 * 24 * 365 * 2));
    let f = finals(&d.take_outputs());
    assert_eq!(
        f,
        vec![
            ("a".into(), 0, 25_000, serde_json::json!(7)),
            ("a".into(), 100_000, 110_000, serde_json::json!(8)),
        ]
    );
}

#[test]
fn session_windows_refuse_an_aggregation_that_cannot_merge() {
    let (job, keyed) = readings("bad_sessions", secs(0));
    keyed
        .window(WindowSpec::session(secs(10)))
        .aggregate(Agg::fold(0i64, |a: &mut i64, r: &Reading| *a += r.v))
        .to(Sink::Discard);
    let err = job.build().unwrap_err();
    assert!(
        matches!(&err, StreamError::Definition(m) if m.contains("merge")),
        "{err}"
    );
}

#[test]
fn sliding_windows_aggregate_the_size_before_each_record() {
    let (job, keyed) = readings("slides", secs(0));
    keyed
        .window(WindowSpec::sliding(secs(10)))
        .aggregate(Agg::sum(|r: &Reading| r.v))
        .to(Sink::Discard);
    let mut d = TestDriver::new(job.build().unwrap());
    send(&mut d, "a", 1_000, 1);
    send(&mut d, "a", 5_000, 2);
    send(&mut d, "a", 12_000, 4); // (2 s, 12 s]: 2 + 4
    d.advance_clock(Duration::from_secs(3600 * 24 * 365 * 2));
    let f: Vec<_> = finals(&d.take_outputs())
        .into_iter()
        .map(|(_, _, end, v)| (end, v))
        .collect();
    assert_eq!(
        f,
        vec![
            (1_001, serde_json::json!(1)),
            (5_001, serde_json::json!(3)),
            (12_001, serde_json::json!(6)),
        ]
    );
    assert!(
        d.state_keys().is_empty(),
        "nothing left once every window closed"
    );
}

#[test]
fn late_records_go_to_the_late_output_and_corrections_amend_emitted_windows() {
    let (job, keyed) = readings("corrections", secs(0));
    keyed
        .window(
            WindowSpec::tumbling(secs(10))
                .grace(secs(1))
                .corrections(secs(30)),
        )
        .aggregate(Agg::sum(|r: &Reading| r.v))
        .to(Sink::Discard);
    let mut d = TestDriver::new(job.build().unwrap());
    send(&mut d, "a", 1_000, 1);
    send(&mut d, "a", 15_000, 1); // closes [0, 10): final 1
    send(&mut d, "a", 2_000, 10); // late, within the correction period
    let out = d.take_outputs();
    let kinds: Vec<_> = out.iter().map(|o| (o.kind, o.value.clone())).collect();
    assert_eq!(
        kinds,
        vec![
            (ResultKind::Final, serde_json::json!(1)),
            (ResultKind::Retraction, serde_json::json!(1)),
            (ResultKind::Correction, serde_json::json!(11)),
        ]
    );
    assert_eq!(
        d.take_late().len(),
        1,
        "a correction is still a late record"
    );
    send(&mut d, "a", 60_000, 1); // past the correction period: the window is gone
    send(&mut d, "a", 3_000, 1000);
    assert!(d
        .take_outputs()
        .iter()
        .all(|o| o.kind != ResultKind::Correction));
    let late = d.take_late();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].value["v"], 1000);
    assert_eq!(late[0].time, ms(3_000));
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Pair {
    order: Option<i64>,
    payment: Option<i64>,
}

/// Readings of event type `ty`, keyed by their key, their time from their `t`.
fn typed(job: &mut JobBuilder, ty: &str) -> runnel::stream::KeyedStream<Reading> {
    job.events(EventFilter::event_types([ty]))
        .event_time(|e| {
            let r: Reading = serde_json::from_slice(&e.data).unwrap();
            epoch() + chrono::Duration::milliseconds(r.t)
        })
        .try_map(|e| Ok(serde_json::from_slice::<Reading>(&e.data)?))
        .key_by(|r: &Reading| r.key.clone())
}

fn order_payment_job(kind: JoinKind) -> runnel::stream::Job {
    let mut job = JobBuilder::new("orders_payments");
    let orders = typed(&mut job, "OrderPlaced");
    let payments = typed(&mut job, "PaymentMade");
    let spec = match kind {
        JoinKind::Inner => JoinSpec::inner(secs(900)),
        JoinKind::Left => JoinSpec::left(secs(900)),
        JoinKind::Outer => JoinSpec::outer(secs(900)),
    };
    orders
        .join(payments, spec.grace(secs(60)), |_, o, p| Pair {
            order: o.map(|o| o.v),
            payment: p.map(|p| p.v),
        })
        .to(Sink::Discard);
    job.build().unwrap()
}

fn event(d: &mut TestDriver, ty: &str, key: &str, t: i64, v: i64) {
    d.send(
        "Shop-1",
        ty,
        &serde_json::json!({"key": key, "t": t, "v": v}),
        epoch(),
    )
    .unwrap();
}

fn pairs(out: Vec<Output>) -> Vec<Pair> {
    out.into_iter()
        .map(|o| serde_json::from_value(o.value).unwrap())
        .collect()
}

#[test]
fn left_join_emits_the_unmatched_order_only_after_the_bound_and_grace() {
    let mut d = TestDriver::new(order_payment_job(JoinKind::Left));
    event(&mut d, "OrderPlaced", "o1", 0, 1);
    event(&mut d, "OrderPlaced", "o2", 1_000, 2);
    event(&mut d, "PaymentMade", "o2", 60_000, 20);
    assert_eq!(
        pairs(d.take_outputs()),
        vec![Pair {
            order: Some(2),
            payment: Some(20)
        }]
    );
    // Both sides' watermarks reach 15 min: o1's bound has passed, but not its grace.
    event(&mut d, "OrderPlaced", "x", 900_000, 0);
    event(&mut d, "PaymentMade", "x", 900_000, 0);
    assert_eq!(pairs(d.take_outputs()).len(), 1, "x pairs; o1 still waits");
    event(&mut d, "OrderPlaced", "y", 960_000, 0);
    event(&mut d, "PaymentMade", "y", 960_000, 0);
    let out = pairs(d.take_outputs());
    assert!(
        out.contains(&Pair {
            order: Some(1),
            payment: None
        }),
        "{out:?}"
    );
    assert!(
        !out.contains(&Pair {
            order: Some(2),
            payment: None
        }),
        "o2 was paid: no half result"
    );
}

#[test]
fn a_filtering_left_join_reports_only_the_orders_that_were_never_paid() {
    let mut job = JobBuilder::new("never_paid");
    let orders = typed(&mut job, "OrderPlaced");
    let payments = typed(&mut job, "PaymentMade");
    orders
        .join_filter_map(payments, JoinSpec::left(secs(900)), |k, _, p| {
            p.is_none().then(|| k.to_string())
        })
        .to(Sink::Discard);
    let mut d = TestDriver::new(job.build().unwrap());
    event(&mut d, "OrderPlaced", "paid", 0, 1);
    event(&mut d, "OrderPlaced", "unpaid", 0, 1);
    event(&mut d, "PaymentMade", "paid", 1_000, 1);
    assert!(d.outputs().is_empty(), "the pair is filtered out");
    d.advance_clock(Duration::from_secs(3600 * 24 * 365 * 2));
    let out: Vec<serde_json::Value> = d.take_outputs().into_iter().map(|o| o.value).collect();
    assert_eq!(out, vec![serde_json::json!("unpaid")]);
}

#[test]
fn outer_join_emits_unmatched_payments_too_and_inner_join_never_half_results() {
    for kind in [JoinKind::Inner, JoinKind::Outer] {
        let mut d = TestDriver::new(order_payment_job(kind));
        event(&mut d, "PaymentMade", "p", 0, 5);
        d.advance_clock(Duration::from_secs(3600 * 24 * 365 * 2));
        let out = pairs(d.take_outputs());
        match kind {
            JoinKind::Outer => assert_eq!(
                out,
                vec![Pair {
                    order: None,
                    payment: Some(5)
                }]
            ),
            _ => assert!(out.is_empty(), "{out:?}"),
        }
        assert!(d.state_keys().is_empty());
    }
}

#[test]
fn stream_table_join_reads_the_table_as_of_each_records_time() {
    let mut job = JobBuilder::new("priced");
    let prices = typed(&mut job, "PriceSet").into_table();
    typed(&mut job, "Sold")
        .join_table(prices, secs(5), JoinKind::Left, |_, s, p| {
            (s.map(|s| s.t), p.map(|p| p.v))
        })
        .to(Sink::Discard);
    let mut d = TestDriver::new(job.build().unwrap());
    event(&mut d, "PriceSet", "tea", 0, 100);
    event(&mut d, "PriceSet", "tea", 10_000, 200);
    event(&mut d, "Sold", "tea", 5_000, 0); // as of 5 s: 100
    event(&mut d, "Sold", "tea", 12_000, 0); // as of 12 s: 200 … unless a late update
    event(&mut d, "PriceSet", "tea", 11_000, 150); // late by 1 s, within the grace
    event(&mut d, "Sold", "tea", 20_000, 0);
    event(&mut d, "PriceSet", "tea", 30_000, 300);
    d.advance_clock(Duration::from_secs(3600 * 24 * 365 * 2));
    let got: Vec<(Option<i64>, Option<i64>)> = d
        .take_outputs()
        .into_iter()
        .map(|o| serde_json::from_value(o.value).unwrap())
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(5_000), Some(100)),
            (Some(12_000), Some(150)),
            (Some(20_000), Some(150))
        ]
    );
}

#[test]
fn an_idle_source_advances_the_watermark_with_the_clock() {
    let mut job = JobBuilder::new("idle");
    job.events(EventFilter::all())
        .key_by(|e| e.stream.to_string())
        .window(WindowSpec::tumbling(secs(60)))
        .aggregate(Agg::count())
        .to(Sink::Discard);
    let mut d = TestDriver::new(job.build().unwrap());
    let t0 = d.epoch();
    d.send("Page-1", "Visited", &serde_json::json!({}), t0)
        .unwrap();
    d.advance_clock(secs(59));
    assert!(d.outputs().is_empty());
    d.advance_clock(secs(1));
    assert_eq!(d.take_outputs().len(), 1);
    assert!(d.state_keys().is_empty(), "the closed window left no state");
}

#[test]
fn bad_definitions_are_refused_with_a_reason() {
    let job = JobBuilder::new("nothing");
    assert!(matches!(job.build(), Err(StreamError::Definition(m)) if m.contains(".to(sink)")));
    let mut job = JobBuilder::new("Bad-Name");
    job.events(EventFilter::all())
        .map(|e| e.position.get())
        .to(Sink::Discard);
    assert!(job.build().is_err());
    let (job, keyed) = readings("zero", secs(0));
    keyed
        .window(WindowSpec::tumbling(Duration::ZERO))
        .aggregate(Agg::count())
        .to(Sink::Discard);
    assert!(job.build().is_err());
}

// ---- the oracle ----

/// A window per (key, start) of a tumbling or hopping spec, recomputed from the records in
/// arrival order: the watermark before each record decides whether it is late for each of
/// its windows, exactly as documented.
fn oracle(
    records: &[(String, i64, i64)],
    size: i64,
    advance: i64,
    grace: i64,
    ooo: i64,
) -> BTreeMap<(String, i64), i64> {
    let mut max: Option<i64> = None;
    let mut sums: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for (key, t, v) in records {
        let wm = max.map_or(i64::MIN, |m| m - ooo);
        let mut start = t.div_euclid(advance) * advance;
        while start > t - size {
            if start + size + grace > wm {
                *sums.entry((key.clone(), start)).or_default() += v;
            }
            start -= advance;
        }
        max = Some(max.map_or(*t, |m| m.max(*t)));
    }
    sums
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn every_final_window_matches_a_recomputation(
        records in prop::collection::vec(("[abc]", 0i64..120_000, 1i64..100), 1..200),
        hopping in any::<bool>(),
        grace in 0i64..5_000,
        ooo in 0i64..10_000,
    ) {
        let (size, advance) = if hopping { (10_000, 5_000) } else { (10_000, 10_000) };
        let (job, keyed) = readings("oracle", Duration::from_millis(ooo as u64));
        keyed
            .window(
                WindowSpec::hopping(Duration::from_millis(size as u64), Duration::from_millis(advance as u64))
                    .grace(Duration::from_millis(grace as u64)),
            )
            .aggregate(Agg::sum(|r: &Reading| r.v))
            .to(Sink::Discard);
        let mut d = TestDriver::new(job.build().unwrap());
        let records: Vec<(String, i64, i64)> =
            records.into_iter().collect();
        for (k, t, v) in &records {
            send(&mut d, k, *t, *v);
        }
        d.advance_clock(Duration::from_secs(3600 * 24 * 365 * 2));
        let mut got: BTreeMap<(String, i64), i64> = BTreeMap::new();
        for (k, start, _, v) in finals(&d.take_outputs()) {
            let before = got.insert((k, start), v.as_i64().unwrap());
            prop_assert!(before.is_none(), "a window emitted twice");
        }
        prop_assert_eq!(got, oracle(&records, size, advance, grace, ooo));
        // Every record late for any of its windows is in the late output: none vanished.
        let expected_late = records.iter().enumerate().filter(|(i, (_, t, _))| {
            let wm = records[..*i].iter().map(|r| r.1).max().map_or(i64::MIN, |m| m - ooo);
            let oldest = t.div_euclid(advance) * advance - (size / advance - 1) * advance;
            oldest + size + grace <= wm
        }).count();
        prop_assert_eq!(d.take_late().len(), expected_late);
        prop_assert!(d.state_keys().is_empty(), "closed windows leave no state");
    }
}

fn reading_event(n: u64, key: &str, t: i64, v: i64) -> RecordedEvent {
    RecordedEvent {
        id: EventId::new(),
        stream: StreamName::new("Sensor-1").unwrap(),
        revision: n,
        position: Position(n),
        recorded_at: epoch(),
        event_type: "Reading".into(),
        schema_version: 1,
        content_type: "application/json".into(),
        data: serde_json::to_vec(&serde_json::json!({"key": key, "t": t, "v": v})).unwrap(),
        metadata: Metadata::default(),
    }
}

fn hopping_sum_job(name: &str, grace: i64, ooo: i64) -> runnel::stream::Job {
    let (job, keyed) = readings(name, Duration::from_millis(ooo as u64));
    keyed
        .window(WindowSpec::hopping(secs(10), secs(5)).grace(Duration::from_millis(grace as u64)))
        .aggregate(Agg::sum(|r: &Reading| r.v))
        .to(Sink::Discard);
    job.build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn a_batch_of_events_gives_the_results_of_one_event_at_a_time(
        records in prop::collection::vec(("[abc]", 0i64..120_000, 1i64..100), 1..200),
        batch in 1usize..50,
        grace in 0i64..5_000,
        ooo in 0i64..10_000,
    ) {
        let mut one = TestDriver::new(hopping_sum_job("one", grace, ooo));
        let mut many = TestDriver::new(hopping_sum_job("many", grace, ooo));
        let events: Vec<RecordedEvent> = records
            .iter()
            .enumerate()
            .map(|(i, (k, t, v))| reading_event(i as u64 + 1, k, *t, *v))
            .collect();
        for e in &events {
            one.send_event(e.clone()).unwrap();
        }
        let mut fed = 0;
        for chunk in events.chunks(batch) {
            fed += many.send_events(chunk.to_vec()).unwrap();
        }
        prop_assert_eq!(fed, events.len());
        prop_assert_eq!(many.watermark(), one.watermark());
        prop_assert_eq!(many.state_keys(), one.state_keys());
        for d in [&mut one, &mut many] {
            d.advance_clock(Duration::from_secs(3600 * 24 * 365 * 2));
        }
        let sorted = |out: &[Output]| {
            let mut f = finals(out);
            f.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
            f
        };
        prop_assert_eq!(sorted(&many.take_outputs()), sorted(&one.take_outputs()));
        let late = |d: &mut TestDriver| {
            let mut l: Vec<(String, i64)> =
                d.take_late().into_iter().map(|l| (l.key, l.time)).collect();
            l.sort();
            l
        };
        prop_assert_eq!(late(&mut many), late(&mut one));
        prop_assert!(many.state_keys().is_empty(), "closed windows leave no state");
    }
}

#[test]
fn send_events_stops_at_an_event_the_job_cannot_read() {
    // Event time is `recorded_at` here, so only the job's own decoding meets the bad data.
    let mut job = JobBuilder::new("bad");
    job.events(EventFilter::event_types(["Reading"]))
        .try_map(|e| Ok(serde_json::from_slice::<Reading>(&e.data)?))
        .key_by(|r: &Reading| r.key.clone())
        .window(WindowSpec::tumbling(secs(10)))
        .aggregate(Agg::count())
        .to(Sink::Discard);
    let mut d = TestDriver::new(job.build().unwrap());
    let mut bad = reading_event(2, "a", 0, 1);
    bad.data = b"not json".to_vec();
    let err = d
        .send_events(vec![
            reading_event(1, "a", 0, 1),
            bad,
            reading_event(3, "b", 0, 1),
        ])
        .unwrap_err();
    assert!(matches!(err, StreamError::Decode(_)), "{err}");
    // The event before the bad one was applied, the one after it was not.
    assert_eq!(d.state_keys(), vec![(0, "a".to_string())]);
    d.advance_clock(Duration::from_secs(3600));
    let counts: Vec<(String, serde_json::Value)> = finals(&d.take_outputs())
        .into_iter()
        .map(|f| (f.0, f.3))
        .collect();
    assert_eq!(counts, vec![("a".to_string(), serde_json::json!(1))]);
}
