//! A saga's definition: its name and version, its ordered steps over typed data (local
//! async functions, or commands sent over the bus and answered by replies), the pivot,
//! the retry policies and the policies for late and orphaned messages.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;

use runnel_core::{Message, TopicName};

use super::machine::{Plan, PlanError, StepPlan};
use crate::consumer::BoxError;
use crate::retry::RetryPolicy;

/// The data a saga carries from step to step: stored as JSON in the instance row.
pub trait SagaData: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> SagaData for T {}

/// What a step (or a compensation) is given.
#[derive(Clone, Debug)]
pub struct StepContext<D> {
    /// The instance id.
    pub instance: String,
    /// The step's name.
    pub step: String,
    /// The idempotency key: the same on every attempt of this step in this direction
    /// (`{instance}/{step}/do` or `/undo`). Pass it to whatever the step calls, so an
    /// attempt that runs again after a crash has its effect once.
    pub key: String,
    /// Which attempt this is (1-based; counts again from 1 after an operator's retry).
    pub attempt: u32,
    /// The instance's data as it is now.
    pub data: D,
}

/// Why a step or a compensation did not succeed.
#[derive(Debug)]
pub enum StepError {
    /// A definite failure: the step knows it changed nothing (a card declined, out of
    /// stock). Forward, the saga compensates; a compensation that fails this way is
    /// retried like any other failed compensation.
    Failed(String),
    /// The outcome is unknown (a timeout, a lost connection): tried again with backoff
    /// under the same key, then parked for an operator — never compensated blindly.
    Unknown(BoxError),
}

impl StepError {
    /// A definite failure.
    pub fn failed(reason: impl Into<String>) -> Self {
        StepError::Failed(reason.into())
    }

    /// An unknown outcome.
    pub fn unknown(error: impl Into<BoxError>) -> Self {
        StepError::Unknown(error.into())
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepError::Failed(r) => write!(f, "failed: {r}"),
            StepError::Unknown(e) => write!(f, "outcome unknown: {e}"),
        }
    }
}

impl std::error::Error for StepError {}

/// What a step returns: the (possibly changed) data, or why it did not succeed.
pub type StepResult<D> = Result<D, StepError>;

pub(crate) type LocalFn<D> =
    Arc<dyn Fn(StepContext<D>) -> BoxFuture<'static, StepResult<D>> + Send + Sync>;
pub(crate) type CommandFn<D> = Arc<dyn Fn(&StepContext<D>) -> Message + Send + Sync>;
pub(crate) type ReplyFn<D> = Arc<dyn Fn(D, &Message) -> Reply<D> + Send + Sync>;

/// How a remote step's reply settles the step.
#[derive(Debug)]
pub enum Reply<D> {
    /// The step succeeded; the saga goes on with this data.
    Succeeded(D),
    /// The step failed definitely (it changed nothing).
    Failed(String),
    /// The step's outcome is unknown: try again with backoff.
    Unknown(String),
}

/// A command sent over the bus, answered by a reply on the saga's reply topic.
pub struct RemoteCall<D> {
    pub(crate) topic: TopicName,
    pub(crate) command: CommandFn<D>,
    pub(crate) reply: ReplyFn<D>,
}

impl<D: SagaData> RemoteCall<D> {
    /// Sends the message `command` builds to `topic`; a reply whose type is a success
    /// settles the step with the data unchanged, any other reply is a definite failure
    /// (refine with [`on_reply`](Self::on_reply)).
    pub fn new<F>(topic: TopicName, command: F) -> Self
    where
        F: Fn(&StepContext<D>) -> Message + Send + Sync + 'static,
    {
        RemoteCall {
            topic,
            command: Arc::new(command),
            reply: Arc::new(|data, reply: &Message| {
                if reply.headers.get(REPLY_OUTCOME_HEADER).map(String::as_str) == Some("failed") {
                    Reply::Failed(format!("{} replied {}", reply.source, reply.event_type))
                } else {
                    Reply::Succeeded(data)
                }
            }),
        }
    }

