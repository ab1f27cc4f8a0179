//! The Nexmark queries as Runnel stream jobs.
//!
//! The same job definitions serve both tiers; only their sinks differ: in memory the
//! results are discarded (Flink's blackhole sink), on the store they go to each job's
//! results table, and q5's first job appends its counts as events for its second job.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use runnel::core::{EventFilter, RecordedEvent, StreamName};
use runnel::stream::{
    Agg, Emit, Job, JobBuilder, JoinSpec, Output, Sink, SourceEvent, Stream, StreamError,
    WindowBounds, WindowSpec,
};

use super::generator::{event_time_ms, Auction, Bid, Person, OUT_OF_ORDERNESS_MS};
use crate::cli::NexmarkQuery;

/// q1's conversion rate: dollars to euros.
pub const EUROS_PER_DOLLAR: f64 = 0.908;
/// q5's hopping windows.
pub const Q5_WINDOW: Duration = Duration::from_secs(10);
pub const Q5_ADVANCE: Duration = Duration::from_secs(2);
/// q7's and q8's tumbling windows.
pub const TUMBLE: Duration = Duration::from_secs(10);
/// The type of the events q5's first job appends for its second (store tier), and their
/// stream.
pub const Q5_COUNT_TYPE: &str = "AuctionBidCount";
pub const Q5_COUNT_STREAM: &str = "NexmarkQ5-counts";

/// Where the jobs' results go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Discarded (the engine tier reads them from the test driver).
    Memory,
    /// The jobs' results tables (and, for q5's counts, events in the store).
    Store,
}

impl Target {
    fn sink(self) -> Sink {
        match self {
            Target::Memory => Sink::Discard,
            Target::Store => Sink::table(),
        }
    }
}

/// A bid in euros (q1's result).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EuroBid {
    pub auction: u64,
    pub bidder: u64,
    pub price: f64,
    #[serde(rename = "dateTime")]
    pub date_time: i64,
}

/// A window's hottest auctions (q5's result).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HotItems {
    pub bids: u64,
    pub auctions: Vec<u64>,
}

/// A window's highest bids (q7's result).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HighestBids {
    pub price: u64,
    pub bids: Vec<Bid>,
}

/// A person who opened an auction in the window they registered in (q8's result).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewUser {
    pub id: u64,
    pub name: String,
    pub auction: u64,
    pub window_start: i64,
}

/// One result of q5's first job, as the job writes it (the fields q5's second job reads).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuctionCount {
    pub key: String,
    pub window: WindowBounds,
    pub time: i64,
    pub value: u64,
}

/// The jobs of `query`, in order: each job's results feed the next (q5 has two).
pub fn jobs(query: NexmarkQuery, target: Target) -> Result<Vec<Job>, StreamError> {
    match query {
        NexmarkQuery::Q1 => Ok(vec![q1(target)?]),
        NexmarkQuery::Q5 => Ok(vec![q5_counts(target)?, q5_hottest(target)?]),
        NexmarkQuery::Q7 => Ok(vec![q7(target)?]),
        NexmarkQuery::Q8 => Ok(vec![q8(target)?]),
    }
}

fn payload_time(e: &RecordedEvent) -> DateTime<Utc> {
    #[derive(Deserialize)]
    struct Time {
        #[serde(rename = "dateTime")]
        date_time: i64,
    }
    let ms = event_time_ms(&e.data).or_else(|| {
        serde_json::from_slice::<Time>(&e.data)
            .ok()
            .map(|t| t.date_time)
    });
    ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .unwrap_or(e.recorded_at)
}

fn decode<T: DeserializeOwned>(e: &SourceEvent) -> Result<T, StreamError> {
    Ok(serde_json::from_slice(&e.data)?)
}

/// The events of category `category` (`Bid`, `Auction`, `Person`: the generator's types),
/// on their payload's time. By category, not by type: the store reads a category in
/// position order on its `(category, position)` index.
fn source(job: &mut JobBuilder, category: &str) -> Stream<SourceEvent> {
    job.events(EventFilter::categories([category]))
        .event_time(payload_time)
        .out_of_orderness(Duration::from_millis(OUT_OF_ORDERNESS_MS as u64))
}

fn window_start(t: i64, size: Duration) -> i64 {
    let size = size.as_millis() as i64;
    t.div_euclid(size) * size
}

/// q1: every bid, its price in euros. Keyed by the bid's position in `$all` so each bid is
/// one row of the results table on the store.
fn q1(target: Target) -> Result<Job, StreamError> {
    let mut job = JobBuilder::new("nexmark_q1");
    source(&mut job, "Bid")
        .try_map(|e| Ok((e.position.0, decode::<Bid>(&e)?)))
        .key_by(|(position, _)| position.to_string())
        .map_values(|(_, b)| EuroBid {
            auction: b.auction,
            bidder: b.bidder,
            price: b.price as f64 * EUROS_PER_DOLLAR,
            date_time: b.date_time,
        })
        .to(target.sink());
    job.build()
}

