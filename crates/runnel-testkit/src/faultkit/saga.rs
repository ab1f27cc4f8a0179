//! Sagas under faults: [`FaultKit::run_saga`] runs a [`SagaRuntime`] on a real store with
//! a virtual clock, hands each command the saga sends (read from the outbox, the saga's
//! real output) to a [`CommandService`] — the user's services, e.g. their consumer
//! handlers through [`ServiceHandlers`] — and delivers the replies the services publish
//! under the plan: duplicated, reordered, delayed, redelivered after the saga applied them
//! (`crash_after_effect`: the ack lost). Commands themselves are duplicated at the same
//! `duplicate` rate (the service is asked twice and answers twice). The runtime crashes
//! at commits the plan picks, through its own
//! [crash points](SagaRuntime::with_crash_points): just before a commit or after a local
//! step ran and before its outcome committed (`crash_before_commit`), just after a
//! commit (`crash_after_effect`); a new runtime (a restarted process) then takes over on
//! the same store. Timers (reply deadlines, retries, lapsed leases) fire by
//! [`tick`](SagaRuntime::tick) as the run moves the clock whenever nothing else is left
//! to do.
//!
//! The run ends when every instance is finished or parked and nothing is in flight, or
//! after [`SAGA_ROUNDS_MAX`] rounds; the [`SagaFaultReport`] holds each instance's final
//! state and everything sent and delivered, and the test checks its invariants: each
//! step's effect once per idempotency key, every instance final, compensations in
//! reverse.
//!
//! The schedule — deliveries and crashes — is a function of the plan's seed and of what
//! the saga and the services do; the runtime runs one piece of work at a time
//! (`max_concurrency` 1), so the same seed gives the same run.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use runnel::async_trait;
use runnel::consumer::{Handler, HandlerContext, HandlerError, HandlerService};
use runnel::saga::{
    CrashPoint, ReplyHandled, SagaData, SagaDefinition, SagaError, SagaInstance, SagaOptions,
    SagaRuntime, StartRequest, SAGA_HEADER, STEP_HEADER,
};
use runnel_core::bus::Publisher;
use runnel_core::message::{Message, TopicName};
use runnel_core::outbox::{OutboxMessage, OutboxStore};
use runnel_core::processor::ProcessorStore;
use runnel_core::{Clock, VirtualClock};
use tower::ServiceExt;

use super::{
    names, Capture, DeliveryKind, FailedMessage, FaultKit, FaultKitError, FaultPlan, Schedule,
    Settle, SplitMix64, MESSAGES_MAX,
};

/// Most instances one run starts.
pub const SAGA_INSTANCES_MAX: usize = 1_000;
/// Most rounds (look for work, answer commands, deliver replies, move the clock) a run
/// takes before it gives up with the unsettled instances in the report.
pub const SAGA_ROUNDS_MAX: usize = 5_000;
/// Most crashes one run injects; after that the runtime is left to finish.
pub const SAGA_CRASHES_MAX: u32 = 32;
/// Most commands one run hands to the services (re-sends and duplicates included).
pub const SAGA_COMMANDS_MAX: usize = MESSAGES_MAX;
/// The lease the runs' runtimes take on work: a restarted runtime takes the crashed one's
/// work over once the clock passes it.
pub const SAGA_LEASE: Duration = Duration::from_secs(5);
/// How far the clock moves when a round finds nothing to do (by default), so reply
/// deadlines, retries and lapsed leases come due.
pub const IDLE_ADVANCE_DEFAULT: Duration = Duration::from_secs(6);
/// The inbox name replies are marked under.
pub const SAGA_REPLY_HANDLER: &str = "faultkit/saga-replies";
/// Outbox rows read per claim.
const OUTBOX_CLAIM_MAX: usize = 500;
/// Mixed into the plan's seed for the crash dice (so crashes do not shift the delivery
/// schedule's dice) and for the command duplicates.
const CRASH_SALT: u64 = 0x5A6A_C0FF_EE00_0002;
const COMMAND_SALT: u64 = 0x5A6A_C0FF_EE00_0003;

