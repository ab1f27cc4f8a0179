//! The typed DSL: sources, transformations, keys, windows, aggregations, joins, sinks.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use runnel_core::projection::{validate_identifier, PROJECTION_NAME_LEN_MAX};
use runnel_core::{EventFilter, RecordedEvent};

use super::agg::Aggregator;
use super::engine::{ExtractFn, Feed, Job, OpEntry, Operator, SourceSpec, Value};
use super::join::{TableJoin, WindowJoin};
use super::ops::{aggregating, PassThrough};
use super::window::{Emit, WindowSpec, WINDOW_SPAN_MAX};
use super::{LateOutput, Millis, Sink, StreamError};

/// An event of a job's source.
pub type SourceEvent = Arc<RecordedEvent>;

/// Longest job name: the job's tables are named after it (`{job}_state`).
pub const JOB_NAME_LEN_MAX: usize = PROJECTION_NAME_LEN_MAX - 14;

type Push<T> = Arc<
    dyn Fn(
            &SourceEvent,
            Millis,
            &mut dyn FnMut(Millis, T) -> Result<(), StreamError>,
        ) -> Result<(), StreamError>
        + Send
        + Sync,
>;

#[derive(Default)]
struct Building {
    name: String,
    version: u32,
    sources: Vec<SourceSpec>,
    feeds: Vec<Feed>,
    ops: Vec<OpEntry>,
    late: LateOutput,
    errors: Vec<String>,
}

type Shared = Arc<Mutex<Building>>;

/// Adds an operator and the feeds into it.
fn register(
    b: &mut Building,
    op: Box<dyn Operator>,
    sink: Sink,
    label: String,
    feeds: Vec<(usize, u8, ExtractFn)>,
) {
    let index = b.ops.len();
    for (source, side, extract) in feeds {
        b.feeds.push(Feed {
            source,
            op: index,
            side,
            extract,
        });
    }
    b.ops.push(OpEntry { op, sink, label });
}

fn lock(b: &Shared) -> std::sync::MutexGuard<'_, Building> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

