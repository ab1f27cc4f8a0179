//! The engine: records through a job's operators, per-key state behind a bounded cache,
//! watermarks, and the changes of one batch (state rows, outputs, late records) that the
//! runner commits with the source position.
//!
//! The engine is synchronous and deterministic: the same events from the same state give
//! the same outputs with the same sequence numbers, which is what lets a job resumed after
//! a crash give an output the same id it had before.

use std::any::Any;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use runnel_core::{EventFilter, Position, RecordedEvent};

use super::window::WindowBounds;
use super::{LateOutput, Millis, Sink, StreamError};

/// A record's value, typed by the stream it flows in.
pub(crate) type Value = Box<dyn Any + Send>;
/// A key's state in one operator.
pub(crate) type Row = Box<dyn Any + Send>;

/// Reads an event into records: (key, time, value); the key is empty before `key_by`.
pub(crate) type ExtractFn = Arc<
    dyn Fn(&Arc<RecordedEvent>, Millis) -> Result<Vec<(String, Millis, Value)>, StreamError>
        + Send
        + Sync,
>;
/// An event's time.
pub(crate) type TimeFn = Arc<dyn Fn(&RecordedEvent) -> Millis + Send + Sync>;

/// What an output is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultKind {
    /// A record of a stateless stream or a join result.
    Record,
    /// A window's (or a key's) running result ([`Emit::OnUpdate`](super::Emit::OnUpdate)).
    Update,
    /// A window's final result ([`Emit::OnClose`](super::Emit::OnClose)).
    Final,
    /// Withdraws a result emitted before (a late record changed it, or sessions merged).
    Retraction,
    /// The amended result of a closed window, after its retraction.
    Correction,
}

impl ResultKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultKind::Record => "record",
            ResultKind::Update => "update",
            ResultKind::Final => "final",
            ResultKind::Retraction => "retraction",
            ResultKind::Correction => "correction",
        }
    }
}

/// One result a job emitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Output {
    /// The operator that emitted it (its position in the job, from 0).
    pub operator: usize,
    /// The output's sequence number in the job (from 1): deterministic, the basis of its id.
    pub seq: u64,
    /// The key.
    pub key: String,
    /// The window, for windowed results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowBounds>,
    /// The result's event time (a window's last millisecond; a record's own time).
    pub time: Millis,
    /// What it is.
    pub kind: ResultKind,
    /// The value as JSON.
    pub value: serde_json::Value,
}

/// A record that arrived after its window (or join bound) closed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LateRecord {
    /// The job.
    pub job: String,
    /// The operator that refused it.
    pub operator: usize,
    /// Its sequence number among outputs (it shares the numbering).
    pub seq: u64,
    /// The key.
    pub key: String,
    /// Its event time.
    pub time: Millis,
    /// The watermark when it arrived.
    pub watermark: Millis,
    /// The `$all` position of its event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// The record as JSON.
    pub value: serde_json::Value,
}

/// The context an operator works in for one call.
pub(crate) struct Cx<'a> {
    pub wm: Millis,
    pub op: usize,
    pub job: &'a str,
    pub position: Option<Position>,
    pub seq: &'a mut u64,
    pub outputs: &'a mut Vec<Output>,
    pub late: &'a mut Vec<LateRecord>,
}

impl Cx<'_> {
    pub fn emit(
        &mut self,
        key: &str,
        window: Option<WindowBounds>,
        time: Millis,
        kind: ResultKind,
        value: serde_json::Value,
    ) {
        *self.seq += 1;
        self.outputs.push(Output {
            operator: self.op,
            seq: *self.seq,
            key: key.to_string(),
            window,
            time,
            kind,
            value,
        });
    }

    pub fn late(&mut self, key: &str, time: Millis, value: serde_json::Value) {
        *self.seq += 1;
        self.late.push(LateRecord {
            job: self.job.to_string(),
            operator: self.op,
            seq: *self.seq,
            key: key.to_string(),
            time,
            watermark: self.wm,
            position: self.position,
            value,
        });
    }
}

