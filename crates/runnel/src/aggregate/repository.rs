//! The [`Repository`]: loads aggregates and runs their commands against an event store.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use runnel_core::codec;
use runnel_core::{
    AppendResult, Clock, EventStore, ExpectedRevision, NewEvent, ReadStream, RecordedEvent,
    Snapshot, SnapshotStore, StoreError, StreamName, SystemClock,
};

use super::error::RepositoryError;
use super::outcome::{ExecuteOutcome, Loaded};
use super::snapshot_policy::SnapshotPolicy;
use super::state_cache::StateCache;
use super::Aggregate;
use crate::command::CommandEnvelope;
use crate::retry::RetryPolicy;
use crate::upcast::Upcasters;
use tracing::Instrument;

/// Events read per call while loading an aggregate. Loading holds only the state and one
/// page in memory, whatever the stream's length.
pub const LOAD_PAGE_EVENTS: usize = 1000;

/// Loads aggregates of type `A` and runs commands on them.
///
/// * **Load**: the latest snapshot (if a snapshot store is set and the snapshot's version
///   is [`Aggregate::SNAPSHOT_VERSION`]), then every later event, upcast by the
///   [`Upcasters`] and decoded. An unreadable or outdated snapshot is ignored (logged), never
///   an error: the events are the truth.
/// * **Execute**: load, `handle`, append with the revision that was loaded as the
///   expectation. A concurrency conflict reloads and handles the command again, up to the
///   [`RetryPolicy`]; a transient store error retries the *same* append with the *same*
///   event ids, which the store deduplicates, so an append that did land before the error
///   is never written twice.
/// * **Metadata**: every event gets [`runnel_core::Metadata::caused_by`] the command envelope:
///   correlation kept (or started from the command id), causation = the command id, user
///   and trace context carried.
/// * **Snapshots**: after an append that crosses a multiple of the [`SnapshotPolicy`]'s
///   interval. A failed snapshot is logged, never an error: the events are stored.
///
/// * **State cache** (optional, [`Repository::with_state_cache`]): the latest state of
///   recently used aggregates. A command first runs on the cached state with no read at
///   all and is appended with the cached revision as the exact expectation; if anything
///   was appended since (by this process or any other), the store refuses that append, the
///   command is run again on a fresh load (which reads only the events after the cached
///   revision), and that stale try is not counted against the [`RetryPolicy`]. A domain
///   error or an empty result from the cached state is never returned as is: the command
///   is run again on a fresh load first. Commands on one aggregate in this process take
///   turns (each runs on the state the one before left) rather than racing each other
///   into conflicts; other processes are still caught by the expected revision.
///
/// Backoff waits use tokio's timer, so tests can run them on paused (virtual) time.
///
/// Cloning is cheap (everything is behind `Arc`).
pub struct Repository<A> {
    events: Arc<dyn EventStore>,
    snapshots: Option<Arc<dyn SnapshotStore>>,
    upcasters: Arc<Upcasters>,
    snapshot_policy: SnapshotPolicy,
    retry: RetryPolicy,
    clock: Arc<dyn Clock>,
    cache: Option<Arc<StateCache<A>>>,
    // `fn() -> A`: the repository neither owns nor shares an `A`, so it is Send + Sync
    // whatever `A` is.
    _aggregate: PhantomData<fn() -> A>,
}

impl<A> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Repository {
            events: Arc::clone(&self.events),
            snapshots: self.snapshots.clone(),
            upcasters: Arc::clone(&self.upcasters),
            snapshot_policy: self.snapshot_policy,
            retry: self.retry,
            clock: Arc::clone(&self.clock),
            cache: self.cache.clone(),
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::TYPE)
            .field("snapshots", &self.snapshots.is_some())
            .field("snapshot_policy", &self.snapshot_policy)
            .field("retry", &self.retry)
            .field("upcasters", &self.upcasters)
            .field("state_cache", &self.cache.as_ref().map(|c| c.len()))
            .finish()
    }
}

impl<A: Aggregate> Repository<A> {
    /// A repository over `events`, with no snapshots, no upcasters and the default
    /// [`RetryPolicy`].
    pub fn new(events: Arc<dyn EventStore>) -> Self {
        Repository {
            events,
            snapshots: None,
            upcasters: Arc::new(Upcasters::new()),
            snapshot_policy: SnapshotPolicy::Never,
            retry: RetryPolicy::default(),
            clock: Arc::new(SystemClock),
            cache: None,
            _aggregate: PhantomData,
        }
    }

