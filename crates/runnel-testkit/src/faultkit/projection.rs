//! Projections under faults, on a real store.
//!
//! * A **topic projection** ([`TopicProjection`]) is a consumer: [`FaultKit::run_topic_projection`]
//!   registers it and runs its handler behind its inbox — the stack
//!   [`topic_consumer`](runnel::projection::topic_consumer) builds — over the messages
//!   under the plan's duplicates, reorders, delays and crashes after the commit (the
//!   message's writes and inbox mark committed, the ack lost). A crash *before* that
//!   commit writes nothing, so it is the plain redelivery `duplicate` already injects.
//! * A **projection of `$all`** ([`Projection`]) is applied by the
//!   [`ProjectionRunner`] in batches, each batch's writes committed with the checkpoint.
//!   [`FaultKit::run_projection`] runs that runner to the head of `$all` and kills it at
//!   commits the plan picks — just before one (`crash_before_commit`: the batch's writes
//!   made, nothing committed) or just after one (`crash_after_effect`: committed, the
//!   runner dead before it went on) — then starts a new runner on the same store, until
//!   one catches up. Batches are small ([`CRASH_RUN_BATCH_EVENTS`]) so a run has many
//!   commits to die at.
//!
//! Either way the test then compares the read model with a recomputation (the same
//! projection run without faults on a fresh store, or the expected rows worked out by
//! hand): a projection that is exactly-once in effect gives the same rows.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use runnel::async_trait;
use runnel::consumer::layers::InboxLayer;
use runnel::consumer::HandlerService;
use runnel::projection::{
    register_topic_projection, Projection, ProjectionRunner, RunnerOptions, TopicProjection,
    TopicProjectionHandler, TopicProjectionInbox,
};
use runnel_core::message::Message;
use runnel_core::projection::{
    Batch, BatchOutcome, Dialect, MessageCommit, MessageOutcome, ProjectionState, ProjectionStatus,
    ProjectionStore, RebuildStarted, TopicSource, VersionRole, VersionSpec,
    TOPIC_INBOX_KEEP_DEFAULT,
};
use runnel_core::{EventStore, Position, StoreError};
use tower::Layer;

use super::{FaultKit, FaultKitError, FaultPlan, FaultReport, SplitMix64};

/// Events per batch in [`FaultKit::run_projection`]: small, so that even a short test has
/// many commits to crash at.
pub const CRASH_RUN_BATCH_EVENTS: usize = 7;
/// Most crashes one [`FaultKit::run_projection`] injects; after that the runner is left to
/// finish, so a run always ends.
pub const PROJECTION_CRASHES_MAX: u32 = 64;
/// The lease owner of the runners [`FaultKit::run_projection`] starts. A restarted runner
/// has the same name (a process restarted with its configured owner), so it takes its
/// partitions back at once instead of after the crashed one's lease.
pub const CRASH_RUN_OWNER: &str = "faultkit-projection-runner";
/// Mixed into the plan's seed for the crash dice, so adding crashes to a plan does not
/// change which deliveries it duplicates or reorders.
const CRASH_SALT: u64 = 0x5A6A_C0FF_EE00_0001;

/// What [`FaultKit::run_projection`] did.
#[derive(Clone, Debug)]
pub struct ProjectionCrashReport {
    /// The plan the run followed (its seed repeats the crashes).
    pub plan: FaultPlan,
    /// Runners started (1 + restarts).
    pub runners: u32,
    /// Crashes just before a commit (the batch's writes made, nothing committed).
    pub crashes_before_commit: u32,
    /// Crashes just after a commit (before the runner went on).
    pub crashes_after_commit: u32,
    /// Batches committed, crashed-after ones included.
    pub batches_committed: u64,
    /// Events in those batches: each event the projection reads, once, when the
    /// checkpoint and the writes commit together.
    pub events_committed: u64,
}

