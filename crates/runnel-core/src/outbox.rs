//! The transactional outbox and the claim-check blob store: storage-agnostic types and the
//! traits the SQLite and PostgreSQL backends implement, and the relay in `runnel` drives.
//!
//! An application enqueues [`OutboxMessage`]s in the same database transaction as its own
//! rows (the backends give it a unit of work or a transaction to do that in), so both
//! commit or neither does. A relay then [`claim`](OutboxStore::claim)s rows, publishes them
//! through any [`Publisher`](crate::bus::Publisher) and [`mark_published`](OutboxStore::mark_published)s
//! them; published rows are [`purge`](OutboxStore::purge_published)d after a retention.
//!
//! Per-key order: rows with the same ordering key form a queue. Only a key's earliest
//! unpublished row (its *head*) can be claimed, and a claim leases the head together with
//! the rows that follow it; the next rows of a key become claimable only once every
//! earlier one is marked published. Rows without a key are each their own head. A lease
//! that runs out (its relay died) makes the head claimable again by any relay.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::message::{BusError, Message, TopicName};

/// Most rows one claim may lease (also the most one publish call may carry).
pub const CLAIM_LIMIT_MAX: usize = crate::message::PUBLISH_BATCH_MAX;
/// Shortest lease a claim may take.
pub const LEASE_MIN: Duration = Duration::from_millis(100);
/// Longest lease a claim may take.
pub const LEASE_MAX: Duration = Duration::from_secs(3600);
/// Longest relay name, in bytes.
pub const RELAY_NAME_LEN_MAX: usize = 200;
/// Longest stored failure text, in bytes.
pub const OUTBOX_ERROR_LEN_MAX: usize = 4096;
/// Most messages one enqueue call may carry.
pub const ENQUEUE_MESSAGES_MAX: usize = 10_000;
/// Most rows one purge call deletes (keeps each delete transaction short).
pub const PURGE_BATCH_MAX: usize = 10_000;
/// Longest blob id, in bytes.
pub const BLOB_ID_LEN_MAX: usize = 256;
/// Largest blob, in bytes.
pub const BLOB_BYTES_MAX: usize = 256 * 1024 * 1024;

/// How the topic of a domain event's message is chosen.
///
/// ```
/// use runnel_core::outbox::TopicRouting;
/// let t = TopicRouting::AggregateEvent.topic("Order", "OrderPlaced").unwrap();
/// assert_eq!(t.as_str(), "Order.OrderPlaced");
/// let t = TopicRouting::Category.topic("Order", "OrderPlaced").unwrap();
/// assert_eq!(t.as_str(), "Order");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TopicRouting {
    /// `{aggregate_type}.{event_type}` (the default: one topic per event type).
    #[default]
    AggregateEvent,
    /// `{aggregate_type}`: one topic per category, consumers route on the event type.
    Category,
    /// Every message to one topic.
    Fixed(TopicName),
}

impl TopicRouting {
    /// The topic for an event of `event_type` of an aggregate of `aggregate_type`.
    pub fn topic(&self, aggregate_type: &str, event_type: &str) -> Result<TopicName, BusError> {
        match self {
            TopicRouting::AggregateEvent => {
                TopicName::new(format!("{aggregate_type}.{event_type}"))
            }
            TopicRouting::Category => TopicName::new(aggregate_type),
            TopicRouting::Fixed(t) => Ok(t.clone()),
        }
    }
}

/// A message waiting in the outbox: where it goes and what it is. The message carries its
/// id (the consumers' idempotency key), ordering key, headers and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxMessage {
    pub topic: TopicName,
    pub message: Message,
}

impl OutboxMessage {
    /// `message` for `topic`. The outbox row captures the trace context of the span that
    /// enqueues it (see [`crate::trace_context`]) unless the message carries its own.
    pub fn new(topic: TopicName, mut message: Message) -> Self {
        crate::trace_context::stamp_message(&mut message);
        OutboxMessage { topic, message }
    }

    /// A domain event's message for the aggregate `{aggregate_type}-{aggregate_id}`: the
    /// topic comes from `routing`, the ordering key and subject default to the aggregate's
    /// stream name (so one aggregate's messages stay in order). The trace context is
    /// captured as in [`OutboxMessage::new`].
    ///
    /// ```
    /// use runnel_core::outbox::{OutboxMessage, TopicRouting};
    /// use runnel_core::Message;
    /// let m = Message::json("OrderPlaced", &serde_json::json!({"total": 3}));
    /// let o = OutboxMessage::for_aggregate(&TopicRouting::default(), "Order", "7", m).unwrap();
    /// assert_eq!(o.topic.as_str(), "Order.OrderPlaced");
    /// assert_eq!(o.message.key.as_deref(), Some("Order-7"));
    /// ```
    pub fn for_aggregate(
        routing: &TopicRouting,
        aggregate_type: &str,
        aggregate_id: &str,
        mut message: Message,
    ) -> Result<Self, BusError> {
        let topic = routing.topic(aggregate_type, &message.event_type)?;
        let stream = format!("{aggregate_type}-{aggregate_id}");
        if message.key.is_none() {
            message.key = Some(stream.clone());
        }
        if message.subject.is_none() {
            message.subject = Some(stream);
        }
        crate::trace_context::stamp_message(&mut message);
        Ok(OutboxMessage { topic, message })
    }
}