fn millis(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Describes a job; [`build`](Self::build) checks it and returns the [`Job`].
pub struct JobBuilder {
    b: Shared,
}

impl JobBuilder {
    /// A job named `name` (`[a-z0-9_]`, starting with a letter, at most
    /// [`JOB_NAME_LEN_MAX`] bytes).
    pub fn new(name: impl Into<String>) -> Self {
        JobBuilder {
            b: Arc::new(Mutex::new(Building {
                name: name.into(),
                version: 1,
                ..Building::default()
            })),
        }
    }

    /// The job's version (default 1). Raise it when the shape of its state changes: the new
    /// version starts from the beginning of `$all` with fresh state, beside the old one,
    /// and replaces it once caught up.
    pub fn version(&mut self, version: u32) -> &mut Self {
        lock(&self.b).version = version;
        self
    }

    /// Where late records go ([`LateOutput::Stream`] by default).
    pub fn late_output(&mut self, late: LateOutput) -> &mut Self {
        lock(&self.b).late = late;
        self
    }

    /// A source: the events of `$all` that `filter` matches, with `recorded_at` as their
    /// time and no out-of-orderness until told otherwise.
    pub fn events(&mut self, filter: EventFilter) -> Stream<SourceEvent> {
        let mut b = lock(&self.b);
        b.sources.push(SourceSpec {
            filter,
            out_of_orderness: 0,
            time: Arc::new(|e: &RecordedEvent| e.recorded_at.timestamp_millis()),
        });
        Stream {
            b: Arc::clone(&self.b),
            source: b.sources.len() - 1,
            push: Arc::new(|e, t, out| out(t, Arc::clone(e))),
        }
    }

    /// A source of messages a [`TopicIngest`](super::TopicIngest) appended to streams of
    /// `category`: their event time is the message's time.
    pub fn topic_events(&mut self, category: &str) -> Stream<SourceEvent> {
        self.events(EventFilter::categories([category]))
            .event_time(super::ingest::message_time)
    }

    /// The job, checked: a name, at least one output, valid windows.
    pub fn build(self) -> Result<Job, StreamError> {
        let mut b = lock(&self.b);
        validate_identifier("stream job", &b.name)
            .map_err(|e| StreamError::Definition(e.to_string()))?;
        if b.name.len() > JOB_NAME_LEN_MAX {
            return Err(StreamError::Definition(format!(
                "job name {} is {} bytes; the limit is {JOB_NAME_LEN_MAX}",
                b.name,
                b.name.len()
            )));
        }
        if b.version == 0 {
            return Err(StreamError::Definition("job versions start at 1".into()));
        }
        if let Some(e) = b.errors.first() {
            return Err(StreamError::Definition(e.clone()));
        }
        if b.ops.is_empty() {
            return Err(StreamError::Definition(format!(
                "job {} sends nothing anywhere: end a stream with `.to(sink)`",
                b.name
            )));
        }
        Ok(Job {
            name: std::mem::take(&mut b.name),
            sources: std::mem::take(&mut b.sources),
            feeds: std::mem::take(&mut b.feeds),
            ops: std::mem::take(&mut b.ops),
            late: std::mem::take(&mut b.late),
            version: b.version,
        })
    }
}

/// Records of type `T` from one source, not keyed yet.
pub struct Stream<T> {
    b: Shared,
    source: usize,
    push: Push<T>,
}

impl<T: Send + 'static> Stream<T> {
    /// The source's allowed out-of-orderness: its watermark trails the largest event time
    /// it has seen by this much (default 0).
    pub fn out_of_orderness(self, d: Duration) -> Self {
        let ms = millis(d);
        {
            let mut b = lock(&self.b);
            if d > WINDOW_SPAN_MAX {
                b.errors.push(format!(
                    "out-of-orderness of {ms} ms is more than the limit of {} ms",
                    WINDOW_SPAN_MAX.as_millis()
                ));
            }
            b.sources[self.source].out_of_orderness = ms;
        }
        self
    }

    /// How the source's events tell their time (default: `recorded_at`).
    pub fn event_time<F>(self, f: F) -> Self
    where
        F: Fn(&RecordedEvent) -> chrono::DateTime<chrono::Utc> + Send + Sync + 'static,
    {
        lock(&self.b).sources[self.source].time = Arc::new(move |e| f(e).timestamp_millis());
        self
    }

    fn then<U: Send + 'static>(
        self,
        f: impl Fn(
                Millis,
                T,
                &mut dyn FnMut(Millis, U) -> Result<(), StreamError>,
            ) -> Result<(), StreamError>
            + Send
            + Sync
            + 'static,
    ) -> Stream<U> {
        let prev = self.push;
        Stream {
            b: self.b,
            source: self.source,
            push: Arc::new(move |e, t, out| prev(e, t, &mut |t, v| f(t, v, out))),
        }
    }

    /// Each record through `f`.
    pub fn map<U: Send + 'static>(self, f: impl Fn(T) -> U + Send + Sync + 'static) -> Stream<U> {
        self.then(move |t, v, out| out(t, f(v)))
    }

    /// Each record through `f`, which may fail (an event it cannot read): the job's error
    /// policy decides (the job faults on the event until an operator skips it).
    pub fn try_map<U: Send + 'static>(
        self,
        f: impl Fn(T) -> Result<U, StreamError> + Send + Sync + 'static,
    ) -> Stream<U> {
        self.then(move |t, v, out| out(t, f(v)?))
    }

    /// Only records `f` keeps.
    pub fn filter(self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> Stream<T> {
        self.then(move |t, v, out| if f(&v) { out(t, v) } else { Ok(()) })
    }

    /// Each record into any number.
    pub fn flat_map<U: Send + 'static, I: IntoIterator<Item = U>>(
        self,
        f: impl Fn(T) -> I + Send + Sync + 'static,
    ) -> Stream<U> {
        self.then(move |t, v, out| {
            for u in f(v) {
                out(t, u)?;
            }
            Ok(())
        })
    }

    /// Keys the records (state, windows and joins are per key).
    pub fn key_by(self, f: impl Fn(&T) -> String + Send + Sync + 'static) -> KeyedStream<T> {
        KeyedStream {
            inner: self.then(move |t, v, out| out(t, (f(&v), v))),
        }
    }

    /// Sends every record to `sink` as it is (a stateless job).
    pub fn to(self, sink: Sink)
    where
        T: Serialize,
    {
        self.key_by(|_| String::new()).to(sink)
    }
}

