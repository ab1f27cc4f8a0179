//! A job on the store: its state in a projection's tables, each batch of events committed
//! with the state it changed and the outputs it made, under the job's lease.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;

use runnel_core::clock::{Clock, SystemClock};
use runnel_core::dead_letter::{DeadLetterStore, FailureRecord, NewDeadLetter};
use runnel_core::outbox::OutboxMessage;
use runnel_core::projection::{
    state_table_schema, Batch, BatchOutcome, Dialect, ProjectionState, ProjectionStatus,
    ProjectionStore, RebuildStarted, SqlValue, StateRows, Statement, VersionRole, VersionSpec,
    STATE_ROWS_MAX,
};
use runnel_core::{
    EventId, EventStore, ExpectedRevision, Message, NewEvent, Position, StoreError, StreamName,
};

use super::engine::{Changes, Engine, Job, JobStatus, Meta, Output, META_KEY};
use super::{LateOutput, Millis, Sink, StreamError};
use crate::app::Shutdown;

/// Stream jobs run as projections named `stream_job_{job}`.
pub const JOB_PREFIX: &str = "stream_job_";
/// Metric: records processed, by job.
pub const METRIC_RECORDS: &str = "runnel_stream_records_total";
/// Metric: results emitted, by job.
pub const METRIC_OUTPUTS: &str = "runnel_stream_outputs_total";
/// Metric: late records (routed to the late output), by job.
pub const METRIC_LATE: &str = "runnel_stream_late_records_total";
/// Metric: the job's watermark, in seconds since the epoch.
pub const METRIC_WATERMARK: &str = "runnel_stream_watermark_seconds";
/// Metric: events of `$all` not processed yet, by job.
pub const METRIC_LAG_EVENTS: &str = "runnel_stream_lag_events";
/// Metric: state rows in the job's cache, by job.
pub const METRIC_STATE_ROWS: &str = "runnel_stream_cached_rows";

/// The topic late records are dead-lettered under ([`LateOutput::DeadLetters`]); the group
/// is the job's name.
pub const LATE_TOPIC: &str = "stream-late";
/// Key prefix of the events and late records waiting to be appended after their commit.
const EMIT_PREFIX: &str = "~emit/";
/// Rows read per due-row page.
const DUE_PAGE: usize = 1000;

/// How a [`StreamJob`] runs.
#[derive(Clone)]
pub struct RunOptions {
    /// Most events per transaction (default 500).
    pub batch_events: usize,
    /// The job's lease: another process takes over this long after a killed holder's last
    /// batch (default 5 s).
    pub lease: Duration,
    /// Longest wait for new events before looking again (default 250 ms).
    pub poll: Duration,
    /// How long the store must have had nothing new before the sources count as idle and
    /// their watermarks follow the clock (default 1 s).
    pub idle_after: Duration,
    /// Most state rows kept in memory (default 100 000); beyond it the least recently used
    /// clean rows are dropped and read back from the store when needed.
    pub cache_rows: usize,
    /// This process's name in the lease (default: pid and a random suffix).
    pub owner: Option<String>,
    /// The clock idle sources follow (virtual in tests).
    pub clock: Arc<dyn Clock>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            batch_events: 500,
            lease: Duration::from_secs(5),
            poll: Duration::from_millis(250),
            idle_after: Duration::from_secs(1),
            cache_rows: 100_000,
            owner: None,
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("batch_events", &self.batch_events)
            .field("lease", &self.lease)
            .field("poll", &self.poll)
            .field("idle_after", &self.idle_after)
            .field("cache_rows", &self.cache_rows)
            .finish()
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Processed this many events (0: only the watermark moved, or outputs drained).
    Applied(usize),
    /// Nothing new.
    CaughtUp,
    /// Another process holds the lease, or the job is paused or faulted.
    Idle,
}

struct Held {
    version: u32,
    checkpoint: Position,
    /// The watermark up to which every stored due row has been handled.
    fired: Millis,
    /// Rows waiting to be appended may exist.
    pending_emits: bool,
}

