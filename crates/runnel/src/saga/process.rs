//! State-machine process managers: named states; events correlated to one instance by a
//! key read from the event; transitions that change the data, move to another state, send
//! commands or publish events (through the outbox) and schedule or cancel durable timers;
//! final states. A start event creates the instance; two start events for the same key
//! make one instance (the key is the instance id).
//!
//! Each transition is one [`ProcessorStore::commit`]: the instance row (checked against
//! the version it was read at), the messages, the timers and the inbox mark of the event,
//! so a redelivered event has its effect once and a crash loses nothing.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use runnel::core::{Message, TopicName};
//! use runnel::saga::process::ProcessDefinition;
//! use runnel_sqlite::{SqliteProcessorStore, SqliteStore};
//!
//! #[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
//! struct Shipping { order: String, paid: bool }
//!
//! let order_of = |m: &Message| m.payload_json().ok()?.get("order")?.as_str().map(String::from);
//! let pm = ProcessDefinition::<Shipping>::builder("shipping", 1)
//!     .start_on("OrderPlaced", order_of, "awaiting-payment", |step, _event| {
//!         step.data.order = step.instance().to_string();
//!         // Remind after a day unless paid.
//!         step.schedule("payment-reminder", Duration::from_secs(86_400), serde_json::json!({}));
//!         Ok(())
//!     })
//!     .on("awaiting-payment", "PaymentReceived", order_of, |step, _event| {
//!         step.data.paid = true;
//!         step.cancel("payment-reminder");
//!         let ship = Message::json("ShipOrder", &serde_json::json!({"order": step.data.order}));
//!         step.send(TopicName::new("shipping.commands").unwrap(), ship);
//!         step.goto("shipping");
//!         Ok(())
//!     })
//!     .on("shipping", "OrderShipped", order_of, |step, _event| {
//!         step.goto("done");
//!         Ok(())
//!     })
//!     .final_state("done")
//!     .build()?;
//! let store = Arc::new(SqliteProcessorStore::new(SqliteStore::open_temporary()?));
//! let shipping = runnel::saga::process::ProcessRuntime::new(pm, store);
//! let placed = Message::json("OrderPlaced", &serde_json::json!({"order": "o-1"}));
//! shipping.handle(&placed, "orders/shipping").await?;
//! shipping.handle(&placed, "orders/shipping").await?; // a duplicate: no second instance
//! let paid = Message::json("PaymentReceived", &serde_json::json!({"order": "o-1"}));
//! shipping.handle(&paid, "payments/shipping").await?;
//! assert_eq!(shipping.load("o-1").await?.unwrap().state, "shipping");
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use runnel_core::outbox::OutboxMessage;
use runnel_core::processor::{
    CancelTimers, CommitOutcome, ExpectedInstance, HistoryLine, InstanceRecord, InstanceStatus,
    ProcessorStore, TimerSpec, Transition,
};
use runnel_core::{Clock, Message, SystemClock, TopicName};

use super::definition::{SagaData, SAGA_NAME_LEN_MAX};
use super::runtime::{SagaError, CONFLICT_RETRIES_MAX, METRIC_IGNORED, METRIC_TRANSITIONS};
use crate::app::Shutdown;

type CorrelateFn = Arc<dyn Fn(&Message) -> Option<String> + Send + Sync>;
type TransitionFn<D> =
    Arc<dyn Fn(&mut ProcessStep<D>, &Message) -> Result<(), String> + Send + Sync>;
type TimerFn<D> =
    Arc<dyn Fn(&mut ProcessStep<D>, &serde_json::Value) -> Result<(), String> + Send + Sync>;

/// What a transition does to its instance: change the data, move to another state, send
/// messages, schedule and cancel timers. All of it commits together.
pub struct ProcessStep<D> {
    /// The instance's data; change it in place.
    pub data: D,
    instance: String,
    state: String,
    goto: Option<String>,
    sends: Vec<OutboxMessage>,
    schedules: Vec<(String, Duration, serde_json::Value)>,
    cancels: Vec<String>,
}