impl fmt::Display for ProjectionCrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "projection crash run with seed {} ({} runners, {} crashes before a commit, {} \
             after one, {} batches and {} events committed); repeat it with `seed: {}` in the \
             plan {:?}",
            self.plan.seed,
            self.runners,
            self.crashes_before_commit,
            self.crashes_after_commit,
            self.batches_committed,
            self.events_committed,
            self.plan.seed,
            self.plan,
        )
    }
}

impl FaultKit {
    /// Registers `projection` on `store` and runs its consumer stack (its handler behind
    /// its inbox, as [`topic_consumer`](runnel::projection::topic_consumer) builds it)
    /// over `messages` under the plan's faults. Then read the projection's tables and
    /// compare them with a recomputation.
    pub async fn run_topic_projection(
        &self,
        projection: Arc<dyn TopicProjection>,
        store: Arc<dyn ProjectionStore>,
        messages: Vec<Message>,
    ) -> Result<FaultReport, FaultKitError> {
        self.plan.validate()?;
        let generation = register_topic_projection(&*projection, &*store)
            .await
            .map_err(|e| FaultKitError::Store(e.to_string()))?;
        let inbox = TopicProjectionInbox::new(
            projection.name(),
            generation,
            store,
            TOPIC_INBOX_KEEP_DEFAULT,
        );
        let service = InboxLayer::new(inbox)
            .layer(HandlerService::new(TopicProjectionHandler::new(projection)));
        self.run_service(service, messages).await
    }

    /// Runs `projection` over `$all` of `events` into `store` with the
    /// [`ProjectionRunner`] (batches of [`CRASH_RUN_BATCH_EVENTS`]), killing the runner
    /// at the commits the plan's `crash_before_commit` and `crash_after_effect` pick and
    /// starting a new one each time, until a runner catches up with the head. Append the
    /// events first; then compare the read model with a recomputation.
    pub async fn run_projection(
        &self,
        projection: Arc<dyn Projection>,
        store: Arc<dyn ProjectionStore>,
        events: Arc<dyn EventStore>,
    ) -> Result<ProjectionCrashReport, FaultKitError> {
        self.plan.validate()?;
        let crashing = Arc::new(CrashingStore {
            inner: store,
            dice: Mutex::new(SplitMix64(self.plan.seed ^ CRASH_SALT)),
            before: self.plan.crash_before_commit,
            after: self.plan.crash_after_effect,
            crashed: AtomicBool::new(false),
            crashes_before: AtomicU32::new(0),
            crashes_after: AtomicU32::new(0),
            batches: AtomicU64::new(0),
            events: AtomicU64::new(0),
        });
        let mut runners = 0u32;
        loop {
            runners += 1;
            let runner = ProjectionRunner::new(
                Arc::clone(&projection),
                crashing.clone(),
                Arc::clone(&events),
                RunnerOptions {
                    batch_events: CRASH_RUN_BATCH_EVENTS,
                    owner: Some(CRASH_RUN_OWNER.to_string()),
                    ..RunnerOptions::default()
                },
            );
            let outcome = runner.catch_up().await;
            // The runner is dropped here, as a killed process's would be: nothing of it
            // survives but what it committed.
            drop(runner);
            match outcome {
                Ok(_) => break,
                Err(_) if crashing.crashed.swap(false, Ordering::SeqCst) => continue,
                Err(e) => return Err(FaultKitError::Store(e.to_string())),
            }
        }
        Ok(ProjectionCrashReport {
            plan: self.plan.clone(),
            runners,
            crashes_before_commit: crashing.crashes_before.load(Ordering::SeqCst),
            crashes_after_commit: crashing.crashes_after.load(Ordering::SeqCst),
            batches_committed: crashing.batches.load(Ordering::SeqCst),
            events_committed: crashing.events.load(Ordering::SeqCst),
        })
    }
}