/// Answers the saga's commands in a fault run: the messages a service publishes for one
/// command (its replies on the saga's reply topic; anything else is kept in the report).
/// An `Err` that is not [permanent](HandlerError::permanent) hands the command to the
/// service again in the next round, as a bus would, within the plan's `redeliveries_max`.
///
/// A closure `Fn(TopicName, Message) -> impl Future<Output = Result<Vec<Message>,
/// HandlerError>>` is one; [`ServiceHandlers`] runs consumer handlers as one.
#[async_trait]
pub trait CommandService: Send + Sync {
    /// Answers `command`, sent to `topic`.
    async fn answer(
        &self,
        topic: &TopicName,
        command: &Message,
    ) -> Result<Vec<Message>, HandlerError>;
}

#[async_trait]
impl<F, Fut> CommandService for F
where
    F: Fn(TopicName, Message) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Vec<Message>, HandlerError>> + Send,
{
    async fn answer(
        &self,
        topic: &TopicName,
        command: &Message,
    ) -> Result<Vec<Message>, HandlerError> {
        self(topic.clone(), command.clone()).await
    }
}

/// Consumer handlers by command topic, as a [`CommandService`]: each command runs the
/// handler of its topic as the router's bottom service would (panics caught as
/// retryable errors), and what the handler [publishes](HandlerContext::publish) is the
/// answer. A command for a topic without a handler is not answered (a service that is
/// not deployed: the step's deadline fires).
#[derive(Clone, Default)]
pub struct ServiceHandlers {
    handlers: BTreeMap<String, HandlerService>,
}

impl fmt::Debug for ServiceHandlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceHandlers")
            .field("topics", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ServiceHandlers {
    /// No services.
    pub fn new() -> Self {
        ServiceHandlers::default()
    }

    /// `handler` answers the commands sent to `topic`.
    pub fn on(mut self, topic: &TopicName, handler: impl Handler) -> Self {
        self.handlers
            .insert(topic.to_string(), HandlerService::new(handler));
        self
    }
}

#[async_trait]
impl CommandService for ServiceHandlers {
    async fn answer(
        &self,
        topic: &TopicName,
        command: &Message,
    ) -> Result<Vec<Message>, HandlerError> {
        let Some(service) = self.handlers.get(topic.as_str()) else {
            return Ok(Vec::new());
        };
        let capture = Arc::new(Capture::default());
        let publisher: Arc<dyn Publisher> = capture.clone();
        let (_, group) = names();
        let ctx = HandlerContext::detached(command.clone(), topic.clone(), group)
            .with_publisher(publisher);
        service.clone().oneshot(ctx).await?;
        Ok(capture.take().into_iter().map(|(_, m)| m).collect())
    }
}

/// A saga to run under faults: its definition (built again at each restart, as a new
/// process would), the store and outbox of one database, and the instances to start.
pub struct SagaRun<D> {
    definition: Arc<dyn Fn() -> SagaDefinition<D> + Send + Sync>,
    store: Arc<dyn ProcessorStore>,
    outbox: Arc<dyn OutboxStore>,
    starts: Vec<StartRequest<D>>,
    idle_advance: Duration,
}

impl<D: SagaData> SagaRun<D> {
    /// The saga `definition` builds, on `store` and the `outbox` of the same database
    /// (fresh ones: the run reads every outbox row as the saga's output).
    pub fn new(
        definition: impl Fn() -> SagaDefinition<D> + Send + Sync + 'static,
        store: Arc<dyn ProcessorStore>,
        outbox: Arc<dyn OutboxStore>,
    ) -> Self {
        SagaRun {
            definition: Arc::new(definition),
            store,
            outbox,
            starts: Vec::new(),
            idle_advance: IDLE_ADVANCE_DEFAULT,
        }
    }

    /// Starts instance `id` with `data` at the beginning of the run.
    pub fn start(self, id: impl Into<String>, data: D) -> Self {
        self.start_with(StartRequest::new(id, data))
    }

    /// Starts an instance at the beginning of the run.
    pub fn start_with(mut self, request: StartRequest<D>) -> Self {
        self.starts.push(request);
        self
    }

    /// Moves the clock by `by` whenever a round finds nothing to do
    /// ([`IDLE_ADVANCE_DEFAULT`]); make it longer than the steps' reply deadlines to have
    /// every deadline fire in one move.
    pub fn idle_advance(mut self, by: Duration) -> Self {
        self.idle_advance = by;
        self
    }
}

/// One delivery of a reply to the saga.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyDelivery {
    /// The reply's position in [`SagaFaultReport::replies`].
    pub index: usize,
    /// Why it was delivered.
    pub kind: DeliveryKind,
    /// What the saga made of it, or the error's text (a crash included).
    pub result: Result<ReplyHandled, String>,
}

