//! Fault injection for users' consumer handlers: [`FaultKit`] runs a
//! [`Handler`] (or a whole layer stack) over a list of messages the way an at-least-once bus
//! can deliver them — duplicated, reordered, delayed, and redelivered after a "crash
//! between effect and ack" (the handler ran and its effects happened, but the ack was lost)
//! — and returns a [`FaultReport`] of what it did. The test then checks its invariants on
//! its own state (a counter equals the number of unique messages, a balance is right, each
//! effect happened once), or hands a closure to [`FaultKit::check`].
//!
//! The schedule is a pure function of the [`FaultPlan`] (its `seed` included) and the
//! messages, so a failing run is repeated by putting the printed seed back in the plan.
//!
//! The same plan runs a user's saga ([`saga`]: [`FaultKit::run_saga`]) and projections
//! ([`projection`]: [`FaultKit::run_topic_projection`], [`FaultKit::run_projection`]) on a
//! real store, with crashes of the saga runtime or the projection runner around their
//! commits (`crash_before_commit`, `crash_after_effect`).
//!
//! # Per-key order
//!
//! [`OrderGuarantee::KeyedOrderKept`] gives the router's guarantee: for each
//! [`ordering_key`](runnel_core::message::Message::ordering_key), deliveries come in
//! publish order — a message is never delivered after a later message of its key, and a
//! duplicate or redelivery of a message comes before the first delivery of the next message
//! of its key (`m1 m1 m2`, never `m1 m2 m1`). Messages of different keys, and messages
//! without a key, are reordered and delayed freely. [`OrderGuarantee::Unordered`] drops the
//! per-key rule: anything may overtake anything within the window (a bus without key
//! order, or a handler that must not rely on it).
//!
//! # Limits
//!
//! Deliveries run one at a time (the kit models what arrives, not concurrency), on
//! [detached](HandlerContext::detached) contexts: `delivery_attempt()` is 1 on every
//! delivery and leases cannot be lost. At most [`MESSAGES_MAX`] messages per run, each
//! delivered at most `1 + redeliveries_max` times (`redeliveries_max` ≤
//! [`REDELIVERIES_MAX_LIMIT`]), so a run's memory and length are bounded; effects published
//! through [`HandlerContext::publish`] are captured, at most [`EFFECTS_CAPTURED_MAX`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::collections::HashSet;
//! use std::sync::{Arc, Mutex};
//!
//! use runnel::consumer::{HandlerContext, HandlerError};
//! use runnel::core::message::Message;
//! use runnel_testkit::faultkit::{FaultKit, FaultPlan};
//!
//! // An idempotent handler: it counts each message id once.
//! let seen = Arc::new(Mutex::new(HashSet::new()));
//! let handler = {
//!     let seen = Arc::clone(&seen);
//!     move |ctx: HandlerContext| {
//!         let seen = Arc::clone(&seen);
//!         async move {
//!             seen.lock().unwrap().insert(ctx.message().id.clone());
//!             Ok::<(), HandlerError>(())
//!         }
//!     }
//! };
//! let messages: Vec<Message> = (0..50)
//!     .map(|i| Message::json("Deposited", &serde_json::json!({ "n": i })).with_key(format!("acct-{}", i % 5)))
//!     .collect();
//!
//! let plan = FaultPlan { duplicate: 0.3, crash_after_effect: 0.2, reorder_window: 4, seed: 7, ..FaultPlan::default() };
//! let report = FaultKit::new(plan).run(handler, messages).await.expect("a valid plan");
//! assert!(report.duplicates > 0 && report.redeliveries_after_effect > 0);
//! assert_eq!(seen.lock().unwrap().len(), 50, "{report}"); // the report names the seed
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use runnel::async_trait;
use runnel::consumer::{ErrorKind, Handler, HandlerContext, HandlerError, HandlerService, Outcome};
use runnel_core::bus::Publisher;
use runnel_core::message::{BusError, GroupName, Message, TopicName};
use tower::{Service, ServiceExt};

pub mod projection;
pub mod saga;