    /// Uses `store` to load and save snapshots. Snapshots are only taken if a
    /// [`SnapshotPolicy`] is set too ([`Repository::with_snapshot_every`]).
    pub fn with_snapshot_store(mut self, store: Arc<dyn SnapshotStore>) -> Self {
        self.snapshots = Some(store);
        self
    }

    /// Takes a snapshot whenever the stream's revision crosses a multiple of `n` (`0`:
    /// never). Needs a snapshot store.
    pub fn with_snapshot_every(mut self, n: u64) -> Self {
        self.snapshot_policy = SnapshotPolicy::every(n);
        self
    }

    /// Sets the snapshot policy.
    pub fn with_snapshot_policy(mut self, policy: SnapshotPolicy) -> Self {
        self.snapshot_policy = policy;
        self
    }

    /// Upcasts stored events with `upcasters` before decoding them.
    pub fn with_upcasters(mut self, upcasters: Arc<Upcasters>) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Sets the retry policy for conflicts and transient store errors.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Stamps snapshots with `clock`'s time (the system clock by default).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Keeps the latest state of up to `capacity` aggregates (the oldest entry goes first)
    /// so that commands skip the replay: see the type's documentation. Clones of this
    /// repository share the cache; it is in this process's memory only, and stays correct
    /// when other processes append (every use is checked against the store).
    pub fn with_state_cache(mut self, capacity: usize) -> Self
    where
        A: Clone,
    {
        self.cache = Some(Arc::new(StateCache::new(capacity, A::clone)));
        self
    }

    /// The event store.
    pub fn event_store(&self) -> &Arc<dyn EventStore> {
        &self.events
    }

    /// The snapshot store, if any.
    pub fn snapshot_store(&self) -> Option<&Arc<dyn SnapshotStore>> {
        self.snapshots.as_ref()
    }

    /// The upcasters applied on load.
    pub fn upcasters(&self) -> &Arc<Upcasters> {
        &self.upcasters
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The snapshot policy.
    pub fn snapshot_policy(&self) -> SnapshotPolicy {
        self.snapshot_policy
    }

    /// The stream of the aggregate with id `id`: `{A::TYPE}-{id}`. An id with characters
    /// a stream name cannot hold is [`StoreError::InvalidStreamName`].
    pub fn stream_name(id: &str) -> Result<StreamName, StoreError> {
        StreamName::from_parts(A::TYPE, id)
    }

    /// The current state of the aggregate with id `id`. A missing aggregate loads as
    /// `A::default()` with revision `None`.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        let stream = Self::stream_name(id)?;
        self.load_current(&stream).await
    }

