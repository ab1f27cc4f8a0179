//! The projection runner: catch-up then live, in batches, under a lease, with the error
//! policy; and the helpers that read a projection's lag and wait for a position.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Mutex;

use runnel_core::dead_letter::{DeadLetterStore, FailureRecord, NewDeadLetter};
use runnel_core::projection::{
    partition_of, Batch, BatchOutcome, ProjectionState, ProjectionStatus, ProjectionStore,
    VersionRole, VersionSpec,
};
use runnel_core::{EventStore, GroupName, Message, Position, RecordedEvent, StoreError, TopicName};

use super::{Projection, ProjectionError, Writes};
use crate::app::Shutdown;
use crate::retry::RetryPolicy;

/// Default most events per batch (one transaction).
pub const BATCH_EVENTS_DEFAULT: usize = 500;
/// Default longest a live batch waits to fill before it commits.
pub const BATCH_TIME_DEFAULT: Duration = Duration::from_millis(20);
/// Metric: events applied, by projection.
pub const METRIC_APPLIED: &str = "runnel_projection_events_applied_total";
/// Metric: events behind the head of `$all`, by projection and partition.
pub const METRIC_LAG_EVENTS: &str = "runnel_projection_lag_events";
/// Metric: age of the oldest event not applied yet, in seconds.
pub const METRIC_LAG_SECONDS: &str = "runnel_projection_lag_seconds";
/// Metric: events parked as dead letters, by projection.
pub const METRIC_PARKED: &str = "runnel_projection_parked_total";
/// The topic parked events are dead-lettered under (the group is the projection's name).
pub const PARKED_TOPIC: &str = "projections";

/// What happens to an event that still fails after the retries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// The projection stops (`faulted`, with the event and the error) until an operator
    /// retries or skips the event.
    #[default]
    Pause,
    /// The event is stored as a dead letter (topic `projections`, group = the projection's
    /// name) and the projection goes on.
    Park,
}

/// How a runner runs.
#[derive(Clone, Debug)]
pub struct RunnerOptions {
    /// Most events per transaction ([`BATCH_EVENTS_DEFAULT`]).
    pub batch_events: usize,
    /// Longest a live batch waits to fill ([`BATCH_TIME_DEFAULT`]).
    pub batch_time: Duration,
    /// The lease on each partition: another process takes over this long after a killed
    /// holder's last batch.
    pub lease: Duration,
    /// Longest wait for new events before looking again (other processes' appends).
    pub poll: Duration,
    /// Retries of a failing event.
    pub retry: RetryPolicy,
    /// What a failing event does after the retries.
    pub on_failure: OnFailure,
    /// This process's name in leases (default: pid and a random suffix).
    pub owner: Option<String>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            batch_events: BATCH_EVENTS_DEFAULT,
            batch_time: BATCH_TIME_DEFAULT,
            lease: Duration::from_secs(5),
            poll: Duration::from_millis(250),
            retry: RetryPolicy {
                max_attempts: 5,
                base_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(5),
            },
            on_failure: OnFailure::Pause,
            owner: None,
        }
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Made progress: applied this many events (0: only moved the checkpoint, or will
    /// retry a failing event).
    Applied(usize),
    /// Nothing new: caught up.
    CaughtUp,
    /// Another process holds the lease, or the partition is paused, faulted or retired.
    Idle,
}

/// Runs one projection version: registers it, then applies `$all` to it.
pub struct ProjectionRunner {
    projection: Arc<dyn Projection>,
    store: Arc<dyn ProjectionStore>,
    events: Arc<dyn EventStore>,
    dead_letters: Option<Arc<dyn DeadLetterStore>>,
    options: RunnerOptions,
    owner: String,
    /// Attempts of the event each (generation, partition) is failing on: (position, attempts).
    failing: Mutex<HashMap<(u32, u32), (Position, u32)>>,
    /// Per (generation, partition), the state its last batch left and when that batch
    /// committed, kept only while it is catching up; the next batch starts from it without
    /// claiming the lease again (see [`ProjectionRunner::held_state`]).
    held: Mutex<HashMap<(u32, u32), (ProjectionState, Instant)>>,
}