/// Most messages one run takes.
pub const MESSAGES_MAX: usize = 10_000;
/// The largest `redeliveries_max` a plan may set.
pub const REDELIVERIES_MAX_LIMIT: u32 = 16;
/// Most effect messages a run captures.
pub const EFFECTS_CAPTURED_MAX: usize = 100_000;
/// The topic the kit's contexts say the messages came from.
pub const FAULT_TOPIC: &str = "faultkit";
/// The consumer group the kit's contexts say they were delivered to.
pub const FAULT_GROUP: &str = "faultkit";

/// Which reorderings a run may produce: see the [module documentation](self#per-key-order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OrderGuarantee {
    /// The bus's guarantee: per ordering key, deliveries come in publish order (duplicates
    /// and redeliveries of a message before the next message of its key); different keys
    /// and unkeyed messages are reordered freely.
    #[default]
    KeyedOrderKept,
    /// No order at all: any delivery may overtake any other.
    Unordered,
}

/// What faults a run injects, and how often. Probabilities are per delivery, in `0..=1`.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPlan {
    /// The schedule's random seed: the same plan and messages give the same schedule.
    pub seed: u64,
    /// Chance that a delivery is delivered again later (a duplicate, e.g. a producer retry
    /// or a redelivery after a lost ack the kit does not attribute to the handler).
    pub duplicate: f64,
    /// How many pending deliveries the next one is picked from (uniformly, among those the
    /// order guarantee allows): 1 keeps publish order, `n` lets a delivery overtake up to
    /// `n - 1` others.
    pub reorder_window: usize,
    /// Chance that a pending delivery is held back, behind up to `delay_max_deliveries`
    /// others (never past a later message of its key under
    /// [`OrderGuarantee::KeyedOrderKept`]).
    pub delay: f64,
    /// How far a delayed delivery is held back, in deliveries.
    pub delay_max_deliveries: usize,
    /// Chance that, after the handler succeeded (its effects done and published), the ack
    /// is lost and the message is redelivered. For a saga or a projection runner
    /// ([`saga`], [`projection`]): the chance of a crash just after a commit.
    pub crash_after_effect: f64,
    /// For a saga or a projection runner only ([`saga`], [`projection`]): the chance of a
    /// crash just before a commit — the step's side effect or the batch's writes done,
    /// nothing of them committed. Consumer handler runs ignore it.
    pub crash_before_commit: f64,
    /// Which reorderings are allowed.
    pub order: OrderGuarantee,
    /// Most extra deliveries of one message (duplicates, redeliveries after a crash,
    /// retries after a retryable error), at most [`REDELIVERIES_MAX_LIMIT`].
    pub redeliveries_max: u32,
}

impl Default for FaultPlan {
    /// No faults, keyed order kept, seed 0, up to 3 redeliveries per message.
    fn default() -> Self {
        FaultPlan {
            seed: 0,
            duplicate: 0.0,
            reorder_window: 1,
            delay: 0.0,
            delay_max_deliveries: 0,
            crash_after_effect: 0.0,
            crash_before_commit: 0.0,
            order: OrderGuarantee::KeyedOrderKept,
            redeliveries_max: 3,
        }
    }
}

impl FaultPlan {
    /// A plan with every fault on at moderate rates: 20% duplicates, a window of 4, 10% of
    /// deliveries delayed by up to 8, 10% crashes after the effect, 10% crashes before a
    /// commit.
    pub fn chaotic(seed: u64) -> Self {
        FaultPlan {
            seed,
            duplicate: 0.2,
            reorder_window: 4,
            delay: 0.1,
            delay_max_deliveries: 8,
            crash_after_effect: 0.1,
            crash_before_commit: 0.1,
            ..FaultPlan::default()
        }
    }

