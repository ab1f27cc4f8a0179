//! The store and bus as the application sees them, measured: every append and every
//! publish through a connected [`Stores`](super::Stores) or [`Bus`](super::Bus) is counted
//! and timed through the `metrics` facade.
//!
//! - [`METRIC_APPENDED_EVENTS`] (counter, by `result`: `ok`, `conflict`, `error`) and
//!   [`METRIC_APPEND_DURATION`] (histogram, seconds, by `result`).
//! - [`METRIC_SENT_MESSAGES`] (counter, by `messaging_destination_name` = the topic and
//!   `result`) and [`METRIC_SEND_DURATION`] (histogram, seconds). Names follow the
//!   OpenTelemetry messaging conventions (`messaging.client.sent.messages`,
//!   `messaging.client.operation.duration`); no label carries an id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::bus::Publisher;
use runnel_core::store::{EventFilter, ReadStream, StreamInfo};
use runnel_core::{
    AppendResult, BusError, EventStore, ExpectedRevision, Message, NewEvent, Position,
    RecordedEvent, StoreError, StoreLimits, StreamName, TopicName,
};

/// Events appended, by `result`.
pub const METRIC_APPENDED_EVENTS: &str = "runnel_store_appended_events_total";
/// Duration of one append call, by `result`.
pub const METRIC_APPEND_DURATION: &str = "runnel_store_append_duration_seconds";
/// Messages published, by topic and `result`.
pub const METRIC_SENT_MESSAGES: &str = "messaging_client_sent_messages_total";
/// Duration of one publish call, by topic and `result`.
pub const METRIC_SEND_DURATION: &str = "messaging_client_operation_duration_seconds";

fn elapsed(start: Instant) -> f64 {
    Duration::as_secs_f64(&start.elapsed())
}

/// An event store whose appends are counted and timed.
pub(crate) struct MeteredEventStore {
    pub(crate) inner: Arc<dyn EventStore>,
}

#[async_trait]
impl EventStore for MeteredEventStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let count = events.len() as u64;
        let start = Instant::now();
        let result = self.inner.append(stream, expected, events).await;
        let label = match &result {
            Ok(_) => "ok",
            Err(e) if e.is_conflict() => "conflict",
            Err(_) => "error",
        };
        metrics::histogram!(METRIC_APPEND_DURATION, "result" => label).record(elapsed(start));
        metrics::counter!(METRIC_APPENDED_EVENTS, "result" => label).increment(count);
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

/// A publisher whose publishes are counted and timed.
pub(crate) struct MeteredPublisher {
    pub(crate) inner: Arc<dyn Publisher>,
}

#[async_trait]
impl Publisher for MeteredPublisher {
    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        let count = messages.len() as u64;
        let start = Instant::now();
        let result = self.inner.publish(topic, messages).await;
        let label = if result.is_ok() { "ok" } else { "error" };
        let topic = topic.to_string();
        metrics::histogram!(
            METRIC_SEND_DURATION,
            "messaging_destination_name" => topic.clone(),
            "result" => label
        )
        .record(elapsed(start));
        metrics::counter!(
            METRIC_SENT_MESSAGES,
            "messaging_destination_name" => topic,
            "result" => label
        )
        .increment(count);
        result
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.inner.ping().await
    }
}