fn store_err(e: StoreError) -> ProjectionError {
    ProjectionError::Failed(format!("store: {e}"))
}

impl ProjectionRunner {
    /// A runner of `projection` on `store` (its state and read model) reading `events`.
    pub fn new(
        projection: Arc<dyn Projection>,
        store: Arc<dyn ProjectionStore>,
        events: Arc<dyn EventStore>,
        options: RunnerOptions,
    ) -> Self {
        let owner = options.owner.clone().unwrap_or_else(|| {
            let s = uuid::Uuid::now_v7().simple().to_string();
            format!("{}-{}", std::process::id(), &s[s.len() - 8..])
        });
        ProjectionRunner {
            projection,
            store,
            events,
            dead_letters: None,
            options,
            owner,
            failing: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Where parked events go ([`OnFailure::Park`]); without it, parking pauses instead.
    pub fn with_dead_letters(mut self, store: Arc<dyn DeadLetterStore>) -> Self {
        self.dead_letters = Some(store);
        self
    }

    /// The projection.
    pub fn projection(&self) -> &Arc<dyn Projection> {
        &self.projection
    }

    /// Registers the projection's version (its tables and state rows); idempotent. A name
    /// that a topic projection uses is refused.
    pub async fn register(&self) -> Result<VersionRole, StoreError> {
        let p = &self.projection;
        if let Some(source) = self.store.topic_sources(Some(p.name())).await?.first() {
            return Err(StoreError::InvalidArgument(format!(
                "projection {} reads topic {}; a projection of $all needs a name of its own",
                source.name, source.topic
            )));
        }
        self.store
            .register(&VersionSpec {
                name: p.name().to_string(),
                version: p.version(),
                tables: p.tables(),
                schema: p.schema(self.store.dialect()),
                partitions: p.partitions().max(1),
            })
            .await
    }

    /// The live generations (current and building, not retired) running this code
    /// version, each with its partition count, oldest first.
    async fn generations(&self) -> Result<Vec<(u32, VersionRole, u32)>, StoreError> {
        let p = &self.projection;
        let mut out: Vec<(u32, VersionRole, u32)> = Vec::new();
        for s in self.store.states(Some(p.name())).await? {
            if s.code_version != p.version() || s.role == VersionRole::Retired {
                continue;
            }
            if out.last().map(|g| g.0) != Some(s.version) {
                out.push((s.version, s.role, s.partitions.max(1)));
            }
        }
        Ok(out)
    }

    /// Applies everything there is now, to every live generation of this code version
    /// (a rebuild included, which becomes current once caught up), then returns how many
    /// events it applied (tests, one-off rebuilds). Holds the leases while it works and
    /// gives them up at the end.
    pub async fn catch_up(&self) -> Result<u64, ProjectionError> {
        self.register().await.map_err(store_err)?;
        let mut applied = 0u64;
        for (generation, _, partitions) in self.generations().await.map_err(store_err)? {
            for partition in 0..partitions {
                while let Step::Applied(n) = self.step(generation, partition).await? {
                    applied += n as u64;
                }
                self.store
                    .release(self.projection.name(), generation, partition, &self.owner)
                    .await
                    .map_err(store_err)?;
            }
        }
        self.maybe_switch().await.map_err(store_err)?;
        Ok(applied)
    }

    /// Runs until `shutdown`: every partition of every live generation this process can
    /// lease, catch-up then live. A rebuild requested meanwhile (a new generation of this
    /// code version, `runnel projections rebuild`) is picked up on the next round.
    pub async fn run(&self, shutdown: Shutdown) -> Result<(), ProjectionError> {
        self.register().await.map_err(store_err)?;
        let name = self.projection.name().to_string();
        let mut leased: Vec<(u32, u32)> = Vec::new();
        while !shutdown.is_requested() {
            let generations = match self.generations().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(projection = %name, error = %e, "cannot read the projection's generations; retrying");
                    Vec::new()
                }
            };
            let mut busy = false;
            for (generation, _, partitions) in &generations {
                for partition in 0..*partitions {
                    if !leased.contains(&(*generation, partition)) {
                        leased.push((*generation, partition));
                    }
                    match self.step(*generation, partition).await {
                        Ok(Step::Applied(_)) => busy = true,
                        Ok(Step::CaughtUp) | Ok(Step::Idle) => {}
                        Err(e) => {
                            tracing::warn!(projection = %name, generation, partition, error = %e, "projection step failed; retrying")
                        }
                    }
                }
            }
            let mut lowest = Position(u64::MAX);
            if let Ok(states) = self.store.states(Some(&name)).await {
                for s in states.iter().filter(|s| {
                    s.code_version == self.projection.version() && s.role != VersionRole::Retired
                }) {
                    lowest = lowest.min(s.checkpoint);
                }
            }
            if let Err(e) = self.maybe_switch().await {
                tracing::warn!(projection = %name, error = %e, "cannot switch to the rebuilt generation");
            }
            if !busy {
                let after = if lowest.get() == u64::MAX {
                    Position::START
                } else {
                    lowest
                };
                tokio::select! {
                    _ = self.events.wait_for_events(after, self.options.poll.min(self.options.lease / 2)) => {}
                    _ = shutdown.requested() => break,
                }
            }
        }
        for (generation, partition) in leased {
            let _ = self
                .store
                .release(&name, generation, partition, &self.owner)
                .await;
        }
        Ok(())
    }