/// Records keyed by a function of the record.
pub struct KeyedStream<T> {
    inner: Stream<(String, T)>,
}

impl<T: Send + 'static> KeyedStream<T> {
    fn extract(&self) -> ExtractFn {
        let push = Arc::clone(&self.inner.push);
        Arc::new(move |e, t| {
            let mut out: Vec<(String, Millis, Value)> = Vec::new();
            push(e, t, &mut |t, (k, v)| {
                out.push((k, t, Box::new(v)));
                Ok(())
            })?;
            Ok(out)
        })
    }

    fn add_op(
        &self,
        op: Box<dyn Operator>,
        sink: Sink,
        label: String,
        feeds: Vec<(usize, u8, ExtractFn)>,
    ) {
        register(&mut lock(&self.inner.b), op, sink, label, feeds);
    }

    fn error(&self, e: String) {
        lock(&self.inner.b).errors.push(e);
    }

    /// Each record's value through `f`, keeping its key.
    pub fn map_values<U: Send + 'static>(
        self,
        f: impl Fn(T) -> U + Send + Sync + 'static,
    ) -> KeyedStream<U> {
        KeyedStream {
            inner: self.inner.then(move |t, (k, v), out| out(t, (k, f(v)))),
        }
    }

    /// Only records `f` keeps.
    pub fn filter(self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> KeyedStream<T> {
        KeyedStream {
            inner: self
                .inner
                .then(move |t, kv: (String, T), out| if f(&kv.1) { out(t, kv) } else { Ok(()) }),
        }
    }

    /// Groups into windows of event time.
    pub fn window(self, spec: WindowSpec) -> WindowedStream<T> {
        WindowedStream {
            keyed: self,
            spec: Some(spec),
        }
    }

    /// A running aggregate per key, without windows (emits on every record).
    pub fn aggregate<G: Aggregator<T>>(self, agg: G) -> AggregatedStream
    where
        T: Serialize + DeserializeOwned + Sync,
    {
        WindowedStream {
            keyed: self,
            spec: None,
        }
        .aggregate(agg)
    }

    /// Sends every record to `sink` with its key (stateless).
    pub fn to(self, sink: Sink)
    where
        T: Serialize,
    {
        let feeds = vec![(self.inner.source, 0, self.extract())];
        self.add_op(
            Box::new(PassThrough::<T>(PhantomData)),
            sink,
            "map".into(),
            feeds,
        );
    }

    /// The latest value per key, as a table to join against.
    pub fn into_table(self) -> TableStream<T> {
        TableStream { keyed: self }
    }

    /// Joins with `other` by key, pairing records at most `spec`'s bound apart in event
    /// time. Inner joins emit pairs; left joins also a left record that found no partner,
    /// outer joins also a right one — only once the bound plus the grace has passed.
    pub fn join<R, O>(
        self,
        other: KeyedStream<R>,
        spec: JoinSpec,
        combine: impl Fn(&str, Option<&T>, Option<&R>) -> O + Send + Sync + 'static,
    ) -> JoinedStream
    where
        T: Serialize + DeserializeOwned + Sync,
        R: Serialize + DeserializeOwned + Send + Sync + 'static,
        O: Serialize + Send + 'static,
    {
        self.join_filter_map(other, spec, move |k, l, r| Some(combine(k, l, r)))
    }

    /// As [`join`](Self::join), where `combine` may return `None` to emit nothing: a left
    /// join that reports only the records that found no partner, for example.
    pub fn join_filter_map<R, O>(
        self,
        other: KeyedStream<R>,
        spec: JoinSpec,
        combine: impl Fn(&str, Option<&T>, Option<&R>) -> Option<O> + Send + Sync + 'static,
    ) -> JoinedStream
    where
        T: Serialize + DeserializeOwned + Sync,
        R: Serialize + DeserializeOwned + Send + Sync + 'static,
        O: Serialize + Send + 'static,
    {
        if !Arc::ptr_eq(&self.inner.b, &other.inner.b) {
            self.error("a join's two sides must come from the same JobBuilder".into());
        }
        if spec.within > millis(WINDOW_SPAN_MAX) || spec.grace > millis(WINDOW_SPAN_MAX) {
            self.error("a join's bound and grace are at most 366 days".into());
        }
        let feeds = vec![
            (self.inner.source, 0, self.extract()),
            (other.inner.source, 1, other.extract()),
        ];
        let op: Box<dyn Operator> = Box::new(WindowJoin::<T, R, O> {
            within: spec.within,
            grace: spec.grace,
            kind: spec.kind,
            combine: Arc::new(combine),
            _t: PhantomData,
        });
        JoinedStream {
            b: Arc::clone(&self.inner.b),
            op: Some(op),
            label: format!("join-{}", spec.kind.as_str()),
            feeds,
        }
    }

    /// Joins each record with `table`'s value for its key as of the record's time. Records
    /// wait `grace` of event time for table updates that arrive late; an inner join emits
    /// only records that found a value, a left join every record.
    pub fn join_table<V, O>(
        self,
        table: TableStream<V>,
        grace: Duration,
        kind: JoinKind,
        combine: impl Fn(&str, Option<&T>, Option<&V>) -> O + Send + Sync + 'static,
    ) -> JoinedStream
    where
        T: Serialize + DeserializeOwned + Sync,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        O: Serialize + Send + 'static,
    {
        self.join_table_filter_map(table, grace, kind, move |k, l, v| Some(combine(k, l, v)))
    }

    /// As [`join_table`](Self::join_table), where `combine` may return `None` to emit
    /// nothing for a record.
    pub fn join_table_filter_map<V, O>(
        self,
        table: TableStream<V>,
        grace: Duration,
        kind: JoinKind,
        combine: impl Fn(&str, Option<&T>, Option<&V>) -> Option<O> + Send + Sync + 'static,
    ) -> JoinedStream
    where
        T: Serialize + DeserializeOwned + Sync,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        O: Serialize + Send + 'static,
    {
        if kind == JoinKind::Outer {
            self.error("a stream-table join is inner or left".into());
        }
        if grace > WINDOW_SPAN_MAX {
            self.error("a join's grace is at most 366 days".into());
        }
        let feeds = vec![
            (self.inner.source, 0, self.extract()),
            (table.keyed.inner.source, 1, table.keyed.extract()),
        ];
        let op: Box<dyn Operator> = Box::new(TableJoin::<T, V, O> {
            grace: millis(grace),
            kind,
            combine: Arc::new(combine),
            _t: PhantomData,
        });
        JoinedStream {
            b: Arc::clone(&self.inner.b),
            op: Some(op),
            label: format!("table-join-{}", kind.as_str()),
            feeds,
        }
    }
}