impl<D> ProcessStep<D> {
    /// The instance id (its correlation key).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The state the instance is in (before this transition).
    pub fn state(&self) -> &str {
        &self.state
    }

    /// Moves the instance to `state` when the transition commits.
    pub fn goto(&mut self, state: impl Into<String>) {
        self.goto = Some(state.into());
    }

    /// Sends `message` to `topic` (a command or an event) through the outbox. It carries
    /// the event's correlation id and the event as its causation unless set.
    pub fn send(&mut self, topic: TopicName, message: Message) {
        self.sends.push(OutboxMessage::new(topic, message));
    }

    /// Schedules the timer `name` to fire `after` from now with `payload` (replacing a
    /// pending one of that name).
    pub fn schedule(
        &mut self,
        name: impl Into<String>,
        after: Duration,
        payload: serde_json::Value,
    ) {
        self.schedules.push((name.into(), after, payload));
    }

    /// Cancels the pending timer `name`, if any.
    pub fn cancel(&mut self, name: impl Into<String>) {
        self.cancels.push(name.into());
    }
}

/// What an event that no transition of the instance's state handles does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnhandledPolicy {
    /// Logged, counted (`runnel_saga_ignored_total{reason="unhandled"}`) and acknowledged.
    #[default]
    Ignore,
    /// An error: the consumer dead-letters it.
    DeadLetter,
}

struct Start<D> {
    correlate: CorrelateFn,
    state: String,
    then: TransitionFn<D>,
}

/// A process manager's definition. Build one with [`ProcessDefinition::builder`].
pub struct ProcessDefinition<D> {
    name: String,
    version: u32,
    starts: BTreeMap<String, Start<D>>,
    transitions: BTreeMap<(String, String), (CorrelateFn, TransitionFn<D>)>,
    timers: BTreeMap<(String, String), TimerFn<D>>,
    finals: BTreeSet<String>,
    unhandled: UnhandledPolicy,
}

/// Builds a [`ProcessDefinition`].
pub struct ProcessBuilder<D> {
    def: ProcessDefinition<D>,
}

/// Why a process definition cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessDefinitionError {
    /// The name is not usable in kind names.
    #[error("process name {0:?} must be 1..={SAGA_NAME_LEN_MAX} characters of [a-z0-9-]")]
    InvalidName(String),
    /// The version is 0.
    #[error("process versions start at 1")]
    InvalidVersion,
    /// Nothing starts an instance.
    #[error("a process manager needs at least one start event")]
    NoStart,
    /// A transition leaves a final state.
    #[error("state {0:?} is final: nothing may happen in it")]
    FromFinal(String),
}

impl<D: SagaData + Default> ProcessDefinition<D> {
    /// Starts a definition named `name` (`[a-z0-9-]`) at `version`.
    pub fn builder(name: impl Into<String>, version: u32) -> ProcessBuilder<D> {
        ProcessBuilder {
            def: ProcessDefinition {
                name: name.into(),
                version,
                starts: BTreeMap::new(),
                transitions: BTreeMap::new(),
                timers: BTreeMap::new(),
                finals: BTreeSet::new(),
                unhandled: UnhandledPolicy::default(),
            },
        }
    }
}