    /// Decides what a reply means (and updates the data from it).
    pub fn on_reply<F>(mut self, reply: F) -> Self
    where
        F: Fn(D, &Message) -> Reply<D> + Send + Sync + 'static,
    {
        self.reply = Arc::new(reply);
        self
    }
}

pub(crate) enum Action<D> {
    Local(LocalFn<D>),
    Remote(RemoteCall<D>),
}

impl<D> Action<D> {
    pub(crate) fn is_remote(&self) -> bool {
        matches!(self, Action::Remote(_))
    }
}

pub(crate) struct StepDef<D> {
    pub(crate) name: String,
    pub(crate) forward: Action<D>,
    pub(crate) compensate: Option<Action<D>>,
    pub(crate) deadline: Duration,
}

/// Header of a reply that says whether the step failed (`failed`) or succeeded (`ok`),
/// set by [`reply_to`](super::reply_to).
pub const REPLY_OUTCOME_HEADER: &str = "runnel-saga-outcome";

/// What a reply for an instance that has finished (or is parked, or past that step) does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LateReplyPolicy {
    /// Logged, counted (`runnel_saga_ignored_total{reason}`) and acknowledged.
    #[default]
    Ignore,
    /// Like `Ignore`, and if the late reply says a forward step succeeded that the saga
    /// does not count as done (it gave up on it and compensated), that step's compensation
    /// is sent (remote compensations only).
    Compensate,
}

/// What a reply naming an instance that does not exist does. It is retried first (the
/// instance's start may not have committed yet); after the consumer's retries:
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OrphanPolicy {
    /// Dead-lettered (the consumer's dead-letter store keeps it for an operator).
    #[default]
    DeadLetter,
    /// Logged, counted and acknowledged.
    Discard,
}

/// Longest saga name, in bytes (`[a-z0-9-]`, it is part of topic and kind names).
pub const SAGA_NAME_LEN_MAX: usize = 64;
/// Default time a remote step's reply may take before its outcome counts as unknown.
pub const REPLY_DEADLINE_DEFAULT: Duration = Duration::from_secs(30);

/// A saga's definition. Build one with [`SagaDefinition::builder`].
pub struct SagaDefinition<D> {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) steps: Vec<StepDef<D>>,
    pub(crate) plan: Plan,
    pub(crate) late_replies: LateReplyPolicy,
    pub(crate) orphans: OrphanPolicy,
    pub(crate) reply_topic: TopicName,
    pub(crate) events_topic: TopicName,
    pub(crate) upcasters: BTreeMap<u32, UpcastFn>,
}

pub(crate) type UpcastFn =
    Arc<dyn Fn(serde_json::Value) -> Result<serde_json::Value, BoxError> + Send + Sync>;

impl<D> fmt::Debug for SagaDefinition<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaDefinition")
            .field("name", &self.name)
            .field("version", &self.version)
            .field(
                "steps",
                &self.steps.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Why a definition cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionError {
    /// The step list or the pivot is wrong.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The saga's name is not usable in kind and topic names.
    #[error("saga name {0:?} must be 1..={SAGA_NAME_LEN_MAX} characters of [a-z0-9-]")]
    InvalidName(String),
    /// The version is 0.
    #[error("saga versions start at 1")]
    InvalidVersion,
    /// The pivot names no step.
    #[error("the pivot {0:?} names no step")]
    UnknownPivot(String),
    /// An upcaster is registered for the current version or a later one.
    #[error(
        "an upcaster from version {from} does not make sense for a definition at version {current}"
    )]
    InvalidUpcaster { from: u32, current: u32 },
    /// A derived topic name is invalid.
    #[error("topic: {0}")]
    Topic(String),
}

/// Builds a [`SagaDefinition`].
pub struct SagaBuilder<D> {
    name: String,
    version: u32,
    steps: Vec<StepDef<D>>,
    pivot: Option<String>,
    forward_retry: RetryPolicy,
    compensation_retry: RetryPolicy,
    late_replies: LateReplyPolicy,
    orphans: OrphanPolicy,
    reply_topic: Option<TopicName>,
    events_topic: Option<TopicName>,
    upcasters: BTreeMap<u32, UpcastFn>,
    _data: PhantomData<fn() -> D>,
}

