//! [`InMemoryStore`]: every storage trait of `runnel-core` on plain in-memory maps, for
//! unit tests of logic built on top of the store.
//!
//! One mutex guards all state, so every append is atomic and commits in position order:
//! positions are contiguous (`1, 2, 3, …`) and the head is always the last position.
//! Nothing is durable; the data lives as long as the last clone of the store.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use runnel_core::chrono::{DateTime, Utc};
use runnel_core::store::{validate_checkpoint_name, validate_limit};
use runnel_core::stream_name::validate_category;
use runnel_core::{
    async_trait, AppendResult, CheckpointStore, Clock, EventFilter, EventId, EventStore,
    ExpectedRevision, NewEvent, Position, ReadDirection, ReadStream, RecordedEvent, Snapshot,
    SnapshotStore, StoreError, StoreLimits, StreamInfo, StreamName, SystemClock,
};
use tokio::sync::watch;

/// An [`EventStore`], [`SnapshotStore`] and [`CheckpointStore`] held in memory.
///
/// Clones share the same data. It passes the same conformance suite as the real backends
/// (see [`crate::conformance`]), so logic tested against it behaves the same on SQLite or
/// PostgreSQL.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runnel_core::StoreError> {
/// use runnel_core::{EventStore, ExpectedRevision, NewEvent, ReadStream, StreamName};
/// use runnel_testkit::InMemoryStore;
///
/// let store = InMemoryStore::new();
/// let stream = StreamName::new("Order-1")?;
/// let placed = NewEvent::json("OrderPlaced", &serde_json::json!({"total": 42}));
/// let r = store.append(&stream, ExpectedRevision::NoStream, vec![placed]).await?;
/// assert_eq!(r.next_expected_revision, 1);
/// assert_eq!(store.read_stream(&stream, ReadStream::forward(10)).await?.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct InMemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    limits: StoreLimits,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// The head position, published after every append so waiters wake at once.
    head: watch::Sender<Position>,
}

#[derive(Default)]
struct State {
    /// Every event in position order; the event at index `i` has position `i + 1`.
    events: Vec<RecordedEvent>,
    streams: BTreeMap<StreamName, StreamEntry>,
    /// Event id → index into `events`: the idempotency index.
    ids: HashMap<EventId, usize>,
    snapshots: HashMap<StreamName, Snapshot>,
    checkpoints: HashMap<String, Position>,
}

struct StreamEntry {
    /// Indexes into `State::events`; revision `r` is at `event_indexes[r - 1]`.
    event_indexes: Vec<usize>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl InMemoryStore {
    /// An empty store with the default [`StoreLimits`] and the system clock.
    pub fn new() -> Self {
        Self::with_limits(StoreLimits::default())
    }

    /// An empty store enforcing `limits`.
    pub fn with_limits(limits: StoreLimits) -> Self {
        Self::with_limits_and_clock(limits, Arc::new(SystemClock))
    }

    /// An empty store enforcing `limits` that stamps `recorded_at` from `clock`.
    pub fn with_limits_and_clock(limits: StoreLimits, clock: Arc<dyn Clock>) -> Self {
        let (head, _) = watch::channel(Position::START);
        InMemoryStore {
            inner: Arc::new(Inner {
                limits,
                clock,
                state: Mutex::new(State::default()),
                head,
            }),
        }
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        // A poisoned lock means a panic mid-update: the state may be half written, so
        // report it rather than read it.
        self.inner
            .state
            .lock()
            .map_err(|_| StoreError::Corrupt("in-memory store lock poisoned by a panic".into()))
    }
}

/// Spends one unit of tokio's cooperative budget, yielding when it is used up — as real
/// I/O does. Without it every call completes at once, and a caller that loops over the
/// store (a subscription whose `wait_for_events` never waits, say) would hold its thread
/// forever instead of letting timeouts fire.
async fn yield_point() {
    tokio::task::consume_budget().await;
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryStore")
            .field("limits", &self.inner.limits)
            .field("head", &*self.inner.head.borrow())
            .finish_non_exhaustive()
    }
}