/// A [`Job`] running on a store: registers its tables, then processes `$all` in batches,
/// exactly once, under its lease.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use runnel::core::{EventFilter, ExpectedRevision, NewEvent, StreamName};
/// use runnel::stream::{Agg, JobBuilder, RunOptions, Sink, StreamJob, WindowSpec};
///
/// use runnel::connect::{open_stores, OpenMode, StoreUrl};
/// let dir = tempfile::tempdir()?;
/// let stores = open_stores(&StoreUrl::sqlite(dir.path().join("app.db")), OpenMode::default()).await?;
/// let mut job = JobBuilder::new("visits");
/// job.events(EventFilter::categories(["Page"]))
///     .key_by(|e| e.stream.id().to_string())
///     .aggregate(Agg::count())
///     .to(Sink::table());
/// let job = StreamJob::on(&stores, job.build()?, RunOptions::default());
/// stores.events.append(&StreamName::new("Page-home")?, ExpectedRevision::Any,
///     vec![NewEvent::json("Visited", &serde_json::json!({}))]).await?;
/// assert_eq!(job.catch_up().await?, 1);
/// # Ok(()) }
/// ```
pub struct StreamJob {
    job: Arc<Job>,
    name: String,
    projections: Arc<dyn ProjectionStore>,
    state: Arc<dyn StateRows>,
    events: Arc<dyn EventStore>,
    dead_letters: Option<Arc<dyn DeadLetterStore>>,
    options: RunOptions,
    owner: String,
    inner: Mutex<(Engine, Option<Held>)>,
    /// When the store was first found with nothing new (idle sources), on the job's clock.
    idle_since: std::sync::Mutex<Option<DateTime<Utc>>>,
}

fn state_table(job: &str) -> String {
    format!("{job}_state")
}

fn results_table(job: &str) -> String {
    format!("{job}_results")
}

/// The schema of a job's tables.
fn schema(job: &str, dialect: Dialect) -> Vec<String> {
    let state = state_table(job);
    let results = results_table(job);
    let mut s = state_table_schema(dialect, &state);
    s.push(format!(
        "CREATE TABLE {{{results}}} (operator BIGINT NOT NULL, k TEXT NOT NULL, \
         window_start BIGINT NOT NULL, window_end BIGINT NOT NULL, kind TEXT NOT NULL, \
         value TEXT NOT NULL, seq BIGINT NOT NULL, \
         PRIMARY KEY (operator, k, window_start, window_end))"
    ));
    s
}

/// A stream id from a key: letters, digits and `-_.:@` stay; anything else becomes `_`,
/// and then a hash of the key keeps two keys apart.
pub(crate) fn stream_id(key: &str) -> String {
    if key.is_empty() {
        return "all".into();
    }
    let clean: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@') {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    if clean == key {
        clean
    } else {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{clean}.{h:016x}")
    }
}

/// A pending append: the event a result or late record becomes, kept in the state table
/// until appended.
#[derive(serde::Serialize, serde::Deserialize)]
struct PendingEmit {
    /// A late record for the dead letters (topic [`LATE_TOPIC`], group = the job), not an
    /// event.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    dead_letter: bool,
    stream: String,
    event_type: String,
    id: uuid::Uuid,
    data: serde_json::Value,
}

impl StreamJob {
    /// `job` on `stores` (its projection store, state reader, events and dead letters).
    pub fn on(stores: &crate::connect::Stores, job: Job, options: RunOptions) -> Self {
        Self::new(
            job,
            Arc::clone(&stores.projections),
            Arc::clone(&stores.state_rows),
            Arc::clone(&stores.events),
            options,
        )
        .with_dead_letters(Arc::clone(&stores.dead_letters))
    }

    /// Where late records go with [`LateOutput::DeadLetters`].
    pub fn with_dead_letters(mut self, store: Arc<dyn DeadLetterStore>) -> Self {
        self.dead_letters = Some(store);
        self
    }