/// Default retries of a step whose outcome is unknown: 5 attempts, 100 ms to 10 s apart.
pub fn default_forward_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(10),
    }
}

/// Default retries of a failing compensation: 8 attempts, 100 ms to 30 s apart.
pub fn default_compensation_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 8,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(30),
    }
}

impl<D: SagaData> SagaDefinition<D> {
    /// Starts a definition named `name` (`[a-z0-9-]`, e.g. `order-fulfillment`) at
    /// `version` (from 1; raise it when the steps change in a way running instances
    /// cannot follow).
    pub fn builder(name: impl Into<String>, version: u32) -> SagaBuilder<D> {
        SagaBuilder {
            name: name.into(),
            version,
            steps: Vec::new(),
            pivot: None,
            forward_retry: default_forward_retry(),
            compensation_retry: default_compensation_retry(),
            late_replies: LateReplyPolicy::default(),
            orphans: OrphanPolicy::default(),
            reply_topic: None,
            events_topic: None,
            upcasters: BTreeMap::new(),
            _data: PhantomData,
        }
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The definition's version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The processor kind its instances are stored under (`saga:{name}`).
    pub fn kind(&self) -> String {
        format!("saga:{}", self.name)
    }

    /// The topic replies to its commands go to (`sagas.{name}.replies` by default).
    pub fn reply_topic(&self) -> &TopicName {
        &self.reply_topic
    }

    /// The topic its lifecycle events (`SagaCompleted`, `SagaCompensated`,
    /// `SagaCompensationFailed`, `SagaNeedsAttention`) go to (`sagas.{name}.events`).
    pub fn events_topic(&self) -> &TopicName {
        &self.events_topic
    }

    /// The topics its remote steps send commands to (forward and compensation), sorted,
    /// each once.
    pub fn command_topics(&self) -> Vec<&TopicName> {
        let mut topics: Vec<&TopicName> = self
            .steps
            .iter()
            .flat_map(|s| std::iter::once(&s.forward).chain(s.compensate.as_ref()))
            .filter_map(|a| match a {
                Action::Remote(call) => Some(&call.topic),
                Action::Local(_) => None,
            })
            .collect();
        topics.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        topics.dedup();
        topics
    }

    /// The step names, in order.
    pub fn step_names(&self) -> Vec<&str> {
        self.steps.iter().map(|s| s.name.as_str()).collect()
    }

    /// The definition versions whose instances this definition runs: its own, and every
    /// version it has an upcaster chain from.
    pub fn runs_versions(&self) -> Vec<u32> {
        let mut versions = vec![self.version];
        let mut v = self.version;
        while v > 1 && self.upcasters.contains_key(&(v - 1)) {
            v -= 1;
            versions.push(v);
        }
        versions
    }
}

impl<D: SagaData> SagaBuilder<D> {
    /// Adds a local step: `forward` runs in this process, given the data and the step's
    /// idempotency key; `compensate` (if any) undoes it.
    pub fn local<F, Fut>(mut self, name: impl Into<String>, forward: F) -> Self
    where
        F: Fn(StepContext<D>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StepResult<D>> + Send + 'static,
    {
        self.steps.push(StepDef {
            name: name.into(),
            forward: Action::Local(Arc::new(move |ctx| Box::pin(forward(ctx)))),
            compensate: None,
            deadline: REPLY_DEADLINE_DEFAULT,
        });
        self
    }

    /// Adds a remote step: its command goes out through the outbox in the commit that
    /// records the step as awaited; the step settles when the reply comes (within
    /// `deadline`, else its outcome counts as unknown and it is sent again).
    pub fn remote(
        mut self,
        name: impl Into<String>,
        call: RemoteCall<D>,
        deadline: Duration,
    ) -> Self {
        self.steps.push(StepDef {
            name: name.into(),
            forward: Action::Remote(call),
            compensate: None,
            deadline,
        });
        self
    }

    /// Gives the last added step a local compensation.
    pub fn compensate_local<F, Fut>(mut self, compensate: F) -> Self
    where
        F: Fn(StepContext<D>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StepResult<D>> + Send + 'static,
    {
        if let Some(step) = self.steps.last_mut() {
            step.compensate = Some(Action::Local(Arc::new(move |ctx| {
                Box::pin(compensate(ctx))
            })));
        }
        self
    }

    /// Gives the last added step a remote compensation (a command answered by a reply,
    /// within the step's deadline).
    pub fn compensate_remote(mut self, call: RemoteCall<D>) -> Self {
        if let Some(step) = self.steps.last_mut() {
            step.compensate = Some(Action::Remote(call));
        }
        self
    }

    /// Makes the last added step the pivot: once it succeeded, nothing is compensated and
    /// later steps only retry forward.
    pub fn pivot(mut self) -> Self {
        self.pivot = self.steps.last().map(|s| s.name.clone());
        self
    }

    /// How steps with an unknown outcome are retried.
    pub fn forward_retry(mut self, policy: RetryPolicy) -> Self {
        self.forward_retry = policy;
        self
    }

    /// How failing compensations are retried before the instance is parked.
    pub fn compensation_retry(mut self, policy: RetryPolicy) -> Self {
        self.compensation_retry = policy;
        self
    }

    /// What replies that come too late do.
    pub fn late_replies(mut self, policy: LateReplyPolicy) -> Self {
        self.late_replies = policy;
        self
    }

    /// What replies for unknown instances do after their retries.
    pub fn orphans(mut self, policy: OrphanPolicy) -> Self {
        self.orphans = policy;
        self
    }

    /// Replies go to `topic` instead of `sagas.{name}.replies`.
    pub fn reply_topic(mut self, topic: TopicName) -> Self {
        self.reply_topic = Some(topic);
        self
    }

    /// Lifecycle events go to `topic` instead of `sagas.{name}.events`.
    pub fn events_topic(mut self, topic: TopicName) -> Self {
        self.events_topic = Some(topic);
        self
    }

    /// Instances stored under version `from` (older than this definition's) have their
    /// data rewritten by `upcast` on load, to the shape of version `from + 1`; a chain of
    /// upcasters up to the current version lets this definition run those instances.
    pub fn upcast_from<F>(mut self, from: u32, upcast: F) -> Self
    where
        F: Fn(serde_json::Value) -> Result<serde_json::Value, BoxError> + Send + Sync + 'static,
    {
        self.upcasters.insert(from, Arc::new(upcast));
        self
    }

    /// Checks and builds the definition.
    pub fn build(self) -> Result<SagaDefinition<D>, DefinitionError> {
        let valid = !self.name.is_empty()
            && self.name.len() <= SAGA_NAME_LEN_MAX
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(DefinitionError::InvalidName(self.name));
        }
        if self.version == 0 {
            return Err(DefinitionError::InvalidVersion);
        }
        if let Some(from) = self.upcasters.keys().find(|v| **v >= self.version) {
            return Err(DefinitionError::InvalidUpcaster {
                from: *from,
                current: self.version,
            });
        }
        let pivot = match &self.pivot {
            Some(name) => Some(
                self.steps
                    .iter()
                    .position(|s| &s.name == name)
                    .ok_or_else(|| DefinitionError::UnknownPivot(name.clone()))?,
            ),
            None => None,
        };
        let plans = self
            .steps
            .iter()
            .map(|s| StepPlan {
                name: s.name.clone(),
                reply_deadline: s.forward.is_remote().then_some(s.deadline),
                compensable: s.compensate.is_some(),
            })
            .collect();
        let plan = Plan::new(plans, pivot, self.forward_retry, self.compensation_retry)?;
        let topic = |suffix: &str| {
            TopicName::new(format!("sagas.{}.{suffix}", self.name))
                .map_err(|e| DefinitionError::Topic(e.to_string()))
        };
        let reply_topic = match self.reply_topic {
            Some(t) => t,
            None => topic("replies")?,
        };
        let events_topic = match self.events_topic {
            Some(t) => t,
            None => topic("events")?,
        };
        Ok(SagaDefinition {
            name: self.name,
            version: self.version,
            steps: self.steps,
            plan,
            late_replies: self.late_replies,
            orphans: self.orphans,
            reply_topic,
            events_topic,
            upcasters: self.upcasters,
        })
    }
}
