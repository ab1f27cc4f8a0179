//! The durable saga runtime: starts instances, applies replies, timers and operator
//! actions through the [`Plan`](super::Plan), and commits each decision in one
//! [`ProcessorStore::commit`] together with the messages it sends and the timers it
//! schedules. Local steps run after the commit that records them as running, as timers
//! leased to this process: a process that dies leaves the lease to lapse and another one
//! runs the step again under the same idempotency key.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Mutex, Semaphore};

use runnel_core::outbox::OutboxMessage;
use runnel_core::processor::{
    CancelTimers, CommitOutcome, ExpectedInstance, HistoryLine, InstanceRecord, InstanceStatus,
    ProcessorStore, TimerSpec, Transition,
};
use runnel_core::{Clock, Message, StoreError, SystemClock, TopicName};

use super::definition::{Action, Reply, SagaData, SagaDefinition, StepContext, StepError};
use super::machine::{Decision, Effect, Ignored, Input, Phase, Progress};
use crate::app::Shutdown;
use crate::consumer::BoxError;

/// Header naming the saga kind a command belongs to (`saga:order-fulfillment`).
pub const SAGA_HEADER: &str = "runnel-saga";
/// Header naming the instance.
pub const INSTANCE_HEADER: &str = "runnel-saga-instance";
/// Header naming the step.
pub const STEP_HEADER: &str = "runnel-saga-step";
/// Header with the attempt token.
pub const TOKEN_HEADER: &str = "runnel-saga-token";
/// Header saying whether the command runs a step (`do`) or its compensation (`undo`).
pub const DIRECTION_HEADER: &str = "runnel-saga-direction";
/// Header naming the topic to reply to.
pub const REPLY_TO_HEADER: &str = "runnel-reply-to";
/// Header with the step's idempotency key (the same on every attempt).
pub const IDEMPOTENCY_KEY_HEADER: &str = "runnel-idempotency-key";

/// Metric: transitions committed, by saga and resulting status.
pub const METRIC_TRANSITIONS: &str = "runnel_saga_transitions_total";
/// Metric: instances parked for an operator, by saga and status.
pub const METRIC_PARKED: &str = "runnel_saga_parked_total";
/// Metric: inputs that had no effect (duplicates, late replies, stale timers), by reason.
pub const METRIC_IGNORED: &str = "runnel_saga_ignored_total";
/// Metric: local step durations, by saga and step.
pub const METRIC_STEP_SECONDS: &str = "runnel_saga_step_seconds";

/// Default lease on the work a process takes (a local step, a due timer): when the process
/// dies, another takes the work over this long after it last renewed the lease.
pub const LEASE_DEFAULT: Duration = Duration::from_secs(5);
/// Default longest wait between two looks for due timers.
pub const POLL_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Default most local steps and timers handled at once by one runtime.
pub const MAX_CONCURRENCY_DEFAULT: usize = 64;
/// Default longest a local step may run before its outcome counts as unknown.
pub const STEP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// Default time finished instances are kept: 7 days.
pub const RETENTION_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often [`SagaRuntime::run`] purges finished instances past their retention.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(60);
/// Most times a decision is re-made after a concurrent change of the instance.
pub const CONFLICT_RETRIES_MAX: u32 = 16;

/// How a runtime runs.
#[derive(Clone, Debug)]
pub struct SagaOptions {
    /// The lease on work this process takes ([`LEASE_DEFAULT`]).
    pub lease: Duration,
    /// The longest wait between two looks for due timers ([`POLL_INTERVAL_DEFAULT`]).
    pub poll_interval: Duration,
    /// The most local steps and timers handled at once ([`MAX_CONCURRENCY_DEFAULT`]).
    pub max_concurrency: usize,
    /// The longest a local step may run ([`STEP_TIMEOUT_DEFAULT`]).
    pub step_timeout: Duration,
    /// This process's name in leases (default: host, pid and a random suffix).
    pub owner: Option<String>,
    /// How long finished instances (completed, compensated) are kept before
    /// [`run`](SagaRuntime::run) purges them with their history ([`RETENTION_DEFAULT`]);
    /// `None` keeps them.
    pub retention: Option<Duration>,
}

impl Default for SagaOptions {
    fn default() -> Self {
        SagaOptions {
            lease: LEASE_DEFAULT,
            poll_interval: POLL_INTERVAL_DEFAULT,
            max_concurrency: MAX_CONCURRENCY_DEFAULT,
            step_timeout: STEP_TIMEOUT_DEFAULT,
            owner: None,
            retention: Some(RETENTION_DEFAULT),
        }
    }
}

/// Why a saga operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// The store failed; nothing of this operation was committed.
    #[error("saga store: {0}")]
    Store(#[from] StoreError),
    /// No instance has this id.
    #[error("no {kind} instance {id:?}")]
    UnknownInstance { kind: String, id: String },
    /// The instance was started by a definition version this process does not run.
    #[error(
        "instance {id:?} of {kind} runs definition version {instance_version}, but this \
         process has version {ours} (and no upcaster from {instance_version}); run it where \
         that version is deployed"
    )]
    UnknownVersion {
        kind: String,
        id: String,
        instance_version: u32,
        ours: u32,
    },
    /// The stored data or progress could not be read.
    #[error("instance {id:?}: unreadable {what}: {error}")]
    Corrupt {
        id: String,
        what: &'static str,
        error: String,
    },
    /// The data could not be turned into JSON.
    #[error("saga data: {0}")]
    Data(String),
    /// An operator action does not apply to the instance now.
    #[error("instance {id:?} is {status}: {reason}")]
    NotApplicable {
        id: String,
        status: InstanceStatus,
        reason: &'static str,
    },
    /// The instance kept changing under us.
    #[error("instance {id:?} changed {CONFLICT_RETRIES_MAX} times while deciding; try again")]
    TooManyConflicts { id: String },
    /// A message is not a reply to this saga (missing or foreign headers).
    #[error("not a reply to saga {kind}: {reason}")]
    NotAReply { kind: String, reason: String },
    /// A process manager's transition refused the event (its own error text).
    #[error("instance {id:?}: the transition failed: {reason}")]
    TransitionFailed { id: String, reason: String },
    /// The runtime stopped at a simulated crash point (tests only).
    #[error("crashed at {0:?} (simulated)")]
    Crashed(CrashPoint),
}

impl SagaError {
    /// Whether trying the same thing again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            SagaError::Store(e) => !matches!(e, StoreError::InvalidArgument(_)),
            SagaError::UnknownInstance { .. }
            | SagaError::TooManyConflicts { .. }
            | SagaError::UnknownVersion { .. } => true,
            _ => false,
        }
    }
}

/// Where a simulated crash may happen (see [`SagaRuntime::with_crash_points`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// Just before the `n`th commit of this runtime (nothing of it is written).
    BeforeCommit(u64),
    /// Just after the `n`th commit (it is written; nothing after it happened).
    AfterCommit(u64),
    /// After the `n`th local step (or compensation) ran, before its outcome is committed.
    AfterStep(u64),
}

type CrashHook = Arc<dyn Fn(CrashPoint) -> bool + Send + Sync>;

/// How a start ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Started {
    /// A new instance with this id.
    New { id: String },
    /// An instance for this id, correlation key or start message exists already (a
    /// duplicate start): nothing new was created.
    Existing { id: String },
}

/// How a reply was handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyHandled {
    /// It settled its step.
    Applied,
    /// It had no effect (a duplicate, a late reply, a reply for a finished instance).
    Ignored(String),
    /// It came late for a step the saga gave up on, and that step's compensation was sent
    /// ([`LateReplyPolicy::Compensate`](super::LateReplyPolicy::Compensate)).
    CompensatedLate,
}

/// What an instance looks like, decoded.
#[derive(Clone, Debug)]
pub struct SagaInstance<D> {
    /// The stored row.
    pub record: InstanceRecord,
    /// The saga's progress.
    pub progress: Progress,
    /// The data.
    pub data: D,
}