/// Checks an enqueue: its size and every message (against `max_payload_bytes`; larger
/// payloads belong in a blob, see the claim check).
pub fn validate_enqueue(
    messages: &[OutboxMessage],
    max_payload_bytes: usize,
) -> Result<(), StoreError> {
    if messages.len() > ENQUEUE_MESSAGES_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "the enqueue holds {} messages; at most {ENQUEUE_MESSAGES_MAX} may be enqueued at once",
            messages.len()
        )));
    }
    for m in messages {
        m.message
            .validate(max_payload_bytes)
            .map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
    }
    Ok(())
}

/// A row of the outbox, as a relay claims it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Enqueue order (commit order is not promised across transactions; per-key order is
    /// enqueue order within a key).
    pub seq: u64,
    pub topic: TopicName,
    pub message: Message,
    pub created_at: DateTime<Utc>,
    /// Failed publish attempts so far.
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// What to do with rows whose publish failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureAction {
    /// Try again from this time on.
    RetryAt(DateTime<Utc>),
    /// Stop trying until an operator retries them (`runnel outbox retry`). The key's later
    /// rows wait behind them.
    Park,
}

/// Pending rows of one topic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicStatus {
    pub topic: String,
    /// Rows not yet published (parked ones included).
    pub pending: u64,
    /// Of those, the ones parked after repeated failures.
    pub parked: u64,
    /// When the oldest pending row was enqueued.
    pub oldest_pending: Option<DateTime<Utc>>,
}

/// The outbox's backlog.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStatus {
    pub pending: u64,
    pub parked: u64,
    pub oldest_pending: Option<DateTime<Utc>>,
    /// Published rows kept until the retention purge.
    pub published_retained: u64,
    /// Per topic, in name order.
    pub topics: Vec<TopicStatus>,
}

impl OutboxStatus {
    /// Age of the oldest pending row at `now` (zero when nothing is pending).
    pub fn oldest_pending_age(&self, now: DateTime<Utc>) -> Duration {
        self.oldest_pending
            .and_then(|t| (now - t).to_std().ok())
            .unwrap_or_default()
    }
}

/// Checks a claim's arguments.
pub fn validate_claim(relay: &str, lease: Duration, limit: usize) -> Result<(), StoreError> {
    if relay.is_empty() || relay.len() > RELAY_NAME_LEN_MAX || relay.chars().any(|c| c.is_control())
    {
        return Err(StoreError::InvalidArgument(format!(
            "relay name must be 1..={RELAY_NAME_LEN_MAX} bytes without control characters"
        )));
    }
    if !(LEASE_MIN..=LEASE_MAX).contains(&lease) {
        return Err(StoreError::InvalidArgument(format!(
            "lease must be {LEASE_MIN:?}..={LEASE_MAX:?}"
        )));
    }
    if limit == 0 || limit > CLAIM_LIMIT_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "claim limit must be 1..={CLAIM_LIMIT_MAX}"
        )));
    }
    Ok(())
}