/// One stateful (or stateless) step of a job, for its own row types.
pub(crate) trait Operator: Send + Sync {
    /// Whether it keeps state (stateless operators have no rows).
    fn stateful(&self) -> bool {
        true
    }
    /// A record of input `side` (0, or 1 for a join's right side / a table).
    fn on_record(
        &self,
        cx: &mut Cx<'_>,
        key: &str,
        row: &mut Option<Row>,
        side: u8,
        time: Millis,
        value: Value,
    ) -> Result<(), StreamError>;
    /// The watermark passed the row's due time: close what closed.
    fn on_watermark(&self, cx: &mut Cx<'_>, key: &str, row: &mut Option<Row>);
    /// When the row next needs the watermark (`None`: never).
    fn due(&self, row: &Row) -> Option<Millis>;
    fn encode(&self, row: &Row) -> Vec<u8>;
    fn decode(&self, bytes: &[u8]) -> Result<Row, StreamError>;
}

/// A source: events of `$all` matching a filter, with their event time.
pub(crate) struct SourceSpec {
    pub filter: EventFilter,
    pub out_of_orderness: Millis,
    pub time: TimeFn,
}

/// Records from a source into an operator.
pub(crate) struct Feed {
    pub source: usize,
    pub op: usize,
    pub side: u8,
    pub extract: ExtractFn,
}

pub(crate) struct OpEntry {
    pub op: Box<dyn Operator>,
    pub sink: Sink,
    pub label: String,
}

/// A built job: what [`JobBuilder::build`](super::JobBuilder::build) returns, run by a
/// [`StreamJob`](super::StreamJob) or a [`TestDriver`](super::TestDriver).
pub struct Job {
    pub(crate) name: String,
    pub(crate) sources: Vec<SourceSpec>,
    pub(crate) feeds: Vec<Feed>,
    pub(crate) ops: Vec<OpEntry>,
    pub(crate) late: LateOutput,
    pub(crate) version: u32,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("sources", &self.sources.len())
            .field("operators", &self.ops.len())
            .finish()
    }
}

impl Job {
    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its version (raise it when the state's shape changes: `reset` rebuilds).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The operators' descriptions, in order (`window-aggregate`, `join`, …).
    pub fn operators(&self) -> Vec<String> {
        self.ops.iter().map(|o| o.label.clone()).collect()
    }

    /// The events the job reads, as one filter for the store (a superset when the sources'
    /// filters cannot be combined).
    pub(crate) fn read_filter(&self) -> EventFilter {
        let all_types = self
            .sources
            .iter()
            .all(|s| s.filter.categories.is_empty() && !s.filter.event_types.is_empty());
        let all_cats = self
            .sources
            .iter()
            .all(|s| s.filter.event_types.is_empty() && !s.filter.categories.is_empty());
        let mut f = EventFilter::all();
        if all_types {
            for s in &self.sources {
                for t in &s.filter.event_types {
                    if !f.event_types.contains(t) {
                        f.event_types.push(t.clone());
                    }
                }
            }
        } else if all_cats {
            for s in &self.sources {
                for c in &s.filter.categories {
                    if !f.categories.contains(c) {
                        f.categories.push(c.clone());
                    }
                }
            }
        } else if self.sources.len() == 1 {
            f = self.sources[0].filter.clone();
        }
        f
    }
}

pub(crate) fn matches(filter: &EventFilter, e: &RecordedEvent) -> bool {
    (filter.categories.is_empty() || filter.categories.iter().any(|c| c == e.stream.category()))
        && (filter.event_types.is_empty() || filter.event_types.contains(&e.event_type))
}

/// The job's progress, kept in its state with the rows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// Per source, the largest event time seen (or advanced to while idle).
    pub max_time: Vec<Option<Millis>>,
    /// Output sequence (outputs and late records).
    pub seq: u64,
    pub records: u64,
    pub outputs: u64,
    pub late: u64,
    /// The job's watermark when the state was last committed.
    #[serde(default)]
    pub watermark: Option<Millis>,
}

/// What a job reports about itself ([`job_status`](super::job_status)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job.
    pub name: String,
    /// The generation running (a reset makes a new one).
    pub version: u32,
    /// The last `$all` position applied.
    pub position: Position,
    /// The head of `$all`.
    pub head: Position,
    /// Events not applied yet.
    pub lag_events: u64,
    /// The job's watermark (ms since the epoch; `None` until every source has a time).
    pub watermark: Option<Millis>,
    /// Per source, the largest event time seen.
    pub source_times: Vec<Option<Millis>>,
    /// Records processed, results emitted, late records, since the generation started.
    pub records: u64,
    pub outputs: u64,
    pub late: u64,
    /// State rows and their bytes.
    pub state_rows: u64,
    pub state_bytes: u64,
    /// running, paused, faulted.
    pub status: String,
    /// The error it is faulted on.
    pub last_error: Option<String>,
    /// Who holds the lease.
    pub lease_owner: Option<String>,
}

struct Slot {
    row: Option<Row>,
    due: Option<Millis>,
    used: u64,
    /// Changed since the last commit (its key is in `Engine::dirty` once).
    dirty: bool,
}