/// What is stored in the instance row's progress column.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    progress: Progress,
    /// The correlation id the saga's messages carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlation_id: Option<String>,
}

/// The work a timer stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "timer", rename_all = "kebab-case")]
pub(crate) enum TimerWork {
    /// Run a local step or compensation.
    Run {
        step: usize,
        token: u64,
        attempt: u32,
        compensating: bool,
    },
    /// A remote step's reply deadline.
    Deadline { step: usize, token: u64 },
    /// The end of a backoff.
    Retry { token: u64 },
    /// An operator's request, made where the definition is not loaded (the CLI).
    Operator { action: OperatorAction },
}

/// What an operator asks of a parked or running instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperatorAction {
    /// Run the parked step or compensation again.
    Retry,
    /// Count the parked step as done (or its compensation as compensated) and go on.
    Skip,
    /// Compensate the completed steps of a running or parked instance.
    Compensate,
}

impl OperatorAction {
    fn input(self) -> Input {
        match self {
            OperatorAction::Retry => Input::OperatorRetry,
            OperatorAction::Skip => Input::OperatorSkip,
            OperatorAction::Compensate => Input::Cancel,
        }
    }

    /// The action's name.
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorAction::Retry => "retry",
            OperatorAction::Skip => "skip-step",
            OperatorAction::Compensate => "compensate",
        }
    }
}

const RUN_TIMER: &str = "run";
const DEADLINE_TIMER: &str = "deadline";
const RETRY_TIMER: &str = "retry";
pub(crate) const OPERATOR_TIMER: &str = "operator";

/// A piece of work: a timer that fired (claimed, with its id) or a local step this process
/// committed and leased to itself (no id known).
#[derive(Clone, Debug)]
struct Work {
    instance: String,
    timer: Option<u64>,
    what: TimerWork,
}

/// What caused a decision.
#[derive(Clone, Debug, Default)]
struct Cause {
    /// The claimed timer that fired.
    timer: Option<u64>,
    /// A local run this process leased to itself at schedule time.
    own_run: bool,
    /// The inbox mark of the message.
    inbox: Option<(String, String)>,
    /// The message's id (the causation id of what is sent).
    message_id: Option<String>,
}

/// The outcome of [`SagaRuntime::apply`].
enum Applied {
    Committed,
    Ignored(Ignored, Box<InstanceRecord>),
    Duplicate,
}

/// Runs the instances of one saga definition. Cheap to clone.
pub struct SagaRuntime<D> {
    inner: Arc<Inner<D>>,
}

impl<D> Clone for SagaRuntime<D> {
    fn clone(&self) -> Self {
        SagaRuntime {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<D> {
    def: SagaDefinition<D>,
    kind: String,
    versions: Vec<u32>,
    store: Arc<dyn ProcessorStore>,
    clock: Arc<dyn Clock>,
    options: SagaOptions,
    owner: String,
    work_tx: mpsc::Sender<Work>,
    work_rx: Mutex<mpsc::Receiver<Work>>,
    permits: Arc<Semaphore>,
    crash: Option<CrashHook>,
    crashed: AtomicBool,
    commits: AtomicU64,
    steps_run: AtomicU64,
    /// The earliest due time of timers this process scheduled since `run` last looked, so
    /// it claims them on time without polling the store for every piece of work.
    wake_at: std::sync::Mutex<Option<DateTime<Utc>>>,
    wake: tokio::sync::Notify,
    /// Instances as this process's last commit left them, while this process has local
    /// work queued for them: the step that work runs starts from here instead of reading
    /// the instance again. At most [`COMMITTED_CACHE_MAX`] entries (past that, nothing is
    /// added: the step reads the store); each is taken by the work it was kept for. The
    /// commit's version check still guards: if anything else changed the instance
    /// meanwhile, that commit conflicts and the instance is read again.
    committed: std::sync::Mutex<HashMap<String, InstanceRecord>>,
}

/// Most instances kept in [`Inner::committed`].
pub const COMMITTED_CACHE_MAX: usize = 10_000;

fn default_owner() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &suffix[suffix.len() - 8..]
    )
}

fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("saga bookkeeping serialises")
}

/// A short description of where an instance is, for operators.
fn describe<D>(def: &SagaDefinition<D>, phase: &Phase) -> String {
    let name = |s: &usize| def.steps.get(*s).map_or("?", |s| s.name.as_str());
    match phase {
        Phase::New => "new".into(),
        Phase::Running { step, attempt } => format!("running {} (attempt {attempt})", name(step)),
        Phase::RetryingStep { step, attempt } => {
            format!("waiting to retry {} (attempt {attempt})", name(step))
        }
        Phase::Compensating { step, attempt } => {
            format!("compensating {} (attempt {attempt})", name(step))
        }
        Phase::RetryingCompensation { step, attempt } => {
            format!(
                "waiting to retry compensating {} (attempt {attempt})",
                name(step)
            )
        }
        Phase::Completed => "completed".into(),
        Phase::Compensated => "compensated".into(),
        Phase::CompensationFailed { step, .. } => format!("compensation of {} failed", name(step)),
        Phase::NeedsAttention { step, .. } => format!("needs attention at {}", name(step)),
    }
}

fn status_of(phase: &Phase) -> InstanceStatus {
    match phase {
        Phase::New | Phase::Running { .. } | Phase::RetryingStep { .. } => InstanceStatus::Running,
        Phase::Compensating { .. } | Phase::RetryingCompensation { .. } => {
            InstanceStatus::Compensating
        }
        Phase::Completed => InstanceStatus::Completed,
        Phase::Compensated => InstanceStatus::Compensated,
        Phase::CompensationFailed { .. } => InstanceStatus::CompensationFailed,
        Phase::NeedsAttention { .. } => InstanceStatus::NeedsAttention,
    }
}

/// The history line an input leaves.
fn input_line<D>(def: &SagaDefinition<D>, input: &Input) -> HistoryLine {
    let name = |s: &usize| def.steps.get(*s).map(|s| s.name.clone());
    let (step, what, detail) = match input {
        Input::Start => (None, "started", None),
        Input::StepSucceeded { step, .. } => (name(step), "step-succeeded", None),
        Input::StepFailed { step, error, .. } => (name(step), "step-failed", Some(error.clone())),
        Input::StepUnknown { step, error, .. } => {
            (name(step), "step-outcome-unknown", Some(error.clone()))
        }
        Input::DeadlineFired { step, .. } => (name(step), "deadline-fired", None),
        Input::RetryTimerFired { .. } => (None, "backoff-over", None),
        Input::CompensationSucceeded { step, .. } => (name(step), "compensated", None),
        Input::CompensationFailed { step, error, .. } => {
            (name(step), "compensation-failed", Some(error.clone()))
        }
        Input::Cancel => (None, "operator-compensate", None),
        Input::OperatorRetry => (None, "operator-retry", None),
        Input::OperatorSkip => (None, "operator-skip", None),
    };
    HistoryLine {
        step,
        what: what.into(),
        detail,
    }
}

impl<D: SagaData> SagaRuntime<D> {
    /// A runtime for `definition` on `store`, with the system clock and default options.
    pub fn new(definition: SagaDefinition<D>, store: Arc<dyn ProcessorStore>) -> Self {
        Self::with_options(
            definition,
            store,
            Arc::new(SystemClock),
            SagaOptions::default(),
        )
    }

    /// A runtime with `clock` (a virtual clock in tests) and `options`.
    pub fn with_options(
        definition: SagaDefinition<D>,
        store: Arc<dyn ProcessorStore>,
        clock: Arc<dyn Clock>,
        options: SagaOptions,
    ) -> Self {
        Self::build(definition, store, clock, options, None)
    }