    fn lease_until(&self) -> chrono::DateTime<Utc> {
        let now = Utc::now();
        chrono::Duration::from_std(self.options.lease)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC)
    }

    /// Makes a building generation of this code version current once every partition of
    /// it has caught up with the head.
    async fn maybe_switch(&self) -> Result<bool, StoreError> {
        let p = &self.projection;
        let states: Vec<ProjectionState> = self
            .store
            .states(Some(p.name()))
            .await?
            .into_iter()
            .filter(|s| s.code_version == p.version() && s.role == VersionRole::Building)
            .collect();
        let Some(generation) = states.first().map(|s| s.version) else {
            return Ok(false);
        };
        let head = self.events.head_position().await?;
        if states
            .iter()
            .all(|s| s.checkpoint >= head && s.status == ProjectionStatus::Running)
        {
            self.store.switch(p.name(), generation).await?;
            tracing::info!(projection = %p.name(), version = p.version(), generation, "rebuilt generation is current");
            return Ok(true);
        }
        Ok(false)
    }

    /// The state partition `partition` of generation `version`'s last batch left, if that batch ended behind the
    /// head less than half a lease ago; taken, so only a batch that commits puts one back.
    ///
    /// While catching up, claiming before every batch would cost a write transaction (an
    /// fsync on SQLite) per batch for nothing: the batch's commit checks the lease, the
    /// checkpoint and the status, and renews the lease. What a claim would add is the
    /// version's role, which cannot change meanwhile: a version becomes current only
    /// once every partition's checkpoint has reached the head, and this one is behind the
    /// head it saw and only this runner moves it. Caught up, or after anything but a
    /// commit, the next batch claims again.
    async fn held_state(&self, version: u32, partition: u32) -> Option<ProjectionState> {
        let (state, committed_at) = self.held.lock().await.remove(&(version, partition))?;
        (committed_at.elapsed() < self.options.lease / 2).then_some(state)
    }

    /// One batch of one partition of one generation.
    async fn step(&self, version: u32, partition: u32) -> Result<Step, ProjectionError> {
        let p = &self.projection;
        let name = p.name().to_string();
        let held = self.held_state(version, partition).await;
        let state = match held {
            Some(state) => state,
            None => match self
                .store
                .claim(
                    &name,
                    version,
                    partition,
                    &self.owner,
                    Utc::now(),
                    self.options.lease,
                )
                .await
                .map_err(store_err)?
            {
                Some(state) => state,
                None => return Ok(Step::Idle),
            },
        };
        if state.status != ProjectionStatus::Running || state.role == VersionRole::Retired {
            self.failing.lock().await.remove(&(version, partition));
            return Ok(Step::Idle);
        }
        let replaying = state.role == VersionRole::Building;
        let head = self.events.head_position().await.map_err(store_err)?;
        let read = self
            .events
            .read_all(
                state.checkpoint,
                &p.filter(),
                self.options.batch_events.max(1),
            )
            .await
            .map_err(store_err)?;
        self.record_lag(&state, head, read.first());
        if read.is_empty() {
            if head > state.checkpoint {
                // Nothing of ours up to the head: move the checkpoint there (lag 0 when idle).
                self.commit(&state, state.checkpoint, head, 0, Vec::new(), Vec::new())
                    .await?;
            }
            return Ok(Step::CaughtUp);
        }
        let partitions = state.partitions.max(1);
        let mut writes = Writes::new(&name, version, self.store.dialect(), replaying);
        // An inline projection never sends, whoever applies its events.
        writes.inline = p.inline();
        // (event, first statement index) of each event applied, and its first message.
        let mut applied: Vec<(&RecordedEvent, usize)> = Vec::new();
        let mut statements = Vec::new();
        let mut outbox = Vec::new();
        for event in &read {
            if partition_of(event.stream.as_str(), partitions) != partition {
                continue;
            }
            let first = statements.len();
            match p.apply(event, &mut writes) {
                Ok(()) => {
                    let (s, o) = writes.take();
                    statements.extend(s);
                    outbox.extend(o);
                    applied.push((event, first));
                }
                Err(e) => {
                    writes.take();
                    return self
                        .fail(&state, &applied, statements, outbox, event, e.to_string())
                        .await;
                }
            }
        }
        let to = read.last().map(|e| e.position).unwrap_or(state.checkpoint);
        let count = applied.len();
        match self
            .store
            .commit_batch(
                Batch {
                    name: name.clone(),
                    version,
                    partition,
                    owner: self.owner.clone(),
                    from: state.checkpoint,
                    to,
                    events: count as u64,
                    statements,
                    outbox,
                },
                self.lease_until(),
            )
            .await
            .map_err(store_err)?
        {
            BatchOutcome::Committed => {
                self.failing.lock().await.remove(&(version, partition));
                if to < head {
                    let mut next = state.clone();
                    next.checkpoint = to;
                    next.events_applied += count as u64;
                    self.held
                        .lock()
                        .await
                        .insert((version, partition), (next, Instant::now()));
                }
                metrics::counter!(METRIC_APPLIED, "projection" => name).increment(count as u64);
                Ok(Step::Applied(count))
            }
            BatchOutcome::LeaseLost => Ok(Step::Idle),
            BatchOutcome::StatementFailed { index, error } => {
                // The event whose statement failed: the last one starting at or before it.
                let k = applied
                    .iter()
                    .rposition(|(_, first)| *first <= index)
                    .unwrap_or(0);
                let (event, _) = applied[k];
                let before = applied[..k].to_vec();
                // `apply` only describes writes: derive the earlier events' statements and
                // messages again (cheaper than keeping a copy of every batch).
                let mut again = Writes::new(&name, version, self.store.dialect(), replaying);
                again.inline = p.inline();
                let (mut statements, mut outbox) = (Vec::new(), Vec::new());
                for (e, _) in &before {
                    p.apply(e, &mut again).map_err(|e| {
                        ProjectionError::Failed(format!("apply is not deterministic: {e}"))
                    })?;
                    let (s, o) = again.take();
                    statements.extend(s);
                    outbox.extend(o);
                }
                self.fail(
                    &state,
                    &before,
                    statements,
                    outbox,
                    event,
                    format!("statement failed: {error}"),
                )
                .await
            }
        }
    }

    async fn commit(
        &self,
        state: &ProjectionState,
        from: Position,
        to: Position,
        events: u64,
        statements: Vec<runnel_core::projection::Statement>,
        outbox: Vec<runnel_core::outbox::OutboxMessage>,
    ) -> Result<BatchOutcome, ProjectionError> {
        self.store
            .commit_batch(
                Batch {
                    name: state.name.clone(),
                    version: state.version,
                    partition: state.partition,
                    owner: self.owner.clone(),
                    from,
                    to,
                    events,
                    statements,
                    outbox,
                },
                self.lease_until(),
            )
            .await
            .map_err(store_err)
    }

    /// `event` failed with `error`: commit the events before it, then retry later, or (after
    /// the retries) pause the partition or park the event.
    async fn fail(
        &self,
        state: &ProjectionState,
        before: &[(&RecordedEvent, usize)],
        statements: Vec<runnel_core::projection::Statement>,
        outbox: Vec<runnel_core::outbox::OutboxMessage>,
        event: &RecordedEvent,
        error: String,
    ) -> Result<Step, ProjectionError> {
        let name = &state.name;
        let mut from = state.checkpoint;
        if let Some((last, _)) = before.last() {
            let outcome = self
                .commit(
                    state,
                    from,
                    last.position,
                    before.len() as u64,
                    statements,
                    outbox,
                )
                .await?;
            if outcome != BatchOutcome::Committed {
                return Ok(Step::Idle);
            }
            from = last.position;
        }
        let attempts = {
            let mut failing = self.failing.lock().await;
            let entry = failing
                .entry((state.version, state.partition))
                .or_insert((event.position, 0));
            if entry.0 != event.position {
                *entry = (event.position, 0);
            }
            entry.1 += 1;
            entry.1
        };
        if attempts < self.options.retry.attempts() {
            let delay = self.options.retry.delay_for_attempt(attempts);
            tracing::warn!(projection = %name, position = event.position.get(), attempts, %error, "event failed; retrying after {delay:?}");
            tokio::time::sleep(delay).await;
            return Ok(Step::Applied(before.len()));
        }
        self.failing
            .lock()
            .await
            .remove(&(state.version, state.partition));
        let park = self.options.on_failure == OnFailure::Park && self.dead_letters.is_some();
        if park {
            let dead_letters = self.dead_letters.as_ref().expect("checked");
            dead_letters
                .put(parked_letter(name, event, &error, attempts))
                .await
                .map_err(store_err)?;
            metrics::counter!(METRIC_PARKED, "projection" => name.clone()).increment(1);
            tracing::error!(projection = %name, position = event.position.get(), event_type = %event.event_type, %error, "event parked as a dead letter; the projection goes on");
            // Move past the parked event only.
            self.commit(state, from, event.position, 0, Vec::new(), Vec::new())
                .await?;
            return Ok(Step::Applied(before.len()));
        }
        self.store
            .set_status(
                name,
                state.version,
                Some(state.partition),
                ProjectionStatus::Faulted,
                Some((event.position, error.clone())),
            )
            .await
            .map_err(store_err)?;
        tracing::error!(
            projection = %name,
            position = event.position.get(),
            event_type = %event.event_type,
            %error,
            "projection faulted: `runnel projections retry {name}` or `runnel projections skip {name}`"
        );
        Ok(Step::Idle)
    }

    fn record_lag(&self, state: &ProjectionState, head: Position, next: Option<&RecordedEvent>) {
        let events = head.get().saturating_sub(state.checkpoint.get());
        let seconds = match next {
            Some(e) if events > 0 => {
                (Utc::now() - e.recorded_at).num_milliseconds().max(0) as f64 / 1000.0
            }
            _ => 0.0,
        };
        let labels = [
            ("projection", state.name.clone()),
            ("partition", state.partition.to_string()),
        ];
        metrics::gauge!(METRIC_LAG_EVENTS, &labels).set(events as f64);
        metrics::gauge!(METRIC_LAG_SECONDS, &labels).set(seconds);
    }
}