/// A keyed stream over windows, waiting for its aggregation.
pub struct WindowedStream<T> {
    keyed: KeyedStream<T>,
    spec: Option<WindowSpec>,
}

impl<T: Send + 'static> WindowedStream<T> {
    /// Aggregates each window of each key.
    pub fn aggregate<G: Aggregator<T>>(self, agg: G) -> AggregatedStream
    where
        T: Serialize + DeserializeOwned + Sync,
    {
        let spec = self.spec;
        let label = match spec.map(|s| s.kind) {
            None => "aggregate".to_string(),
            Some(super::window::Kind::Tumbling { .. }) => "tumbling-window".into(),
            Some(super::window::Kind::Hopping { .. }) => "hopping-window".into(),
            Some(super::window::Kind::Sliding { .. }) => "sliding-window".into(),
            Some(super::window::Kind::Session { .. }) => "session-window".into(),
        };
        let make: MakeOp = Box::new(move |emit| aggregating::<T, G>(spec, emit, agg));
        AggregatedStream {
            b: Arc::clone(&self.keyed.inner.b),
            make: Some(make),
            emit: Emit::OnClose,
            label,
            feeds: vec![(self.keyed.inner.source, 0, self.keyed.extract())],
        }
    }
}

type MakeOp = Box<dyn FnOnce(Emit) -> Result<Box<dyn Operator>, StreamError> + Send>;