/// q5, first job: bids per auction over hopping windows of 10 s every 2 s.
fn q5_counts(target: Target) -> Result<Job, StreamError> {
    let mut job = JobBuilder::new("nexmark_q5_counts");
    let sink = match target {
        Target::Memory => Sink::Discard,
        Target::Store => Sink::stream_named(
            StreamName::new(Q5_COUNT_STREAM).map_err(|e| StreamError::Failed(e.to_string()))?,
            Q5_COUNT_TYPE,
        ),
    };
    source(&mut job, "Bid")
        .try_map(|e| decode::<Bid>(&e))
        .key_by(|b| b.auction.to_string())
        .window(WindowSpec::hopping(Q5_WINDOW, Q5_ADVANCE))
        .aggregate(Agg::count())
        .emit(Emit::OnClose)
        .to(sink);
    job.build()
}

/// q5, second job: per window, the auction(s) with the most bids. Every count of the
/// window `[s, s + 10 s)` has the time `s + 10 s - 1 ms`, so keyed by `s` they all fall in
/// one tumbling window of the advance (2 s); the counts arrive in order.
fn q5_hottest(target: Target) -> Result<Job, StreamError> {
    let mut job = JobBuilder::new("nexmark_q5_hottest");
    job.events(EventFilter::categories(["NexmarkQ5"]))
        .event_time(|e| {
            serde_json::from_slice::<AuctionCount>(&e.data)
                .ok()
                .and_then(|c| Utc.timestamp_millis_opt(c.time).single())
                .unwrap_or(e.recorded_at)
        })
        .try_map(|e| decode::<AuctionCount>(&e))
        .key_by(|c| c.window.start.to_string())
        .window(WindowSpec::tumbling(Q5_ADVANCE))
        .aggregate(Agg::fold(
            HotItems::default(),
            |hot: &mut HotItems, c: &AuctionCount| {
                let auction = c.key.parse().unwrap_or_default();
                if c.value > hot.bids {
                    hot.bids = c.value;
                    hot.auctions.clear();
                    hot.auctions.push(auction);
                } else if c.value == hot.bids {
                    hot.auctions.push(auction);
                }
            },
        ))
        .emit(Emit::OnClose)
        .to(target.sink());
    job.build()
}

/// q7: per tumbling 10 s window, the highest price and the bids at it.
fn q7(target: Target) -> Result<Job, StreamError> {
    let mut job = JobBuilder::new("nexmark_q7");
    source(&mut job, "Bid")
        .try_map(|e| decode::<Bid>(&e))
        .key_by(|_| "all".to_string())
        .window(WindowSpec::tumbling(TUMBLE))
        .aggregate(Agg::fold(
            HighestBids::default(),
            |high: &mut HighestBids, b: &Bid| {
                if b.price > high.price {
                    high.price = b.price;
                    high.bids.clear();
                    high.bids.push(b.clone());
                } else if b.price == high.price {
                    high.bids.push(b.clone());
                }
            },
        ))
        .emit(Emit::OnClose)
        .to(target.sink());
    job.build()
}

/// q8: persons joined with the auctions they opened in the same tumbling 10 s window, both
/// keyed by (person id, window start). Any two records of one key are less than 10 s
/// apart, so a join bound of 10 s pairs every person with every such auction.
fn q8(target: Target) -> Result<Job, StreamError> {
    let mut job = JobBuilder::new("nexmark_q8");
    let persons = source(&mut job, "Person")
        .try_map(|e| decode::<Person>(&e))
        .key_by(|p| format!("{}/{}", p.id, window_start(p.date_time, TUMBLE)));
    let auctions = source(&mut job, "Auction")
        .try_map(|e| decode::<Auction>(&e))
        .key_by(|a| format!("{}/{}", a.seller, window_start(a.date_time, TUMBLE)));
    persons
        .join(
            auctions,
            JoinSpec::inner(TUMBLE),
            |_, p: Option<&Person>, a: Option<&Auction>| match (p, a) {
                (Some(p), Some(a)) => Some(NewUser {
                    id: p.id,
                    name: p.name.clone(),
                    auction: a.id,
                    window_start: window_start(p.date_time, TUMBLE),
                }),
                _ => None,
            },
        )
        .to(target.sink());
    job.build()
}

/// q5's first job's results as the events its second job reads: the payload a
/// [`Sink::stream`] writes.
pub fn counts_as_events(job: &str, outputs: &[Output], first_position: u64) -> Vec<RecordedEvent> {
    let stream = StreamName::new(Q5_COUNT_STREAM).expect("a valid stream name");
    outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let data = serde_json::json!({
                "job": job,
                "key": o.key,
                "window": o.window,
                "time": o.time,
                "kind": o.kind,
                "value": o.value,
                "seq": o.seq,
            });
            let n = first_position + i as u64;
            RecordedEvent {
                id: runnel::core::EventId::new(),
                stream: stream.clone(),
                revision: n,
                position: runnel::core::Position(n),
                recorded_at: super::generator::base_time(),
                event_type: Q5_COUNT_TYPE.to_string(),
                schema_version: 1,
                content_type: "application/json".into(),
                data: serde_json::to_vec(&data).expect("JSON serializes"),
                metadata: runnel::core::Metadata::default(),
            }
        })
        .collect()
}
