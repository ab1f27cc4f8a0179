//! Stream processing: keyed, event-time windows, watermarks, joins and exactly-once state,
//! on the event store.
//!
//! A [`JobBuilder`] describes a job as typed streams: a source (events of `$all` filtered
//! by category or type, or a bus topic's messages, which a [`TopicIngest`] consumer
//! appends to the store once each) → `map`, `filter`, `flat_map`, `key_by` → an aggregation (count,
//! sum, min, max or a fold), without a window or over a tumbling, hopping, sliding or
//! session window on **event time** → a [`Sink`] (append to an event stream, publish to a
//! topic through the outbox, or upsert the job's results table). Joins pair two keyed
//! streams within a time bound ([`KeyedStream::join`]: inner, left, outer) or a stream with
//! a table of the latest value per key as of each event's time
//! ([`KeyedStream::join_table`]).
//!
//! * **Event time and watermarks.** A record's time comes from its event (`recorded_at`
//!   unless the source says otherwise). Each source's watermark is the largest event time
//!   it has seen minus its allowed out-of-orderness; a job's watermark is the smallest of
//!   its sources'. When the store has nothing more to read the sources are idle and their
//!   watermarks advance with the clock ([`RunOptions::idle_after`]), so a quiet source
//!   never holds every window open.
//! * **Grace and lateness.** A window closes once the watermark passes its end plus its
//!   grace. A record for a closed window is *late*: it is counted
//!   ([`METRIC_LATE`]) and written to the job's late output ([`LateOutput`]: a stream, a
//!   topic or the dead letters) — never
//!   dropped silently — and, with [`WindowSpec::corrections`], a closed window whose
//!   result was emitted gets a retraction and the amended result.
//! * **Emit strategies.** [`Emit::OnUpdate`] emits a window's running result on every
//!   change; [`Emit::OnClose`] emits only final results, once.
//! * **Joins without half results.** A left or outer join emits a record without a
//!   partner only once no partner can arrive any more (the join bound plus the grace has
//!   passed the watermark). A stream–table join looks the table up as of the record's
//!   time, after waiting the grace for table updates that arrive late.
//! * **Exactly once.** The job runs as a projection of `$all` ([`StreamJob`] on the
//!   projection store): the source position, every state change (windows, join buffers,
//!   tables, watermarks) and every output (outbox messages, result rows, events to
//!   append) commit in one transaction under the job's lease. After a `kill -9` the job
//!   resumes from its last commit; nothing is lost and nothing is emitted twice (events
//!   appended by a [`Sink::stream`] carry ids derived from the job and the output's
//!   sequence, so an append retried after a crash is recognised by the store).
//! * **Bounded state.** State lives in the job's state table, keyed by operator and key,
//!   behind a bounded cache ([`RunOptions::cache_rows`]). A window's state is deleted when
//!   the window closes (after its correction period), a join buffer's entries when their
//!   bound has passed: state follows the open windows and the live keys, never history.
//! * **Testing.** [`TestDriver`] runs a job in memory: feed events with their times,
//!   advance a virtual clock, read the outputs, the late output and the state.
//!
//! ```
//! use std::time::Duration;
//! use runnel::stream::{Agg, Emit, JobBuilder, ResultKind, Sink, TestDriver, WindowSpec};
//!
//! #[derive(serde::Serialize, serde::Deserialize, Clone)]
//! struct Paid { product: String, cents: i64 }
//!
//! let mut job = JobBuilder::new("revenue_per_minute");
//! job.events(runnel::core::EventFilter::event_types(["OrderPaid"]))
//!     .out_of_orderness(Duration::from_secs(5))
//!     .try_map(|e| Ok(serde_json::from_slice::<Paid>(&e.data)?))
//!     .key_by(|p: &Paid| p.product.clone())
//!     .window(WindowSpec::tumbling(Duration::from_secs(60)).grace(Duration::from_secs(10)))
//!     .aggregate(Agg::sum(|p: &Paid| p.cents))
//!     .emit(Emit::OnClose)
//!     .to(Sink::table());
//! let job = job.build().unwrap();
//!
//! let mut driver = TestDriver::new(job);
//! let t0 = driver.epoch();
//! driver.send("Order-1", "OrderPaid", &serde_json::json!({"product": "tea", "cents": 300}), t0);
//! driver.send("Order-2", "OrderPaid", &serde_json::json!({"product": "tea", "cents": 200}),
//!     t0 + chrono::Duration::seconds(30));
//! // The source falls quiet: its watermark follows the clock and the minute closes.
//! driver.advance_clock(Duration::from_secs(120));
//! let out = driver.take_outputs();
//! assert_eq!(out.len(), 1);
//! assert_eq!(out[0].kind, ResultKind::Final);
//! assert_eq!(out[0].value, serde_json::json!(500));
//! ```

