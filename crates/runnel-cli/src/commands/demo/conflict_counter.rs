//! An [`EventStore`] decorator that counts optimistic-concurrency conflicts, so the demo
//! can report how many the repository met (and retried), whatever became of the command.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runnel::async_trait;
use runnel::core::chrono::{DateTime, Utc};
use runnel::core::{
    AppendResult, EventFilter, EventStore, ExpectedRevision, NewEvent, Position, ReadStream,
    RecordedEvent, StoreError, StoreLimits, StreamInfo, StreamName,
};

/// Passes every call through to `inner`, counting appends that fail with a conflict.
pub struct ConflictCounter {
    inner: Arc<dyn EventStore>,
    conflicts: AtomicU64,
}

impl ConflictCounter {
    pub fn new(inner: Arc<dyn EventStore>) -> Self {
        ConflictCounter {
            inner,
            conflicts: AtomicU64::new(0),
        }
    }

    /// Conflicts seen so far.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl EventStore for ConflictCounter {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let result = self.inner.append(stream, expected, events).await;
        if matches!(result, Err(StoreError::Conflict { .. })) {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        result
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
