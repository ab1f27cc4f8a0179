//! Loading an aggregate through the framework's `Repository`, from events only and from a
//! snapshot plus the events after it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use runnel::core::{
    codec, DomainEvent, EventStore, ReadStream, Snapshot, SnapshotStore, StreamName,
};
use runnel::{Aggregate, Repository};
use runnel_sqlite::SqliteStore;
use serde::{Deserialize, Serialize};

use super::workload::{stream_name, EVENT_TYPE};
use crate::report::{rate, Row};

/// Events after the snapshot: what a policy of one snapshot every 50 events leaves at
/// worst.
const EVENTS_AFTER_SNAPSHOT: u64 = 50;

/// A tally over the benchmark's events: small state, every event folded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct BenchTally {
    events: u64,
    quantity: u64,
    amount_cents: i64,
}

/// The benchmark's stored event, as a typed domain event.
#[derive(Debug, Serialize, Deserialize)]
enum BenchEvent {
    BenchEventRecorded {
        order_id: String,
        sku: String,
        quantity: u32,
        amount_cents: i64,
        note: String,
    },
}

impl DomainEvent for BenchEvent {
    fn event_type(&self) -> &'static str {
        EVENT_TYPE
    }
}

impl Aggregate for BenchTally {
    const TYPE: &'static str = super::workload::CATEGORY;
    type Command = ();
    type Event = BenchEvent;
    type Error = Infallible;

    fn handle(&self, _command: ()) -> Result<Vec<BenchEvent>, Infallible> {
        Ok(Vec::new())
    }

    fn apply(&mut self, event: &BenchEvent) {
        let BenchEvent::BenchEventRecorded {
            quantity,
            amount_cents,
            ..
        } = event;
        self.events += 1;
        self.quantity += u64::from(*quantity);
        self.amount_cents = self.amount_cents.saturating_add(*amount_cents);
    }
}

/// Loads per second and the state loaded.
struct LoadRun {
    loads: u64,
    elapsed: Duration,
    state: BenchTally,
}

impl LoadRun {
    fn per_second(&self) -> f64 {
        self.loads as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn millis_each(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1000.0 / self.loads.max(1) as f64
    }
}

async fn loads(
    repository: &Repository<BenchTally>,
    id: &str,
    duration: Duration,
) -> anyhow::Result<LoadRun> {
    let start = Instant::now();
    let mut loads = 0u64;
    loop {
        let loaded = repository.load(id).await?;
        loads += 1;
        if start.elapsed() >= duration {
            return Ok(LoadRun {
                loads,
                elapsed: start.elapsed(),
                state: loaded.state,
            });
        }
    }
}

/// The aggregate rows: the first benchmark stream (`stream_len` events) loaded without a
/// snapshot (beside `raw_read_events_per_s`, the raw SELECT of the same stream), then
/// with a snapshot 50 events before its end (beside the load without one).
pub async fn rows(
    store: &SqliteStore,
    stream_len: u64,
    duration: Duration,
    raw_read_events_per_s: f64,
) -> anyhow::Result<Vec<Row>> {
    let stream = StreamName::new(stream_name(0, 0))?;
    let id = stream.id().to_string();
    let events: Arc<dyn EventStore> = Arc::new(store.clone());
    let snapshots: Arc<dyn SnapshotStore> = Arc::new(store.clone());

    let plain = Repository::<BenchTally>::new(Arc::clone(&events));
    let without = loads(&plain, &id, duration).await?;
    anyhow::ensure!(
        without.state.events == stream_len,
        "loaded {} events of {stream}, expected {stream_len}",
        without.state.events
    );

    let snapshot_at = stream_len.saturating_sub(EVENTS_AFTER_SNAPSHOT).max(1);
    let state = fold_until(store, &stream, snapshot_at).await?;
    snapshots
        .save_snapshot(Snapshot {
            stream: stream.clone(),
            revision: snapshot_at,
            schema_version: BenchTally::SNAPSHOT_VERSION,
            data: serde_json::to_vec(&state)?,
            taken_at: runnel::core::chrono::Utc::now(),
        })
        .await?;
    let with_snapshots = Repository::<BenchTally>::new(events).with_snapshot_store(snapshots);
    let with = loads(&with_snapshots, &id, duration).await?;
    anyhow::ensure!(
        with.state == without.state,
        "the load from a snapshot gave {:?}, from events {:?}",
        with.state,
        without.state
    );

    let len = crate::progress::group_digits(stream_len as f64);
    let folded_per_s = without.per_second() * stream_len as f64;
    Ok(vec![
        Row {
            scenario: format!(
                "load a {len}-event aggregate, no snapshot ({:.1} ms per load) vs raw SELECT of its events",
                without.millis_each()
            ),
            runnel: rate(folded_per_s, "events/s"),
            baseline: rate(raw_read_events_per_s, "events/s"),
            ratio: Some(folded_per_s / raw_read_events_per_s),
            target: None,
        },
        Row {
            scenario: format!(
                "load it from a snapshot + {EVENTS_AFTER_SNAPSHOT} events ({:.2} ms per load) vs no snapshot",
                with.millis_each()
            ),
            runnel: rate(with.per_second(), "loads/s"),
            baseline: rate(without.per_second(), "loads/s"),
            ratio: Some(with.per_second() / without.per_second()),
            target: None,
        },
    ])
}

/// The state after folding events 1..=`revision` of `stream` by hand.
async fn fold_until(
    store: &SqliteStore,
    stream: &StreamName,
    revision: u64,
) -> anyhow::Result<BenchTally> {
    let mut state = BenchTally::default();
    let mut next = 1u64;
    while next <= revision {
        let page_len = (revision - next + 1).min(1000) as usize;
        let page = store
            .read_stream(stream, ReadStream::forward(page_len).from(next))
            .await?;
        anyhow::ensure!(!page.is_empty(), "{stream} ends before revision {revision}");
        for recorded in &page {
            let event: BenchEvent =
                codec::decode(recorded).context("cannot decode a benchmark event")?;
            state.apply(&event);
            next = recorded.revision + 1;
        }
    }
    Ok(state)
}