/// The slot of `key` in operator `op`, created empty if missing, marked used. A lookup by
/// `&str`: no allocation for a key already cached (the common case, once per record).
fn slot_mut<'a>(
    slots: &'a mut [HashMap<String, Slot>],
    tick: &mut u64,
    op: usize,
    key: &str,
) -> &'a mut Slot {
    *tick += 1;
    let map = &mut slots[op];
    if !map.contains_key(key) {
        map.insert(
            key.to_string(),
            Slot {
                row: None,
                due: None,
                used: *tick,
                dirty: false,
            },
        );
    }
    let slot = map.get_mut(key).expect("the slot was just made");
    slot.used = *tick;
    slot
}

/// One batch's effects, for the runner to commit.
#[derive(Default)]
pub(crate) struct Changes {
    /// (row key, bytes, due) to upsert.
    pub puts: Vec<(String, Vec<u8>, Option<Millis>)>,
    /// Row keys to delete.
    pub deletes: Vec<String>,
    pub outputs: Vec<Output>,
    pub late: Vec<LateRecord>,
    pub meta: Vec<u8>,
}

/// A record extracted from an event, ready for its operator.
pub(crate) struct Rec {
    pub feed: usize,
    pub key: String,
    pub time: Millis,
    pub value: Value,
    pub position: Option<Position>,
}

pub(crate) const META_KEY: &str = "meta";

pub(crate) fn row_key(op: usize, key: &str) -> String {
    format!("{op:04}/{key}")
}

pub(crate) fn split_row_key(k: &str) -> Option<(usize, String)> {
    let (op, key) = k.split_once('/')?;
    Some((op.parse().ok()?, key.to_string()))
}

pub(crate) struct Engine {
    pub job: Arc<Job>,
    pub meta: Meta,
    /// Per operator, the cached rows by key.
    slots: Vec<HashMap<String, Slot>>,
    dues: BTreeSet<(Millis, usize, String)>,
    /// The slots changed since the last commit, each once (their `dirty` flag is set).
    dirty: Vec<(usize, String)>,
    capacity: Option<usize>,
    tick: u64,
    outputs: Vec<Output>,
    late: Vec<LateRecord>,
}

impl Engine {
    pub fn new(job: Arc<Job>, capacity: Option<usize>) -> Self {
        let meta = Meta {
            max_time: vec![None; job.sources.len()],
            ..Meta::default()
        };
        let slots = (0..job.ops.len()).map(|_| HashMap::new()).collect();
        Engine {
            job,
            meta,
            slots,
            dues: BTreeSet::new(),
            dirty: Vec::new(),
            capacity,
            tick: 0,
            outputs: Vec::new(),
            late: Vec::new(),
        }
    }

    /// Forgets everything cached (a commit failed, or the lease changed hands) and starts
    /// from `meta` as stored.
    pub fn reset(&mut self, meta: Option<&[u8]>) -> Result<(), StreamError> {
        for map in &mut self.slots {
            map.clear();
        }
        self.dues.clear();
        self.dirty.clear();
        self.outputs.clear();
        self.late.clear();
        self.meta = match meta {
            Some(b) => serde_json::from_slice(b).map_err(|e| StreamError::State(e.to_string()))?,
            None => Meta::default(),
        };
        self.meta.max_time.resize(self.job.sources.len(), None);
        Ok(())
    }

    /// The job's watermark: the smallest source watermark (`i64::MIN` while a source has
    /// seen nothing).
    pub fn watermark(&self) -> Millis {
        self.job
            .sources
            .iter()
            .zip(&self.meta.max_time)
            .map(|(s, t)| t.map_or(Millis::MIN, |t| t.saturating_sub(s.out_of_orderness)))
            .min()
            .unwrap_or(Millis::MIN)
    }

    /// Every source is idle: its time moves to `now` (so its watermark to `now` minus its
    /// out-of-orderness) unless it is ahead. Returns whether the watermark moved.
    pub fn advance_idle(&mut self, now: Millis) -> bool {
        let before = self.watermark();
        for t in &mut self.meta.max_time {
            if t.is_none_or(|t| t < now) {
                *t = Some(now);
            }
        }
        self.watermark() != before
    }

    /// The records of `event`, one per feed whose source wants it.
    pub fn extract(&self, event: &Arc<RecordedEvent>) -> Result<Vec<Rec>, StreamError> {
        let mut out = Vec::new();
        for (i, feed) in self.job.feeds.iter().enumerate() {
            let source = &self.job.sources[feed.source];
            if !matches(&source.filter, event) {
                continue;
            }
            let time = (source.time)(event);
            for (key, time, value) in (feed.extract)(event, time)? {
                out.push(Rec {
                    feed: i,
                    key,
                    time,
                    value,
                    position: Some(event.position),
                });
            }
        }
        Ok(out)
    }