    /// Like [`with_options`](Self::with_options), crashing (every operation fails with
    /// [`SagaError::Crashed`] from then on) at the first [`CrashPoint`] `hook` says yes to.
    /// For crash tests: drop the runtime and build a new one on the same store to see
    /// what a restarted process does.
    pub fn with_crash_points(
        definition: SagaDefinition<D>,
        store: Arc<dyn ProcessorStore>,
        clock: Arc<dyn Clock>,
        options: SagaOptions,
        hook: impl Fn(CrashPoint) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self::build(definition, store, clock, options, Some(Arc::new(hook)))
    }

    fn build(
        definition: SagaDefinition<D>,
        store: Arc<dyn ProcessorStore>,
        clock: Arc<dyn Clock>,
        options: SagaOptions,
        crash: Option<CrashHook>,
    ) -> Self {
        let concurrency = options.max_concurrency.clamp(1, 4096);
        let (work_tx, work_rx) = mpsc::channel(concurrency * 4);
        let owner = options.owner.clone().unwrap_or_else(default_owner);
        SagaRuntime {
            inner: Arc::new(Inner {
                kind: definition.kind(),
                versions: definition.runs_versions(),
                def: definition,
                store,
                clock,
                options,
                owner,
                work_tx,
                work_rx: Mutex::new(work_rx),
                permits: Arc::new(Semaphore::new(concurrency)),
                crash,
                crashed: AtomicBool::new(false),
                commits: AtomicU64::new(0),
                steps_run: AtomicU64::new(0),
                wake_at: std::sync::Mutex::new(None),
                wake: tokio::sync::Notify::new(),
                committed: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The definition.
    pub fn definition(&self) -> &SagaDefinition<D> {
        &self.inner.def
    }

    /// The processor kind (`saga:{name}`).
    pub fn kind(&self) -> &str {
        &self.inner.kind
    }

    /// This process's name in leases.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ProcessorStore> {
        &self.inner.store
    }

    fn check_crash(&self, point: CrashPoint) -> Result<(), SagaError> {
        if self.inner.crashed.load(Ordering::SeqCst) {
            return Err(SagaError::Crashed(point));
        }
        if let Some(hook) = &self.inner.crash {
            if hook(point) {
                self.inner.crashed.store(true, Ordering::SeqCst);
                return Err(SagaError::Crashed(point));
            }
        }
        Ok(())
    }

    async fn commit(&self, t: Transition) -> Result<CommitOutcome, SagaError> {
        let n = self.inner.commits.fetch_add(1, Ordering::SeqCst) + 1;
        self.check_crash(CrashPoint::BeforeCommit(n))?;
        let earliest = t
            .schedule
            .iter()
            .filter(|s| s.leased_to.is_none())
            .map(|s| s.due)
            .min();
        let outcome = self.inner.store.commit(t).await?;
        self.check_crash(CrashPoint::AfterCommit(n))?;
        if let (Some(due), CommitOutcome::Committed { .. }) = (earliest, &outcome) {
            {
                let mut wake = self.inner.wake_at.lock().unwrap_or_else(|e| e.into_inner());
                *wake = Some(wake.map_or(due, |w| w.min(due)));
            }
            self.inner.wake.notify_one();
        }
        Ok(outcome)
    }

    /// When `run` should look for due timers because this process scheduled one.
    fn take_wake(&self) -> Option<tokio::time::Instant> {
        let due = self
            .inner
            .wake_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        let wait = (due - self.inner.clock.now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        Some(tokio::time::Instant::now() + wait)
    }

    /// Loads and decodes an instance (upcasting data of older definition versions).
    pub async fn load(&self, id: &str) -> Result<Option<SagaInstance<D>>, SagaError> {
        match self.inner.store.load(&self.inner.kind, id).await? {
            Some(record) => Ok(Some(self.decode(record)?)),
            None => Ok(None),
        }
    }

    fn decode(&self, record: InstanceRecord) -> Result<SagaInstance<D>, SagaError> {
        let (progress, _) = self.decode_progress(&record)?;
        let data = self.decode_data(&record)?;
        Ok(SagaInstance {
            record,
            progress,
            data,
        })
    }

    fn decode_progress(
        &self,
        record: &InstanceRecord,
    ) -> Result<(Progress, Option<String>), SagaError> {
        let stored: Stored =
            serde_json::from_slice(&record.progress).map_err(|e| SagaError::Corrupt {
                id: record.id.clone(),
                what: "progress",
                error: e.to_string(),
            })?;
        Ok((stored.progress, stored.correlation_id))
    }

    fn decode_data(&self, record: &InstanceRecord) -> Result<D, SagaError> {
        let def = &self.inner.def;
        if !self.inner.versions.contains(&record.definition_version) {
            return Err(SagaError::UnknownVersion {
                kind: self.inner.kind.clone(),
                id: record.id.clone(),
                instance_version: record.definition_version,
                ours: def.version,
            });
        }
        let corrupt = |e: String| SagaError::Corrupt {
            id: record.id.clone(),
            what: "data",
            error: e,
        };
        if record.definition_version == def.version {
            return serde_json::from_slice(&record.data).map_err(|e| corrupt(e.to_string()));
        }
        let mut value: serde_json::Value =
            serde_json::from_slice(&record.data).map_err(|e| corrupt(e.to_string()))?;
        for v in record.definition_version..def.version {
            let upcast = &def.upcasters[&v];
            value = upcast(value).map_err(|e| corrupt(format!("upcast from version {v}: {e}")))?;
        }
        serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
    }

    /// Starts an instance `id` with `data`. A second start with the same id has no effect
    /// ([`Started::Existing`]).
    pub async fn start(&self, id: &str, data: D) -> Result<Started, SagaError> {
        self.start_with(StartRequest::new(id, data)).await
    }

    /// Starts an instance as `request` says (a correlation key that makes racing starts
    /// create one instance, the start message's inbox mark, the correlation id).
    pub async fn start_with(&self, request: StartRequest<D>) -> Result<Started, SagaError> {
        let def = &self.inner.def;
        let Decision::Apply { progress, effects } =
            def.plan
                .decide(&request.id, &Progress::default(), &Input::Start)
        else {
            unreachable!("a new instance always starts");
        };
        let data = serde_json::to_vec(&request.data).map_err(|e| SagaError::Data(e.to_string()))?;
        let stored = Stored {
            progress: progress.clone(),
            correlation_id: request.correlation_id.clone(),
        };
        let cause = Cause {
            inbox: request.inbox.clone(),
            message_id: request.inbox.as_ref().map(|(_, m)| m.clone()),
            ..Cause::default()
        };
        let mut plan =
            self.effects_to_transition(&request.id, &stored, &request.data, &effects, &cause)?;
        let mut history = vec![input_line(def, &Input::Start)];
        history.append(&mut plan.history);
        let t = Transition {
            kind: self.inner.kind.clone(),
            id: request.id.clone(),
            expected: ExpectedInstance::New,
            definition_version: def.version,
            correlation: request.correlation.clone(),
            state: describe(def, &progress.phase),
            status: status_of(&progress.phase),
            progress: json(&stored),
            data,
            last_error: None,
            outbox: plan.outbox,
            cancel_timers: CancelTimers::None,
            schedule: plan.schedule,
            fired_timer: None,
            inbox: request.inbox.clone(),
            history,
        };
        let keep = self.record_of(&t, !plan.own_work.is_empty());
        match self.commit(t).await {
            Ok(CommitOutcome::Committed { version }) => {
                metrics::counter!(METRIC_TRANSITIONS, "saga" => def.name.clone(), "status" => "running").increment(1);
                tracing::debug!(saga = %def.name, instance = %request.id, "saga started");
                self.remember(&request.id, keep, version);
                self.enqueue(plan.own_work).await;
                Ok(Started::New { id: request.id })
            }
            Ok(CommitOutcome::CorrelationTaken { id }) => {
                self.release_reserved(plan.own_work);
                Ok(Started::Existing { id })
            }
            Ok(CommitOutcome::Conflict { .. }) | Ok(CommitOutcome::Duplicate) => {
                self.release_reserved(plan.own_work);
                Ok(Started::Existing { id: request.id })
            }
            Err(e) => {
                self.release_reserved(plan.own_work);
                Err(e)
            }
        }
    }

    /// What `t` will leave stored (its version set once committed), for the local work it
    /// queues; `None` when it queues none.
    fn record_of(&self, t: &Transition, queues_work: bool) -> Option<InstanceRecord> {
        if !queues_work {
            return None;
        }
        let now = self.inner.clock.now();
        Some(InstanceRecord {
            kind: t.kind.clone(),
            id: t.id.clone(),
            definition_version: t.definition_version,
            correlation: t.correlation.clone(),
            state: t.state.clone(),
            status: t.status,
            progress: t.progress.clone(),
            data: t.data.clone(),
            version: 0,
            last_error: t.last_error.clone(),
            created_at: now,
            updated_at: now,
            finished_at: None,
        })
    }

    /// Keeps `record` as committed at `version` for the local work its transition queued
    /// (see [`Inner::committed`]).
    fn remember(&self, id: &str, record: Option<InstanceRecord>, version: u64) {
        let mut cache = self
            .inner
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(mut record) = record else {
            cache.remove(id);
            return;
        };
        if cache.len() >= COMMITTED_CACHE_MAX && !cache.contains_key(id) {
            return;
        }
        record.version = version;
        cache.insert(id.to_string(), record);
    }

    /// The instance as this process last committed it, if kept.
    fn take_committed(&self, id: &str) -> Option<InstanceRecord> {
        self.inner
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }

    fn release_reserved(&self, own: Vec<(Work, tokio::sync::mpsc::OwnedPermit<Work>)>) {
        drop(own);
    }

    async fn enqueue(&self, own: Vec<(Work, tokio::sync::mpsc::OwnedPermit<Work>)>) {
        for (work, permit) in own {
            permit.send(work);
        }
    }

    /// Turns a decision's effects into what the transition writes: messages, timers,
    /// history, and the local work this process leases to itself.
    fn effects_to_transition(
        &self,
        id: &str,
        stored: &Stored,
        data: &D,
        effects: &[Effect],
        cause: &Cause,
    ) -> Result<PlannedWrites, SagaError> {
        let def = &self.inner.def;
        let now = self.inner.clock.now();
        let mut out = PlannedWrites::default();
        for effect in effects {
            match effect {
                Effect::CancelTimers => out.cancel_all = true,
                Effect::Execute {
                    step,
                    token,
                    attempt,
                    key,
                }
                | Effect::Compensate {
                    step,
                    token,
                    attempt,
                    key,
                } => {
                    let compensating = matches!(effect, Effect::Compensate { .. });
                    let step_def = &def.steps[*step];
                    let action = if compensating {
                        step_def
                            .compensate
                            .as_ref()
                            .expect("the plan compensates only steps with a compensation")
                    } else {
                        &step_def.forward
                    };
                    out.history.push(HistoryLine {
                        step: Some(step_def.name.clone()),
                        what: if compensating {
                            "compensating"
                        } else {
                            "running"
                        }
                        .into(),
                        detail: Some(format!("attempt {attempt}")),
                    });
                    match action {
                        Action::Local(_) => {
                            let what = TimerWork::Run {
                                step: *step,
                                token: *token,
                                attempt: *attempt,
                                compensating,
                            };
                            // Lease the run to ourselves when we can take it at once;
                            // otherwise any process (this one included) claims it when due.
                            let reserved = self.inner.work_tx.clone().try_reserve_owned().ok();
                            let leased_to = reserved.as_ref().map(|_| {
                                (
                                    self.inner.owner.clone(),
                                    after(now, self.inner.options.lease),
                                )
                            });
                            out.schedule.push(TimerSpec {
                                name: RUN_TIMER.into(),
                                due: now,
                                payload: json(&what),
                                leased_to,
                            });
                            if let Some(permit) = reserved {
                                out.own_work.push((
                                    Work {
                                        instance: id.to_string(),
                                        timer: None,
                                        what,
                                    },
                                    permit,
                                ));
                            }
                        }
                        Action::Remote(call) => {
                            let ctx = StepContext {
                                instance: id.to_string(),
                                step: step_def.name.clone(),
                                key: key.clone(),
                                attempt: *attempt,
                                data: data.clone(),
                            };
                            let mut message = (call.command)(&ctx);
                            self.stamp(&mut message, stored, cause, &ctx, *token, compensating);
                            out.outbox
                                .push(OutboxMessage::new(call.topic.clone(), message));
                        }
                    }
                }
                Effect::ScheduleDeadline {
                    step,
                    token,
                    after: d,
                } => {
                    out.schedule.push(TimerSpec {
                        name: DEADLINE_TIMER.into(),
                        due: after(now, *d),
                        payload: json(&TimerWork::Deadline {
                            step: *step,
                            token: *token,
                        }),
                        leased_to: None,
                    });
                }
                Effect::ScheduleRetry { token, after: d } => {
                    out.schedule.push(TimerSpec {
                        name: RETRY_TIMER.into(),
                        due: after(now, *d),
                        payload: json(&TimerWork::Retry { token: *token }),
                        leased_to: None,
                    });
                    out.history.push(HistoryLine {
                        step: None,
                        what: "backoff".into(),
                        detail: Some(format!("{d:?}")),
                    });
                }
                Effect::Finished => {
                    let (event_type, line) = match &stored.progress.phase {
                        Phase::Compensated => ("SagaCompensated", "finished-compensated"),
                        _ => ("SagaCompleted", "finished-completed"),
                    };
                    out.history.push(HistoryLine {
                        step: None,
                        what: line.into(),
                        detail: stored.progress.failure.clone(),
                    });
                    out.outbox
                        .push(self.lifecycle_event(id, stored, cause, event_type, None));
                }
                Effect::Parked { step, error } => {
                    let (event_type, status) = match &stored.progress.phase {
                        Phase::CompensationFailed { .. } => {
                            ("SagaCompensationFailed", "compensation-failed")
                        }
                        _ => ("SagaNeedsAttention", "needs-attention"),
                    };
                    let step_name = def.steps[*step].name.clone();
                    tracing::error!(
                        saga = %def.name,
                        instance = %id,
                        step = %step_name,
                        %error,
                        "saga instance parked as {status}: an operator must act \
                         (`runnel sagas show {id}`, then retry, skip-step or compensate)"
                    );
                    metrics::counter!(METRIC_PARKED, "saga" => def.name.clone(), "status" => status)
                        .increment(1);
                    out.history.push(HistoryLine {
                        step: Some(step_name.clone()),
                        what: format!("parked-{status}"),
                        detail: Some(error.clone()),
                    });
                    out.outbox.push(self.lifecycle_event(
                        id,
                        stored,
                        cause,
                        event_type,
                        Some(serde_json::json!({ "step": step_name, "error": error })),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Sets the headers a command carries so its reply finds its way back.
    fn stamp(
        &self,
        message: &mut Message,
        stored: &Stored,
        cause: &Cause,
        ctx: &StepContext<D>,
        token: u64,
        compensating: bool,
    ) {
        let h = &mut message.headers;
        h.insert(SAGA_HEADER.into(), self.inner.kind.clone());
        h.insert(INSTANCE_HEADER.into(), ctx.instance.clone());
        h.insert(STEP_HEADER.into(), ctx.step.clone());
        h.insert(TOKEN_HEADER.into(), token.to_string());
        h.insert(
            DIRECTION_HEADER.into(),
            if compensating { "undo" } else { "do" }.into(),
        );
        h.insert(
            REPLY_TO_HEADER.into(),
            self.inner.def.reply_topic.to_string(),
        );
        h.insert(IDEMPOTENCY_KEY_HEADER.into(), ctx.key.clone());
        if message.correlation_id.is_none() {
            message.correlation_id = Some(
                stored
                    .correlation_id
                    .clone()
                    .unwrap_or_else(|| ctx.instance.clone()),
            );
        }
        if message.causation_id.is_none() {
            message.causation_id = cause.message_id.clone();
        }
        if message.key.is_none() {
            message.key = Some(ctx.instance.clone());
        }
    }

    fn lifecycle_event(
        &self,
        id: &str,
        stored: &Stored,
        cause: &Cause,
        event_type: &str,
        extra: Option<serde_json::Value>,
    ) -> OutboxMessage {
        let mut body = serde_json::json!({
            "saga": self.inner.def.name,
            "instance": id,
            "status": status_of(&stored.progress.phase).as_str(),
        });
        if let (Some(extra), Some(map)) = (extra, body.as_object_mut()) {
            if let Some(e) = extra.as_object() {
                map.extend(e.clone());
            }
        }
        if let (Some(f), Some(map)) = (&stored.progress.failure, body.as_object_mut()) {
            map.insert("failure".into(), serde_json::Value::String(f.clone()));
        }
        let mut m = Message::json(event_type, &body);
        m.source = format!("urn:runnel:saga:{}", self.inner.def.name);
        m.key = Some(id.to_string());
        m.subject = Some(id.to_string());
        m.correlation_id = Some(
            stored
                .correlation_id
                .clone()
                .unwrap_or_else(|| id.to_string()),
        );
        m.causation_id = cause.message_id.clone();
        m.headers
            .insert(SAGA_HEADER.into(), self.inner.kind.clone());
        m.headers.insert(INSTANCE_HEADER.into(), id.to_string());
        OutboxMessage::new(self.inner.def.events_topic.clone(), m)
    }

    /// Applies an input built from the instance's current data and progress: decides,
    /// commits (re-deciding after a concurrent change), then hands this process's new
    /// local work to the worker.
    async fn apply<F>(&self, id: &str, cause: Cause, make_input: F) -> Result<Applied, SagaError>
    where
        F: Fn(&D, &Progress) -> (Input, Option<D>),
    {
        self.apply_from(id, cause, None, make_input).await
    }

    /// [`apply`](Self::apply), deciding first on `loaded` (the instance as the caller just
    /// read it) instead of reading it again; a conflict reloads.
    async fn apply_from<F>(
        &self,
        id: &str,
        cause: Cause,
        mut loaded: Option<InstanceRecord>,
        make_input: F,
    ) -> Result<Applied, SagaError>
    where
        F: Fn(&D, &Progress) -> (Input, Option<D>),
    {
        let def = &self.inner.def;
        for _ in 0..CONFLICT_RETRIES_MAX {
            let record = match loaded.take() {
                Some(record) => record,
                None => match self.inner.store.load(&self.inner.kind, id).await? {
                    Some(record) => record,
                    None => {
                        return Err(SagaError::UnknownInstance {
                            kind: self.inner.kind.clone(),
                            id: id.to_string(),
                        })
                    }
                },
            };
            let (progress, correlation_id) = self.decode_progress(&record)?;
            let data = self.decode_data(&record)?;
            let (input, new_data) = make_input(&data, &progress);
            let (next, effects) = match def.plan.decide(id, &progress, &input) {
                Decision::Apply { progress, effects } => (progress, effects),
                Decision::Ignore(why) => {
                    metrics::counter!(METRIC_IGNORED, "saga" => def.name.clone(), "reason" => ignored_reason(&why))
                        .increment(1);
                    tracing::debug!(saga = %def.name, instance = %id, ?input, ?why, "input has no effect");
                    if let Some(timer) = cause.timer {
                        self.inner
                            .store
                            .delete_timer(timer, &self.inner.owner)
                            .await?;
                    }
                    return Ok(Applied::Ignored(why, Box::new(record)));
                }
            };
            let data = new_data.unwrap_or(data);
            let data_bytes =
                serde_json::to_vec(&data).map_err(|e| SagaError::Data(e.to_string()))?;
            let stored = Stored {
                progress: next.clone(),
                correlation_id,
            };
            let mut writes = self.effects_to_transition(id, &stored, &data, &effects, &cause)?;
            let mut history = vec![input_line(def, &input)];
            history.append(&mut writes.history);
            let cancel = if writes.cancel_all {
                CancelTimers::All
            } else if cause.own_run {
                CancelTimers::Named(vec![RUN_TIMER.into()])
            } else {
                CancelTimers::None
            };
            let last_error =
                match &next.phase {
                    Phase::CompensationFailed { error, .. }
                    | Phase::NeedsAttention { error, .. } => Some(error.clone()),
                    _ => match &input {
                        Input::StepUnknown { error, .. }
                        | Input::CompensationFailed { error, .. } => Some(error.clone()),
                        _ => next.failure.clone(),
                    },
                };
            let status = status_of(&next.phase);
            let t = Transition {
                kind: self.inner.kind.clone(),
                id: id.to_string(),
                expected: ExpectedInstance::Version(record.version),
                // An upcast instance is stored under the current version from now on.
                definition_version: def.version,
                correlation: None,
                state: describe(def, &next.phase),
                status,
                progress: json(&stored),
                data: data_bytes,
                last_error,
                outbox: writes.outbox,
                cancel_timers: cancel,
                schedule: writes.schedule,
                fired_timer: cause.timer,
                inbox: cause.inbox.clone(),
                history,
            };
            let keep = self.record_of(&t, !writes.own_work.is_empty());
            match self.commit(t).await? {
                CommitOutcome::Committed { version } => {
                    metrics::counter!(METRIC_TRANSITIONS, "saga" => def.name.clone(), "status" => status.as_str())
                        .increment(1);
                    if status.is_finished() {
                        tracing::info!(saga = %def.name, instance = %id, %status, "saga finished");
                    }
                    self.remember(id, keep, version);
                    self.enqueue(writes.own_work).await;
                    return Ok(Applied::Committed);
                }
                CommitOutcome::Duplicate => return Ok(Applied::Duplicate),
                CommitOutcome::Conflict { .. } | CommitOutcome::CorrelationTaken { .. } => {
                    drop(writes.own_work);
                    continue;
                }
            }
        }
        Err(SagaError::TooManyConflicts { id: id.to_string() })
    }

    /// Applies an operator's action now: retry or skip a parked step, or compensate a
    /// running or parked instance.
    pub async fn operator(&self, id: &str, action: OperatorAction) -> Result<(), SagaError> {
        match self
            .apply(id, Cause::default(), |_, _| (action.input(), None))
            .await?
        {
            Applied::Committed | Applied::Duplicate => Ok(()),
            Applied::Ignored(why, record) => Err(SagaError::NotApplicable {
                id: id.to_string(),
                status: record.status,
                reason: match why {
                    Ignored::NotApplicable(r) => r,
                    Ignored::Finished => "it has finished",
                    _ => "nothing to do",
                },
            }),
        }
    }

    /// Handles a reply to one of this saga's commands (a delivery on its reply topic):
    /// settles the step it answers, once, whatever the duplicates. `handler` names the
    /// inbox the reply is marked in (the consumer's name).
    pub async fn handle_reply(
        &self,
        reply: &Message,
        handler: &str,
    ) -> Result<ReplyHandled, SagaError> {
        let def = &self.inner.def;
        let header = |name: &str| reply.headers.get(name).map(String::as_str);
        let not_ours = |reason: String| SagaError::NotAReply {
            kind: self.inner.kind.clone(),
            reason,
        };
        match header(SAGA_HEADER) {
            Some(k) if k == self.inner.kind => {}
            other => {
                return Err(not_ours(format!(
                    "header {SAGA_HEADER} is {other:?}, not {:?}",
                    self.inner.kind
                )))
            }
        }
        let id = header(INSTANCE_HEADER)
            .ok_or_else(|| not_ours(format!("no {INSTANCE_HEADER} header")))?
            .to_string();
        let step_name =
            header(STEP_HEADER).ok_or_else(|| not_ours(format!("no {STEP_HEADER} header")))?;
        let step = def
            .steps
            .iter()
            .position(|s| s.name == step_name)
            .ok_or_else(|| not_ours(format!("no step named {step_name:?}")))?;
        let token: u64 = header(TOKEN_HEADER)
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| not_ours(format!("no numeric {TOKEN_HEADER} header")))?;
        let compensating = header(DIRECTION_HEADER) == Some("undo");
        let action = if compensating {
            def.steps[step].compensate.as_ref()
        } else {
            Some(&def.steps[step].forward)
        };
        let Some(Action::Remote(call)) = action else {
            return Err(not_ours(format!(
                "step {step_name:?} sends no command in that direction"
            )));
        };
        let failed = header(super::REPLY_OUTCOME_HEADER) == Some("failed");
        let cause = Cause {
            inbox: Some((handler.to_string(), reply.id.clone())),
            message_id: Some(reply.id.clone()),
            ..Cause::default()
        };
        let settled_ok = std::sync::atomic::AtomicBool::new(false);
        let outcome = self
            .apply(&id, cause.clone(), |data, _| {
                if compensating {
                    let input = if failed {
                        Input::CompensationFailed {
                            step,
                            token,
                            error: format!("{} replied {}", reply.source, reply.event_type),
                        }
                    } else {
                        Input::CompensationSucceeded { step, token }
                    };
                    return (input, None);
                }
                match (call.reply)(data.clone(), reply) {
                    Reply::Succeeded(d) => {
                        settled_ok.store(true, Ordering::SeqCst);
                        (Input::StepSucceeded { step, token }, Some(d))
                    }
                    Reply::Failed(error) => (Input::StepFailed { step, token, error }, None),
                    Reply::Unknown(error) => (Input::StepUnknown { step, token, error }, None),
                }
            })
            .await?;
        match outcome {
            Applied::Committed => Ok(ReplyHandled::Applied),
            Applied::Duplicate => Ok(ReplyHandled::Ignored("duplicate delivery".into())),
            Applied::Ignored(why, record) => {
                let late_success = !compensating && settled_ok.load(Ordering::SeqCst);
                if late_success && def.late_replies == super::LateReplyPolicy::Compensate {
                    if let Some(done) = self.compensate_late(&record, step, &cause).await? {
                        return Ok(done);
                    }
                }
                tracing::info!(
                    saga = %def.name,
                    instance = %id,
                    step = %step_name,
                    status = %record.status,
                    ?why,
                    "reply has no effect"
                );
                Ok(ReplyHandled::Ignored(format!("{why:?}")))
            }
        }
    }

    /// Sends the compensation of `step` for a success reply that came after the saga gave
    /// up on the step (it is not among the completed steps and the saga is compensating or
    /// has finished compensating).
    async fn compensate_late(
        &self,
        record: &InstanceRecord,
        step: usize,
        cause: &Cause,
    ) -> Result<Option<ReplyHandled>, SagaError> {
        let def = &self.inner.def;
        let (progress, correlation_id) = self.decode_progress(record)?;
        let gave_up = matches!(
            progress.phase,
            Phase::Compensating { .. }
                | Phase::RetryingCompensation { .. }
                | Phase::Compensated
                | Phase::CompensationFailed { .. }
        ) && !progress.completed.contains(&step);
        let Some(Action::Remote(call)) = def.steps[step].compensate.as_ref() else {
            return Ok(None);
        };
        if !gave_up {
            return Ok(None);
        }
        let data = self.decode_data(record)?;
        let stored = Stored {
            progress: progress.clone(),
            correlation_id,
        };
        let ctx = StepContext {
            instance: record.id.clone(),
            step: def.steps[step].name.clone(),
            key: def.plan.key(&record.id, step, true),
            attempt: 1,
            data: data.clone(),
        };
        let mut message = (call.command)(&ctx);
        self.stamp(&mut message, &stored, cause, &ctx, 0, true);
        let t = Transition {
            kind: self.inner.kind.clone(),
            id: record.id.clone(),
            expected: ExpectedInstance::Version(record.version),
            definition_version: record.definition_version,
            correlation: None,
            state: record.state.clone(),
            status: record.status,
            progress: record.progress.clone(),
            data: record.data.clone(),
            last_error: record.last_error.clone(),
            outbox: vec![OutboxMessage::new(call.topic.clone(), message)],
            cancel_timers: CancelTimers::None,
            schedule: vec![],
            fired_timer: None,
            inbox: cause.inbox.clone(),
            history: vec![HistoryLine {
                step: Some(ctx.step.clone()),
                what: "late-reply-compensated".into(),
                detail: Some("a success reply came after the saga gave up on the step".into()),
            }],
        };
        match self.commit(t).await? {
            CommitOutcome::Committed { .. } => Ok(Some(ReplyHandled::CompensatedLate)),
            CommitOutcome::Duplicate => {
                Ok(Some(ReplyHandled::Ignored("duplicate delivery".into())))
            }
            // The instance moved meanwhile: the reply is redelivered and judged again.
            _ => Err(SagaError::TooManyConflicts {
                id: record.id.clone(),
            }),
        }
    }

    /// Does one piece of work: runs a local step, or applies a timer.
    async fn process(&self, work: Work) -> Result<(), SagaError> {
        let cause = Cause {
            timer: work.timer,
            own_run: work.timer.is_none(),
            ..Cause::default()
        };
        let id = work.instance.as_str();
        let result = match work.what {
            TimerWork::Run {
                step,
                token,
                attempt,
                compensating,
            } => {
                self.run_local(id, step, token, attempt, compensating, cause)
                    .await
            }
            TimerWork::Deadline { step, token } => self
                .apply(id, cause, |_, _| {
                    (Input::DeadlineFired { step, token }, None)
                })
                .await
                .map(drop),
            TimerWork::Retry { token } => self
                .apply(id, cause, |_, _| (Input::RetryTimerFired { token }, None))
                .await
                .map(drop),
            TimerWork::Operator { action } => {
                match self.apply(id, cause, |_, _| (action.input(), None)).await {
                    Ok(Applied::Ignored(why, record)) => {
                        tracing::warn!(
                            saga = %self.inner.def.name,
                            instance = %id,
                            status = %record.status,
                            ?why,
                            "operator request {} does not apply any more",
                            action.as_str()
                        );
                        Ok(())
                    }
                    other => other.map(drop),
                }
            }
        };
        match result {
            Err(SagaError::UnknownInstance { .. }) => {
                // Purged meanwhile: the timer goes with it.
                if let Some(timer) = work.timer {
                    self.inner
                        .store
                        .delete_timer(timer, &self.inner.owner)
                        .await?;
                }
                Ok(())
            }
            Err(e @ SagaError::UnknownVersion { .. }) => {
                // Not ours to run: hand it back for a process that has the version.
                if let Some(timer) = work.timer {
                    let later = after(self.inner.clock.now(), self.inner.options.poll_interval);
                    self.inner
                        .store
                        .release_timer(timer, &self.inner.owner, later)
                        .await?;
                }
                Err(e)
            }
            other => other,
        }
    }

    async fn run_local(
        &self,
        id: &str,
        step: usize,
        token: u64,
        attempt: u32,
        compensating: bool,
        cause: Cause,
    ) -> Result<(), SagaError> {
        let def = &self.inner.def;
        // Work this process queued itself starts from the instance as its commit left it;
        // if that does not match the work, the store's copy decides.
        let mut cached = self.take_committed(id);
        let (record, progress) = loop {
            let record = match cached.take() {
                Some(record) => record,
                None => match self.inner.store.load(&self.inner.kind, id).await? {
                    Some(record) => break (record, None),
                    None => {
                        return Err(SagaError::UnknownInstance {
                            kind: self.inner.kind.clone(),
                            id: id.to_string(),
                        })
                    }
                },
            };
            let (progress, _) = self.decode_progress(&record)?;
            if progress.token == token {
                break (record, Some(progress));
            }
        };
        let progress = match progress {
            Some(p) => p,
            None => self.decode_progress(&record)?.0,
        };
        let current = match progress.phase {
            Phase::Running { step: s, .. } if !compensating => s == step,
            Phase::Compensating { step: s, .. } if compensating => s == step,
            _ => false,
        };
        if !current || progress.token != token {
            // Stale: the instance moved on (another process ran it, an operator acted).
            if let Some(timer) = cause.timer {
                self.inner
                    .store
                    .delete_timer(timer, &self.inner.owner)
                    .await?;
            }
            return Ok(());
        }
        let data = self.decode_data(&record)?;
        let step_def = &def.steps[step];
        let action = if compensating {
            step_def.compensate.as_ref()
        } else {
            Some(&step_def.forward)
        };
        let Some(Action::Local(f)) = action else {
            return Err(SagaError::Corrupt {
                id: id.to_string(),
                what: "timer",
                error: format!(
                    "step {} has no local action in that direction",
                    step_def.name
                ),
            });
        };
        let ctx = StepContext {
            instance: id.to_string(),
            step: step_def.name.clone(),
            key: def.plan.key(id, step, compensating),
            attempt,
            data,
        };
        let started = Instant::now();
        let outcome = self
            .with_heartbeat(
                id,
                cause.timer,
                tokio::time::timeout(self.inner.options.step_timeout, f(ctx)),
            )
            .await;
        metrics::histogram!(METRIC_STEP_SECONDS, "saga" => def.name.clone(), "step" => step_def.name.clone())
            .record(started.elapsed().as_secs_f64());
        let n = self.inner.steps_run.fetch_add(1, Ordering::SeqCst) + 1;
        self.check_crash(CrashPoint::AfterStep(n))?;
        let (input, new_data) = match outcome {
            Ok(Ok(d)) if compensating => (Input::CompensationSucceeded { step, token }, Some(d)),
            Ok(Ok(d)) => (Input::StepSucceeded { step, token }, Some(d)),
            Ok(Err(e)) if compensating => (
                Input::CompensationFailed {
                    step,
                    token,
                    error: e.to_string(),
                },
                None,
            ),
            Ok(Err(StepError::Failed(error))) => (Input::StepFailed { step, token, error }, None),
            Ok(Err(StepError::Unknown(e))) => (
                Input::StepUnknown {
                    step,
                    token,
                    error: e.to_string(),
                },
                None,
            ),
            Err(_) => {
                let error = format!("timed out after {:?}", self.inner.options.step_timeout);
                if compensating {
                    (Input::CompensationFailed { step, token, error }, None)
                } else {
                    (Input::StepUnknown { step, token, error }, None)
                }
            }
        };
        let new_data = std::sync::Mutex::new(new_data);
        self.apply_from(id, cause, Some(record), move |_, _| {
            (
                input.clone(),
                new_data.lock().expect("not poisoned").clone(),
            )
        })
        .await
        .map(drop)
    }

    /// Runs `work`, renewing this process's lease on the instance's run timer while it
    /// takes long, so no other process takes the step over while it is still running.
    async fn with_heartbeat<T>(
        &self,
        id: &str,
        timer: Option<u64>,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let every = self.inner.options.lease / 3;
        tokio::pin!(work);
        let mut timer = timer;
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = tokio::time::sleep(every) => {
                    if timer.is_none() {
                        timer = self
                            .inner
                            .store
                            .timers(&self.inner.kind, id)
                            .await
                            .ok()
                            .and_then(|ts| ts.into_iter().find(|t| t.name == RUN_TIMER).map(|t| t.id));
                    }
                    if let Some(t) = timer {
                        let until = after(self.inner.clock.now(), self.inner.options.lease);
                        match self.inner.store.extend_timer_lease(t, &self.inner.owner, until).await {
                            Ok(true) => {}
                            Ok(false) => tracing::warn!(
                                saga = %self.inner.def.name,
                                instance = %id,
                                "lost the lease on a running step (another process took it over)"
                            ),
                            Err(e) => tracing::warn!(error = %e, "cannot renew a step's lease"),
                        }
                    }
                }
            }
        }
    }

    fn decode_work(&self, timer: &runnel_core::processor::DueTimer) -> Option<Work> {
        match serde_json::from_slice::<TimerWork>(&timer.payload) {
            Ok(what) => Some(Work {
                instance: timer.instance.clone(),
                timer: Some(timer.id),
                what,
            }),
            Err(e) => {
                tracing::error!(
                    saga = %self.inner.def.name,
                    instance = %timer.instance,
                    timer = %timer.name,
                    error = %e,
                    "unreadable timer; left in place for an operator"
                );
                None
            }
        }
    }

    /// Handles everything due now — this process's queued local steps and the due timers
    /// it can claim — and what that work leads to, until nothing is left. Returns how many
    /// pieces of work ran. Tests drive a virtual clock with this; services use
    /// [`run`](Self::run).
    pub async fn tick(&self) -> Result<usize, SagaError> {
        let mut done = 0;
        loop {
            let mut batch = Vec::new();
            {
                let mut rx = self.inner.work_rx.lock().await;
                while let Ok(w) = rx.try_recv() {
                    batch.push(w);
                }
            }
            let due = self
                .inner
                .store
                .claim_due_timers(
                    &self.inner.kind,
                    &self.inner.versions,
                    &self.inner.owner,
                    self.inner.clock.now(),
                    self.inner.options.lease,
                    runnel_core::processor::PROCESSOR_BATCH_MAX.min(256),
                )
                .await?;
            batch.extend(due.iter().filter_map(|t| self.decode_work(t)));
            if batch.is_empty() {
                return Ok(done);
            }
            done += batch.len();
            // At most `max_concurrency` pieces at once, as `run` does; with 1 they run in
            // claim order, so a test's commits (and crash points) come in the same order
            // every time.
            let limit = self.inner.options.max_concurrency.max(1);
            let mut results = Vec::with_capacity(batch.len());
            let mut pending = batch.into_iter().peekable();
            while pending.peek().is_some() {
                let chunk: Vec<Work> = pending.by_ref().take(limit).collect();
                results.extend(
                    futures_util::future::join_all(chunk.into_iter().map(|w| self.process(w)))
                        .await,
                );
            }
            for r in results {
                match r {
                    Ok(()) => {}
                    Err(e @ SagaError::Crashed(_)) => return Err(e),
                    Err(e @ SagaError::UnknownVersion { .. }) => return Err(e),
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Runs the instances until `shutdown`: local steps this process committed, and every
    /// due timer of the saga it can claim (including work of processes that died).
    pub async fn run(&self, shutdown: Shutdown) -> Result<(), SagaError> {
        let mut tasks = tokio::task::JoinSet::new();
        let mut rx = self.inner.work_rx.lock().await;
        let poll = self.inner.options.poll_interval;
        let mut next_purge = Instant::now();
        // When to look for due timers next: at once, then at the earliest due time (or
        // the poll interval), or sooner when this process schedules an earlier timer. Local
        // steps this process commits come through the queue without a look at the store.
        let mut next_claim = tokio::time::Instant::now();
        loop {
            while let Some(joined) = tasks.try_join_next() {
                log_outcome(&self.inner.def.name, joined);
            }
            if Instant::now() >= next_purge {
                next_purge = Instant::now() + PURGE_INTERVAL;
                if let Err(e) = self.purge_finished().await {
                    tracing::warn!(saga = %self.inner.def.name, error = %e, "cannot purge finished instances");
                }
            }
            if shutdown.is_requested() {
                break;
            }
            if let Some(at) = self.take_wake() {
                next_claim = next_claim.min(at);
            }
            if tokio::time::Instant::now() >= next_claim {
                let free = self.inner.permits.available_permits();
                let limit = free.min(256);
                let mut claimed = 0;
                if free > 0 {
                    match self
                        .inner
                        .store
                        .claim_due_timers(
                            &self.inner.kind,
                            &self.inner.versions,
                            &self.inner.owner,
                            self.inner.clock.now(),
                            self.inner.options.lease,
                            limit,
                        )
                        .await
                    {
                        Ok(due) => {
                            claimed = due.len();
                            for t in &due {
                                if let Some(work) = self.decode_work(t) {
                                    self.spawn(&mut tasks, work).await;
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(saga = %self.inner.def.name, error = %e, "cannot claim due timers")
                        }
                    }
                }
                next_claim = if free == 0 {
                    // Saturated: look again shortly, once some work has finished.
                    tokio::time::Instant::now() + Duration::from_millis(20).min(poll)
                } else if claimed > 0 && claimed == limit {
                    tokio::time::Instant::now() // more may be due
                } else {
                    let wait = match self.inner.store.next_due(&self.inner.kind).await {
                        Ok(Some(next)) => (next - self.inner.clock.now())
                            .to_std()
                            .unwrap_or(Duration::ZERO)
                            .min(poll),
                        _ => poll,
                    };
                    tokio::time::Instant::now() + wait.max(Duration::from_millis(5))
                };
            }
            tokio::select! {
                work = rx.recv() => match work {
                    Some(work) => self.spawn(&mut tasks, work).await,
                    None => break,
                },
                _ = tokio::time::sleep_until(next_claim) => {}
                _ = self.inner.wake.notified() => {}
                _ = shutdown.requested() => break,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    log_outcome(&self.inner.def.name, joined);
                }
            }
        }
        // Let running steps finish (their leases would otherwise lapse and the steps run
        // again elsewhere, which is safe but wasteful).
        while let Some(joined) = tasks.join_next().await {
            log_outcome(&self.inner.def.name, joined);
        }
        Ok(())
    }

    /// Deletes finished instances older than the retention, in batches. Returns how many.
    pub async fn purge_finished(&self) -> Result<u64, SagaError> {
        let Some(retention) = self.inner.options.retention else {
            return Ok(0);
        };
        let before = self.inner.clock.now()
            - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let mut total = 0;
        loop {
            let n = self
                .inner
                .store
                .purge_finished(
                    Some(&self.inner.kind),
                    before,
                    runnel_core::processor::PROCESSOR_BATCH_MAX,
                )
                .await?;
            total += n;
            if n < runnel_core::processor::PROCESSOR_BATCH_MAX as u64 {
                break;
            }
        }
        if total > 0 {
            tracing::info!(saga = %self.inner.def.name, purged = total, "purged finished instances");
        }
        Ok(total)
    }

    async fn spawn(&self, tasks: &mut tokio::task::JoinSet<Result<(), SagaError>>, work: Work) {
        let permit = Arc::clone(&self.inner.permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let me = self.clone();
        tasks.spawn(async move {
            let _permit = permit;
            me.process(work).await
        });
    }
}

fn log_outcome(saga: &str, joined: Result<Result<(), SagaError>, tokio::task::JoinError>) {
    match joined {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(saga, error = %e, "saga work failed; it is retried when its lease lapses")
        }
        Err(e) => {
            tracing::error!(saga, error = %e, "saga work panicked; it is retried when its lease lapses")
        }
    }
}

fn ignored_reason(why: &Ignored) -> &'static str {
    match why {
        Ignored::Stale => "stale",
        Ignored::NotAwaited => "not-awaited",
        Ignored::Finished => "finished",
        Ignored::NotApplicable(_) => "not-applicable",
    }
}

#[derive(Default)]
struct PlannedWrites {
    outbox: Vec<OutboxMessage>,
    schedule: Vec<TimerSpec>,
    history: Vec<HistoryLine>,
    cancel_all: bool,
    own_work: Vec<(Work, tokio::sync::mpsc::OwnedPermit<Work>)>,
}

/// How to start an instance.
#[derive(Clone, Debug)]
pub struct StartRequest<D> {
    /// The instance id.
    pub id: String,
    /// The data.
    pub data: D,
    /// A key unique per saga: a second start with it creates nothing (two start messages
    /// for the same order make one instance).
    pub correlation: Option<String>,
    /// The inbox mark of the start message, `(handler, message id)`: a redelivered start
    /// message creates nothing.
    pub inbox: Option<(String, String)>,
    /// The correlation id the saga's messages carry (default: the instance id).
    pub correlation_id: Option<String>,
}

impl<D> StartRequest<D> {
    /// Instance `id` with `data`.
    pub fn new(id: impl Into<String>, data: D) -> Self {
        StartRequest {
            id: id.into(),
            data,
            correlation: None,
            inbox: None,
            correlation_id: None,
        }
    }

    /// Starting from `message` handled by `handler`: the message's inbox mark, and its
    /// correlation id (or its id) for the saga's messages.
    pub fn from_message(mut self, handler: &str, message: &Message) -> Self {
        self.inbox = Some((handler.to_string(), message.id.clone()));
        self.correlation_id = Some(
            message
                .correlation_id
                .clone()
                .unwrap_or_else(|| message.id.clone()),
        );
        self
    }

    /// With a correlation key.
    pub fn correlation(mut self, key: impl Into<String>) -> Self {
        self.correlation = Some(key.into());
        self
    }
}

/// Builds the reply to a saga's command, for the service that handled it: the reply goes
/// to the topic the command names, carries the saga's headers back, and is correlated and
/// caused by the command. `ok` says whether the step succeeded (`false`: a definite
/// failure, it changed nothing).
///
/// ```
/// use runnel::saga::reply_to;
/// use runnel::core::Message;
///
/// let mut command = Message::json("ChargePayment", &serde_json::json!({"amount": 30}));
/// command.headers.insert("runnel-reply-to".into(), "sagas.orders.replies".into());
/// command.headers.insert("runnel-saga-instance".into(), "o-1".into());
/// let (topic, reply) = reply_to(&command, "PaymentCharged", &serde_json::json!({}), true).unwrap();
/// assert_eq!(topic.as_str(), "sagas.orders.replies");
/// assert_eq!(reply.headers["runnel-saga-instance"], "o-1");
/// assert_eq!(reply.causation_id.as_deref(), Some(command.id.as_str()));
/// ```
pub fn reply_to(
    command: &Message,
    event_type: &str,
    data: &serde_json::Value,
    ok: bool,
) -> Result<(TopicName, Message), BoxError> {
    let topic = command
        .headers
        .get(REPLY_TO_HEADER)
        .ok_or_else(|| format!("command {} has no {REPLY_TO_HEADER} header", command.id))?;
    let topic = TopicName::new(topic.clone())?;
    let mut reply = Message::json(event_type, data);
    let mut headers = BTreeMap::new();
    for h in [
        SAGA_HEADER,
        INSTANCE_HEADER,
        STEP_HEADER,
        TOKEN_HEADER,
        DIRECTION_HEADER,
    ] {
        if let Some(v) = command.headers.get(h) {
            headers.insert(h.to_string(), v.clone());
        }
    }
    headers.insert(
        super::REPLY_OUTCOME_HEADER.into(),
        if ok { "ok" } else { "failed" }.into(),
    );
    reply.headers = headers;
    reply.key = command.key.clone();
    reply.correlation_id = command
        .correlation_id
        .clone()
        .or_else(|| Some(command.id.clone()));
    reply.causation_id = Some(command.id.clone());
    reply.traceparent = command.traceparent.clone();
    Ok((topic, reply))
}
