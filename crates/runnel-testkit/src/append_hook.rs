//! An [`EventStore`] decorator whose appends go through a hook while every other call
//! passes straight through: the one place the pass-through is written, for wrappers that
//! watch or disturb appends (count conflicts, slip a rival write in, inject a failure).
//!
//! [`ConflictCounter`] is the ready-made hook that counts optimistic-concurrency
//! conflicts; write your own by implementing [`AppendHook`].
//!
//! ```
//! # #[tokio::main]
//! # async fn main() {
//! use std::sync::Arc;
//! use runnel_core::{EventStore, ExpectedRevision, NewEvent, StreamName};
//! use runnel_testkit::append_hook::{ConflictCounter, HookedAppends};
//! use runnel_testkit::InMemoryStore;
//!
//! let store = HookedAppends::new(Arc::new(InMemoryStore::new()), ConflictCounter::new());
//! let stream = StreamName::new("Order-1").unwrap();
//! let event = || NewEvent::json("OrderPlaced", &serde_json::json!({}));
//! store.append(&stream, ExpectedRevision::NoStream, vec![event()]).await.unwrap();
//! let stale = store.append(&stream, ExpectedRevision::NoStream, vec![event()]).await;
//! assert!(stale.is_err());
//! assert_eq!(store.hook().conflicts(), 1);
//! # }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runnel_core::chrono::{DateTime, Utc};
use runnel_core::{
    async_trait, AppendResult, EventFilter, EventStore, ExpectedRevision, NewEvent, Position,
    ReadStream, RecordedEvent, StoreError, StoreLimits, StreamInfo, StreamName,
};

/// What one append through a [`HookedAppends`] store does. The hook is handed the inner
/// store: it decides whether, when and how often to append to it, and what to report.
#[async_trait]
pub trait AppendHook: Send + Sync + 'static {
    /// Appends `events` to `stream` of `inner` (or not), returning what the caller sees.
    async fn append<S: EventStore + ?Sized>(
        &self,
        inner: &S,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError>;
}

/// An [`EventStore`] that sends appends through `hook` and every other call straight to
/// `inner`. Clones share the inner store (and the hook, as far as the hook's own `Clone`
/// shares its state).
pub struct HookedAppends<S: ?Sized, H> {
    inner: Arc<S>,
    hook: H,
}

impl<S: ?Sized, H> HookedAppends<S, H> {
    /// `inner`, with its appends going through `hook`.
    pub fn new(inner: Arc<S>, hook: H) -> Self {
        HookedAppends { inner, hook }
    }

    /// The decorated store: calls on it bypass the hook.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// The hook, to arm it or read what it saw.
    pub fn hook(&self) -> &H {
        &self.hook
    }
}

impl<S: ?Sized, H: Clone> Clone for HookedAppends<S, H> {
    fn clone(&self) -> Self {
        HookedAppends {
            inner: Arc::clone(&self.inner),
            hook: self.hook.clone(),
        }
    }
}

#[async_trait]
impl<S: EventStore + ?Sized, H: AppendHook> EventStore for HookedAppends<S, H> {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.hook
            .append(&*self.inner, stream, expected, events)
            .await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, options).await
    }

    async fn read_all(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, filter, limit).await
    }

    async fn read_by_type(
        &self,
        event_type: &str,
        since: DateTime<Utc>,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner
            .read_by_type(event_type, since, after, limit)
            .await
    }

    async fn stream_revision(&self, stream: &StreamName) -> Result<Option<u64>, StoreError> {
        self.inner.stream_revision(stream).await
    }

    async fn list_streams(
        &self,
        category: Option<&str>,
        after: Option<&StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        self.inner.list_streams(category, after, limit).await
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        self.inner.head_position().await
    }

    async fn wait_for_events(&self, after: Position, max_wait: Duration) -> Result<(), StoreError> {
        self.inner.wait_for_events(after, max_wait).await
    }

    fn limits(&self) -> &StoreLimits {
        self.inner.limits()
    }
}

/// An [`AppendHook`] that passes every append through and counts those that fail with
/// [`StoreError::Conflict`], e.g. to report how many conflicts a repository met (and
/// retried), whatever became of the command.
#[derive(Debug, Default)]
pub struct ConflictCounter {
    conflicts: AtomicU64,
}

impl ConflictCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Conflicts seen so far.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl AppendHook for ConflictCounter {
    async fn append<S: EventStore + ?Sized>(
        &self,
        inner: &S,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let result = inner.append(stream, expected, events).await;
        if matches!(result, Err(StoreError::Conflict { .. })) {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}