    /// Checks the plan's numbers.
    pub fn validate(&self) -> Result<(), FaultKitError> {
        for (name, value) in [
            ("duplicate", self.duplicate),
            ("delay", self.delay),
            ("crash_after_effect", self.crash_after_effect),
            ("crash_before_commit", self.crash_before_commit),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(FaultKitError::ProbabilityOutOfRange { name, value });
            }
        }
        if self.redeliveries_max > REDELIVERIES_MAX_LIMIT {
            return Err(FaultKitError::TooManyRedeliveries {
                requested: self.redeliveries_max,
                limit: REDELIVERIES_MAX_LIMIT,
            });
        }
        Ok(())
    }
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum FaultKitError {
    /// A probability of the plan is not in `0..=1`; fix the plan.
    #[error("fault plan: `{name}` is {value}, but a probability must be within 0..=1")]
    ProbabilityOutOfRange { name: &'static str, value: f64 },
    /// `redeliveries_max` is above the limit; lower it.
    #[error("fault plan: redeliveries_max {requested} is above the limit of {limit}")]
    TooManyRedeliveries { requested: u32, limit: u32 },
    /// More messages than a run takes; split them over several runs.
    #[error("{count} messages given, but a fault run takes at most {limit}")]
    TooManyMessages { count: usize, limit: usize },
    /// The handler published more effects than the kit captures; publish fewer per test.
    #[error("the handler published more than {limit} effect messages in one run")]
    TooManyEffects { limit: usize },
    /// The store under test failed (not a simulated crash); the run stopped.
    #[error("the store failed: {0}")]
    Store(String),
    /// A saga run was given more instances than it takes; split them over several runs.
    #[error("{count} saga instances given, but a fault run takes at most {limit}")]
    TooManyInstances { count: usize, limit: usize },
}

/// Why a message was delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryKind {
    /// Its first delivery.
    First,
    /// A duplicate the plan injected.
    Duplicate,
    /// A redelivery after the handler succeeded and the ack was lost.
    AfterEffect,
    /// A redelivery after the handler returned a retryable error (or panicked).
    Retry,
}

/// One delivery of a run, in the order they happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The message's position in the input (its publish order).
    pub index: usize,
    /// The message's id.
    pub message_id: String,
    /// Its ordering key, if any.
    pub key: Option<String>,
    /// Why it was delivered.
    pub kind: DeliveryKind,
    /// What the handler (or layer stack) made of it: `Ok(outcome)` or the error's text.
    pub result: Result<Outcome, String>,
}

/// A message the handler failed for good: a permanent error, or retryable errors until
/// `redeliveries_max` ran out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedMessage {
    /// The message's position in the input.
    pub index: usize,
    /// The message's id.
    pub message_id: String,
    /// The last error's text.
    pub error: String,
}

/// What a run did. Its [`Display`](fmt::Display) names the seed and the plan, so put it in
/// an assertion's message (`assert_eq!(a, b, "{report}")`) to make a failure repeatable.
#[derive(Clone, Debug)]
pub struct FaultReport {
    /// The plan the run followed (its seed repeats the schedule).
    pub plan: FaultPlan,
    /// Messages given.
    pub messages: usize,
    /// Deliveries made, every kind.
    pub deliveries: usize,
    /// Injected duplicates delivered.
    pub duplicates: usize,
    /// First deliveries that came after a message published later (of any key).
    pub reorders: usize,
    /// Deliveries that came after the first delivery of a later message of the same key
    /// (always 0 under [`OrderGuarantee::KeyedOrderKept`]).
    pub same_key_reorders: usize,
    /// Deliveries held back by the `delay` fault.
    pub delayed: usize,
    /// Redeliveries after the handler succeeded and the ack was lost.
    pub redeliveries_after_effect: usize,
    /// Redeliveries after a retryable error or a panic.
    pub retries: usize,
    /// Deliveries the handler or a layer reported as [`Outcome::Duplicate`].
    pub detected_duplicates: usize,
    /// Messages that failed for good.
    pub failed: Vec<FailedMessage>,
    /// Every delivery, in order.
    pub schedule: Vec<DeliveryRecord>,
    /// The effects the handler published, in order (each success's effects once; a
    /// redelivered message's effects again if the handler publishes them again).
    pub published: Vec<(TopicName, Message)>,
}

impl FaultReport {
    /// The schedule as `(input index, kind)` pairs: what two runs with the same seed share.
    pub fn order(&self) -> Vec<(usize, DeliveryKind)> {
        self.schedule.iter().map(|d| (d.index, d.kind)).collect()
    }

    /// How many times the message at input `index` was delivered.
    pub fn deliveries_of(&self, index: usize) -> usize {
        self.schedule.iter().filter(|d| d.index == index).count()
    }
}