impl<D> ProcessDefinition<D> {
    /// The processor kind its instances are stored under (`process:{name}`).
    pub fn kind(&self) -> String {
        format!("process:{}", self.name)
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<D: SagaData + Default> ProcessBuilder<D> {
    /// An event of type `event_type` creates an instance keyed by `correlate` (the
    /// instance id; a second start event with the same key does not create another: it is
    /// handled as an event of the existing instance, if its state has a transition for
    /// it) in `state`, running `then` on default data.
    pub fn start_on<C, F>(mut self, event_type: &str, correlate: C, state: &str, then: F) -> Self
    where
        C: Fn(&Message) -> Option<String> + Send + Sync + 'static,
        F: Fn(&mut ProcessStep<D>, &Message) -> Result<(), String> + Send + Sync + 'static,
    {
        self.def.starts.insert(
            event_type.to_string(),
            Start {
                correlate: Arc::new(correlate),
                state: state.to_string(),
                then: Arc::new(then),
            },
        );
        self
    }

    /// In `state`, an event of type `event_type` (correlated by `correlate`) runs `then`.
    pub fn on<C, F>(mut self, state: &str, event_type: &str, correlate: C, then: F) -> Self
    where
        C: Fn(&Message) -> Option<String> + Send + Sync + 'static,
        F: Fn(&mut ProcessStep<D>, &Message) -> Result<(), String> + Send + Sync + 'static,
    {
        self.def.transitions.insert(
            (state.to_string(), event_type.to_string()),
            (Arc::new(correlate), Arc::new(then)),
        );
        self
    }

    /// In `state`, the timer `name` firing runs `then` with the timer's payload.
    pub fn on_timer<F>(mut self, state: &str, name: &str, then: F) -> Self
    where
        F: Fn(&mut ProcessStep<D>, &serde_json::Value) -> Result<(), String>
            + Send
            + Sync
            + 'static,
    {
        self.def
            .timers
            .insert((state.to_string(), name.to_string()), Arc::new(then));
        self
    }

    /// Makes `state` final: an instance that reaches it is completed (its timers are
    /// cancelled, and it is purged after the retention).
    pub fn final_state(mut self, state: &str) -> Self {
        self.def.finals.insert(state.to_string());
        self
    }

    /// What events no transition handles do.
    pub fn unhandled(mut self, policy: UnhandledPolicy) -> Self {
        self.def.unhandled = policy;
        self
    }

    /// Checks and builds the definition.
    pub fn build(self) -> Result<ProcessDefinition<D>, ProcessDefinitionError> {
        let d = self.def;
        let valid = !d.name.is_empty()
            && d.name.len() <= SAGA_NAME_LEN_MAX
            && d.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(ProcessDefinitionError::InvalidName(d.name));
        }
        if d.version == 0 {
            return Err(ProcessDefinitionError::InvalidVersion);
        }
        if d.starts.is_empty() {
            return Err(ProcessDefinitionError::NoStart);
        }
        for (state, _) in d.transitions.keys().chain(d.timers.keys()) {
            if d.finals.contains(state) {
                return Err(ProcessDefinitionError::FromFinal(state.clone()));
            }
        }
        Ok(d)
    }
}

/// The timer payload a process manager stores.
#[derive(Serialize, Deserialize)]
struct ProcessTimer {
    name: String,
    payload: serde_json::Value,
}

/// What stored progress holds for a process manager.
#[derive(Serialize, Deserialize)]
struct ProcessProgress {
    state: String,
}

/// How [`ProcessRuntime::handle`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessHandled {
    /// A new instance was created.
    Started { id: String },
    /// The instance moved.
    Applied { id: String, state: String },
    /// Nothing happened (a duplicate, no transition for the event in this state, a
    /// finished instance, an event for no instance).
    Ignored(String),
}

/// Runs the instances of one process manager. Cheap to clone.
pub struct ProcessRuntime<D> {
    inner: Arc<ProcessInner<D>>,
}