/// `text` cut to at most [`OUTBOX_ERROR_LEN_MAX`] bytes on a character boundary.
pub fn error_text(text: &str) -> String {
    let mut end = text.len().min(OUTBOX_ERROR_LEN_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// The envelope of a message without its payload, as the backends store it beside the
/// payload column.
pub fn encode_envelope(message: &Message) -> Result<String, StoreError> {
    let envelope = Message {
        payload: Vec::new(),
        ..message.clone()
    };
    serde_json::to_string(&envelope)
        .map_err(|e| StoreError::Backend(format!("cannot encode message {}: {e}", message.id)))
}

/// The message back from its stored envelope and payload.
pub fn decode_envelope(envelope: &str, payload: Vec<u8>) -> Result<Message, StoreError> {
    let mut message: Message = serde_json::from_str(envelope)
        .map_err(|e| StoreError::Corrupt(format!("stored outbox envelope: {e}")))?;
    message.payload = payload;
    Ok(message)
}

/// The transactional outbox of one store. Object-safe; implemented by
/// `runnel_sqlite::SqliteOutbox` and `runnel_postgres::PostgresOutbox`, whose own
/// `enqueue_in` methods write inside the application's transaction.
///
/// ```
/// # async fn demo(outbox: std::sync::Arc<dyn runnel_core::outbox::OutboxStore>) -> Result<(), runnel_core::StoreError> {
/// use std::time::Duration;
/// let rows = outbox.claim("relay-1", Duration::from_secs(30), 100).await?;
/// // ... publish them, in order ...
/// let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
/// outbox.mark_published(&seqs).await?;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Enqueues `messages` in a transaction of its own (for writes that have no business
    /// rows; otherwise use the backend's `enqueue_in`).
    async fn enqueue(&self, messages: Vec<OutboxMessage>) -> Result<(), StoreError>;

    /// Claims up to `limit` rows for `relay`: heads of keys not leased by a live relay, not
    /// parked and due, each leased for `lease` and returned with the pending rows that
    /// follow it in its key (up to the limit), in `seq` order. The followers need no lease
    /// of their own: none of them can be claimed before every earlier row of its key is
    /// marked. So a relay records a round's failures before it marks the round's published
    /// rows (a failed follower becomes a head once the rows before it are marked).
    async fn claim(
        &self,
        relay: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError>;

    /// Marks rows published (the publisher confirmed them). Idempotent; rows are marked
    /// even if their lease ran out meanwhile (they were published).
    async fn mark_published(&self, seqs: &[u64]) -> Result<(), StoreError>;

    /// Marks `published` (as [`mark_published`](Self::mark_published)), then claims (as
    /// [`claim`](Self::claim)): what a relay does between two rounds that follow each
    /// other at once. A backend may do both in one commit; the marks always come first, so
    /// the claim sees the keys they unblock. On an error the marks may or may not have been
    /// made (marking is idempotent: mark them again).
    async fn mark_published_and_claim(
        &self,
        published: &[u64],
        relay: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        self.mark_published(published).await?;
        self.claim(relay, lease, limit).await
    }

    /// Records a failed publish of rows: their attempts grow, the error is kept, the lease
    /// is released and `action` says when they may be claimed again.
    async fn record_failure(
        &self,
        seqs: &[u64],
        error: &str,
        action: FailureAction,
    ) -> Result<(), StoreError>;

    /// Releases every lease `relay` holds (graceful shutdown). Returns how many rows.
    async fn release(&self, relay: &str) -> Result<u64, StoreError>;

    /// Deletes up to `limit` rows published before `before`. Returns how many.
    async fn purge_published(&self, before: DateTime<Utc>, limit: usize)
        -> Result<u64, StoreError>;

    /// The backlog: pending, parked, oldest pending, per topic.
    async fn status(&self) -> Result<OutboxStatus, StoreError>;

    /// Makes parked rows (of `topic`, or all) claimable again with their attempts reset.
    /// Returns how many.
    async fn retry_parked(&self, topic: Option<&TopicName>) -> Result<u64, StoreError>;

    /// Returns once new rows may have been enqueued, or after at most `max_wait`.
    /// Spurious returns are allowed; callers poll as well.
    async fn wait_for_messages(&self, max_wait: Duration) -> Result<(), StoreError>;
}

/// Large payloads stored out of line (the claim check): a message carries a blob's id
/// instead of its payload.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `data` under `id`. Idempotent: storing the same id again keeps the first.
    async fn put_blob(&self, id: &str, content_type: &str, data: Vec<u8>)
        -> Result<(), StoreError>;
    /// The blob's bytes, or `None` if there is no such blob (never stored or purged).
    async fn get_blob(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Deletes up to `limit` blobs stored before `before`. Returns how many.
    async fn purge_blobs(&self, before: DateTime<Utc>, limit: usize) -> Result<u64, StoreError>;
}

/// Checks a blob id and size.
pub fn validate_blob(id: &str, size_bytes: usize) -> Result<(), StoreError> {
    if id.is_empty() || id.len() > BLOB_ID_LEN_MAX || id.chars().any(|c| c.is_control()) {
        return Err(StoreError::InvalidArgument(format!(
            "blob id must be 1..={BLOB_ID_LEN_MAX} bytes without control characters"
        )));
    }
    if size_bytes > BLOB_BYTES_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "blob of {size_bytes} bytes is over the {BLOB_BYTES_MAX}-byte limit"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_without_the_payload() {
        let m = Message::json("OrderPlaced", &serde_json::json!({"a": 1})).with_key("Order-1");
        let env = encode_envelope(&m).unwrap();
        assert_eq!(decode_envelope(&env, m.payload.clone()).unwrap(), m);
    }

    #[test]
    fn claims_and_blobs_are_checked() {
        assert!(validate_claim("r", Duration::from_secs(1), 10).is_ok());
        assert!(validate_claim("", Duration::from_secs(1), 10).is_err());
        assert!(validate_claim("r", Duration::from_millis(1), 10).is_err());
        assert!(validate_claim("r", Duration::from_secs(1), 0).is_err());
        assert!(validate_claim("r", Duration::from_secs(1), CLAIM_LIMIT_MAX + 1).is_err());
        assert!(validate_blob("b", 10).is_ok());
        assert!(validate_blob("", 10).is_err());
        assert!(validate_blob("b", BLOB_BYTES_MAX + 1).is_err());
    }

    #[test]
    fn error_text_is_bounded() {
        let long = "é".repeat(OUTBOX_ERROR_LEN_MAX);
        let cut = error_text(&long);
        assert!(cut.len() <= OUTBOX_ERROR_LEN_MAX);
    }
}