impl fmt::Display for FaultReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fault run with seed {} ({} messages, {} deliveries: {} duplicates, {} reorders, \
             {} delayed, {} redeliveries after effect, {} retries, {} failed); repeat it with \
             `seed: {}` in the plan {:?}",
            self.plan.seed,
            self.messages,
            self.deliveries,
            self.duplicates,
            self.reorders,
            self.delayed,
            self.redeliveries_after_effect,
            self.retries,
            self.failed.len(),
            self.plan.seed,
            self.plan,
        )
    }
}

/// Runs handlers under a [`FaultPlan`]: see the [module documentation](self).
#[derive(Clone, Debug)]
pub struct FaultKit {
    plan: FaultPlan,
}

impl FaultKit {
    /// A kit following `plan`.
    pub fn new(plan: FaultPlan) -> Self {
        FaultKit { plan }
    }

    /// The plan.
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// Runs `handler` over `messages` under the plan's faults, as the router's bottom
    /// service would (panics caught as retryable errors, effects published on success).
    pub async fn run(
        &self,
        handler: impl Handler,
        messages: Vec<Message>,
    ) -> Result<FaultReport, FaultKitError> {
        self.run_service(HandlerService::new(handler), messages)
            .await
    }

    /// Runs a whole service stack (e.g. a dedup or inbox layer over a
    /// [`HandlerService`]) over `messages` under the plan's faults.
    pub async fn run_service<S>(
        &self,
        mut service: S,
        messages: Vec<Message>,
    ) -> Result<FaultReport, FaultKitError>
    where
        S: Service<HandlerContext, Response = Outcome, Error = HandlerError>,
    {
        self.plan.validate()?;
        if messages.len() > MESSAGES_MAX {
            return Err(FaultKitError::TooManyMessages {
                count: messages.len(),
                limit: MESSAGES_MAX,
            });
        }
        let keys: Vec<Option<String>> = messages
            .iter()
            .map(|m| m.ordering_key().map(str::to_string))
            .collect();
        let mut schedule = Schedule::new(&self.plan, keys.clone());
        let capture = Arc::new(Capture::default());
        let publisher: Arc<dyn Publisher> = capture.clone();
        let (topic, group) = names();
        let mut report = FaultReport {
            plan: self.plan.clone(),
            messages: messages.len(),
            deliveries: 0,
            duplicates: 0,
            reorders: 0,
            same_key_reorders: 0,
            delayed: 0,
            redeliveries_after_effect: 0,
            retries: 0,
            detected_duplicates: 0,
            failed: Vec::new(),
            schedule: Vec::new(),
            published: Vec::new(),
        };
        while let Some(next) = schedule.next() {
            let message = &messages[next.index];
            let ctx = HandlerContext::detached(message.clone(), topic.clone(), group.clone())
                .with_publisher(Arc::clone(&publisher));
            let result = match service.ready().await {
                Ok(ready) => ready.call(ctx).await,
                Err(e) => Err(e),
            };
            if capture.overflowed() {
                return Err(FaultKitError::TooManyEffects {
                    limit: EFFECTS_CAPTURED_MAX,
                });
            }
            let settle = match &result {
                Ok(Outcome::Duplicate { .. }) => {
                    report.detected_duplicates += 1;
                    Settle::Acked
                }
                Ok(_) => Settle::Acked,
                Err(e) if e.kind() == ErrorKind::Permanent => Settle::Failed,
                Err(_) => Settle::Retry,
            };
            let followup = schedule.settle(&next, settle);
            if let Err(e) = &result {
                if settle == Settle::Failed || followup == Some(Followup::GaveUp) {
                    report.failed.push(FailedMessage {
                        index: next.index,
                        message_id: message.id.clone(),
                        error: e.report(),
                    });
                }
            }
            report.schedule.push(DeliveryRecord {
                index: next.index,
                message_id: message.id.clone(),
                key: keys[next.index].clone(),
                kind: next.kind,
                result: result.map_err(|e| e.report()),
            });
        }
        let stats = schedule.stats();
        report.deliveries = report.schedule.len();
        report.duplicates = stats.duplicates;
        report.reorders = stats.reorders;
        report.same_key_reorders = stats.same_key_reorders;
        report.delayed = stats.delayed;
        report.redeliveries_after_effect = stats.after_effect;
        report.retries = stats.retries;
        report.published = capture.take();
        Ok(report)
    }

