//! Purging dead letters: delete those older than a cutoff, optionally filtered.

use std::time::Duration;

use chrono::{DateTime, Utc};
use runnel_core::dead_letter::{DeadLetterFilter, DeadLetterStore};

use super::error::DeadLetterError;

/// Metric: dead letters deleted by purges (counter).
pub const METRIC_PURGED: &str = "runnel_dead_letters_purged_total";

/// The cutoff for "older than `age`" at `now`.
pub fn cutoff_for_age(now: DateTime<Utc>, age: Duration) -> Result<DateTime<Utc>, DeadLetterError> {
    chrono::TimeDelta::from_std(age)
        .ok()
        .and_then(|age| now.checked_sub_signed(age))
        .ok_or_else(|| DeadLetterError::InvalidArgument(format!("age {age:?} is out of range")))
}

/// Deletes the dead letters matching `filter` that were dead-lettered before
/// `older_than`; returns how many. Replayed ones are deleted only if the filter includes
/// them (`include_replayed`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runnel::dead_letter::DeadLetterError> {
/// use std::time::Duration;
/// use runnel::core::dead_letter::DeadLetterFilter;
/// use runnel::dead_letter::{cutoff_for_age, purge};
/// let store = runnel_testkit::dead_letters::InMemoryDeadLetters::new();
/// let week = Duration::from_secs(7 * 24 * 3600);
/// let everything = DeadLetterFilter { include_replayed: true, ..Default::default() };
/// let deleted = purge(&store, &everything, cutoff_for_age(chrono::Utc::now(), week)?).await?;
/// assert_eq!(deleted, 0);
/// # Ok(()) }
/// ```
pub async fn purge(
    store: &dyn DeadLetterStore,
    filter: &DeadLetterFilter,
    older_than: DateTime<Utc>,
) -> Result<u64, DeadLetterError> {
    let deleted = store.purge(filter, older_than).await?;
    metrics::counter!(METRIC_PURGED).increment(deleted);
    tracing::info!(deleted, %older_than, ?filter, "dead letters purged");
    Ok(deleted)
}