/// What a saga run did. Its [`Display`](fmt::Display) names the seed and the plan.
#[derive(Clone, Debug)]
pub struct SagaFaultReport<D> {
    /// The plan the run followed.
    pub plan: FaultPlan,
    /// Each instance as the run left it, in start order.
    pub instances: Vec<SagaInstance<D>>,
    /// Ids of the instances neither finished nor parked when the run ended (the rounds
    /// ran out); empty when the run settled.
    pub unsettled: Vec<String>,
    /// Rounds taken.
    pub rounds: usize,
    /// Every command the saga sent, in order (a command sent again after a deadline or a
    /// crash is listed each time).
    pub commands: Vec<OutboxMessage>,
    /// Everything else the saga sent (its lifecycle events), in order.
    pub events: Vec<OutboxMessage>,
    /// Commands handed to the services, duplicates and retries included.
    pub command_deliveries: usize,
    /// Duplicate commands the plan injected.
    pub command_duplicates: usize,
    /// Commands the services failed for good (a permanent error, or retryable errors
    /// past the budget): never answered.
    pub unanswered: Vec<FailedMessage>,
    /// Every reply the services published for the saga, in publish order.
    pub replies: Vec<Message>,
    /// Messages the services published elsewhere than the saga's reply topic.
    pub other_published: Vec<Message>,
    /// Every delivery of a reply, in order.
    pub deliveries: Vec<ReplyDelivery>,
    /// Injected duplicate replies delivered.
    pub duplicates: usize,
    /// First deliveries that overtook a reply published later.
    pub reorders: usize,
    /// Deliveries held back by the `delay` fault.
    pub delayed: usize,
    /// Replies delivered again after the saga applied them (the ack lost).
    pub redeliveries_after_effect: usize,
    /// Replies the saga refused for good.
    pub failed: Vec<FailedMessage>,
    /// Where the runtime crashed, in order.
    pub crashes: Vec<CrashPoint>,
    /// Runtimes started after a crash.
    pub restarts: u32,
}

impl<D> SagaFaultReport<D> {
    /// The commands sent for step `step` (`undo`: its compensation), in order.
    pub fn commands_of(&self, step: &str, undo: bool) -> Vec<&OutboxMessage> {
        self.commands
            .iter()
            .filter(|c| {
                crate::saga::command_step(&c.message)
                    .as_ref()
                    .map(|(s, u)| (s.as_str(), *u))
                    == Some((step, undo))
            })
            .collect()
    }
}

impl<D> fmt::Display for SagaFaultReport<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "saga fault run with seed {} ({} instances, {} unsettled, {} rounds, {} commands, \
             {} replies, {} deliveries: {} duplicates, {} reorders, {} delayed, {} \
             redeliveries after effect; {} crashes); repeat it with `seed: {}` in the plan \
             {:?}",
            self.plan.seed,
            self.instances.len(),
            self.unsettled.len(),
            self.rounds,
            self.commands.len(),
            self.replies.len(),
            self.deliveries.len(),
            self.duplicates,
            self.reorders,
            self.delayed,
            self.redeliveries_after_effect,
            self.crashes.len(),
            self.plan.seed,
            self.plan,
        )
    }
}