    /// Runs `envelope`'s command on the aggregate with id `id` and stores the events it
    /// produces. See the type's documentation for the retry and metadata rules.
    pub async fn execute(
        &self,
        id: &str,
        envelope: CommandEnvelope<A::Command>,
    ) -> Result<ExecuteOutcome<A::Event>, RepositoryError<A::Error>>
    where
        A::Command: Clone,
    {
        let stream = Self::stream_name(id)?;
        let metadata = envelope.event_metadata();
        let attempts_max = self.retry.attempts();
        let mut attempt: u32 = 0;
        // With the cache, commands on one aggregate in this process take turns instead of
        // conflicting with each other.
        let _turn = match &self.cache {
            Some(cache) => Some(cache.turn(&stream).await),
            None => None,
        };
        // The first try runs on the cached state, if there is one, without reading.
        let mut from_cache = self.cache.as_ref().and_then(|c| c.get(&stream));
        loop {
            // A try on cached state is a guess the store checks; when the guess was stale
            // it is not counted against the retry policy (the uncached path would not have
            // made it).
            let unverified = from_cache.is_some();
            let tried = attempt + 1;
            let Loaded {
                mut state,
                revision,
            } = match from_cache.take() {
                Some((revision, state)) => Loaded {
                    state,
                    revision: Some(revision),
                },
                None => {
                    attempt += 1;
                    self.load_current(&stream).await?
                }
            };
            let events = match state.handle(envelope.command.clone()) {
                // Only an answer from a fresh load is final.
                Err(_) if unverified => continue,
                Ok(events) if events.is_empty() && unverified => continue,
                result => result.map_err(RepositoryError::Domain)?,
            };
            if events.is_empty() {
                tracing::debug!(
                    stream = %stream,
                    command_id = %envelope.command_id,
                    "the command produced no events; nothing appended"
                );
                return Ok(ExecuteOutcome {
                    stream,
                    revision,
                    position: None,
                    events,
                    attempts: tried,
                });
            }
            let new_events = events
                .iter()
                .map(|e| codec::encode(e, metadata.clone()))
                .collect::<Result<Vec<NewEvent>, _>>()?;
            let expected = ExpectedRevision::from_current(revision);
            match self
                .append_retrying_transient(&stream, expected, new_events)
                .await
            {
                Ok(appended) => {
                    debug_assert_eq!(
                        appended.next_expected_revision,
                        revision.unwrap_or(0) + events.len() as u64,
                        "an append with an exact expectation must land right after it"
                    );
                    for event in &events {
                        state.apply(event);
                    }
                    if self
                        .snapshot_policy
                        .should_snapshot(revision, appended.next_expected_revision)
                    {
                        self.save_snapshot(&stream, appended.next_expected_revision, &state)
                            .await;
                    }
                    if let Some(cache) = &self.cache {
                        cache.put(&stream, appended.next_expected_revision, state);
                    }
                    return Ok(ExecuteOutcome {
                        stream,
                        revision: Some(appended.next_expected_revision),
                        position: Some(appended.position),
                        events,
                        attempts: tried,
                    });
                }
                Err(conflict @ StoreError::Conflict { .. }) => {
                    self.forget_if_ahead(&stream, revision, &conflict);
                    if unverified {
                        tracing::debug!(
                            stream = %stream,
                            command_id = %envelope.command_id,
                            error = %conflict,
                            "the cached state was stale; loading and handling the command again"
                        );
                        continue;
                    }
                    if attempt >= attempts_max {
                        return Err(RepositoryError::ConflictRetriesExhausted {
                            attempts: attempt,
                            last: conflict,
                        });
                    }
                    tracing::debug!(
                        stream = %stream,
                        command_id = %envelope.command_id,
                        attempt,
                        error = %conflict,
                        "concurrency conflict; reloading and handling the command again"
                    );
                    self.backoff(attempt).await;
                }
                Err(e) => return Err(RepositoryError::Store(e)),
            }
        }
    }

