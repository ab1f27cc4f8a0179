//! The test driver: a job in memory, fed by hand, on a virtual clock.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use runnel_core::{EventId, Metadata, Position, RecordedEvent, StreamName};

use super::engine::{Engine, Job, LateRecord, Output};
use super::{Millis, StreamError};

/// Runs a [`Job`] in memory for tests of users' own jobs: feed events with their times,
/// move a virtual clock (an idle source's watermark follows it), read what came out.
///
/// Each [`send`](Self::send) is one batch: the record is applied, then whatever the
/// watermark closed is emitted — the same results, in content, as the job on a store.
///
/// ```
/// use std::time::Duration;
/// use runnel::stream::{Agg, JobBuilder, Sink, TestDriver, WindowSpec};
/// let mut job = JobBuilder::new("clicks");
/// job.events(runnel::core::EventFilter::all())
///     .key_by(|e| e.stream.to_string())
///     .window(WindowSpec::tumbling(Duration::from_secs(10)))
///     .aggregate(Agg::count())
///     .to(Sink::Discard);
/// let mut d = TestDriver::new(job.build().unwrap());
/// let t0 = d.epoch();
/// d.send("Page-home", "Clicked", &serde_json::json!({}), t0).unwrap();
/// d.send("Page-home", "Clicked", &serde_json::json!({}), t0 + chrono::Duration::seconds(12)).unwrap();
/// // The second click's time moved the watermark past the first window.
/// assert_eq!(d.take_outputs()[0].value, serde_json::json!(1));
/// ```
pub struct TestDriver {
    engine: Engine,
    clock: DateTime<Utc>,
    epoch: DateTime<Utc>,
    position: u64,
    revision: u64,
    outputs: Vec<Output>,
    late: Vec<LateRecord>,
}

impl TestDriver {
    /// A driver for `job`, its clock at [`epoch`](Self::epoch).
    pub fn new(job: Job) -> Self {
        let epoch = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("a valid date");
        TestDriver {
            engine: Engine::new(Arc::new(job), None),
            clock: epoch,
            epoch,
            position: 0,
            revision: 0,
            outputs: Vec::new(),
            late: Vec::new(),
        }
    }

    /// The time the clock starts at: 2026-01-01T00:00:00Z.
    pub fn epoch(&self) -> DateTime<Utc> {
        self.epoch
    }

    /// The virtual clock's time.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock
    }

    /// Feeds an event of type `event_type` on `stream` recorded at `at`, with `data`.
    pub fn send(
        &mut self,
        stream: &str,
        event_type: &str,
        data: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> Result<(), StreamError> {
        self.position += 1;
        self.revision += 1;
        let event = RecordedEvent {
            id: EventId::new(),
            stream: StreamName::new(stream)?,
            revision: self.revision,
            position: Position(self.position),
            recorded_at: at,
            event_type: event_type.to_string(),
            schema_version: 1,
            content_type: "application/json".into(),
            data: serde_json::to_vec(data)?,
            metadata: Metadata::default(),
        };
        self.send_event(event)
    }

    /// Feeds a recorded event as it is (its `recorded_at` is its default time).
    pub fn send_event(&mut self, event: RecordedEvent) -> Result<(), StreamError> {
        let event = Arc::new(event);
        let recs = self.engine.extract(&event)?;
        for rec in recs {
            self.engine.apply(rec)?;
        }
        self.flush();
        Ok(())
    }

    /// Feeds many recorded events as **one batch**, as a [`StreamJob`](super::StreamJob)
    /// applies a batch it read from the store: every record of every event is applied in
    /// order (each watermark check sees the records before it), then whatever the
    /// watermark closed is emitted, once. Returns how many events were fed.
    ///
    /// Final results, join results and late records are the same as feeding the events
    /// one at a time with [`send_event`](Self::send_event); a window's final result may come
    /// after records that followed its close in the batch. (With
    /// [`WindowSpec::corrections`](super::WindowSpec::corrections), a record late for a
    /// window that closed earlier in the same batch goes to the late output without a
    /// correction, as in a `StreamJob` reading that batch.) It is the fast path for
    /// feeding many events (benchmarks, replays of recorded history): one watermark pass
    /// per batch instead of one per event.
    ///
    /// On an error (an event the job cannot read), the events before it stay applied and
    /// the rest are not fed, as with `send_event`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use runnel::core::{EventId, EventFilter, Metadata, Position, RecordedEvent, StreamName};
    /// use runnel::stream::{Agg, JobBuilder, Sink, TestDriver, WindowSpec};
    /// let mut job = JobBuilder::new("clicks");
    /// job.events(EventFilter::all())
    ///     .key_by(|e| e.stream.to_string())
    ///     .window(WindowSpec::tumbling(Duration::from_secs(10)))
    ///     .aggregate(Agg::count())
    ///     .to(Sink::Discard);
    /// let mut d = TestDriver::new(job.build().unwrap());
    /// let click = |n: u64, secs: i64| RecordedEvent {
    ///     id: EventId::new(),
    ///     stream: StreamName::new("Page-home").unwrap(),
    ///     revision: n,
    ///     position: Position(n),
    ///     recorded_at: d.epoch() + chrono::Duration::seconds(secs),
    ///     event_type: "Clicked".into(),
    ///     schema_version: 1,
    ///     content_type: "application/json".into(),
    ///     data: b"{}".to_vec(),
    ///     metadata: Metadata::default(),
    /// };
    /// let batch = vec![click(1, 0), click(2, 3), click(3, 12)];
    /// assert_eq!(d.send_events(batch).unwrap(), 3);
    /// // The third click moved the watermark past the first window, which held two.
    /// assert_eq!(d.take_outputs()[0].value, serde_json::json!(2));
    /// ```
    pub fn send_events<I>(&mut self, events: I) -> Result<usize, StreamError>
    where
        I: IntoIterator<Item = RecordedEvent>,
    {
        let mut fed = 0;
        for event in events {
            let event = Arc::new(event);
            for rec in self.engine.extract(&event)? {
                self.engine.apply(rec)?;
            }
            fed += 1;
        }
        self.flush();
        Ok(fed)
    }

    /// Moves the clock; the sources are idle, so their watermarks follow it (less their
    /// out-of-orderness) and windows that closed emit.
    pub fn advance_clock(&mut self, by: Duration) {
        self.clock += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        self.engine.advance_idle(self.clock.timestamp_millis());
        self.flush();
    }

    fn flush(&mut self) {
        self.engine.fire();
        // The driver keeps its state in memory only: the rows are not encoded for a store.
        let (outputs, late) = self.engine.take_emitted();
        self.outputs.extend(outputs);
        self.late.extend(late);
    }

    /// Everything emitted so far.
    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    /// Takes what was emitted so far.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// The late records so far.
    pub fn late(&self) -> &[LateRecord] {
        &self.late
    }

    /// Takes the late records so far.
    pub fn take_late(&mut self) -> Vec<LateRecord> {
        std::mem::take(&mut self.late)
    }

    /// The job's watermark (`None` until every source has a time).
    pub fn watermark(&self) -> Option<DateTime<Utc>> {
        let wm: Millis = self.engine.watermark();
        if wm == Millis::MIN {
            None
        } else {
            Utc.timestamp_millis_opt(wm).single()
        }
    }

    /// The keys holding state, per operator: what a closed window leaves behind (nothing).
    pub fn state_keys(&self) -> Vec<(usize, String)> {
        self.engine.live_rows()
    }
}