impl State {
    fn revision(&self, stream: &StreamName) -> Option<u64> {
        self.streams
            .get(stream)
            .map(|s| s.event_indexes.len() as u64)
    }

    fn head(&self) -> Position {
        Position(self.events.len() as u64)
    }

    /// `Some(result)` if `events` is a retry of an earlier append to `stream` (all ids
    /// stored there, at consecutive revisions, in this order); `None` if no id is stored.
    fn idempotent_result(
        &self,
        stream: &StreamName,
        events: &[NewEvent],
    ) -> Result<Option<AppendResult>, StoreError> {
        let stored: Vec<Option<&RecordedEvent>> = events
            .iter()
            .map(|e| self.ids.get(&e.id).map(|&i| &self.events[i]))
            .collect();
        let duplicate = |e: &RecordedEvent| StoreError::DuplicateEventId {
            event_id: e.id,
            existing_stream: e.stream.to_string(),
        };
        let Some(&first_found) = stored.iter().flatten().next() else {
            return Ok(None);
        };
        let Some(first) = stored[0] else {
            // Some ids are new, some stored: not a retry.
            return Err(duplicate(first_found));
        };
        for (offset, found) in stored.iter().enumerate() {
            match found {
                Some(e) if e.stream == *stream && e.revision == first.revision + offset as u64 => {}
                Some(e) => return Err(duplicate(e)),
                None => return Err(duplicate(first)),
            }
        }
        let last = stored[stored.len() - 1].unwrap_or(first);
        Ok(Some(AppendResult {
            next_expected_revision: last.revision,
            position: last.position,
        }))
    }
}