/// The crash dice the runtimes' hooks share (one sequence across restarts).
struct CrashDice {
    dice: Mutex<SplitMix64>,
    before: f64,
    after: f64,
    crashes: AtomicU32,
    points: Mutex<Vec<CrashPoint>>,
}

impl CrashDice {
    fn decide(&self, point: CrashPoint) -> bool {
        if self.crashes.load(Ordering::SeqCst) >= SAGA_CRASHES_MAX {
            return false;
        }
        let p = match point {
            CrashPoint::BeforeCommit(_) | CrashPoint::AfterStep(_) => self.before,
            CrashPoint::AfterCommit(_) => self.after,
        };
        let crash = self
            .dice
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .chance(p);
        if crash {
            self.crashes.fetch_add(1, Ordering::SeqCst);
            self.points
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(point);
        }
        crash
    }
}

/// A command waiting to be handed to its service.
struct PendingCommand {
    topic: TopicName,
    message: Message,
    /// Deliveries after the first (duplicates, retries).
    extra: u32,
}

/// The run's state besides the runtime.
struct SagaDriver<'a, D> {
    run: &'a SagaRun<D>,
    clock: Arc<VirtualClock>,
    dice: Arc<CrashDice>,
    runtime: SagaRuntime<D>,
    generation: u32,
}

impl<D: SagaData> SagaDriver<'_, D> {
    fn runtime(
        run: &SagaRun<D>,
        clock: &Arc<VirtualClock>,
        dice: &Arc<CrashDice>,
        generation: u32,
    ) -> SagaRuntime<D> {
        let options = SagaOptions {
            lease: SAGA_LEASE,
            owner: Some(format!("faultkit-saga-{generation}")),
            // One piece of work at a time: the crash points come in the same order on
            // every run of a seed.
            max_concurrency: 1,
            retention: None,
            ..SagaOptions::default()
        };
        let clock: Arc<dyn Clock> = clock.clone();
        let dice = Arc::clone(dice);
        SagaRuntime::with_crash_points(
            (run.definition)(),
            Arc::clone(&run.store),
            clock,
            options,
            move |point| dice.decide(point),
        )
    }

    /// A new process after a crash: a new runtime on the same store; the clock moves past
    /// the crashed one's lease so its work is taken over.
    fn restart(&mut self) {
        self.generation += 1;
        self.runtime = Self::runtime(self.run, &self.clock, &self.dice, self.generation);
        self.clock.advance(SAGA_LEASE + Duration::from_secs(1));
    }

    /// Every row the saga wrote to the outbox since the last call, in order.
    async fn take_sent(&self) -> Result<Vec<OutboxMessage>, FaultKitError> {
        let store = |e: runnel_core::StoreError| FaultKitError::Store(e.to_string());
        let mut out = Vec::new();
        loop {
            let rows = self
                .run
                .outbox
                .claim("faultkit-saga", Duration::from_secs(60), OUTBOX_CLAIM_MAX)
                .await
                .map_err(store)?;
            if rows.is_empty() {
                return Ok(out);
            }
            let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
            self.run.outbox.mark_published(&seqs).await.map_err(store)?;
            out.extend(
                rows.into_iter()
                    .map(|r| OutboxMessage::new(r.topic, r.message)),
            );
        }
    }
}

fn is_crash<T>(result: &Result<T, SagaError>) -> bool {
    matches!(result, Err(SagaError::Crashed(_)))
}