    /// `job` on explicit stores.
    pub fn new(
        job: Job,
        projections: Arc<dyn ProjectionStore>,
        state: Arc<dyn StateRows>,
        events: Arc<dyn EventStore>,
        options: RunOptions,
    ) -> Self {
        let owner = options.owner.clone().unwrap_or_else(|| {
            let s = uuid::Uuid::now_v7().simple().to_string();
            format!("{}-{}", std::process::id(), &s[s.len() - 8..])
        });
        let job = Arc::new(job);
        let engine = Engine::new(Arc::clone(&job), Some(options.cache_rows.max(1)));
        StreamJob {
            name: format!("{JOB_PREFIX}{}", job.name),
            job,
            projections,
            state,
            events,
            dead_letters: None,
            options,
            owner,
            inner: Mutex::new((engine, None)),
            idle_since: std::sync::Mutex::new(None),
        }
    }

    /// The job.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// The projection the job runs as (`stream_{job}`).
    pub fn projection_name(&self) -> &str {
        &self.name
    }

    /// Registers the job's tables (idempotent).
    pub async fn register(&self) -> Result<VersionRole, StoreError> {
        let job = &self.job.name;
        self.projections
            .register(&VersionSpec {
                name: self.name.clone(),
                version: self.job.version,
                tables: vec![state_table(job), results_table(job)],
                schema: schema(job, self.projections.dialect()),
                partitions: 1,
            })
            .await
    }

    /// Processes everything there is now (and, once the store has had nothing new for
    /// [`RunOptions::idle_after`] on the job's clock, lets the watermark follow the clock),
    /// then gives the lease up. Returns the events processed.
    pub async fn catch_up(&self) -> Result<u64, StreamError> {
        self.register().await?;
        let mut total = 0u64;
        while let Step::Applied(n) = self.step().await? {
            total += n as u64;
        }
        self.release().await?;
        Ok(total)
    }