impl<D> Clone for ProcessRuntime<D> {
    fn clone(&self) -> Self {
        ProcessRuntime {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct ProcessInner<D> {
    def: ProcessDefinition<D>,
    kind: String,
    store: Arc<dyn ProcessorStore>,
    clock: Arc<dyn Clock>,
    owner: String,
    lease: Duration,
    poll: Duration,
}

fn after(now: chrono::DateTime<chrono::Utc>, d: Duration) -> chrono::DateTime<chrono::Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl<D: SagaData + Default> ProcessRuntime<D> {
    /// A runtime for `definition` on `store` with the system clock.
    pub fn new(definition: ProcessDefinition<D>, store: Arc<dyn ProcessorStore>) -> Self {
        Self::with_clock(definition, store, Arc::new(SystemClock))
    }

    /// A runtime with `clock` (a virtual clock in tests).
    pub fn with_clock(
        definition: ProcessDefinition<D>,
        store: Arc<dyn ProcessorStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ProcessRuntime {
            inner: Arc::new(ProcessInner {
                kind: definition.kind(),
                def: definition,
                store,
                clock,
                owner: format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple()),
                lease: super::runtime::LEASE_DEFAULT,
                poll: super::runtime::POLL_INTERVAL_DEFAULT,
            }),
        }
    }

    /// The definition.
    pub fn definition(&self) -> &ProcessDefinition<D> {
        &self.inner.def
    }

    /// The stored instance.
    pub async fn load(&self, id: &str) -> Result<Option<InstanceRecord>, SagaError> {
        Ok(self.inner.store.load(&self.inner.kind, id).await?)
    }

    /// The instance's data.
    pub async fn data(&self, id: &str) -> Result<Option<D>, SagaError> {
        match self.load(id).await? {
            Some(r) => Ok(Some(self.decode(&r)?)),
            None => Ok(None),
        }
    }

    fn decode(&self, r: &InstanceRecord) -> Result<D, SagaError> {
        if r.definition_version != self.inner.def.version {
            return Err(SagaError::UnknownVersion {
                kind: self.inner.kind.clone(),
                id: r.id.clone(),
                instance_version: r.definition_version,
                ours: self.inner.def.version,
            });
        }
        serde_json::from_slice(&r.data).map_err(|e| SagaError::Corrupt {
            id: r.id.clone(),
            what: "data",
            error: e.to_string(),
        })
    }

    /// Handles an event delivered to the consumer `handler` (its inbox name): starts an
    /// instance, or runs the transition of the instance's state for the event, in one
    /// commit with the event's inbox mark.
    pub async fn handle(
        &self,
        event: &Message,
        handler: &str,
    ) -> Result<ProcessHandled, SagaError> {
        let def = &self.inner.def;
        let start = def.starts.get(&event.event_type);
        let correlate = start.map(|s| &s.correlate).or_else(|| {
            def.transitions
                .iter()
                .find(|((_, t), _)| t == &event.event_type)
                .map(|(_, (c, _))| c)
        });
        let Some(correlate) = correlate else {
            return self.unhandled(format!("no transition handles {}", event.event_type));
        };
        let Some(key) = correlate(event) else {
            return Err(SagaError::NotAReply {
                kind: self.inner.kind.clone(),
                reason: format!(
                    "{} {} carries no correlation key",
                    event.event_type, event.id
                ),
            });
        };
        let inbox = Some((handler.to_string(), event.id.clone()));
        for _ in 0..CONFLICT_RETRIES_MAX {
            let record = self.inner.store.load(&self.inner.kind, &key).await?;
            let (expected, state, data, then) = match (&record, start) {
                (None, Some(start)) => (
                    ExpectedInstance::New,
                    start.state.clone(),
                    D::default(),
                    Arc::clone(&start.then),
                ),
                (None, None) => {
                    return self.unhandled(format!("no instance {key} for {}", event.event_type))
                }
                (Some(r), _) => {
                    if r.status.is_finished() {
                        return self.unhandled(format!("instance {key} has finished"));
                    }
                    let progress: ProcessProgress =
                        serde_json::from_slice(&r.progress).map_err(|e| SagaError::Corrupt {
                            id: key.clone(),
                            what: "progress",
                            error: e.to_string(),
                        })?;
                    let Some((_, then)) = def
                        .transitions
                        .get(&(progress.state.clone(), event.event_type.clone()))
                    else {
                        return self.unhandled(format!(
                            "no transition for {} in state {}",
                            event.event_type, progress.state
                        ));
                    };
                    (
                        ExpectedInstance::Version(r.version),
                        progress.state,
                        self.decode(r)?,
                        Arc::clone(then),
                    )
                }
            };
            let creating = expected == ExpectedInstance::New;
            let mut step = ProcessStep {
                data,
                instance: key.clone(),
                state: state.clone(),
                goto: None,
                sends: Vec::new(),
                schedules: Vec::new(),
                cancels: Vec::new(),
            };
            then(&mut step, event).map_err(|reason| SagaError::TransitionFailed {
                id: key.clone(),
                reason,
            })?;
            let line = HistoryLine {
                step: Some(state.clone()),
                what: if creating { "started" } else { "event" }.into(),
                detail: Some(event.event_type.clone()),
            };
            match self
                .commit(expected, &key, step, event, None, inbox.clone(), line)
                .await?
            {
                (CommitOutcome::Committed { .. }, state) => {
                    return Ok(if creating {
                        ProcessHandled::Started { id: key }
                    } else {
                        ProcessHandled::Applied { id: key, state }
                    })
                }
                (CommitOutcome::Duplicate, _) => {
                    return Ok(ProcessHandled::Ignored("duplicate delivery".into()))
                }
                _ => continue,
            }
        }
        Err(SagaError::TooManyConflicts { id: key })
    }

    fn unhandled(&self, why: String) -> Result<ProcessHandled, SagaError> {
        metrics::counter!(METRIC_IGNORED, "saga" => self.inner.def.name.clone(), "reason" => "unhandled")
            .increment(1);
        match self.inner.def.unhandled {
            UnhandledPolicy::Ignore => {
                tracing::debug!(process = %self.inner.def.name, %why, "event ignored");
                Ok(ProcessHandled::Ignored(why))
            }
            UnhandledPolicy::DeadLetter => Err(SagaError::NotAReply {
                kind: self.inner.kind.clone(),
                reason: why,
            }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        expected: ExpectedInstance,
        key: &str,
        step: ProcessStep<D>,
        cause: &Message,
        fired_timer: Option<u64>,
        inbox: Option<(String, String)>,
        line: HistoryLine,
    ) -> Result<(CommitOutcome, String), SagaError> {
        let def = &self.inner.def;
        let now = self.inner.clock.now();
        let state = step.goto.clone().unwrap_or_else(|| step.state.clone());
        let finished = def.finals.contains(&state);
        let status = if finished {
            InstanceStatus::Completed
        } else {
            InstanceStatus::Running
        };
        let mut outbox = step.sends;
        for m in &mut outbox {
            let msg = &mut m.message;
            if msg.correlation_id.is_none() {
                msg.correlation_id = Some(
                    cause
                        .correlation_id
                        .clone()
                        .unwrap_or_else(|| key.to_string()),
                );
            }
            if msg.causation_id.is_none() {
                msg.causation_id = Some(cause.id.clone());
            }
        }
        let schedule = step
            .schedules
            .into_iter()
            .map(|(name, d, payload)| TimerSpec {
                due: after(now, d),
                payload: serde_json::to_vec(&ProcessTimer {
                    name: name.clone(),
                    payload,
                })
                .expect("serialises"),
                name,
                leased_to: None,
            })
            .collect();
        let cancel = if finished {
            CancelTimers::All
        } else if step.cancels.is_empty() {
            CancelTimers::None
        } else {
            CancelTimers::Named(step.cancels)
        };
        let mut history = vec![line];
        if step.goto.is_some() && state != step.state {
            history.push(HistoryLine {
                step: Some(state.clone()),
                what: "entered".into(),
                detail: None,
            });
        }
        let t = Transition {
            kind: self.inner.kind.clone(),
            id: key.to_string(),
            expected,
            definition_version: def.version,
            correlation: (expected == ExpectedInstance::New).then(|| key.to_string()),
            state: state.clone(),
            status,
            progress: serde_json::to_vec(&ProcessProgress {
                state: state.clone(),
            })
            .expect("serialises"),
            data: serde_json::to_vec(&step.data).map_err(|e| SagaError::Data(e.to_string()))?,
            last_error: None,
            outbox,
            cancel_timers: cancel,
            schedule: if finished { Vec::new() } else { schedule },
            fired_timer,
            inbox,
            history,
        };
        let outcome = self.inner.store.commit(t).await?;
        if matches!(outcome, CommitOutcome::Committed { .. }) {
            metrics::counter!(METRIC_TRANSITIONS, "saga" => def.name.clone(), "status" => status.as_str())
                .increment(1);
        }
        Ok((outcome, state))
    }

    /// Fires every timer due now (by this runtime's clock) whose instance's state handles
    /// it; returns how many fired. Tests drive a virtual clock with this; services use
    /// [`run`](Self::run).
    pub async fn tick(&self) -> Result<usize, SagaError> {
        let mut fired = 0;
        loop {
            let due = self
                .inner
                .store
                .claim_due_timers(
                    &self.inner.kind,
                    &[self.inner.def.version],
                    &self.inner.owner,
                    self.inner.clock.now(),
                    self.inner.lease,
                    256,
                )
                .await?;
            if due.is_empty() {
                return Ok(fired);
            }
            for timer in due {
                self.fire(timer).await?;
                fired += 1;
            }
        }
    }

    async fn fire(&self, timer: runnel_core::processor::DueTimer) -> Result<(), SagaError> {
        let def = &self.inner.def;
        let parsed: Result<ProcessTimer, _> = serde_json::from_slice(&timer.payload);
        let Ok(parsed) = parsed else {
            tracing::error!(process = %def.name, instance = %timer.instance, "unreadable timer; deleted");
            self.inner
                .store
                .delete_timer(timer.id, &self.inner.owner)
                .await?;
            return Ok(());
        };
        for _ in 0..CONFLICT_RETRIES_MAX {
            let Some(r) = self
                .inner
                .store
                .load(&self.inner.kind, &timer.instance)
                .await?
            else {
                self.inner
                    .store
                    .delete_timer(timer.id, &self.inner.owner)
                    .await?;
                return Ok(());
            };
            let progress: ProcessProgress =
                serde_json::from_slice(&r.progress).map_err(|e| SagaError::Corrupt {
                    id: r.id.clone(),
                    what: "progress",
                    error: e.to_string(),
                })?;
            let Some(then) = def
                .timers
                .get(&(progress.state.clone(), parsed.name.clone()))
            else {
                tracing::debug!(process = %def.name, instance = %r.id, timer = %parsed.name, state = %progress.state, "timer has no transition in this state");
                self.inner
                    .store
                    .delete_timer(timer.id, &self.inner.owner)
                    .await?;
                return Ok(());
            };
            let mut step = ProcessStep {
                data: self.decode(&r)?,
                instance: r.id.clone(),
                state: progress.state.clone(),
                goto: None,
                sends: Vec::new(),
                schedules: Vec::new(),
                cancels: Vec::new(),
            };
            then(&mut step, &parsed.payload).map_err(|reason| SagaError::TransitionFailed {
                id: r.id.clone(),
                reason,
            })?;
            let mut cause = Message::json("TimerFired", &serde_json::json!({"timer": parsed.name}));
            cause.id = format!("timer-{}", timer.id);
            let line = HistoryLine {
                step: Some(progress.state.clone()),
                what: "timer".into(),
                detail: Some(parsed.name.clone()),
            };
            match self
                .commit(
                    ExpectedInstance::Version(r.version),
                    &r.id,
                    step,
                    &cause,
                    Some(timer.id),
                    None,
                    line,
                )
                .await?
            {
                (CommitOutcome::Committed { .. }, _) => return Ok(()),
                _ => continue,
            }
        }
        Err(SagaError::TooManyConflicts { id: timer.instance })
    }

    /// Fires due timers until `shutdown` (including those of processes that died).
    pub async fn run(&self, shutdown: Shutdown) -> Result<(), SagaError> {
        while !shutdown.is_requested() {
            if let Err(e) = self.tick().await {
                tracing::warn!(process = %self.inner.def.name, error = %e, "timer work failed; retried when its lease lapses");
            }
            let wait = match self.inner.store.next_due(&self.inner.kind).await {
                Ok(Some(next)) => (next - self.inner.clock.now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(self.inner.poll),
                _ => self.inner.poll,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait.max(Duration::from_millis(5))) => {}
                _ = shutdown.requested() => break,
            }
        }
        Ok(())
    }
}