fn parked_letter(
    projection: &str,
    event: &RecordedEvent,
    error: &str,
    attempts: u32,
) -> NewDeadLetter {
    let mut message = Message::json(event.event_type.clone(), &serde_json::Value::Null);
    message.id = event.id.to_string();
    message.payload = event.data.clone();
    message.content_type = event.content_type.clone();
    message.subject = Some(event.stream.to_string());
    message.key = Some(event.stream.to_string());
    message.time = Some(event.recorded_at);
    message
        .headers
        .insert("runnel-position".into(), event.position.get().to_string());
    message
        .headers
        .insert("runnel-projection".into(), projection.to_string());
    let now = Utc::now();
    NewDeadLetter {
        topic: TopicName::new(PARKED_TOPIC).expect("a valid topic"),
        group: GroupName::new(projection).expect("projection names are valid group names"),
        message,
        failures: vec![FailureRecord {
            attempt: attempts,
            at: now,
            error: error.to_string(),
            permanent: false,
        }],
    }
}

/// How far a projection is behind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lag {
    /// Positions of `$all` not applied yet (by the partition furthest behind).
    pub events: u64,
    /// Age of the oldest event not applied yet; 0 when caught up.
    pub seconds: f64,
}

/// The lag of `name`'s current version.
pub async fn lag(
    store: &dyn ProjectionStore,
    events: &dyn EventStore,
    name: &str,
) -> Result<Lag, StoreError> {
    let states = store.states(Some(name)).await?;
    let head = events.head_position().await?;
    let lowest = states
        .iter()
        .filter(|s| s.role == VersionRole::Current)
        .map(|s| s.checkpoint)
        .min()
        .unwrap_or(Position::START);
    let behind = head.get().saturating_sub(lowest.get());
    let seconds = if behind == 0 {
        0.0
    } else {
        match events
            .read_all(lowest, &runnel_core::EventFilter::all(), 1)
            .await?
            .first()
        {
            Some(e) => (Utc::now() - e.recorded_at).num_milliseconds().max(0) as f64 / 1000.0,
            None => 0.0,
        }
    };
    Ok(Lag {
        events: behind,
        seconds,
    })
}

