//! Dead letters: messages that failed for good, kept with their whole failure history so
//! people can inspect, replay or purge them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::message::{GroupName, Message, TopicName};

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
    async fn put(&self, dead_letter: NewDeadLetter) -> Result<DeadLetterId, StoreError>;
    /// Dead letters matching `filter`, by id, after `after`, at most `limit` (1..=10,000).
    async fn list(
        &self,
        filter: &DeadLetterFilter,
        after: Option<DeadLetterId>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError>;
    /// One dead letter.
    async fn get(&self, id: DeadLetterId) -> Result<Option<DeadLetter>, StoreError>;
    /// How many match `filter`.
    async fn count(&self, filter: &DeadLetterFilter) -> Result<u64, StoreError>;
    /// Records a replay (the message was published again).
    async fn mark_replayed(&self, id: DeadLetterId, at: DateTime<Utc>) -> Result<(), StoreError>;
    /// Deletes dead letters matching `filter` that were dead-lettered before `older_than`;
    /// returns how many.
    async fn purge(
        &self,
        filter: &DeadLetterFilter,
        older_than: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
}

/// Most dead letters one [`DeadLetterStore::list`] call may return.
pub const DEAD_LETTER_LIST_LIMIT_MAX: usize = 10_000;
/// Longest [`DeadLetterFilter::error_contains`] text, in bytes.
pub const ERROR_FILTER_LEN_MAX: usize = ERROR_TEXT_LEN_MAX;
/// The character that separates error texts in a backend's search column. A filter text
/// holding it is refused, so a match can never span two failures.
pub const ERROR_SEARCH_SEPARATOR: char = '\u{1e}';
/// Appended to an error text cut to [`ERROR_TEXT_LEN_MAX`], so readers know it was cut.
const TRUNCATED_MARK: &str = " …[truncated]";

/// Checks a [`DeadLetterStore::list`] limit (1..=[`DEAD_LETTER_LIST_LIMIT_MAX`]).
pub fn validate_list_limit(limit: usize) -> Result<(), StoreError> {
    if limit == 0 || limit > DEAD_LETTER_LIST_LIMIT_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "dead-letter list limit {limit} is outside 1..={DEAD_LETTER_LIST_LIMIT_MAX}"
        )));
    }
    Ok(())
}

/// Cuts `text` to at most [`ERROR_TEXT_LEN_MAX`] bytes on a character boundary, ending
/// with a visible mark when something was cut.
pub fn truncate_error_text(text: &str) -> String {
    if text.len() <= ERROR_TEXT_LEN_MAX {
        return text.to_string();
    }
    let mut end = ERROR_TEXT_LEN_MAX - TRUNCATED_MARK.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let out = format!("{}{TRUNCATED_MARK}", &text[..end]);
    debug_assert!(out.len() <= ERROR_TEXT_LEN_MAX);
    out
}

impl NewDeadLetter {
    /// Checks the dead letter and returns it as a store keeps it: at most
    /// [`FAILURES_KEPT_MAX`] failures (the earliest and the latest ones; the earliest is
    /// where the trouble began, the latest what it is now) with error texts cut to
    /// [`ERROR_TEXT_LEN_MAX`]. Every store calls this before writing, so all backends
    /// keep the same history.
    pub fn normalized(mut self) -> Result<NewDeadLetter, StoreError> {
        if self.failures.is_empty() {
            return Err(StoreError::InvalidArgument(format!(
                "dead letter for message {:?} has no failure; at least one is required",
                self.message.id.chars().take(64).collect::<String>()
            )));
        }
        if self.message.id.is_empty() {
            return Err(StoreError::InvalidMessage {
                id: String::new(),
                reason: "a dead-lettered message needs an id (replay republishes it)".into(),
            });
        }
        if self.failures.len() > FAILURES_KEPT_MAX {
            let excess = self.failures.len() - FAILURES_KEPT_MAX;
            // Keep the first failure and the latest FAILURES_KEPT_MAX - 1.
            self.failures.drain(1..1 + excess);
        }
        for f in &mut self.failures {
            if f.error.len() > ERROR_TEXT_LEN_MAX {
                f.error = truncate_error_text(&f.error);
            }
        }
        debug_assert!(!self.failures.is_empty() && self.failures.len() <= FAILURES_KEPT_MAX);
        Ok(self)
    }

    /// The earliest and the latest failure time.
    pub fn failure_span(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        failure_span(&self.failures)
    }
}

/// The earliest and the latest time among `failures`.
pub fn failure_span(failures: &[FailureRecord]) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let first = failures.iter().map(|f| f.at).min()?;
    let last = failures.iter().map(|f| f.at).max()?;
    Some((first, last))
}

impl DeadLetter {
    /// Whether it was never replayed (what the threshold monitor counts).
    pub fn is_pending(&self) -> bool {
        self.replay_count == 0
    }
}

impl DeadLetterFilter {
    /// Matches every pending dead letter.
    pub fn pending() -> Self {
        Self::default()
    }

