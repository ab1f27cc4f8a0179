//! [`InMemoryDeadLetters`]: the [`DeadLetterStore`] on a map in memory, for unit tests of
//! dead-letter tooling and of the consumer router. It passes the same conformance suite as
//! the SQLite and PostgreSQL stores.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use runnel_core::chrono::{DateTime, Utc};
use runnel_core::dead_letter::{
    validate_list_limit, DeadLetter, DeadLetterFilter, DeadLetterId, DeadLetterStore, NewDeadLetter,
};
use runnel_core::{async_trait, Clock, StoreError, SystemClock};

/// Dead letters in memory. Clones share the same data.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use runnel_core::dead_letter::{DeadLetterFilter, DeadLetterStore, FailureRecord, NewDeadLetter};
/// use runnel_core::{GroupName, Message, TopicName};
/// use runnel_testkit::dead_letters::InMemoryDeadLetters;
///
/// let dead_letters = InMemoryDeadLetters::new();
/// dead_letters
///     .put(NewDeadLetter {
///         topic: TopicName::new("orders")?,
///         group: GroupName::new("billing")?,
///         message: Message::json("OrderPlaced", &serde_json::json!({})),
///         failures: vec![FailureRecord {
///             attempt: 1,
///             at: runnel_core::chrono::Utc::now(),
///             error: "boom".into(),
///             permanent: true,
///         }],
///     })
///     .await?;
/// assert_eq!(dead_letters.count(&DeadLetterFilter::pending()).await?, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct InMemoryDeadLetters {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    last_id: u64,
    /// By id, so iteration is in id order (what `list` pages by).
    letters: BTreeMap<u64, DeadLetter>,
}

impl InMemoryDeadLetters {
    /// An empty store stamping `dead_lettered_at` from the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store stamping `dead_lettered_at` from `clock` (a virtual clock in tests).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        InMemoryDeadLetters {
            inner: Arc::new(Inner {
                clock,
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        // A poisoned lock means a panic mid-update: report it rather than read it.
        self.inner
            .state
            .lock()
            .map_err(|_| StoreError::Backend("in-memory dead letters poisoned by a panic".into()))
    }
}

impl Default for InMemoryDeadLetters {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for InMemoryDeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryDeadLetters")
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl DeadLetterStore for InMemoryDeadLetters {
    async fn put(&self, dead_letter: NewDeadLetter) -> Result<DeadLetterId, StoreError> {
        let dead_letter = dead_letter.normalized()?;
        let (first_failed_at, last_failed_at) = dead_letter
            .failure_span()
            .ok_or_else(|| StoreError::InvalidArgument("a dead letter needs a failure".into()))?;
        let now = self.inner.clock.now();
        let mut state = self.state()?;
        state.last_id += 1;
        let id = state.last_id;
        state.letters.insert(
            id,
            DeadLetter {
                id: DeadLetterId(id),
                topic: dead_letter.topic,
                group: dead_letter.group,
                message: dead_letter.message,
                failures: dead_letter.failures,
                first_failed_at,
                last_failed_at,
                dead_lettered_at: now,
                replay_count: 0,
                last_replayed_at: None,
            },
        );
        Ok(DeadLetterId(id))
    }

    async fn list(
        &self,
        filter: &DeadLetterFilter,
        after: Option<DeadLetterId>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        validate_list_limit(limit)?;
        filter.validate()?;
        let start = after.map_or(0, |a| a.0.saturating_add(1));
        Ok(self
            .state()?
            .letters
            .range(start..)
            .map(|(_, d)| d)
            .filter(|d| filter.matches(d))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn get(&self, id: DeadLetterId) -> Result<Option<DeadLetter>, StoreError> {
        Ok(self.state()?.letters.get(&id.0).cloned())
    }

    async fn count(&self, filter: &DeadLetterFilter) -> Result<u64, StoreError> {
        filter.validate()?;
        Ok(self
            .state()?
            .letters
            .values()
            .filter(|d| filter.matches(d))
            .count() as u64)
    }

    async fn mark_replayed(&self, id: DeadLetterId, at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut state = self.state()?;
        let letter = state.letters.get_mut(&id.0).ok_or_else(|| {
            StoreError::InvalidArgument(format!("dead letter {id} does not exist (purged?)"))
        })?;
        letter.replay_count = letter.replay_count.saturating_add(1);
        letter.last_replayed_at = Some(at);
        Ok(())
    }

    async fn purge(
        &self,
        filter: &DeadLetterFilter,
        older_than: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        filter.validate()?;
        let mut state = self.state()?;
        let before = state.letters.len();
        state
            .letters
            .retain(|_, d| !(d.dead_lettered_at < older_than && filter.matches(d)));
        Ok((before - state.letters.len()) as u64)
    }
}