    /// Runs until `shutdown`: batches while there are events, waits for appends when
    /// caught up, retries the lease while another process holds it.
    pub async fn run(&self, shutdown: Shutdown) -> Result<(), StreamError> {
        loop {
            if let Err(e) = self.register().await {
                tracing::warn!(job = %self.job.name, error = %e, "stream job cannot register; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(self.options.poll) => continue,
                    _ = shutdown.requested() => return Ok(()),
                }
            }
            break;
        }
        loop {
            if shutdown.is_requested() {
                break;
            }
            let step = match self.step().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(job = %self.job.name, error = %e, "stream job step failed; retrying");
                    Step::Idle
                }
            };
            match step {
                Step::Applied(_) => continue,
                Step::CaughtUp => {
                    let after = self.checkpoint().await;
                    let wait = self.options.poll.min(self.options.idle_after);
                    tokio::select! {
                        _ = self.events.wait_for_events(after, wait) => {}
                        _ = shutdown.requested() => break,
                    }
                }
                Step::Idle => {
                    tokio::select! {
                        _ = tokio::time::sleep(self.options.poll) => {}
                        _ = shutdown.requested() => break,
                    }
                }
            }
        }
        self.release().await?;
        Ok(())
    }

    async fn checkpoint(&self) -> Position {
        self.inner
            .lock()
            .await
            .1
            .as_ref()
            .map_or(Position::START, |h| h.checkpoint)
    }

    /// Gives the lease up (a graceful stop).
    pub async fn release(&self) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().await;
        if let Some(h) = inner.1.take() {
            self.projections
                .release(&self.name, h.version, 0, &self.owner)
                .await?;
        }
        inner.0.reset(None).ok();
        Ok(())
    }

    /// The generation to run: the newest live one of this code version.
    async fn generation(&self) -> Result<Option<ProjectionState>, StoreError> {
        Ok(self
            .projections
            .states(Some(&self.name))
            .await?
            .into_iter()
            .filter(|s| s.code_version == self.job.version && s.role != VersionRole::Retired)
            .max_by_key(|s| s.version))
    }

    fn lease_until(&self) -> DateTime<Utc> {
        Utc::now()
            + chrono::Duration::from_std(self.options.lease).unwrap_or(chrono::Duration::seconds(5))
    }

    /// One batch.
    pub(crate) async fn step(&self) -> Result<Step, StreamError> {
        let mut guard = self.inner.lock().await;
        let (engine, held) = &mut *guard;
        let Some(gen) = self.generation().await? else {
            return Ok(Step::Idle);
        };
        // (Re)claim: every step renews the lease through its commit; a claim only when not
        // held, or when the generation changed (a reset).
        if held.as_ref().is_none_or(|h| h.version != gen.version) {
            if let Some(h) = held.take() {
                self.projections
                    .release(&self.name, h.version, 0, &self.owner)
                    .await
                    .ok();
            }
            let Some(state) = self
                .projections
                .claim(
                    &self.name,
                    gen.version,
                    0,
                    &self.owner,
                    Utc::now(),
                    self.options.lease,
                )
                .await?
            else {
                return Ok(Step::Idle);
            };
            let meta = self
                .state
                .get_rows(
                    &self.name,
                    gen.version,
                    &state_table(&self.job.name),
                    &[META_KEY.to_string()],
                )
                .await?;
            engine.reset(meta.first().map(|r| r.value.as_slice()))?;
            *held = Some(Held {
                version: gen.version,
                checkpoint: state.checkpoint,
                fired: Millis::MIN,
                pending_emits: true,
            });
        }
        let h = held.as_mut().expect("held");
        if gen.status != ProjectionStatus::Running {
            return Ok(Step::Idle);
        }
        if h.pending_emits {
            match self.drain(h).await {
                Ok(()) => {}
                Err(e) => {
                    *held = None;
                    return Err(e);
                }
            }
        }
        let events = self
            .events
            .read_all(
                h.checkpoint,
                &self.job.read_filter(),
                self.options.batch_events.max(1),
            )
            .await?;
        let head_seen = events.last().map(|e| e.position);
        let mut skip_to = None;
        let n = events.len();
        if events.is_empty() {
            let now = self.options.clock.now();
            let since = *self
                .idle_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(now);
            let idle = (now - since).to_std().unwrap_or_default() >= self.options.idle_after;
            if gen.role == VersionRole::Building {
                // Caught up: the new generation replaces the old one.
                self.projections.switch(&self.name, gen.version).await?;
                for old in self.projections.states(Some(&self.name)).await? {
                    if old.role == VersionRole::Retired {
                        self.projections
                            .drop_version(&self.name, old.version)
                            .await
                            .ok();
                    }
                }
            }
            // Nothing the job reads up to the head: the checkpoint moves there, so the lag
            // is what is left to read, not what the filter skipped. The head is read first,
            // then `$all` again: an event at or before that head is visible by then.
            let head = self.events.head_position().await?;
            if head > h.checkpoint {
                let filter = self.job.read_filter();
                if self
                    .events
                    .read_all(h.checkpoint, &filter, 1)
                    .await?
                    .is_empty()
                {
                    skip_to = Some(head);
                } else {
                    return Ok(Step::Applied(0));
                }
            }
            let advanced = idle && engine.advance_idle(now.timestamp_millis());
            if !advanced && skip_to.is_none() {
                return Ok(Step::CaughtUp);
            }
        } else {
            *self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        // Records, their state rows, then the records in order. An event the job cannot
        // read faults the job on it — after the events before it commit, so that skipping
        // it (`runnel projections skip`) skips that event and nothing else.
        let mut recs = Vec::new();
        let mut head_seen = head_seen;
        let mut n = n;
        for (i, e) in events.into_iter().enumerate() {
            let e = Arc::new(e);
            match engine.extract(&e) {
                Ok(r) => recs.extend(r),
                Err(_) if i > 0 => {
                    n = i;
                    break;
                }
                Err(err) => {
                    tracing::error!(job = %self.job.name, position = %e.position, error = %err,
                        "stream job cannot read an event; the job is faulted until it is skipped or retried");
                    self.projections
                        .set_status(
                            &self.name,
                            h.version,
                            Some(0),
                            ProjectionStatus::Faulted,
                            Some((e.position, err.to_string())),
                        )
                        .await?;
                    engine.reset(None).ok();
                    *held = None;
                    return Ok(Step::Idle);
                }
            }
            head_seen = Some(e.position);
        }
        let table = state_table(&self.job.name);
        let missing = engine.missing(&recs);
        for chunk in missing.chunks(STATE_ROWS_MAX) {
            let rows = self
                .state
                .get_rows(&self.name, h.version, &table, chunk)
                .await?;
            let found: HashSet<&str> = rows.iter().map(|r| r.key.as_str()).collect();
            for r in &rows {
                engine.install(&r.key, Some(&r.value))?;
            }
            for k in chunk {
                if !found.contains(k.as_str()) {
                    engine.install(k, None)?;
                }
            }
        }
        let records = recs.len();
        for rec in recs {
            if let Err(e) = engine.apply(rec) {
                tracing::error!(job = %self.job.name, error = %e, "stream job failed on a record; retrying from the last commit");
                engine.reset(None).ok();
                *held = None;
                return Err(e);
            }
        }
        // What the watermark closed, including rows only the store holds.
        let wm = engine.watermark();
        if wm > h.fired && wm != Millis::MIN {
            let mut after: Option<(i64, String)> = None;
            loop {
                let rows = self
                    .state
                    .due_rows(&self.name, h.version, &table, wm, after.clone(), DUE_PAGE)
                    .await?;
                for r in &rows {
                    if r.key != META_KEY
                        && !r.key.starts_with(EMIT_PREFIX)
                        && !engine.is_cached(&r.key)
                    {
                        engine.install(&r.key, Some(&r.value))?;
                    }
                }
                if rows.len() < DUE_PAGE {
                    break;
                }
                let last = rows.last().expect("a full page");
                after = Some((last.due.unwrap_or(i64::MIN), last.key.clone()));
            }
        }
        engine.fire();
        let changes = engine.take_changes();
        let to = head_seen.or(skip_to).unwrap_or(h.checkpoint);
        let (statements, outbox, emits) = self.commit_parts(h.version, changes);
        let batch = Batch {
            name: self.name.clone(),
            version: h.version,
            partition: 0,
            owner: self.owner.clone(),
            from: h.checkpoint,
            to,
            events: n as u64,
            statements,
            outbox,
        };
        match self
            .projections
            .commit_batch(batch, self.lease_until())
            .await?
        {
            BatchOutcome::Committed => {
                h.checkpoint = to;
                h.fired = wm;
                engine.evict();
                let job = self.job.name.clone();
                metrics::counter!(METRIC_RECORDS, "job" => job.clone()).increment(records as u64);
                metrics::gauge!(METRIC_STATE_ROWS, "job" => job.clone())
                    .set(engine.cached_rows() as f64);
                if wm != Millis::MIN {
                    metrics::gauge!(METRIC_WATERMARK, "job" => job.clone()).set(wm as f64 / 1000.0);
                }
                // A full batch may have more behind it; a short one read up to the head.
                let lag = if n >= self.options.batch_events.max(1) {
                    self.events
                        .head_position()
                        .await
                        .map_or(0, |head| head.get().saturating_sub(to.get()))
                } else {
                    0
                };
                metrics::gauge!(METRIC_LAG_EVENTS, "job" => job).set(lag as f64);
                if emits {
                    h.pending_emits = true;
                    self.drain(h).await?;
                }
                Ok(Step::Applied(n))
            }
            BatchOutcome::LeaseLost => {
                engine.reset(None).ok();
                *held = None;
                Ok(Step::Idle)
            }
            BatchOutcome::StatementFailed { index, error } => {
                engine.reset(None).ok();
                *held = None;
                Err(StreamError::Store(StoreError::Backend(format!(
                    "stream job {}: state statement {index} failed: {error}",
                    self.job.name
                ))))
            }
        }
    }

    fn output_id(&self, version: u32, seq: u64) -> uuid::Uuid {
        uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("runnel-stream/{}/{version}/{seq}", self.job.name).as_bytes(),
        )
    }

    /// The batch's statements and outbox messages; `true` when events wait to be appended.
    fn commit_parts(
        &self,
        version: u32,
        changes: Changes,
    ) -> (Vec<Statement>, Vec<OutboxMessage>, bool) {
        let job = &self.job.name;
        let state = state_table(job);
        let results = results_table(job);
        let mut st = Vec::with_capacity(changes.puts.len() + changes.deletes.len() + 1);
        let put = |k: String, v: Vec<u8>, due: Option<i64>| Statement {
            sql: format!(
                "INSERT INTO {{{state}}} (k, v, due) VALUES ($1, $2, $3) \
                 ON CONFLICT (k) DO UPDATE SET v = excluded.v, due = excluded.due"
            ),
            params: vec![SqlValue::Text(k), SqlValue::Blob(v), due.into()],
        };
        for (k, v, due) in changes.puts {
            st.push(put(k, v, due));
        }
        for k in changes.deletes {
            st.push(Statement {
                sql: format!("DELETE FROM {{{state}}} WHERE k = $1"),
                params: vec![SqlValue::Text(k)],
            });
        }
        st.push(put(META_KEY.to_string(), changes.meta, None));
        let mut outbox = Vec::new();
        let mut emits = false;
        let n_outputs = changes.outputs.len() as u64;
        let n_late = changes.late.len() as u64;
        for o in changes.outputs {
            let sink = &self.job.ops[o.operator].sink;
            let data = output_json(job, &o);
            match sink {
                Sink::Discard => {}
                Sink::Table => {
                    let (ws, we) = o.window.map_or((0, 0), |w| (w.start, w.end));
                    if o.kind == super::ResultKind::Retraction {
                        st.push(Statement {
                            sql: format!(
                                "DELETE FROM {{{results}}} WHERE operator = $1 AND k = $2 \
                                 AND window_start = $3 AND window_end = $4"
                            ),
                            params: vec![
                                (o.operator as i64).into(),
                                o.key.clone().into(),
                                ws.into(),
                                we.into(),
                            ],
                        });
                    } else {
                        st.push(Statement {
                            sql: format!(
                                "INSERT INTO {{{results}}} (operator, k, window_start, window_end, kind, value, seq) \
                                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (operator, k, window_start, window_end) \
                                 DO UPDATE SET kind = excluded.kind, value = excluded.value, seq = excluded.seq"
                            ),
                            params: vec![
                                (o.operator as i64).into(),
                                o.key.clone().into(),
                                ws.into(),
                                we.into(),
                                o.kind.as_str().into(),
                                o.value.to_string().into(),
                                (o.seq as i64).into(),
                            ],
                        });
                    }
                }
                Sink::Topic(topic) => {
                    let mut m = Message::json(job.clone(), &data)
                        .with_id(self.output_id(version, o.seq).to_string());
                    if !o.key.is_empty() {
                        m = m.with_key(o.key.clone());
                    }
                    outbox.push(OutboxMessage::new(topic.clone(), m));
                }
                Sink::Stream {
                    category,
                    fixed,
                    event_type,
                } => {
                    let stream = match fixed {
                        Some(s) => s.to_string(),
                        None => format!("{category}-{}", stream_id(&o.key)),
                    };
                    st.push(self.emit_row(
                        &state,
                        o.seq,
                        stream,
                        event_type.clone(),
                        version,
                        data,
                    ));
                    emits = true;
                }
            }
        }
        for l in changes.late {
            let data = serde_json::to_value(&l).unwrap_or_default();
            match &self.job.late {
                LateOutput::Stream => {
                    let stream = format!("StreamLate-{job}");
                    st.push(self.emit_row(
                        &state,
                        l.seq,
                        stream,
                        "LateRecord".into(),
                        version,
                        data,
                    ));
                    emits = true;
                }
                LateOutput::DeadLetters => {
                    let mut row = self.emit_row(
                        &state,
                        l.seq,
                        String::new(),
                        "LateRecord".into(),
                        version,
                        data,
                    );
                    if let Some(SqlValue::Blob(b)) = row.params.get_mut(1) {
                        let mut p: PendingEmit =
                            serde_json::from_slice(b).expect("just serialized");
                        p.dead_letter = true;
                        *b = serde_json::to_vec(&p).expect("serializes");
                    }
                    st.push(row);
                    emits = true;
                }
                LateOutput::Topic(topic) => {
                    let mut m = Message::json("LateRecord", &data)
                        .with_id(self.output_id(version, l.seq).to_string());
                    if !l.key.is_empty() {
                        m = m.with_key(l.key.clone());
                    }
                    outbox.push(OutboxMessage::new(topic.clone(), m));
                }
            }
        }
        if n_outputs > 0 {
            metrics::counter!(METRIC_OUTPUTS, "job" => job.clone()).increment(n_outputs);
        }
        if n_late > 0 {
            tracing::warn!(job = %job, late = n_late, "late records routed to the late output");
            metrics::counter!(METRIC_LATE, "job" => job.clone()).increment(n_late);
        }
        (st, outbox, emits)
    }

    fn emit_row(
        &self,
        state: &str,
        seq: u64,
        stream: String,
        event_type: String,
        version: u32,
        data: serde_json::Value,
    ) -> Statement {
        let pending = PendingEmit {
            dead_letter: false,
            stream,
            event_type,
            id: self.output_id(version, seq),
            data,
        };
        Statement {
            sql: format!("INSERT INTO {{{state}}} (k, v, due) VALUES ($1, $2, NULL)"),
            params: vec![
                format!("{EMIT_PREFIX}{seq:020}").into(),
                SqlValue::Blob(serde_json::to_vec(&pending).expect("serializes")),
            ],
        }
    }

    /// A late record into the dead letters. A crash between this and the deletion of its
    /// row stores it again on restart (at least once, unlike the other late outputs).
    async fn dead_letter(&self, p: &PendingEmit) -> Result<(), StreamError> {
        let Some(store) = &self.dead_letters else {
            return Err(StreamError::Definition(format!(
                "job {}: its late output is the dead letters, but it runs without a dead-letter \
                 store (StreamJob::with_dead_letters, or StreamJob::on)",
                self.job.name
            )));
        };
        let message = Message::json("LateRecord", &p.data).with_id(p.id.to_string());
        let dead = NewDeadLetter {
            topic: runnel_core::TopicName::new(LATE_TOPIC).expect("a valid topic"),
            group: runnel_core::GroupName::new(self.job.name.clone())
                .map_err(|e| StreamError::Definition(e.to_string()))?,
            message,
            failures: vec![FailureRecord {
                attempt: 1,
                at: Utc::now(),
                error: format!(
                    "late: event time {} was at or behind the watermark {} less the grace",
                    p.data["time"], p.data["watermark"]
                ),
                permanent: true,
            }],
        };
        store.put(dead).await?;
        Ok(())
    }

    /// Appends the events waiting in the state table (ids fixed when they were committed,
    /// so an append repeated after a crash is recognised), then deletes them.
    async fn drain(&self, h: &mut Held) -> Result<(), StreamError> {
        let table = state_table(&self.job.name);
        loop {
            let rows = self
                .state
                .prefix_rows(&self.name, h.version, &table, EMIT_PREFIX, 500)
                .await?;
            if rows.is_empty() {
                h.pending_emits = false;
                return Ok(());
            }
            let mut pending = Vec::with_capacity(rows.len());
            for r in &rows {
                let p: PendingEmit = serde_json::from_slice(&r.value)
                    .map_err(|e| StreamError::State(e.to_string()))?;
                pending.push(p);
            }
            // Consecutive rows of one stream append together.
            let mut i = 0;
            while i < pending.len() {
                if pending[i].dead_letter {
                    self.dead_letter(&pending[i]).await?;
                    i += 1;
                    continue;
                }
                let mut j = i + 1;
                while j < pending.len()
                    && !pending[j].dead_letter
                    && pending[j].stream == pending[i].stream
                {
                    j += 1;
                }
                let stream = StreamName::new(pending[i].stream.clone())?;
                let events: Vec<NewEvent> = pending[i..j]
                    .iter()
                    .map(|p| {
                        NewEvent::json(p.event_type.clone(), &p.data).with_id(EventId::from(p.id))
                    })
                    .collect();
                match self
                    .events
                    .append(&stream, ExpectedRevision::Any, events)
                    .await
                {
                    Ok(_) => {}
                    Err(StoreError::DuplicateEventId { .. }) => {
                        // Part of the group was appended before a crash: one by one, each
                        // either new or recognised.
                        for p in &pending[i..j] {
                            let e = NewEvent::json(p.event_type.clone(), &p.data)
                                .with_id(EventId::from(p.id));
                            match self
                                .events
                                .append(&stream, ExpectedRevision::Any, vec![e])
                                .await
                            {
                                Ok(_) | Err(StoreError::DuplicateEventId { .. }) => {}
                                Err(e) => return Err(e.into()),
                            }
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
                i = j;
            }
            let deletes = rows
                .iter()
                .map(|r| Statement {
                    sql: format!("DELETE FROM {{{table}}} WHERE k = $1"),
                    params: vec![SqlValue::Text(r.key.clone())],
                })
                .collect();
            let batch = Batch {
                name: self.name.clone(),
                version: h.version,
                partition: 0,
                owner: self.owner.clone(),
                from: h.checkpoint,
                to: h.checkpoint,
                events: 0,
                statements: deletes,
                outbox: Vec::new(),
            };
            match self
                .projections
                .commit_batch(batch, self.lease_until())
                .await?
            {
                BatchOutcome::Committed => {}
                BatchOutcome::LeaseLost => {
                    return Err(StreamError::Store(StoreError::Backend(
                        "the stream job lost its lease while appending its outputs".into(),
                    )))
                }
                BatchOutcome::StatementFailed { error, .. } => {
                    return Err(StreamError::Store(StoreError::Backend(error)))
                }
            }
        }
    }
}

fn output_json(job: &str, o: &Output) -> serde_json::Value {
    serde_json::json!({
        "job": job,
        "key": o.key,
        "window": o.window,
        "time": o.time,
        "kind": o.kind,
        "value": o.value,
        "seq": o.seq,
    })
}

/// The stream jobs a store knows (their names, without [`JOB_PREFIX`]).
pub async fn processor_names(projections: &dyn ProjectionStore) -> Result<Vec<String>, StoreError> {
    let mut names: Vec<String> = projections
        .states(None)
        .await?
        .into_iter()
        .filter_map(|s| s.name.strip_prefix(JOB_PREFIX).map(str::to_string))
        .collect();
    names.dedup();
    Ok(names)
}

/// Where job `name` stands: position, watermark, lag, state size, late records.
pub async fn job_status(
    stores: &crate::connect::Stores,
    name: &str,
) -> Result<Option<JobStatus>, StoreError> {
    let pname = format!("{JOB_PREFIX}{name}");
    let states = stores.projections.states(Some(&pname)).await?;
    let Some(s) = states
        .iter()
        .filter(|s| s.role != VersionRole::Retired)
        .max_by_key(|s| s.version)
    else {
        return Ok(None);
    };
    let table = state_table(name);
    let meta_row = stores
        .state_rows
        .get_rows(&pname, s.version, &table, &[META_KEY.to_string()])
        .await?;
    let meta: Meta = meta_row
        .first()
        .and_then(|r| serde_json::from_slice(&r.value).ok())
        .unwrap_or_default();
    let (rows, bytes) = stores
        .state_rows
        .table_size(&pname, s.version, &table)
        .await?;
    let head = stores.events.head_position().await?;
    Ok(Some(JobStatus {
        name: name.to_string(),
        version: s.version,
        position: s.checkpoint,
        head,
        lag_events: head.get().saturating_sub(s.checkpoint.get()),
        watermark: meta.watermark,
        source_times: meta.max_time.clone(),
        records: meta.records,
        outputs: meta.outputs,
        late: meta.late,
        state_rows: rows.saturating_sub(u64::from(!meta_row.is_empty())),
        state_bytes: bytes,
        status: s.status.as_str().to_string(),
        last_error: s.last_error.clone(),
        lease_owner: s.lease.as_ref().map(|l| l.0.clone()),
    }))
}

/// Starts job `name` over: a new generation with empty state processes `$all` from the
/// start beside the current one and replaces it once caught up (its outputs are emitted
/// again, with new ids). Unknown jobs are an [`StoreError::InvalidArgument`].
pub async fn reset(
    projections: &dyn ProjectionStore,
    name: &str,
) -> Result<RebuildStarted, StoreError> {
    projections.rebuild(&format!("{JOB_PREFIX}{name}")).await
}