    /// Runs `handler` and then `check` on the report (and on whatever state the closure
    /// captured); panics with the seed and the plan when the plan is invalid or `check`
    /// fails, so the run can be repeated.
    pub async fn check(
        &self,
        handler: impl Handler,
        messages: Vec<Message>,
        check: impl FnOnce(&FaultReport) -> Result<(), String>,
    ) -> FaultReport {
        let report = match self.run(handler, messages).await {
            Ok(report) => report,
            Err(e) => panic!("{e} (seed {}, plan {:?})", self.plan.seed, self.plan),
        };
        if let Err(why) = check(&report) {
            panic!("invariant broken: {why}\n{report}");
        }
        report
    }
}

fn names() -> (TopicName, GroupName) {
    // Both are valid names by construction; the constants are checked by a unit test.
    (
        TopicName::new(FAULT_TOPIC).unwrap_or_else(|e| panic!("{FAULT_TOPIC}: {e}")),
        GroupName::new(FAULT_GROUP).unwrap_or_else(|e| panic!("{FAULT_GROUP}: {e}")),
    )
}

/// Captures the effects handlers publish.
#[derive(Default)]
struct Capture {
    state: Mutex<CaptureState>,
}

#[derive(Default)]
struct CaptureState {
    published: Vec<(TopicName, Message)>,
    overflowed: bool,
}

impl Capture {
    fn lock(&self) -> std::sync::MutexGuard<'_, CaptureState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    fn take(&self) -> Vec<(TopicName, Message)> {
        std::mem::take(&mut self.lock().published)
    }
}

#[async_trait]
impl Publisher for Capture {
    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        let mut state = self.lock();
        if state.published.len() + messages.len() > EFFECTS_CAPTURED_MAX {
            state.overflowed = true;
            return Err(BusError::InvalidArgument(format!(
                "the fault kit captures at most {EFFECTS_CAPTURED_MAX} effect messages"
            )));
        }
        state
            .published
            .extend(messages.into_iter().map(|m| (topic.clone(), m)));
        Ok(())
    }
}

// ---- the schedule: pure bookkeeping, no I/O ----

/// How a delivery ended, as the bus sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settle {
    Acked,
    Retry,
    Failed,
}

/// What the schedule did after a settle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Followup {
    Redelivered,
    /// A retry was due but the message's redeliveries ran out.
    GaveUp,
}

/// A delivery waiting in the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pending {
    index: usize,
    kind: DeliveryKind,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Stats {
    duplicates: usize,
    reorders: usize,
    same_key_reorders: usize,
    delayed: usize,
    after_effect: usize,
    retries: usize,
}

/// The deliveries still to make, in the order the bus would make them, and the dice.
struct Schedule {
    plan: FaultPlan,
    rng: SplitMix64,
    keys: Vec<Option<String>>,
    queue: VecDeque<Pending>,
    /// Extra deliveries made or queued per message (bounded by `redeliveries_max`).
    extra: Vec<u32>,
    /// Whether a message was delayed already (each is delayed at most once, so a run ends).
    delayed: Vec<bool>,
    /// The highest input index first-delivered so far, overall and per key.
    first_max: Option<usize>,
    key_max: HashMap<String, usize>,
    stats: Stats,
}

impl Schedule {
    fn new(plan: &FaultPlan, keys: Vec<Option<String>>) -> Self {
        let n = keys.len();
        Schedule {
            plan: plan.clone(),
            rng: SplitMix64(plan.seed),
            queue: (0..n)
                .map(|index| Pending {
                    index,
                    kind: DeliveryKind::First,
                })
                .collect(),
            keys,
            extra: vec![0; n],
            delayed: vec![false; n],
            first_max: None,
            key_max: HashMap::new(),
            stats: Stats::default(),
        }
    }

    fn keyed(&self) -> bool {
        self.plan.order == OrderGuarantee::KeyedOrderKept
    }

