//! Bus topics as a job's source: each message is appended once to the event store, where
//! the job reads it like any other event.
//!
//! A message carries no place in a total order a job could checkpoint, and a broker's
//! redelivery would otherwise count it twice. [`TopicIngest`] turns a topic into streams:
//! each message becomes an event of the stream `{category}-{key}` (its ordering key, or
//! subject) whose id is derived from the topic and the message id, so a redelivered
//! message is recognised by the store and appended once. The message's time
//! (CloudEvents `time`) travels in the header [`TIME_HEADER`]; a source made with
//! [`JobBuilder::topic_events`](super::JobBuilder::topic_events) uses it as event time.

use chrono::{DateTime, Utc};

use runnel_core::{EventId, ExpectedRevision, NewEvent, RecordedEvent, StoreError, StreamName};

use crate::consumer::{Handler, HandlerContext, HandlerError};
use std::sync::Arc;

/// The event header holding an ingested message's time (RFC 3339).
pub const TIME_HEADER: &str = "runnel-message-time";

/// A consumer handler that appends each message to the event store, once (see the
/// module's documentation). Register it on a consumer of the topic
/// (`App::consumer(topic, group, |c| c.handler(TopicIngest::new(...)))`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use runnel::consumer::{Handler, HandlerContext};
/// use runnel::core::{EventFilter, Message, Position, TopicName, GroupName};
/// use runnel::connect::{open_stores, OpenMode, StoreUrl};
/// use runnel::stream::TopicIngest;
///
/// let dir = tempfile::tempdir()?;
/// let stores = open_stores(&StoreUrl::sqlite(dir.path().join("app.db")), OpenMode::default()).await?;
/// let ingest = TopicIngest::new(stores.events.clone(), "Clicks")?;
/// let message = Message::json("Clicked", &serde_json::json!({"page": "home"})).with_key("home");
/// let ctx = HandlerContext::detached(message, TopicName::new("clicks")?, GroupName::new("ingest")?);
/// ingest.handle(ctx.clone()).await.unwrap();
/// ingest.handle(ctx).await.unwrap(); // a redelivery: recognised, not appended again
/// let events = stores.events.read_all(Position::START, &EventFilter::categories(["Clicks"]), 10).await?;
/// assert_eq!(events.len(), 1);
/// assert_eq!(events[0].stream.as_str(), "Clicks-home");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TopicIngest {
    events: Arc<dyn runnel_core::EventStore>,
    category: String,
}

impl TopicIngest {
    /// Appends to streams of `category` in `events`.
    pub fn new(
        events: Arc<dyn runnel_core::EventStore>,
        category: impl Into<String>,
    ) -> Result<Self, StoreError> {
        let category = category.into();
        runnel_core::stream_name::validate_category(&category)?;
        Ok(TopicIngest { events, category })
    }

    fn event_id(topic: &str, message_id: &str) -> EventId {
        EventId::from(uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("runnel-ingest/{topic}/{message_id}").as_bytes(),
        ))
    }
}

#[async_trait::async_trait]
impl Handler for TopicIngest {
    async fn handle(&self, ctx: HandlerContext) -> Result<(), HandlerError> {
        let m = ctx.message();
        let key = m.key.as_deref().or(m.subject.as_deref()).unwrap_or("");
        let stream = StreamName::new(format!(
            "{}-{}",
            self.category,
            super::runner::stream_id(key)
        ))
        .map_err(|e| HandlerError::permanent(e.to_string()))?;
        let mut event = NewEvent::bytes(
            m.event_type.clone(),
            m.content_type.clone(),
            m.payload.clone(),
        )
        .with_id(Self::event_id(ctx.topic().as_str(), &m.id));
        event.metadata.correlation_id = m.correlation_id.clone();
        event.metadata.causation_id = Some(m.id.clone());
        event.metadata.traceparent = m.traceparent.clone();
        event.metadata.tracestate = m.tracestate.clone();
        if let Some(t) = m.time {
            event
                .metadata
                .headers
                .insert(TIME_HEADER.into(), t.to_rfc3339());
        }
        match self
            .events
            .append(&stream, ExpectedRevision::Any, vec![event])
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::DuplicateEventId { .. }) => Ok(()),
            Err(e) => Err(HandlerError::retryable(e.to_string())),
        }
    }
}

/// An ingested message's time: its [`TIME_HEADER`], or when it was appended.
pub fn message_time(e: &RecordedEvent) -> DateTime<Utc> {
    e.metadata
        .headers
        .get(TIME_HEADER)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(e.recorded_at, |t| t.with_timezone(&Utc))
}
