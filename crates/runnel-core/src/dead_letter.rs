//! Dead letters: messages that failed for good, kept with their whole failure history so
//! people can inspect, replay or purge them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::message::{BusError, GroupName, Message, TopicName};

/// Most failures kept per dead letter (the earliest and the latest are always kept).
pub const FAILURES_KEPT_MAX: usize = 100;
/// Longest error text kept per failure, in bytes.
pub const ERROR_TEXT_LEN_MAX: usize = 4096;

/// One failed attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub error: String,
    /// Whether the error was classified permanent (dead-lettered without further retries).
    pub permanent: bool,
}

/// What the router hands to [`DeadLetterStore::put`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDeadLetter {
    pub topic: TopicName,
    pub group: GroupName,
    pub message: Message,
    /// Every failure, oldest first (at least one).
    pub failures: Vec<FailureRecord>,
}

/// The id of a stored dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeadLetterId(pub u64);

impl std::fmt::Display for DeadLetterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A stored dead letter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: DeadLetterId,
    pub topic: TopicName,
    pub group: GroupName,
    pub message: Message,
    pub failures: Vec<FailureRecord>,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    pub dead_lettered_at: DateTime<Utc>,
    /// How often it was replayed.
    pub replay_count: u32,
    pub last_replayed_at: Option<DateTime<Utc>>,
}

/// Which dead letters to list, count, replay or purge. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterFilter {
    pub topic: Option<TopicName>,
    pub group: Option<GroupName>,
    /// Only those with a failure whose text contains this (case-insensitive).
    pub error_contains: Option<String>,
    /// Dead-lettered at or after.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    pub until: Option<DateTime<Utc>>,
    /// Include dead letters that were already replayed (default: only pending ones).
    pub include_replayed: bool,
}

/// Stores dead letters. Implemented on SQLite and PostgreSQL; every transport's dead
/// letters land in the one store.
#[async_trait]
pub trait DeadLetterStore: Send + Sync + 'static {
    /// Stores a dead letter; returns its id.
    async fn put(&self, dead_letter: NewDeadLetter) -> Result<DeadLetterId, BusError>;
    /// Dead letters matching `filter`, by id, after `after`, at most `limit` (1..=10,000).
    async fn list(
        &self,
        filter: &DeadLetterFilter,
        after: Option<DeadLetterId>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError>;
    /// One dead letter.
    async fn get(&self, id: DeadLetterId) -> Result<Option<DeadLetter>, BusError>;
    /// How many match `filter`.
    async fn count(&self, filter: &DeadLetterFilter) -> Result<u64, BusError>;
    /// Records a replay (the message was published again).
    async fn mark_replayed(&self, id: DeadLetterId, at: DateTime<Utc>) -> Result<(), BusError>;
    /// Deletes dead letters matching `filter` that were dead-lettered before `older_than`;
    /// returns how many.
    async fn purge(
        &self,
        filter: &DeadLetterFilter,
        older_than: DateTime<Utc>,
    ) -> Result<u64, BusError>;
}

/// What a claim on an idempotency key found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DedupClaim {
    /// Nobody handled this key yet: the caller holds the lock (with this token) and must
    /// `complete` or `release` it.
    Acquired { token: String },
    /// Already handled within the window: here is the cached result.
    Completed { result: Vec<u8> },
    /// Someone else is handling it right now.
    InProgress,
}

/// A dedup window for handlers with external side effects (an email, a card charge):
/// lock a key, cache the result for a TTL, let concurrent duplicates wait for it.
#[async_trait]
pub trait DedupStore: Send + Sync + 'static {
    /// Claims `key` for `lock_ttl` (after which a crashed holder's lock expires).
    async fn claim(&self, key: &str, lock_ttl: std::time::Duration)
        -> Result<DedupClaim, BusError>;
    /// Stores the result for `ttl` and releases the lock held with `token`.
    async fn complete(
        &self,
        key: &str,
        token: &str,
        result: Vec<u8>,
        ttl: std::time::Duration,
    ) -> Result<(), BusError>;
    /// Releases the lock without a result (the handler failed; a retry may claim again).
    async fn release(&self, key: &str, token: &str) -> Result<(), BusError>;
}