    /// The current state of `stream`: from the cached state plus the events after it when
    /// the cache holds the stream, else from the snapshot and events. Updates the cache.
    async fn load_current(
        &self,
        stream: &StreamName,
    ) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        let Some(cache) = &self.cache else {
            return self.load_stream(stream).await;
        };
        let loaded = match cache.get(stream) {
            Some((revision, state)) => self.fold(stream, state, Some(revision)).await?,
            None => self.load_stream(stream).await?,
        };
        if let Some(revision) = loaded.revision {
            cache.put(stream, revision, (cache.clone_of())(&loaded.state));
        }
        Ok(loaded)
    }

    /// Drops the cached state of `stream` if a conflict shows the stream is behind the
    /// revision the command ran at (a store restored from an older backup, say): folding
    /// on from it could never catch up.
    fn forget_if_ahead(&self, stream: &StreamName, revision: Option<u64>, conflict: &StoreError) {
        let (Some(cache), StoreError::Conflict { actual, .. }) = (&self.cache, conflict) else {
            return;
        };
        if actual.unwrap_or(0) < revision.unwrap_or(0) {
            cache.remove(stream);
        }
    }

    /// Loads snapshot + later events of `stream`.
    async fn load_stream(
        &self,
        stream: &StreamName,
    ) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        if let Some((state, snapshot_revision)) = self.load_snapshot(stream).await {
            let loaded = self.fold(stream, state, Some(snapshot_revision)).await?;
            if loaded.revision != Some(snapshot_revision) {
                return Ok(loaded);
            }
            // Nothing follows the snapshot. Make sure the stream really reaches it: a
            // snapshot ahead of its stream (events restored from an older backup, say)
            // would make every append conflict forever.
            let actual = self
                .with_transient_retry(|| self.events.stream_revision(stream))
                .await?;
            if actual.is_some_and(|actual| actual >= snapshot_revision) {
                return Ok(loaded);
            }
            tracing::warn!(
                stream = %stream,
                snapshot_revision,
                ?actual,
                "ignoring snapshot ahead of its stream; replaying all events"
            );
        }
        self.fold(stream, A::default(), None).await
    }

    /// Folds the events after `revision` into `state`, page by page.
    async fn fold(
        &self,
        stream: &StreamName,
        mut state: A,
        mut revision: Option<u64>,
    ) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        loop {
            let from = revision.unwrap_or(0) + 1;
            let options = ReadStream::forward(LOAD_PAGE_EVENTS).from(from);
            let page = self
                .with_transient_retry(|| self.events.read_stream(stream, options))
                .await?;
            let page_len = page.len();
            for recorded in &page {
                // Revisions are contiguous from 1; anything else means the store broke
                // its contract, and folding on would silently build a wrong state.
                let expected_revision = revision.unwrap_or(0) + 1;
                if recorded.revision != expected_revision {
                    return Err(RepositoryError::Store(StoreError::Corrupt(format!(
                        "stream {stream} returned revision {} where {expected_revision} was expected",
                        recorded.revision
                    ))));
                }
                let event = self.decode(recorded)?;
                state.apply(&event);
                revision = Some(recorded.revision);
            }
            if page_len < LOAD_PAGE_EVENTS {
                return Ok(Loaded { state, revision });
            }
        }
    }

    fn decode(&self, recorded: &RecordedEvent) -> Result<A::Event, RepositoryError<A::Error>> {
        Ok(self.upcasters.decode::<A::Event>(recorded)?)
    }

    /// The snapshot's state and revision, if there is a usable one.
    async fn load_snapshot(&self, stream: &StreamName) -> Option<(A, u64)> {
        let store = self.snapshots.as_ref()?;
        let snapshot = match store.load_snapshot(stream).await {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(e) => {
                // The events alone are enough to load; a snapshot is only a shortcut.
                tracing::warn!(stream = %stream, error = %e, "cannot load snapshot; replaying all events");
                return None;
            }
        };
        if snapshot.schema_version != A::SNAPSHOT_VERSION {
            tracing::debug!(
                stream = %stream,
                found = snapshot.schema_version,
                expected = A::SNAPSHOT_VERSION,
                "ignoring snapshot of another state version"
            );
            return None;
        }
        if snapshot.revision == 0 {
            tracing::warn!(stream = %stream, "ignoring snapshot at revision 0");
            return None;
        }
        match serde_json::from_slice::<A>(&snapshot.data) {
            Ok(state) => Some((state, snapshot.revision)),
            Err(e) => {
                tracing::warn!(
                    stream = %stream,
                    error = %e,
                    "ignoring snapshot that does not decode; bump SNAPSHOT_VERSION when the state's shape changes"
                );
                None
            }
        }
    }

    async fn save_snapshot(&self, stream: &StreamName, revision: u64, state: &A) {
        let Some(store) = &self.snapshots else {
            return;
        };
        let data = match serde_json::to_vec(state) {
            Ok(data) => data,
            Err(e) => {
                tracing::warn!(stream = %stream, error = %e, "cannot serialize the state for a snapshot");
                return;
            }
        };
        let snapshot = Snapshot {
            stream: stream.clone(),
            revision,
            schema_version: A::SNAPSHOT_VERSION,
            data,
            taken_at: self.clock.now(),
        };
        match store.save_snapshot(snapshot).await {
            Ok(()) => tracing::debug!(stream = %stream, revision, "snapshot saved"),
            Err(e) => tracing::warn!(
                stream = %stream,
                revision,
                error = %e,
                "cannot save snapshot; loads replay more events until the next one"
            ),
        }
    }

    /// Appends, retrying transient errors with the very same events (same ids), which the
    /// store treats as one idempotent append.
    /// The append runs in a `runnel.append` span whose trace context each event's
    /// metadata gets, unless the command's caller set one (see [`crate::trace`]).
    async fn append_retrying_transient(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        mut events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let span = crate::trace::append_span(stream.as_str());
        for e in &mut events {
            crate::trace::stamp_metadata(&span, &mut e.metadata);
        }
        self.with_transient_retry(|| self.events.append(stream, expected, events.clone()))
            .instrument(span)
            .await
    }

    /// Runs `op`, retrying by the policy while it fails with a transient store error.
    async fn with_transient_retry<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let attempts_max = self.retry.attempts();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            match op().await {
                Err(e) if e.is_transient() && attempt < attempts_max => {
                    tracing::debug!(attempt, error = %e, "transient store error; retrying");
                    self.backoff(attempt).await;
                }
                result => return result,
            }
        }
    }

    async fn backoff(&self, attempt: u32) {
        let delay = self.retry.delay_for_attempt(attempt);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}