impl FaultKit {
    /// Runs the saga of `run` under the plan's faults, its commands answered by
    /// `service`: see the [module documentation](self).
    pub async fn run_saga<D: SagaData>(
        &self,
        run: SagaRun<D>,
        service: impl CommandService,
    ) -> Result<SagaFaultReport<D>, FaultKitError> {
        self.plan.validate()?;
        if run.starts.len() > SAGA_INSTANCES_MAX {
            return Err(FaultKitError::TooManyInstances {
                count: run.starts.len(),
                limit: SAGA_INSTANCES_MAX,
            });
        }
        let plan = self.plan.clone();
        let clock = Arc::new(VirtualClock::new());
        let dice = Arc::new(CrashDice {
            dice: Mutex::new(SplitMix64(plan.seed ^ CRASH_SALT)),
            before: plan.crash_before_commit,
            after: plan.crash_after_effect,
            crashes: AtomicU32::new(0),
            points: Mutex::new(Vec::new()),
        });
        let mut driver = SagaDriver {
            runtime: SagaDriver::runtime(&run, &clock, &dice, 0),
            run: &run,
            clock,
            dice: Arc::clone(&dice),
            generation: 0,
        };
        let kind = driver.runtime.kind().to_string();
        let mut report = SagaFaultReport {
            plan: plan.clone(),
            instances: Vec::new(),
            unsettled: Vec::new(),
            rounds: 0,
            commands: Vec::new(),
            events: Vec::new(),
            command_deliveries: 0,
            command_duplicates: 0,
            unanswered: Vec::new(),
            replies: Vec::new(),
            other_published: Vec::new(),
            deliveries: Vec::new(),
            duplicates: 0,
            reorders: 0,
            delayed: 0,
            redeliveries_after_effect: 0,
            failed: Vec::new(),
            crashes: Vec::new(),
            restarts: 0,
        };

        // Start every instance; a start that crashed is made again by the new process
        // (a start of an existing id creates nothing).
        for request in &run.starts {
            loop {
                let started = driver.runtime.start_with(request.clone()).await;
                if is_crash(&started) {
                    driver.restart();
                    report.restarts += 1;
                    continue;
                }
                started.map_err(|e| FaultKitError::Store(e.to_string()))?;
                break;
            }
        }

        let mut schedule = Schedule::new(&plan, Vec::new());
        let mut command_dice = SplitMix64(plan.seed ^ COMMAND_SALT);
        let mut commands: VecDeque<PendingCommand> = VecDeque::new();
        let window = plan.reorder_window.max(1);
        let mut settled = false;
        while report.rounds < SAGA_ROUNDS_MAX {
            report.rounds += 1;
            let mut progress = false;

            // 1. What is due: local steps, timers (deadlines, retries, lapsed work).
            let ticked = driver.runtime.tick().await;
            match ticked {
                Ok(n) => progress |= n > 0,
                Err(SagaError::Crashed(_)) => {
                    driver.restart();
                    report.restarts += 1;
                    progress = true;
                }
                Err(e) => return Err(FaultKitError::Store(e.to_string())),
            }

            // 2. What the saga sent: commands go to the services.
            for sent in driver.take_sent().await? {
                let ours = sent.message.headers.get(SAGA_HEADER).map(String::as_str)
                    == Some(kind.as_str());
                if ours && sent.message.headers.contains_key(STEP_HEADER) {
                    commands.push_back(PendingCommand {
                        topic: sent.topic.clone(),
                        message: sent.message.clone(),
                        extra: 0,
                    });
                    report.commands.push(sent);
                } else {
                    report.events.push(sent);
                }
            }
            let due: Vec<PendingCommand> = commands.drain(..).collect();
            for mut command in due {
                progress = true;
                if report.command_deliveries >= SAGA_COMMANDS_MAX {
                    return Err(FaultKitError::TooManyMessages {
                        count: report.command_deliveries + 1,
                        limit: SAGA_COMMANDS_MAX,
                    });
                }
                report.command_deliveries += 1;
                match service.answer(&command.topic, &command.message).await {
                    Ok(published) => {
                        for message in published {
                            let addressed = message.headers.get(SAGA_HEADER).map(String::as_str)
                                == Some(kind.as_str());
                            if !addressed {
                                report.other_published.push(message);
                                continue;
                            }
                            if report.replies.len() >= MESSAGES_MAX {
                                return Err(FaultKitError::TooManyMessages {
                                    count: report.replies.len() + 1,
                                    limit: MESSAGES_MAX,
                                });
                            }
                            schedule.push(message.ordering_key().map(str::to_string));
                            report.replies.push(message);
                        }
                        if command.extra < plan.redeliveries_max
                            && command_dice.chance(plan.duplicate)
                        {
                            command.extra += 1;
                            report.command_duplicates += 1;
                            commands.push_back(command);
                        }
                    }
                    Err(e)
                        if e.kind() != runnel::consumer::ErrorKind::Permanent
                            && command.extra < plan.redeliveries_max =>
                    {
                        command.extra += 1;
                        commands.push_back(command);
                    }
                    Err(e) => report.unanswered.push(FailedMessage {
                        index: report.commands.len(),
                        message_id: command.message.id.clone(),
                        error: e.report(),
                    }),
                }
            }

            // 3. Replies: deliver all but a window's worth while the saga is busy (the
            // rest mixes with the next round's), everything once it is quiet.
            let keep = if progress { window - 1 } else { 0 };
            while schedule.queue.len() > keep {
                let Some(next) = schedule.next() else { break };
                progress = true;
                let reply = &report.replies[next.index];
                let result = driver.runtime.handle_reply(reply, SAGA_REPLY_HANDLER).await;
                let settle = match &result {
                    Ok(_) => Settle::Acked,
                    Err(SagaError::Crashed(_)) => {
                        driver.restart();
                        report.restarts += 1;
                        // Never acknowledged: the bus hands it to the new process first.
                        schedule.redeliver_first(next.index);
                        report.deliveries.push(ReplyDelivery {
                            index: next.index,
                            kind: next.kind,
                            result: result.map_err(|e| e.to_string()),
                        });
                        continue;
                    }
                    Err(e) if e.is_transient() => Settle::Retry,
                    Err(_) => Settle::Failed,
                };
                let followup = schedule.settle(&next, settle);
                if let Err(e) = &result {
                    if settle == Settle::Failed || followup == Some(super::Followup::GaveUp) {
                        report.failed.push(FailedMessage {
                            index: next.index,
                            message_id: reply.id.clone(),
                            error: e.to_string(),
                        });
                    }
                }
                report.deliveries.push(ReplyDelivery {
                    index: next.index,
                    kind: next.kind,
                    result: result.map_err(|e| e.to_string()),
                });
            }

            // 4. Quiet: done if every instance is final, else let time pass.
            if !progress && commands.is_empty() {
                if all_final(&driver.runtime, &run.starts).await? {
                    settled = true;
                    break;
                }
                driver.clock.advance(run.idle_advance);
            }
        }

        for request in &run.starts {
            let instance = driver
                .runtime
                .load(&request.id)
                .await
                .map_err(|e| FaultKitError::Store(e.to_string()))?;
            match instance {
                Some(instance) => {
                    let status = instance.record.status;
                    if !settled && !status.is_finished() && !status.is_parked() {
                        report.unsettled.push(request.id.clone());
                    }
                    report.instances.push(instance);
                }
                None => report.unsettled.push(request.id.clone()),
            }
        }
        let stats = schedule.stats();
        report.duplicates = stats.duplicates;
        report.reorders = stats.reorders;
        report.delayed = stats.delayed;
        report.redeliveries_after_effect = stats.after_effect;
        report.crashes = dice
            .points
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Ok(report)
    }
}

/// Whether every started instance is finished or parked.
async fn all_final<D: SagaData>(
    runtime: &SagaRuntime<D>,
    starts: &[StartRequest<D>],
) -> Result<bool, FaultKitError> {
    for request in starts {
        let instance = runtime
            .load(&request.id)
            .await
            .map_err(|e| FaultKitError::Store(e.to_string()))?;
        match instance {
            Some(i) if i.record.status.is_finished() || i.record.status.is_parked() => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}