mod agg;
mod driver;
mod dsl;
mod engine;
mod ingest;
mod join;
mod ops;
mod runner;
mod window;

pub use agg::{Agg, Aggregator};
pub use driver::TestDriver;
pub use dsl::{
    AggregatedStream, JobBuilder, JoinKind, JoinSpec, JoinedStream, KeyedStream, SourceEvent,
    Stream, TableStream, WindowedStream, JOB_NAME_LEN_MAX,
};
pub use engine::{Job, JobStatus, LateRecord, Output, ResultKind};
pub use ingest::{message_time, TopicIngest, TIME_HEADER};
pub use runner::{
    job_status, processor_names, reset, RunOptions, StreamJob, JOB_PREFIX, LATE_TOPIC,
    METRIC_LAG_EVENTS, METRIC_LATE, METRIC_OUTPUTS, METRIC_RECORDS, METRIC_STATE_ROWS,
    METRIC_WATERMARK,
};
pub use window::{Emit, WindowBounds, WindowSpec};

use runnel_core::{StreamName, TopicName};

/// Event time in milliseconds since the Unix epoch.
pub type Millis = i64;

/// Why a job could not be defined or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The job's definition is not valid (a name, a window, an aggregation that cannot
    /// serve a session window).
    #[error("invalid stream job: {0}")]
    Definition(String),
    /// An event could not be read into a record (bad JSON, an unknown shape).
    #[error("cannot read the event: {0}")]
    Decode(String),
    /// The job's function refused a record.
    #[error("{0}")]
    Failed(String),
    /// State could not be read back (a state row written by another version of the job).
    #[error("cannot read the job's state: {0}")]
    State(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] runnel_core::StoreError),
}

impl From<serde_json::Error> for StreamError {
    fn from(e: serde_json::Error) -> Self {
        StreamError::Decode(e.to_string())
    }
}

impl From<runnel_core::CodecError> for StreamError {
    fn from(e: runnel_core::CodecError) -> Self {
        StreamError::Decode(e.to_string())
    }
}

/// Where results go.
#[derive(Clone, Debug)]
pub enum Sink {
    /// Append each result as an event (type `event_type`) to the stream `prefix-{key}`
    /// (the key made a valid stream id) or, with [`Sink::stream_named`], to one stream.
    Stream {
        /// Category of the streams (`RevenuePerMinute` → `RevenuePerMinute-tea`).
        category: String,
        /// One stream for every result, instead of one per key.
        fixed: Option<StreamName>,
        /// The appended events' type.
        event_type: String,
    },
    /// Publish each result to a topic through the outbox, keyed by the result's key.
    Topic(TopicName),
    /// Upsert each result into the job's results table (`{job}_results`: key, window
    /// start and end, value as JSON, kind); a retraction deletes the row.
    Table,
    /// Keep results only in the outputs a [`TestDriver`] reads (in a running job they are
    /// counted and discarded).
    Discard,
}

impl Sink {
    /// One stream per key: `{category}-{key}`, events of type `event_type`.
    pub fn stream(category: impl Into<String>, event_type: impl Into<String>) -> Sink {
        Sink::Stream {
            category: category.into(),
            fixed: None,
            event_type: event_type.into(),
        }
    }

    /// One stream for every result.
    pub fn stream_named(stream: StreamName, event_type: impl Into<String>) -> Sink {
        Sink::Stream {
            category: stream.category().to_string(),
            fixed: Some(stream),
            event_type: event_type.into(),
        }
    }

    /// A topic, through the outbox.
    pub fn topic(topic: TopicName) -> Sink {
        Sink::Topic(topic)
    }

    /// The job's results table.
    pub fn table() -> Sink {
        Sink::Table
    }
}

/// Where late records go (every late record goes somewhere).
#[derive(Clone, Debug, Default)]
pub enum LateOutput {
    /// Appended to the stream `StreamLate-{job}` (the default), as events of type
    /// `LateRecord`.
    #[default]
    Stream,
    /// Published to a topic through the outbox.
    Topic(TopicName),
    /// Stored as dead letters (topic [`LATE_TOPIC`], group = the job's name), where
    /// `runnel dlq` lists them. At least once: a crash right after storing one stores it
    /// again on restart.
    DeadLetters,
}