/// An aggregation, waiting for its emit strategy and sink.
pub struct AggregatedStream {
    b: Shared,
    make: Option<MakeOp>,
    emit: Emit,
    label: String,
    feeds: Vec<(usize, u8, ExtractFn)>,
}

impl AggregatedStream {
    /// When results leave ([`Emit::OnClose`] by default; aggregations without a window
    /// always emit on update).
    pub fn emit(mut self, emit: Emit) -> Self {
        self.emit = emit;
        self
    }

    /// Sends the results to `sink`.
    pub fn to(mut self, sink: Sink) {
        let make = self.make.take().expect("made once");
        let mut b = lock(&self.b);
        match make(self.emit) {
            Ok(op) => {
                let feeds = std::mem::take(&mut self.feeds);
                register(&mut b, op, sink, self.label.clone(), feeds);
            }
            Err(e) => b.errors.push(e.to_string()),
        }
    }
}

/// A join, waiting for its sink.
pub struct JoinedStream {
    b: Shared,
    op: Option<Box<dyn Operator>>,
    label: String,
    feeds: Vec<(usize, u8, ExtractFn)>,
}

impl JoinedStream {
    /// Sends the joined records to `sink`.
    pub fn to(mut self, sink: Sink) {
        let op = self.op.take().expect("made once");
        let feeds = std::mem::take(&mut self.feeds);
        register(&mut lock(&self.b), op, sink, self.label.clone(), feeds);
    }
}

/// A table: the latest value per key of a keyed stream, kept with its history over the
/// join's grace so lookups can be as of a time.
pub struct TableStream<T> {
    keyed: KeyedStream<T>,
}

/// Inner, left or outer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    /// Pairs only.
    Inner,
    /// Pairs, and left records without a partner.
    Left,
    /// Pairs, and records of either side without a partner.
    Outer,
}

impl JoinKind {
    fn as_str(self) -> &'static str {
        match self {
            JoinKind::Inner => "inner",
            JoinKind::Left => "left",
            JoinKind::Outer => "outer",
        }
    }
}

/// A stream–stream join's bound and grace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinSpec {
    pub(crate) within: Millis,
    pub(crate) grace: Millis,
    pub(crate) kind: JoinKind,
}

impl JoinSpec {
    /// Records at most `within` apart pair.
    pub fn inner(within: Duration) -> Self {
        JoinSpec {
            within: millis(within),
            grace: 0,
            kind: JoinKind::Inner,
        }
    }

    /// As [`inner`](Self::inner), and left records without a partner once the bound has
    /// passed.
    pub fn left(within: Duration) -> Self {
        JoinSpec {
            kind: JoinKind::Left,
            ..Self::inner(within)
        }
    }

    /// As [`left`](Self::left), and right records without a partner too.
    pub fn outer(within: Duration) -> Self {
        JoinSpec {
            kind: JoinKind::Outer,
            ..Self::inner(within)
        }
    }

    /// How long past the bound (on the watermark) records still arrive on time.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = millis(grace);
        self
    }
}