/// The projection store a crash run's runners write through: the real store, failing a
/// `commit_batch` just before or just after it reaches the database when the dice say
/// so, the way a killed process would never see its commit's answer.
struct CrashingStore {
    inner: Arc<dyn ProjectionStore>,
    dice: Mutex<SplitMix64>,
    before: f64,
    after: f64,
    /// Set by a simulated crash, taken by the driver (any other error is real).
    crashed: AtomicBool,
    crashes_before: AtomicU32,
    crashes_after: AtomicU32,
    batches: AtomicU64,
    events: AtomicU64,
}

impl CrashingStore {
    fn roll(&self, p: f64) -> bool {
        let total =
            self.crashes_before.load(Ordering::SeqCst) + self.crashes_after.load(Ordering::SeqCst);
        if total >= PROJECTION_CRASHES_MAX {
            return false;
        }
        self.dice
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .chance(p)
    }

    fn crash(&self, counter: &AtomicU32, when: &str) -> StoreError {
        counter.fetch_add(1, Ordering::SeqCst);
        self.crashed.store(true, Ordering::SeqCst);
        StoreError::Unavailable(format!(
            "simulated crash {when} a projection batch's commit"
        ))
    }
}

#[async_trait]
impl ProjectionStore for CrashingStore {
    fn dialect(&self) -> Dialect {
        self.inner.dialect()
    }

    async fn register(&self, spec: &VersionSpec) -> Result<VersionRole, StoreError> {
        self.inner.register(spec).await
    }

    async fn rebuild(&self, name: &str) -> Result<RebuildStarted, StoreError> {
        self.inner.rebuild(name).await
    }

    async fn states(&self, name: Option<&str>) -> Result<Vec<ProjectionState>, StoreError> {
        self.inner.states(name).await
    }

    async fn claim(
        &self,
        name: &str,
        version: u32,
        partition: u32,
        owner: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Option<ProjectionState>, StoreError> {
        self.inner
            .claim(name, version, partition, owner, now, lease)
            .await
    }

    async fn release(
        &self,
        name: &str,
        version: u32,
        partition: u32,
        owner: &str,
    ) -> Result<(), StoreError> {
        self.inner.release(name, version, partition, owner).await
    }

    async fn commit_batch(
        &self,
        batch: Batch,
        lease_until: DateTime<Utc>,
    ) -> Result<BatchOutcome, StoreError> {
        if self.roll(self.before) {
            return Err(self.crash(&self.crashes_before, "just before"));
        }
        let events = batch.events;
        let outcome = self.inner.commit_batch(batch, lease_until).await?;
        if outcome == BatchOutcome::Committed {
            self.batches.fetch_add(1, Ordering::SeqCst);
            self.events.fetch_add(events, Ordering::SeqCst);
            if self.roll(self.after) {
                return Err(self.crash(&self.crashes_after, "just after"));
            }
        }
        Ok(outcome)
    }

    async fn set_status(
        &self,
        name: &str,
        version: u32,
        partition: Option<u32>,
        status: ProjectionStatus,
        error: Option<(Position, String)>,
    ) -> Result<u64, StoreError> {
        self.inner
            .set_status(name, version, partition, status, error)
            .await
    }

    async fn skip_failed(
        &self,
        name: &str,
        version: u32,
        partition: u32,
    ) -> Result<bool, StoreError> {
        self.inner.skip_failed(name, version, partition).await
    }

    async fn switch(&self, name: &str, version: u32) -> Result<(), StoreError> {
        self.inner.switch(name, version).await
    }

    async fn drop_version(&self, name: &str, version: u32) -> Result<(), StoreError> {
        self.inner.drop_version(name, version).await
    }

    async fn set_topic_source(&self, source: &TopicSource) -> Result<(), StoreError> {
        self.inner.set_topic_source(source).await
    }

    async fn topic_sources(&self, name: Option<&str>) -> Result<Vec<TopicSource>, StoreError> {
        self.inner.topic_sources(name).await
    }

    async fn commit_message(&self, commit: MessageCommit) -> Result<MessageOutcome, StoreError> {
        self.inner.commit_message(commit).await
    }
}
