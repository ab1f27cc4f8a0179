//! The storage traits every backend implements: [`EventStore`], [`SnapshotStore`] and
//! [`CheckpointStore`]. They are object-safe (`Arc<dyn EventStore>`), so backends are
//! chosen at run time from configuration.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_core::Stream;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::event::{AppendResult, NewEvent, RecordedEvent};
use crate::limits::StoreLimits;
use crate::position::{ExpectedRevision, Position};
use crate::stream_name::StreamName;

/// Most events one read call may return.
pub const READ_LIMIT_MAX: usize = 10_000;

/// A live sequence of events from a subscription.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<RecordedEvent, StoreError>> + Send>>;

/// Which way to read a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadDirection {
    Forward,
    Backward,
}

/// How to read one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadStream {
    pub direction: ReadDirection,
    /// The first revision to return (inclusive). `None`: from the start (forward) or the
    /// end (backward).
    pub from_revision: Option<u64>,
    /// Most events to return, 1..=[`READ_LIMIT_MAX`].
    pub limit: usize,
    /// Whether each event's metadata is wanted. `false` ([`ReadStream::without_metadata`])
    /// lets the store leave it empty.
    pub metadata: bool,
}

impl ReadStream {
    /// Forward from the first event, up to `limit` events.
    pub fn forward(limit: usize) -> Self {
        ReadStream {
            direction: ReadDirection::Forward,
            from_revision: None,
            limit,
            metadata: true,
        }
    }

    /// Backward from the last event, up to `limit` events.
    pub fn backward(limit: usize) -> Self {
        ReadStream {
            direction: ReadDirection::Backward,
            from_revision: None,
            limit,
            metadata: true,
        }
    }

    /// Starts at `revision` (inclusive).
    pub fn from(mut self, revision: u64) -> Self {
        self.from_revision = Some(revision);
        self
    }

    /// Lets the store leave each event's `metadata` empty ([`crate::Metadata::default`])
    /// rather than read and parse it: for readers that only fold payloads, such as an
    /// aggregate's load. A store may return the metadata all the same.
    pub fn without_metadata(mut self) -> Self {
        self.metadata = false;
        self
    }
}

/// Which events of `$all` to return. Empty lists match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    /// Only events of streams in these categories.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Only events of these types.
    #[serde(default)]
    pub event_types: Vec<String>,
}

/// Most entries in each list of an [`EventFilter`].
pub const FILTER_ENTRIES_MAX: usize = 100;

impl EventFilter {
    /// Matches every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only these categories.
    pub fn categories<I: IntoIterator<Item = S>, S: Into<String>>(categories: I) -> Self {
        EventFilter {
            categories: categories.into_iter().map(Into::into).collect(),
            event_types: Vec::new(),
        }
    }

    /// Only these event types.
    pub fn event_types<I: IntoIterator<Item = S>, S: Into<String>>(types: I) -> Self {
        EventFilter {
            categories: Vec::new(),
            event_types: types.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        (self.categories.is_empty() || self.categories.iter().any(|c| c == event.stream.category()))
            && (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
    }

    /// Checks the filter's size and category names.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.categories.len() > FILTER_ENTRIES_MAX || self.event_types.len() > FILTER_ENTRIES_MAX
        {
            return Err(StoreError::InvalidArgument(format!(
                "a filter may name at most {FILTER_ENTRIES_MAX} categories and {FILTER_ENTRIES_MAX} event types"
            )));
        }
        for c in &self.categories {
            crate::stream_name::validate_category(c)?;
        }
        Ok(())
    }
}

/// Checks a read limit.
pub fn validate_limit(limit: usize) -> Result<(), StoreError> {
    if limit == 0 || limit > READ_LIMIT_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "read limit {limit} is outside 1..={READ_LIMIT_MAX}"
        )));
    }
    Ok(())
}

/// A summary of one stream, as listed by [`EventStore::list_streams`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub stream: StreamName,
    /// The revision of the stream's last event (= its event count).
    pub revision: u64,
    /// The global position of the stream's last event.
    pub last_position: Position,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An append-only event store with optimistic concurrency.
