//! Listing and inspecting dead letters: one-line summaries for tables and `--json`, the
//! full record for `show`, and paging through every match with a bounded page size.

use chrono::{DateTime, Utc};
use runnel_core::dead_letter::{DeadLetter, DeadLetterFilter, DeadLetterId, DeadLetterStore};
use runnel_core::{GroupName, TopicName};
use serde::Serialize;

use super::error::DeadLetterError;

/// Longest error text a summary shows, in characters (the full text is in `show`).
pub const SUMMARY_ERROR_CHARS_MAX: usize = 160;
/// Dead letters fetched per page by [`for_each_page`] and the replayer.
pub const PAGE_SIZE_DEFAULT: usize = 500;

/// One line's worth of a dead letter: what a list shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetterSummary {
    pub id: DeadLetterId,
    pub topic: TopicName,
    pub group: GroupName,
    pub message_id: String,
    pub event_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The attempt number of the last failure (how often it was tried in all).
    pub attempts: u32,
    /// The first line of the last error, cut to [`SUMMARY_ERROR_CHARS_MAX`] characters.
    pub last_error: String,
    /// Whether the last failure was classified permanent.
    pub permanent: bool,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    pub dead_lettered_at: DateTime<Utc>,
    pub replay_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_replayed_at: Option<DateTime<Utc>>,
}

impl From<&DeadLetter> for DeadLetterSummary {
    fn from(d: &DeadLetter) -> Self {
        let last = d.failures.last();
        DeadLetterSummary {
            id: d.id,
            topic: d.topic.clone(),
            group: d.group.clone(),
            message_id: d.message.id.clone(),
            event_type: d.message.event_type.clone(),
            key: d.message.ordering_key().map(str::to_string),
            attempts: last.map_or(0, |f| f.attempt),
            last_error: last.map_or_else(String::new, |f| one_line(&f.error)),
            permanent: last.is_some_and(|f| f.permanent),
            first_failed_at: d.first_failed_at,
            last_failed_at: d.last_failed_at,
            dead_lettered_at: d.dead_lettered_at,
            replay_count: d.replay_count,
            last_replayed_at: d.last_replayed_at,
        }
    }
}

/// The first line of `text`, cut to [`SUMMARY_ERROR_CHARS_MAX`] characters with `…`.
fn one_line(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    let mut out: String = first.chars().take(SUMMARY_ERROR_CHARS_MAX).collect();
    if first.chars().count() > SUMMARY_ERROR_CHARS_MAX || text.lines().nth(1).is_some() {
        out.push('…');
    }
    out
}

/// One dead letter with its whole history, or [`DeadLetterError::NotFound`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use runnel::dead_letter::{show, DeadLetterError};
/// use runnel::core::dead_letter::DeadLetterId;
/// let store = runnel_testkit::dead_letters::InMemoryDeadLetters::new();
/// assert!(matches!(show(&store, DeadLetterId(7)).await, Err(DeadLetterError::NotFound(_))));
/// # }
/// ```
pub async fn show(
    store: &dyn DeadLetterStore,
    id: DeadLetterId,
) -> Result<DeadLetter, DeadLetterError> {
    store.get(id).await?.ok_or(DeadLetterError::NotFound(id))
}

/// Calls `visit` with every page of dead letters matching `filter`, in id order, `page_size`
/// (1..=10,000) at a time, until `visit` returns `false` or nothing is left. Memory stays
/// bounded by one page however many dead letters match.
pub async fn for_each_page<F>(
    store: &dyn DeadLetterStore,
    filter: &DeadLetterFilter,
    page_size: usize,
    mut visit: F,
) -> Result<(), DeadLetterError>
where
    F: FnMut(Vec<DeadLetter>) -> bool + Send,
{
    let mut after = None;
    loop {
        let page = store.list(filter, after, page_size).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(last.id);
        let full = page.len() == page_size;
        if !visit(page) || !full {
            return Ok(());
        }
    }
}