    /// The state rows `recs` need that are not cached.
    pub fn missing(&self, recs: &[Rec]) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for r in recs {
            let op = self.job.feeds[r.feed].op;
            if !self.job.ops[op].op.stateful() {
                continue;
            }
            if !self.slots[op].contains_key(&r.key) && seen.insert((op, r.key.clone())) {
                out.push(row_key(op, &r.key));
            }
        }
        out
    }

    /// Caches a row read from the store (`None`: it has no row).
    pub fn install(&mut self, db_key: &str, bytes: Option<&[u8]>) -> Result<(), StreamError> {
        let Some((op, key)) = split_row_key(db_key) else {
            return Ok(());
        };
        let Some(entry) = self.job.ops.get(op) else {
            return Ok(());
        };
        if self.slots[op].contains_key(&key) {
            return Ok(());
        }
        let row = match bytes {
            Some(b) => Some(entry.op.decode(b)?),
            None => None,
        };
        let due = row.as_ref().and_then(|r| entry.op.due(r));
        if let Some(d) = due {
            self.dues.insert((d, op, key.clone()));
        }
        self.tick += 1;
        self.slots[op].insert(
            key,
            Slot {
                row,
                due,
                used: self.tick,
                dirty: false,
            },
        );
        Ok(())
    }

    /// Whether a row is cached (the store's copy of a cached row is older).
    pub fn is_cached(&self, db_key: &str) -> bool {
        split_row_key(db_key)
            .is_some_and(|(op, key)| self.slots.get(op).is_some_and(|m| m.contains_key(&key)))
    }

    /// Applies one record (its row must be cached, or known absent).
    pub fn apply(&mut self, rec: Rec) -> Result<(), StreamError> {
        let job = Arc::clone(&self.job);
        let feed = &job.feeds[rec.feed];
        let entry = &job.ops[feed.op];
        let wm = self.watermark();
        let mut seq = self.meta.seq;
        let mut outputs = std::mem::take(&mut self.outputs);
        let mut late = std::mem::take(&mut self.late);
        let result = {
            let mut cx = Cx {
                wm,
                op: feed.op,
                job: &job.name,
                position: rec.position,
                seq: &mut seq,
                outputs: &mut outputs,
                late: &mut late,
            };
            if entry.op.stateful() {
                let slot = slot_mut(&mut self.slots, &mut self.tick, feed.op, &rec.key);
                let mut row = slot.row.take();
                let r = entry
                    .op
                    .on_record(&mut cx, &rec.key, &mut row, feed.side, rec.time, rec.value);
                let old_due = slot.due;
                let new_due = row.as_ref().and_then(|r| entry.op.due(r));
                slot.row = row;
                slot.due = new_due;
                let newly_dirty = !slot.dirty;
                slot.dirty = true;
                if old_due != new_due {
                    if let Some(d) = old_due {
                        self.dues.remove(&(d, feed.op, rec.key.clone()));
                    }
                    if let Some(d) = new_due {
                        self.dues.insert((d, feed.op, rec.key.clone()));
                    }
                }
                if newly_dirty {
                    self.dirty.push((feed.op, rec.key));
                }
                r
            } else {
                let mut row = None;
                entry
                    .op
                    .on_record(&mut cx, &rec.key, &mut row, feed.side, rec.time, rec.value)
            }
        };
        self.outputs = outputs;
        self.late = late;
        self.meta.seq = seq;
        self.meta.records += 1;
        let source = feed.source;
        let t = &mut self.meta.max_time[source];
        if t.is_none_or(|t| t < rec.time) {
            *t = Some(rec.time);
        }
        result
    }

    /// Closes what the watermark closed, in every cached row due at or before it (the
    /// runner caches the store's due rows first).
    pub fn fire(&mut self) {
        let wm = self.watermark();
        let job = Arc::clone(&self.job);
        while let Some((d, op, key)) = self.dues.first().cloned() {
            if d > wm {
                break;
            }
            self.dues.remove(&(d, op, key.clone()));
            let entry = &job.ops[op];
            let mut seq = self.meta.seq;
            let mut outputs = std::mem::take(&mut self.outputs);
            let mut late = std::mem::take(&mut self.late);
            {
                let mut cx = Cx {
                    wm,
                    op,
                    job: &job.name,
                    position: None,
                    seq: &mut seq,
                    outputs: &mut outputs,
                    late: &mut late,
                };
                let slot = slot_mut(&mut self.slots, &mut self.tick, op, &key);
                let mut row = slot.row.take();
                entry.op.on_watermark(&mut cx, &key, &mut row);
                // An operator leaves nothing due at or before the watermark it was given;
                // were one to, the row waits for the next watermark instead of looping.
                let new_due = row
                    .as_ref()
                    .and_then(|r| entry.op.due(r))
                    .map(|d| d.max(wm.saturating_add(1)));
                slot.row = row;
                slot.due = new_due;
                let newly_dirty = !slot.dirty;
                slot.dirty = true;
                if let Some(nd) = new_due {
                    self.dues.insert((nd, op, key.clone()));
                }
                if newly_dirty {
                    self.dirty.push((op, key));
                }
            }
            self.outputs = outputs;
            self.late = late;
            self.meta.seq = seq;
        }
    }

    /// The batch's changes; the rows are clean afterwards (on a failed commit, `reset`).
    pub fn take_changes(&mut self) -> Changes {
        let mut changes = Changes::default();
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort();
        debug_assert!(
            dirty.windows(2).all(|w| w[0] != w[1]),
            "a dirty slot is listed once"
        );
        for (op, key) in dirty {
            let Some(slot) = self.slots[op].get_mut(&key) else {
                continue;
            };
            slot.dirty = false;
            match &slot.row {
                Some(row) => changes.puts.push((
                    row_key(op, &key),
                    self.job.ops[op].op.encode(row),
                    slot.due,
                )),
                None => changes.deletes.push(row_key(op, &key)),
            }
        }
        changes.outputs = std::mem::take(&mut self.outputs);
        changes.late = std::mem::take(&mut self.late);
        self.meta.outputs += changes.outputs.len() as u64;
        self.meta.late += changes.late.len() as u64;
        let wm = self.watermark();
        self.meta.watermark = (wm != Millis::MIN).then_some(wm);
        changes.meta = serde_json::to_vec(&self.meta).expect("meta serializes");
        changes
    }

    /// The batch's outputs and late records, without the state rows (the test driver has
    /// no store to write them to); the rows are clean afterwards, as after
    /// [`take_changes`](Self::take_changes). Without a store a key with no row has no
    /// state at all, so its slot goes too: memory follows the live keys.
    pub fn take_emitted(&mut self) -> (Vec<Output>, Vec<LateRecord>) {
        for (op, key) in std::mem::take(&mut self.dirty) {
            let map = &mut self.slots[op];
            match map.get_mut(&key) {
                Some(slot) if slot.row.is_none() => {
                    debug_assert!(slot.due.is_none(), "an empty row is never due");
                    map.remove(&key);
                }
                Some(slot) => slot.dirty = false,
                None => {}
            }
        }
        let outputs = std::mem::take(&mut self.outputs);
        let late = std::mem::take(&mut self.late);
        self.meta.outputs += outputs.len() as u64;
        self.meta.late += late.len() as u64;
        let wm = self.watermark();
        self.meta.watermark = (wm != Millis::MIN).then_some(wm);
        (outputs, late)
    }

    /// Drops the least recently used clean rows beyond the cache's capacity.
    pub fn evict(&mut self) {
        let Some(cap) = self.capacity else { return };
        let cached = self.cached_rows();
        if cached <= cap {
            return;
        }
        let mut ages: Vec<(u64, (usize, String))> = self
            .slots
            .iter()
            .enumerate()
            .flat_map(|(op, map)| {
                map.iter()
                    .filter(|(_, s)| !s.dirty)
                    .map(move |(k, s)| (s.used, (op, k.clone())))
            })
            .collect();
        let excess = cached - cap;
        if excess < ages.len() {
            ages.select_nth_unstable_by_key(excess, |a| a.0);
            ages.truncate(excess);
        }
        for (_, k) in ages {
            if let Some(slot) = self.slots[k.0].remove(&k.1) {
                if let Some(d) = slot.due {
                    self.dues.remove(&(d, k.0, k.1));
                }
            }
        }
    }

    /// Rows cached.
    pub fn cached_rows(&self) -> usize {
        self.slots.iter().map(HashMap::len).sum()
    }

    /// Rows with state (cached ones only: the test driver's whole state).
    pub fn live_rows(&self) -> Vec<(usize, String)> {
        let mut v: Vec<_> = self
            .slots
            .iter()
            .enumerate()
            .flat_map(|(op, map)| {
                map.iter()
                    .filter(|(_, s)| s.row.is_some())
                    .map(move |(k, _)| (op, k.clone()))
            })
            .collect();
        v.sort();
        v
    }
}
