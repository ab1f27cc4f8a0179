//! The [`Repository`]: loads aggregates and runs their commands against an event store.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use runnel_core::codec;
use runnel_core::{
    AppendResult, Clock, CodecError, EventStore, ExpectedRevision, Metadata, NewEvent, Position,
    ReadStream, RecordedEvent, Snapshot, SnapshotStore, StoreError, StreamName, SystemClock,
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

/// Commands of one aggregate one group commit runs at most (with the state cache).
pub const GROUP_COMMANDS_MAX: usize = 64;

/// Events one group commit appends at most (with the state cache), unless a single
/// command produces more: the commands after the limit go in the next commit. Keep the
/// store's `StoreLimits::max_events_per_append` (1,000 by default) at or above this.
pub const GROUP_EVENTS_MAX: usize = 256;

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
///   is run again on a fresh load first. Commands on one aggregate in this process never
///   race each other into conflicts: they queue, and whoever runs next runs every waiting
///   command (up to [`GROUP_COMMANDS_MAX`] commands and [`GROUP_EVENTS_MAX`] events), each
///   on the state the one before left, and appends all their events in **one commit**
///   (a group commit), so a hot aggregate commits many commands per round trip. The
///   commit is all or nothing, with the exact expected revision; other processes are
///   still caught by it, and a conflict runs the whole group again. Each command's events
///   keep its own metadata; its outcome's `position` is that of the commit's last event.
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
        match &self.cache {
            Some(cache) => self.execute_grouped(cache, stream, envelope).await,
            None => self.execute_alone(stream, envelope).await,
        }
    }

    /// Without the state cache: load, handle, append; reload on a conflict.
    async fn execute_alone(
        &self,
        stream: StreamName,
        envelope: CommandEnvelope<A::Command>,
    ) -> Result<ExecuteOutcome<A::Event>, RepositoryError<A::Error>>
    where
        A::Command: Clone,
    {
        let metadata = envelope.event_metadata();
        let attempts_max = self.retry.attempts();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let Loaded {
                mut state,
                revision,
            } = self.load_current(&stream).await?;
            let events = state
                .handle(envelope.command.clone())
                .map_err(RepositoryError::Domain)?;
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
                    attempts: attempt,
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
                    return Ok(ExecuteOutcome {
                        stream,
                        revision: Some(appended.next_expected_revision),
                        position: Some(appended.position),
                        events,
                        attempts: attempt,
                    });
                }
                Err(conflict @ StoreError::Conflict { .. }) => {
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

    /// With the state cache: the command joins its aggregate's lane; whoever holds the
    /// lane's lock runs every waiting command in one group commit ([`Self::run_group`]).
    /// The group runs in a task of its own, so a caller that goes away (a cancelled
    /// request) never leaves the other commands of its group without an answer.
    async fn execute_grouped(
        &self,
        cache: &StateCache<A>,
        stream: StreamName,
        envelope: CommandEnvelope<A::Command>,
    ) -> Result<ExecuteOutcome<A::Event>, RepositoryError<A::Error>>
    where
        A::Command: Clone,
    {
        let (answer, mut answered) = tokio::sync::oneshot::channel();
        let lane = cache.lane(&stream);
        lane.push(Box::new(Pending::<A> {
            metadata: envelope.event_metadata(),
            // The caller's span is the parent of its events' trace context, whichever
            // command's task runs the group.
            span: crate::trace::append_span(stream.as_str()),
            envelope,
            answer,
        }));
        loop {
            tokio::select! {
                biased;
                result = &mut answered => {
                    return result.unwrap_or_else(|_| {
                        panic!("the group commit running this command on {stream} panicked (in the aggregate's handle or apply?)")
                    });
                }
                held = lane.lock() => {
                    // The group before may have run this command: then its answer is here.
                    if let Ok(result) = answered.try_recv() {
                        return result;
                    }
                    let group: Vec<Pending<A>> = lane
                        .take(GROUP_COMMANDS_MAX)
                        .into_iter()
                        .map(|p| *p.downcast::<Pending<A>>().expect("a lane holds its repository's commands"))
                        .collect();
                    if group.is_empty() {
                        continue;
                    }
                    let repository = self.clone();
                    let stream = stream.clone();
                    tokio::spawn(
                        async move {
                            repository.run_group(&stream, group).await;
                            drop(held);
                        }
                        .instrument(tracing::Span::current()),
                    );
                }
            }
        }
    }

    /// Runs `group` (commands on one aggregate, in arrival order) on the aggregate's
    /// state, each on the state the one before left, and appends their events in one
    /// commit with the state's revision as the exact expectation; then answers each. A
    /// refusal or an empty result counts only once the state it was judged on is known
    /// to be the stored one: after the group's append succeeded, or on a fresh load.
    /// Commands whose events would pass [`GROUP_EVENTS_MAX`] go in the next commit.
    async fn run_group(&self, stream: &StreamName, group: Vec<Pending<A>>)
    where
        A::Command: Clone,
    {
        let cache = self
            .cache
            .as_ref()
            .expect("groups run only with the state cache");
        let attempts_max = self.retry.attempts();
        let mut pending: VecDeque<Pending<A>> = group.into();
        let mut attempt: u32 = 0;
        let mut from_cache = cache.get(stream);
        while !pending.is_empty() {
            // A try on cached state is a guess the store checks; when the guess was stale
            // it is not counted against the retry policy (the uncached path would not have
            // made it).
            let unverified = from_cache.is_some();
            let tried = attempt + 1;
            let Loaded { state, revision } = match from_cache.take() {
                Some((revision, state)) => Loaded {
                    state,
                    revision: Some(revision),
                },
                None => {
                    attempt += 1;
                    match self.load_current(stream).await {
                        Ok(loaded) => loaded,
                        Err(e) => return answer_all(pending, &e),
                    }
                }
            };
            let commit = decide(state, revision, &pending);
            if commit.events.is_empty() {
                if unverified {
                    // Only an answer from a fresh load is final.
                    continue;
                }
                for (p, decision) in pending
                    .drain(..commit.decisions.len())
                    .zip(commit.decisions)
                {
                    p.answer(stream, decision, None, tried);
                }
                from_cache = cache.get(stream);
                attempt = 0;
                continue;
            }
            let expected = ExpectedRevision::from_current(revision);
            match self
                .append_retrying_transient(stream, expected, commit.events)
                .await
            {
                Ok(appended) => {
                    debug_assert_eq!(
                        Some(appended.next_expected_revision),
                        commit.revision,
                        "an append with an exact expectation must land right after it"
                    );
                    let state = commit.state;
                    if self
                        .snapshot_policy
                        .should_snapshot(revision, appended.next_expected_revision)
                    {
                        self.save_snapshot(stream, appended.next_expected_revision, &state)
                            .await;
                    }
                    cache.put(stream, appended.next_expected_revision, state);
                    for (p, decision) in pending
                        .drain(..commit.decisions.len())
                        .zip(commit.decisions)
                    {
                        p.answer(stream, decision, Some(appended.position), tried);
                    }
                    from_cache = cache.get(stream);
                    attempt = 0;
                }
                Err(conflict @ StoreError::Conflict { .. }) => {
                    self.forget_if_ahead(stream, revision, &conflict);
                    if unverified {
                        tracing::debug!(
                            stream = %stream,
                            commands = commit.decisions.len(),
                            error = %conflict,
                            "the cached state was stale; loading and handling the commands again"
                        );
                        continue;
                    }
                    if attempt >= attempts_max {
                        let exhausted = RepositoryError::ConflictRetriesExhausted {
                            attempts: attempt,
                            last: conflict,
                        };
                        return answer_all(pending, &exhausted);
                    }
                    tracing::debug!(
                        stream = %stream,
                        commands = commit.decisions.len(),
                        attempt,
                        error = %conflict,
                        "concurrency conflict; reloading and handling the commands again"
                    );
                    self.backoff(attempt).await;
                }
                Err(e) => return answer_all(pending, &RepositoryError::Store(e)),
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

    /// Folds the events after `revision` into `state`, page by page. While one full page
    /// is decoded and applied, the next is already being read (a task of its own, so the
    /// store's read runs beside the decoding on another core): a long stream loads in
    /// about the time of the slower of the two instead of their sum. At most two pages
    /// ([`LOAD_PAGE_EVENTS`] events each) are held at once.
    async fn fold(
        &self,
        stream: &StreamName,
        mut state: A,
        mut revision: Option<u64>,
    ) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        let mut page = self.read_page(stream, revision.unwrap_or(0) + 1).await?;
        loop {
            let page_len = page.len();
            // A full page: the stream may go on, so its next page is read meanwhile.
            let next = (page_len == LOAD_PAGE_EVENTS).then(|| {
                let last = page.last().map_or(0, |e| e.revision);
                let (events, retry, stream) =
                    (Arc::clone(&self.events), self.retry, stream.clone());
                AbortOnDrop(tokio::spawn(async move {
                    read_page(&*events, retry, &stream, last + 1).await
                }))
            });
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
            let Some(mut next) = next else {
                return Ok(Loaded { state, revision });
            };
            drop(page);
            page = match (&mut next.0).await {
                Ok(read) => read?,
                Err(e) => {
                    return Err(RepositoryError::Store(StoreError::Backend(format!(
                        "reading the next page of {stream}: {e}"
                    ))))
                }
            };
        }
    }

    /// One page of the stream from revision `from`, payloads only (the store may skip
    /// each event's metadata), retried on transient errors.
    async fn read_page(
        &self,
        stream: &StreamName,
        from: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        read_page(&*self.events, self.retry, stream, from).await
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
    async fn with_transient_retry<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        retry_transient(self.retry, op).await
    }

    async fn backoff(&self, attempt: u32) {
        let delay = self.retry.delay_for_attempt(attempt);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// A command waiting in its aggregate's lane for a group commit.
struct Pending<A: Aggregate> {
    envelope: CommandEnvelope<A::Command>,
    /// The metadata its events get.
    metadata: Metadata,
    /// Its caller's `runnel.append` span: its events' trace context.
    span: tracing::Span,
    answer: tokio::sync::oneshot::Sender<Executed<A>>,
}

/// What [`Repository::execute`] returns for an aggregate of type `A`.
type Executed<A> =
    Result<ExecuteOutcome<<A as Aggregate>::Event>, RepositoryError<<A as Aggregate>::Error>>;

/// What one command of a group came to, on the state the commands before it left.
enum Decision<A: Aggregate> {
    /// Its events, and the stream's revision after them.
    Appended {
        events: Vec<A::Event>,
        revision: u64,
    },
    /// No events; the stream's revision when it was handled.
    Nothing { revision: Option<u64> },
    /// The aggregate refused it.
    Refused(A::Error),
    /// Its events cannot be encoded (no store call would change that).
    Failed(RepositoryError<A::Error>),
}

/// One commit of a group: the first `decisions.len()` waiting commands, their events,
/// and the state and revision after them.
struct Commit<A: Aggregate> {
    state: A,
    revision: Option<u64>,
    events: Vec<NewEvent>,
    decisions: Vec<Decision<A>>,
}

/// Handles the waiting commands in order on `state` (at `revision`), each on the state
/// the one before left, until [`GROUP_EVENTS_MAX`] events.
fn decide<A: Aggregate>(
    mut state: A,
    mut revision: Option<u64>,
    pending: &VecDeque<Pending<A>>,
) -> Commit<A>
where
    A::Command: Clone,
{
    let mut events: Vec<NewEvent> = Vec::new();
    let mut decisions = Vec::with_capacity(pending.len());
    for p in pending {
        let decision = match state.handle(p.envelope.command.clone()) {
            Err(e) => Decision::Refused(e),
            Ok(produced) if produced.is_empty() => Decision::Nothing { revision },
            Ok(produced) => {
                let encoded = produced
                    .iter()
                    .map(|e| {
                        let mut event = codec::encode(e, p.metadata.clone())?;
                        crate::trace::stamp_metadata(&p.span, &mut event.metadata);
                        Ok(event)
                    })
                    .collect::<Result<Vec<NewEvent>, CodecError>>();
                match encoded {
                    Err(e) => Decision::Failed(RepositoryError::Codec(e)),
                    Ok(encoded) => {
                        if !events.is_empty() && events.len() + encoded.len() > GROUP_EVENTS_MAX {
                            break;
                        }
                        for event in &produced {
                            state.apply(event);
                        }
                        let after = revision.unwrap_or(0) + produced.len() as u64;
                        revision = Some(after);
                        events.extend(encoded);
                        Decision::Appended {
                            events: produced,
                            revision: after,
                        }
                    }
                }
            }
        };
        decisions.push(decision);
    }
    Commit {
        state,
        revision,
        events,
        decisions,
    }
}

impl<A: Aggregate> Pending<A> {
    /// Answers the command's caller: `position` is the commit's (for appended events).
    fn answer(
        self,
        stream: &StreamName,
        decision: Decision<A>,
        position: Option<Position>,
        attempts: u32,
    ) {
        let result = match decision {
            Decision::Appended { events, revision } => Ok(ExecuteOutcome {
                stream: stream.clone(),
                revision: Some(revision),
                position,
                events,
                attempts,
            }),
            Decision::Nothing { revision } => {
                tracing::debug!(
                    stream = %stream,
                    command_id = %self.envelope.command_id,
                    "the command produced no events; nothing appended"
                );
                Ok(ExecuteOutcome {
                    stream: stream.clone(),
                    revision,
                    position: None,
                    events: Vec::new(),
                    attempts,
                })
            }
            Decision::Refused(e) => Err(RepositoryError::Domain(e)),
            Decision::Failed(e) => Err(e),
        };
        // A caller that went away gets nothing; its command ran all the same.
        let _ = self.answer.send(result);
    }
}

/// Answers every waiting command with the same failure (of the store, never a domain
/// error: those belong to one command).
fn answer_all<A: Aggregate>(pending: VecDeque<Pending<A>>, error: &RepositoryError<A::Error>) {
    for p in pending {
        let copy = match error {
            RepositoryError::Store(e) => RepositoryError::Store(e.clone()),
            RepositoryError::Codec(e) => RepositoryError::Codec(e.clone()),
            RepositoryError::ConflictRetriesExhausted { attempts, last } => {
                RepositoryError::ConflictRetriesExhausted {
                    attempts: *attempts,
                    last: last.clone(),
                }
            }
            RepositoryError::Domain(_) => {
                unreachable!("a domain error belongs to one command, never to a group")
            }
        };
        let _ = p.answer.send(Err(copy));
    }
}

/// One page of `stream` from revision `from` for a load: [`LOAD_PAGE_EVENTS`] events,
/// payloads only, retried on transient errors as the repository's other reads are.
async fn read_page(
    events: &dyn EventStore,
    retry: RetryPolicy,
    stream: &StreamName,
    from: u64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let options = ReadStream::forward(LOAD_PAGE_EVENTS)
        .from(from)
        .without_metadata();
    retry_transient(retry, || events.read_stream(stream, options)).await
}

/// Runs `op` again after a backoff while it fails with a transient error, up to the
/// policy's attempts.
async fn retry_transient<T, F, Fut>(retry: RetryPolicy, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let attempts_max = retry.attempts();
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        match op().await {
            Err(e) if e.is_transient() && attempt < attempts_max => {
                tracing::debug!(attempt, error = %e, "transient store error; retrying");
                let delay = retry.delay_for_attempt(attempt);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            result => return result,
        }
    }
}

/// A prefetch task that is stopped when the load that started it ends early (an error).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