#[async_trait]
impl EventStore for InMemoryStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        yield_point().await;
        self.inner.limits.validate_append(&events)?;
        let mut state = self.state()?;
        // Idempotency comes before the revision check: a retried append carries the
        // expectation of its first attempt, which its own success has since made stale.
        if let Some(result) = state.idempotent_result(stream, &events)? {
            return Ok(result);
        }
        let actual = state.revision(stream);
        if !expected.matches(actual) {
            return Err(StoreError::Conflict {
                stream: stream.to_string(),
                expected,
                actual,
            });
        }

        let now = self.inner.clock.now();
        let first_revision = actual.unwrap_or(0) + 1;
        let first_index = state.events.len();
        for (offset, event) in events.into_iter().enumerate() {
            let index = first_index + offset;
            state.ids.insert(event.id, index);
            state.events.push(RecordedEvent {
                id: event.id,
                stream: stream.clone(),
                revision: first_revision + offset as u64,
                position: Position(index as u64 + 1),
                recorded_at: now,
                event_type: event.event_type,
                schema_version: event.schema_version,
                content_type: event.content_type,
                data: event.data,
                metadata: event.metadata,
            });
        }
        let last_index = state.events.len() - 1;
        let entry = state
            .streams
            .entry(stream.clone())
            .or_insert_with(|| StreamEntry {
                event_indexes: Vec::new(),
                created_at: now,
                updated_at: now,
            });
        entry.event_indexes.extend(first_index..=last_index);
        entry.updated_at = now;
        let result = AppendResult {
            next_expected_revision: entry.event_indexes.len() as u64,
            position: Position(last_index as u64 + 1),
        };
        debug_assert_eq!(result.position, state.head());
        // Published under the lock so the watched head never moves backwards.
        self.inner.head.send_replace(result.position);
        Ok(result)
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        yield_point().await;
        validate_limit(options.limit)?;
        let state = self.state()?;
        let Some(entry) = state.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let revision = entry.event_indexes.len() as u64;
        let revisions: Vec<u64> = match options.direction {
            ReadDirection::Forward => {
                let from = options.from_revision.unwrap_or(1).max(1);
                (from..=revision).take(options.limit).collect()
            }
            ReadDirection::Backward => {
                let from = options.from_revision.unwrap_or(revision).min(revision);
                (1..=from).rev().take(options.limit).collect()
            }
        };
        Ok(revisions
            .into_iter()
            .map(|r| state.events[entry.event_indexes[r as usize - 1]].clone())
            .collect())
    }

    async fn read_all(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        yield_point().await;
        validate_limit(limit)?;
        filter.validate()?;
        let state = self.state()?;
        // Position p sits at index p - 1, so "after p" starts at index p.
        let start = usize::try_from(after.0).unwrap_or(usize::MAX);
        Ok(state
            .events
            .iter()
            .skip(start)
            .filter(|e| filter.matches(e))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn read_by_type(
        &self,
        event_type: &str,
        since: DateTime<Utc>,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        yield_point().await;
        validate_limit(limit)?;
        let state = self.state()?;
        let start = usize::try_from(after.0).unwrap_or(usize::MAX);
        Ok(state
            .events
            .iter()
            .skip(start)
            .filter(|e| e.event_type == event_type && e.recorded_at >= since)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn stream_revision(&self, stream: &StreamName) -> Result<Option<u64>, StoreError> {
        yield_point().await;
        Ok(self.state()?.revision(stream))
    }

    async fn list_streams(
        &self,
        category: Option<&str>,
        after: Option<&StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        yield_point().await;
        validate_limit(limit)?;
        if let Some(category) = category {
            validate_category(category)?;
        }
        let state = self.state()?;
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(state
            .streams
            .range::<StreamName, _>((lower, Bound::Unbounded))
            .filter(|(name, _)| category.is_none_or(|c| name.category() == c))
            .take(limit)
            .map(|(name, entry)| {
                let last = entry
                    .event_indexes
                    .last()
                    .map_or(Position::START, |&i| state.events[i].position);
                StreamInfo {
                    stream: name.clone(),
                    revision: entry.event_indexes.len() as u64,
                    last_position: last,
                    created_at: entry.created_at,
                    updated_at: entry.updated_at,
                }
            })
            .collect())
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        yield_point().await;
        Ok(self.state()?.head())
    }

    async fn wait_for_events(&self, after: Position, max_wait: Duration) -> Result<(), StoreError> {
        yield_point().await;
        let mut head = self.inner.head.subscribe();
        let wait = head.wait_for(|&h| h > after);
        // Elapsed deadline and a matching head both simply return: the caller reads again.
        // The sender lives as long as `self`, so `wait_for` cannot fail while we wait.
        let _ = tokio::time::timeout(max_wait, wait).await;
        Ok(())
    }

    fn limits(&self) -> &StoreLimits {
        &self.inner.limits
    }
}

#[async_trait]
impl SnapshotStore for InMemoryStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        yield_point().await;
        let mut state = self.state()?;
        let newer_stored = state
            .snapshots
            .get(&snapshot.stream)
            .is_some_and(|s| s.revision > snapshot.revision);
        if !newer_stored {
            state.snapshots.insert(snapshot.stream.clone(), snapshot);
        }
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, StoreError> {
        yield_point().await;
        Ok(self.state()?.snapshots.get(stream).cloned())
    }

    async fn delete_snapshot(&self, stream: &StreamName) -> Result<(), StoreError> {
        yield_point().await;
        self.state()?.snapshots.remove(stream);
        Ok(())
    }
}

#[async_trait]
impl CheckpointStore for InMemoryStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>, StoreError> {
        yield_point().await;
        validate_checkpoint_name(name)?;
        Ok(self.state()?.checkpoints.get(name).copied())
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError> {
        yield_point().await;
        validate_checkpoint_name(name)?;
        self.state()?.checkpoints.insert(name.to_string(), position);
        Ok(())
    }
}