    /// Adds a message published after the run started (a saga's reply), at the back of
    /// the queue; returns its index.
    fn push(&mut self, key: Option<String>) -> usize {
        let index = self.keys.len();
        self.keys.push(key);
        self.extra.push(0);
        self.delayed.push(false);
        self.queue.push_back(Pending {
            index,
            kind: DeliveryKind::First,
        });
        index
    }

    /// Whether the entry at `pos` may go now: under keyed order, only if no entry before
    /// it has its key.
    fn allowed(&self, pos: usize) -> bool {
        if !self.keyed() {
            return true;
        }
        let Some(key) = &self.keys[self.queue[pos].index] else {
            return true;
        };
        !self
            .queue
            .iter()
            .take(pos)
            .any(|p| self.keys[p.index].as_ref() == Some(key))
    }

    /// The next delivery, or `None` when the run is over.
    fn next(&mut self) -> Option<Pending> {
        loop {
            if self.queue.is_empty() {
                return None;
            }
            let window = self.plan.reorder_window.max(1).min(self.queue.len());
            let candidates: Vec<usize> = (0..window).filter(|&p| self.allowed(p)).collect();
            // The front is always allowed, so there is a candidate.
            debug_assert!(candidates.first() == Some(&0));
            let pos = candidates[self.rng.below(candidates.len())];
            let picked = self.queue[pos];
            if !self.delayed[picked.index]
                && self.plan.delay_max_deliveries > 0
                && self.rng.chance(self.plan.delay)
                && self.hold_back(pos)
            {
                continue;
            }
            self.queue.remove(pos);
            self.record(picked);
            return Some(picked);
        }
    }

    /// Moves the entry at `pos` back by up to `delay_max_deliveries` (not past a later
    /// entry of its key under keyed order). Returns whether it moved.
    fn hold_back(&mut self, pos: usize) -> bool {
        let index = self.queue[pos].index;
        self.delayed[index] = true;
        let mut limit = (pos + self.plan.delay_max_deliveries).min(self.queue.len() - 1);
        if self.keyed() {
            if let Some(key) = &self.keys[index] {
                if let Some(next_same) = (pos + 1..=limit)
                    .find(|&p| self.keys[self.queue[p].index].as_ref() == Some(key))
                {
                    limit = limit.min(next_same - 1);
                }
            }
        }
        if limit <= pos {
            return false;
        }
        let to = pos + 1 + self.rng.below(limit - pos);
        if let Some(entry) = self.queue.remove(pos) {
            self.queue.insert(to, entry);
        }
        self.stats.delayed += 1;
        true
    }

    fn record(&mut self, d: Pending) {
        let key = self.keys[d.index].clone();
        if let Some(key) = key {
            let max = self.key_max.entry(key).or_insert(d.index);
            if d.index < *max {
                self.stats.same_key_reorders += 1;
            }
            *max = (*max).max(d.index);
        }
        match d.kind {
            DeliveryKind::First => {
                if self.first_max.is_some_and(|m| d.index < m) {
                    self.stats.reorders += 1;
                }
                self.first_max = Some(self.first_max.map_or(d.index, |m| m.max(d.index)));
            }
            DeliveryKind::Duplicate => self.stats.duplicates += 1,
            DeliveryKind::AfterEffect => self.stats.after_effect += 1,
            DeliveryKind::Retry => self.stats.retries += 1,
        }
    }

    /// Records how `d` ended and queues what follows: a retry, a redelivery after a lost
    /// ack, a duplicate. Returns what it queued for a failure.
    fn settle(&mut self, d: &Pending, settle: Settle) -> Option<Followup> {
        let budget = self.plan.redeliveries_max;
        match settle {
            Settle::Failed => None,
            Settle::Retry => {
                if self.extra[d.index] >= budget {
                    return Some(Followup::GaveUp);
                }
                self.requeue(d.index, DeliveryKind::Retry);
                Some(Followup::Redelivered)
            }
            Settle::Acked => {
                if self.extra[d.index] < budget && self.rng.chance(self.plan.crash_after_effect) {
                    self.requeue(d.index, DeliveryKind::AfterEffect);
                } else if self.extra[d.index] < budget && self.rng.chance(self.plan.duplicate) {
                    self.requeue(d.index, DeliveryKind::Duplicate);
                }
                None
            }
        }
    }