    /// Checks the filter: the error text is bounded and holds no
    /// [`ERROR_SEARCH_SEPARATOR`].
    pub fn validate(&self) -> Result<(), StoreError> {
        if let Some(text) = &self.error_contains {
            if text.len() > ERROR_FILTER_LEN_MAX {
                return Err(StoreError::InvalidArgument(format!(
                    "the error filter is {} bytes; at most {ERROR_FILTER_LEN_MAX}",
                    text.len()
                )));
            }
            if text.contains(ERROR_SEARCH_SEPARATOR) {
                return Err(StoreError::InvalidArgument(
                    "the error filter may not contain the U+001E separator".into(),
                ));
            }
        }
        Ok(())
    }

    /// The error filter lower-cased, as stores compare it (`None` when absent or empty).
    pub fn error_needle(&self) -> Option<String> {
        self.error_contains
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(str::to_lowercase)
    }

    /// Whether `dead_letter` matches: the reference semantics every store implements.
    pub fn matches(&self, dead_letter: &DeadLetter) -> bool {
        self.topic.as_ref().is_none_or(|t| *t == dead_letter.topic)
            && self.group.as_ref().is_none_or(|g| *g == dead_letter.group)
            && self.error_needle().is_none_or(|needle| {
                dead_letter
                    .failures
                    .iter()
                    .any(|f| f.error.to_lowercase().contains(&needle))
            })
            && self.since.is_none_or(|t| dead_letter.dead_lettered_at >= t)
            && self.until.is_none_or(|t| dead_letter.dead_lettered_at < t)
            && (self.include_replayed || dead_letter.is_pending())
    }
}

/// The text a backend's error search column holds for `failures`: each error lower-cased,
/// joined by [`ERROR_SEARCH_SEPARATOR`]. Matching a lower-cased needle as a substring of
/// it is the same as [`DeadLetterFilter::matches`].
pub fn error_search_text(failures: &[FailureRecord]) -> String {
    let mut out = String::new();
    for (i, f) in failures.iter().enumerate() {
        if i > 0 {
            out.push(ERROR_SEARCH_SEPARATOR);
        }
        out.push_str(&f.error.to_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(attempt: u32, error: &str) -> FailureRecord {
        FailureRecord {
            attempt,
            at: DateTime::from_timestamp(1_700_000_000 + i64::from(attempt), 0).unwrap(),
            error: error.to_string(),
            permanent: false,
        }
    }

    fn new_dead_letter(failures: Vec<FailureRecord>) -> NewDeadLetter {
        NewDeadLetter {
            topic: TopicName::new("orders").unwrap(),
            group: GroupName::new("billing").unwrap(),
            message: Message::json("OrderPlaced", &serde_json::json!({})),
            failures,
        }
    }

    #[test]
    fn normalizing_keeps_the_earliest_and_the_latest_failures() {
        let failures = (1..=(FAILURES_KEPT_MAX as u32 + 50))
            .map(|a| failure(a, "boom"))
            .collect();
        let kept = new_dead_letter(failures).normalized().unwrap().failures;
        assert_eq!(kept.len(), FAILURES_KEPT_MAX);
        assert_eq!(kept[0].attempt, 1);
        assert_eq!(kept[1].attempt, 52);
        assert_eq!(kept.last().unwrap().attempt, FAILURES_KEPT_MAX as u32 + 50);
    }

    #[test]
    fn normalizing_cuts_long_errors_on_a_char_boundary() {
        let long = "é".repeat(ERROR_TEXT_LEN_MAX);
        let kept = new_dead_letter(vec![failure(1, &long)])
            .normalized()
            .unwrap();
        let cut = &kept.failures[0].error;
        assert!(cut.len() <= ERROR_TEXT_LEN_MAX);
        assert!(cut.starts_with("éé"));
        assert!(cut.ends_with("[truncated]"));
    }

    #[test]
    fn a_dead_letter_without_failures_is_refused() {
        assert!(matches!(
            new_dead_letter(vec![]).normalized(),
            Err(StoreError::InvalidArgument(_))
        ));
    }

    #[test]
    fn filter_matches_error_text_case_insensitively() {
        let stored = new_dead_letter(vec![failure(1, "Connection REFUSED by db")]);
        let (first, last) = stored.failure_span().unwrap();
        let dl = DeadLetter {
            id: DeadLetterId(1),
            topic: stored.topic,
            group: stored.group,
            message: stored.message,
            failures: stored.failures,
            first_failed_at: first,
            last_failed_at: last,
            dead_lettered_at: last,
            replay_count: 0,
            last_replayed_at: None,
        };
        let by_error = |t: &str| DeadLetterFilter {
            error_contains: Some(t.into()),
            ..Default::default()
        };
        assert!(by_error("connection refused").matches(&dl));
        assert!(!by_error("timeout").matches(&dl));
        assert!(by_error("").matches(&dl));
        assert!(by_error("a\u{1e}b").validate().is_err());
        let replayed = DeadLetter {
            replay_count: 1,
            ..dl.clone()
        };
        assert!(!DeadLetterFilter::pending().matches(&replayed));
        assert!(error_search_text(&dl.failures).contains("connection refused"));
    }
}