/// Why a wait for a position ended without it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The projection did not reach the position in time.
    #[error("projection {name} reached position {reached} but not {wanted} within {timeout:?}")]
    Timeout {
        name: String,
        wanted: u64,
        reached: u64,
        timeout: Duration,
    },
    /// No such projection was registered within the timeout.
    #[error("no projection named {0}")]
    Unknown(String),
    /// The projection reads a bus topic, which has no position of `$all` to wait for.
    #[error("projection {name} reads topic {topic}: it has no position of $all to wait for")]
    ReadsTopic { name: String, topic: String },
    /// The projection is paused or faulted: it will not get there on its own.
    #[error("projection {name} is {status}; it will not reach position {wanted} until resumed")]
    Stopped {
        name: String,
        status: &'static str,
        wanted: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Waits until the current version of `name` has applied everything up to `position` (a
/// command's commit position: read your own writes), or `timeout` passes.
pub async fn wait_for_position(
    store: &dyn ProjectionStore,
    name: &str,
    position: Position,
    timeout: Duration,
) -> Result<(), WaitError> {
    let deadline = Instant::now() + timeout;
    loop {
        let states: Vec<ProjectionState> = store
            .states(Some(name))
            .await?
            .into_iter()
            .filter(|s| s.role == VersionRole::Current)
            .collect();
        if states.is_empty() {
            // Not registered (yet: a service registers its projections as it starts).
            if Instant::now() >= deadline {
                return Err(WaitError::Unknown(name.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let reached = states
            .iter()
            .map(|s| s.checkpoint)
            .min()
            .unwrap_or(Position::START);
        if reached >= position {
            return Ok(());
        }
        if let Some(source) = store.topic_sources(Some(name)).await?.into_iter().next() {
            return Err(WaitError::ReadsTopic {
                name: source.name,
                topic: source.topic,
            });
        }
        if let Some(stopped) = states
            .iter()
            .find(|s| s.status != ProjectionStatus::Running)
        {
            return Err(WaitError::Stopped {
                name: name.to_string(),
                status: stopped.status.as_str(),
                wanted: position.get(),
            });
        }
        if Instant::now() >= deadline {
            return Err(WaitError::Timeout {
                name: name.to_string(),
                wanted: position.get(),
                reached: reached.get(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