    /// Queues another delivery of message `index` somewhere within the reorder window —
    /// under keyed order, before any later message of its key. Only the window is
    /// scanned, so a requeue costs O(window).
    fn requeue(&mut self, index: usize, kind: DeliveryKind) {
        self.extra[index] += 1;
        debug_assert!(self.extra[index] <= self.plan.redeliveries_max);
        let span = self.plan.reorder_window.max(1).min(self.queue.len() + 1);
        let mut limit = span;
        if self.keyed() {
            if let Some(key) = &self.keys[index] {
                if let Some(later) = self
                    .queue
                    .iter()
                    .take(span)
                    .position(|p| p.index > index && self.keys[p.index].as_ref() == Some(key))
                {
                    // Inserting at `later` puts it just before that message.
                    limit = limit.min(later + 1);
                }
            }
        }
        let at = self.rng.below(limit);
        self.queue.insert(at, Pending { index, kind });
    }

    /// Puts message `index` first again: a delivery the process crashed on was never
    /// acknowledged, so the bus hands it to the restarted process first. Crashes are
    /// bounded by the caller, so this does not draw on the message's budget.
    fn redeliver_first(&mut self, index: usize) {
        self.queue.push_front(Pending {
            index,
            kind: DeliveryKind::Retry,
        });
    }

    fn stats(&self) -> Stats {
        self.stats
    }
}