///
/// Every backend passes the conformance suite in `runnel-testkit`. The contract:
///
/// * `append` checks the limits, then idempotency (an append whose event ids are all
///   already stored, in that order, in that stream returns the original result and writes
///   nothing), then `expected`; a mismatch is [`StoreError::Conflict`]. All events of one
///   append commit together, get consecutive revisions and increasing positions, and are
///   durable when `append` returns.
/// * Positions grow in commit order. `read_all` never returns an event while one at a lower
///   position can still appear, so a reader that resumes after the last position it saw
///   never skips an event.
///
/// ```
/// # async fn demo(store: std::sync::Arc<dyn runnel_core::EventStore>) -> Result<(), runnel_core::StoreError> {
/// use runnel_core::{ExpectedRevision, NewEvent, ReadStream, StreamName};
/// let stream = StreamName::new("Order-1")?;
/// let placed = NewEvent::json("OrderPlaced", &serde_json::json!({"total": 42}));
/// let r = store.append(&stream, ExpectedRevision::NoStream, vec![placed]).await?;
/// assert_eq!(r.next_expected_revision, 1);
/// let events = store.read_stream(&stream, ReadStream::forward(100)).await?;
/// assert_eq!(events[0].event_type, "OrderPlaced");
/// # Ok(()) }
/// ```
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if it is at `expected`.
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError>;

    /// Reads one stream. A missing stream reads as empty.
    async fn read_stream(
        &self,
        stream: &StreamName,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Reads `$all` forward: events at positions after `after` that pass `filter`, in
    /// position order, at most `limit`.
    async fn read_all(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Events of one type recorded at or after `since`, after position `after` (use
    /// `Position::START`, then the last position seen, to page), in position order.
    async fn read_by_type(
        &self,
        event_type: &str,
        since: DateTime<Utc>,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The stream's current revision (`None`: no such stream).
    async fn stream_revision(&self, stream: &StreamName) -> Result<Option<u64>, StoreError>;

    /// Streams in name order, after `after` (exclusive), optionally only one category.
    async fn list_streams(
        &self,
        category: Option<&str>,
        after: Option<&StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError>;

    /// The highest position a reader can see with the guarantee that nothing will later
    /// commit below it. `Position::START` for an empty store.
    async fn head_position(&self) -> Result<Position, StoreError>;

    /// Returns once the head may have moved past `after`, or after at most `max_wait`.
    /// Wakes promptly on appends through this handle; appends by other processes are seen
    /// at the latest on the backend's polling interval. Spurious returns are allowed.
    async fn wait_for_events(&self, after: Position, max_wait: Duration) -> Result<(), StoreError>;

    /// The limits this store enforces.
    fn limits(&self) -> &StoreLimits;

    /// Catch-up then live subscription to `$all`: every event after `after` that passes
    /// `filter`, in position order, no gaps, no duplicates. Resume from the last position
    /// you processed (see [`CheckpointStore`]).
    fn subscribe_all(self: Arc<Self>, after: Position, filter: EventFilter) -> EventStream {
        crate::subscription::subscribe_all(self, after, filter)
    }

    /// Catch-up then live subscription to one stream: every event after revision
    /// `after_revision` (0 = from the start), in order.
    fn subscribe_stream(self: Arc<Self>, stream: StreamName, after_revision: u64) -> EventStream {
        crate::subscription::subscribe_stream(self, stream, after_revision)
    }
}

/// A stored snapshot of an aggregate's state at a revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub stream: StreamName,
    /// The stream revision the state includes.
    pub revision: u64,
    /// The version of the state's schema; a snapshot of another version is ignored on load.
    pub schema_version: u32,
    /// The serialized state (JSON).
    pub data: Vec<u8>,
    pub taken_at: DateTime<Utc>,
}

/// Stores the latest snapshot per stream.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// Saves a snapshot unless one at a higher revision is already stored.
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError>;
    /// The latest snapshot of `stream`, if any.
    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, StoreError>;
    /// Removes the snapshot of `stream` (for example after a state schema change).
    async fn delete_snapshot(&self, stream: &StreamName) -> Result<(), StoreError>;
}

/// Longest checkpoint name, in bytes.
pub const CHECKPOINT_NAME_LEN_MAX: usize = 200;

/// Stores named positions: how far a subscriber, projection or relay has got.
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// The stored position for `name`, if any.
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>, StoreError>;
    /// Stores `position` for `name` (overwrites).
    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError>;
}

/// Checks a checkpoint name: 1..=200 bytes, printable, no whitespace.
pub fn validate_checkpoint_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty()
        || name.len() > CHECKPOINT_NAME_LEN_MAX
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(StoreError::InvalidArgument(format!(
            "checkpoint name {name:?} must be 1..={CHECKPOINT_NAME_LEN_MAX} bytes with no whitespace"
        )));
    }
    Ok(())
}