/// A small, fixed PRNG (SplitMix64), so a seed gives the same schedule on every platform
/// and every version of the dependencies.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` ≥ 1).
    fn below(&mut self, n: usize) -> usize {
        debug_assert!(n >= 1);
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        // 53 random bits as a float in [0, 1).
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(spec: &[Option<&str>]) -> Vec<Option<String>> {
        spec.iter().map(|k| k.map(str::to_string)).collect()
    }

    fn drain(plan: &FaultPlan, keys: Vec<Option<String>>) -> (Vec<Pending>, Stats) {
        let mut s = Schedule::new(plan, keys);
        let mut out = Vec::new();
        while let Some(d) = s.next() {
            s.settle(&d, Settle::Acked);
            out.push(d);
        }
        (out, s.stats())
    }

    #[test]
    fn the_kit_names_are_valid() {
        let _ = names();
    }

    #[test]
    fn no_faults_deliver_each_message_once_in_order() {
        let (out, stats) = drain(&FaultPlan::default(), keys(&[Some("a"), None, Some("b")]));
        let order: Vec<usize> = out.iter().map(|d| d.index).collect();
        assert_eq!(order, vec![0, 1, 2]);
        assert_eq!(stats, Stats::default());
    }

    #[test]
    fn keyed_schedules_never_put_a_key_out_of_order() {
        let spec: Vec<Option<&str>> = (0..60)
            .map(|i| [Some("a"), Some("b"), Some("c"), None][i % 4])
            .collect();
        for seed in 0..200 {
            let plan = FaultPlan {
                reorder_window: 8,
                duplicate: 0.3,
                crash_after_effect: 0.3,
                delay: 0.3,
                delay_max_deliveries: 10,
                ..FaultPlan::chaotic(seed)
            };
            let (out, stats) = drain(&plan, keys(&spec));
            assert_eq!(stats.same_key_reorders, 0, "seed {seed}");
            let mut last: HashMap<&str, usize> = HashMap::new();
            for d in &out {
                if let Some(k) = spec[d.index] {
                    let prev = last.insert(k, d.index).unwrap_or(0);
                    assert!(d.index >= prev, "seed {seed}: {k} went back to {}", d.index);
                }
            }
            // Every message still delivered, each within its budget.
            for i in 0..spec.len() {
                let n = out.iter().filter(|d| d.index == i).count();
                assert!((1..=1 + plan.redeliveries_max as usize).contains(&n));
            }
        }
    }

    #[test]
    fn unordered_schedules_do_reorder_a_key() {
        let spec: Vec<Option<&str>> = (0..40).map(|_| Some("one-key")).collect();
        let plan = FaultPlan {
            order: OrderGuarantee::Unordered,
            reorder_window: 6,
            ..FaultPlan::chaotic(3)
        };
        let (_, stats) = drain(&plan, keys(&spec));
        assert!(stats.same_key_reorders > 0);
        assert!(stats.reorders > 0);
    }

    #[test]
    fn a_run_of_the_largest_size_delivers_every_message_within_its_budget() {
        let spec: Vec<Option<String>> = (0..MESSAGES_MAX)
            .map(|i| (i % 3 != 0).then(|| format!("k{}", i % 1000)))
            .collect();
        let plan = FaultPlan {
            duplicate: 1.0,
            reorder_window: 16,
            redeliveries_max: 2,
            ..FaultPlan::chaotic(9)
        };
        let (out, stats) = drain(&plan, spec);
        let mut per_message = vec![0u32; MESSAGES_MAX];
        for d in &out {
            per_message[d.index] += 1;
        }
        assert!(per_message.iter().all(|&n| (1..=3).contains(&n)));
        assert_eq!(stats.same_key_reorders, 0);
    }

    #[test]
    fn retries_stop_at_the_budget() {
        let plan = FaultPlan {
            redeliveries_max: 2,
            ..FaultPlan::default()
        };
        let mut s = Schedule::new(&plan, keys(&[Some("k")]));
        let mut follow = Vec::new();
        while let Some(d) = s.next() {
            follow.push(s.settle(&d, Settle::Retry));
        }
        assert_eq!(
            follow,
            vec![
                Some(Followup::Redelivered),
                Some(Followup::Redelivered),
                Some(Followup::GaveUp)
            ]
        );
    }

    #[test]
    fn messages_pushed_during_a_run_keep_their_key_order_and_budget() {
        let plan = FaultPlan {
            duplicate: 1.0,
            reorder_window: 8,
            redeliveries_max: 1,
            ..FaultPlan::chaotic(5)
        };
        let mut s = Schedule::new(&plan, Vec::new());
        let mut out = Vec::new();
        for round in 0..10 {
            for k in ["a", "b"] {
                let index = s.push(Some(k.to_string()));
                assert_eq!(index, round * 2 + usize::from(k == "b"));
            }
            // Deliver some, leave the rest to mix with the next round's.
            for _ in 0..2 {
                if let Some(d) = s.next() {
                    s.settle(&d, Settle::Acked);
                    out.push(d);
                }
            }
        }
        while let Some(d) = s.next() {
            s.settle(&d, Settle::Acked);
            out.push(d);
        }
        assert_eq!(s.stats().same_key_reorders, 0);
        for i in 0..20 {
            let n = out.iter().filter(|d| d.index == i).count();
            assert!((1..=2).contains(&n), "message {i} delivered {n} times");
        }
    }

    #[test]
    fn a_delivery_a_process_crashed_on_comes_first_without_drawing_on_its_budget() {
        let plan = FaultPlan {
            redeliveries_max: 0,
            ..FaultPlan::default()
        };
        let mut s = Schedule::new(&plan, keys(&[Some("k"), Some("k")]));
        let first = s.next().expect("a delivery");
        s.redeliver_first(first.index);
        let again = s.next().expect("the redelivery");
        assert_eq!((again.index, again.kind), (0, DeliveryKind::Retry));
        // Its budget (0) is untouched: a retryable failure now gives up, as it would have.
        assert_eq!(s.settle(&again, Settle::Retry), Some(Followup::GaveUp));
        assert_eq!(s.next().map(|d| d.index), Some(1));
    }

    #[test]
    fn invalid_plans_are_refused() {
        let plan = FaultPlan {
            duplicate: 1.5,
            ..FaultPlan::default()
        };
        assert!(matches!(
            plan.validate(),
            Err(FaultKitError::ProbabilityOutOfRange {
                name: "duplicate",
                ..
            })
        ));
        let plan = FaultPlan {
            redeliveries_max: REDELIVERIES_MAX_LIMIT + 1,
            ..FaultPlan::default()
        };
        assert!(plan.validate().is_err());
    }
}
