//! The control flow of an orchestrated saga as a pure state machine: given where an
//! instance is ([`Progress`]) and what happened ([`Input`]), [`Plan::decide`] says where
//! it goes and what must happen next ([`Effect`]s), or why the input has no effect
//! ([`Ignored`]). No I/O and no clock (backoff delays are drawn with full jitter): the runtime commits the new progress together with
//! the effects (outbox rows, timers) in one unit of work, then carries them out. Because
//! every decision is a function of the stored progress and the input, a crash at any
//! instant replays at most the last uncommitted decision.
//!
//! The model is compensatable / pivot / retriable:
//!
//! * steps before the pivot are **compensatable**: when a later step fails definitely,
//!   they are compensated in reverse order;
//! * the **pivot** is the point of no return: if it fails definitely, the steps before it
//!   are compensated; once it succeeded, nothing is compensated any more;
//! * steps after the pivot are **retriable**: they only retry forward. A definite failure
//!   there cannot be undone by the saga and parks the instance for a human.
//!
//! A step's outcome is one of three: success; a **definite failure** (the step knows it
//! changed nothing); or **unknown** (a timeout, a lost connection, a reply deadline that
//! fired). An unknown outcome is retried with backoff under the same idempotency key; one
//! still unknown after the retries is never compensated blindly: the instance is parked
//! as needing attention. A compensation that keeps failing is retried, then parked as
//! compensation-failed, with an event saying so. Operators resume parked instances
//! ([`Input::OperatorRetry`], [`Input::OperatorSkip`]) or cancel a running one
//! ([`Input::Cancel`]).
//!
//! Replies and timers name the step they belong to and an attempt **token** (a counter in
//! the progress): a timer of an earlier attempt, a reply for a step the saga has moved
//! past, or a second reply for the same step has no effect, so duplicate and late
//! messages are harmless.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::retry::RetryPolicy;

/// One step of a saga's plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepPlan {
    /// The step's name (stable: it is part of the idempotency keys).
    pub name: String,
    /// For a remote step (a command answered by a reply), how long to wait for the reply
    /// before the outcome counts as unknown; `None` for a local step.
    pub reply_deadline: Option<Duration>,
    /// Whether the step has a compensation. A step without one (a read, a notification)
    /// is skipped when compensating.
    pub compensable: bool,
}

impl StepPlan {
    /// A local step with a compensation.
    pub fn local(name: impl Into<String>) -> Self {
        StepPlan {
            name: name.into(),
            reply_deadline: None,
            compensable: true,
        }
    }

    /// A remote step with a compensation, answered within `deadline`.
    pub fn remote(name: impl Into<String>, deadline: Duration) -> Self {
        StepPlan {
            name: name.into(),
            reply_deadline: Some(deadline),
            compensable: true,
        }
    }

    /// The same step without a compensation.
    pub fn without_compensation(mut self) -> Self {
        self.compensable = false;
        self
    }
}

/// Why a plan cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A saga needs at least one step.
    #[error("a saga needs at least one step")]
    NoSteps,
    /// Two steps share a name (names are part of the idempotency keys).
    #[error("two steps are named {0:?}; step names must be unique")]
    DuplicateStep(String),
    /// A step name is empty or has characters that cannot be part of a key.
    #[error("step name {0:?} must be 1..=64 characters of [A-Za-z0-9_.-]")]
    InvalidStepName(String),
    /// The pivot names no step.
    #[error("the pivot is step {pivot} but the saga has {steps} steps")]
    PivotOutOfRange { pivot: usize, steps: usize },
}

/// The control flow of one saga definition.
#[derive(Clone, Debug)]
pub struct Plan {
    steps: Vec<StepPlan>,
    pivot: Option<usize>,
    forward_retry: RetryPolicy,
    compensation_retry: RetryPolicy,
}

/// Where an instance is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Phase {
    /// Not started yet.
    New,
    /// Running `step` forward (a local step running, or a remote step's command sent and
    /// its reply awaited), attempt `attempt` (1-based).
    Running { step: usize, attempt: u32 },
    /// Waiting out the backoff before attempt `attempt` of `step`.
    RetryingStep { step: usize, attempt: u32 },
    /// Compensating `step`, attempt `attempt`.
    Compensating { step: usize, attempt: u32 },
    /// Waiting out the backoff before compensation attempt `attempt` of `step`.
    RetryingCompensation { step: usize, attempt: u32 },
    /// Every step succeeded.
    Completed,
    /// A step failed and every completed compensatable step was compensated.
    Compensated,
    /// A compensation kept failing: parked until an operator acts.
    CompensationFailed { step: usize, error: String },
    /// An outcome stayed unknown, or a step past the pivot failed: parked until an
    /// operator acts.
    NeedsAttention { step: usize, error: String },
}

impl Phase {
    /// Whether the instance has finished (nothing more will happen to it).
    pub fn is_finished(&self) -> bool {
        matches!(self, Phase::Completed | Phase::Compensated)
    }

    /// Whether the instance waits for an operator.
    pub fn is_parked(&self) -> bool {
        matches!(
            self,
            Phase::CompensationFailed { .. } | Phase::NeedsAttention { .. }
        )
    }

    /// The status name shown by `runnel sagas list`.
    pub fn status(&self) -> &'static str {
        match self {
            Phase::New | Phase::Running { .. } | Phase::RetryingStep { .. } => "running",
            Phase::Compensating { .. } | Phase::RetryingCompensation { .. } => "compensating",
            Phase::Completed => "completed",
            Phase::Compensated => "compensated",
            Phase::CompensationFailed { .. } => "compensation-failed",
            Phase::NeedsAttention { .. } => "needs-attention",
        }
    }
}

/// An instance's stored progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Where it is.
    pub phase: Phase,
    /// Steps that completed forward, in order (the ones compensation considers).
    pub completed: Vec<usize>,
    /// The current attempt's token: replies and timers carry it.
    pub token: u64,
    /// Why the saga is compensating, once it is.
    pub failure: Option<String>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            phase: Phase::New,
            completed: Vec::new(),
            token: 0,
            failure: None,
        }
    }
}

/// What happened to an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The instance was created.
    Start,
    /// A step's attempt succeeded (a local step returned, or a remote step's reply said so).
    StepSucceeded { step: usize, token: u64 },
    /// A step failed definitely: it changed nothing.
    StepFailed {
        step: usize,
        token: u64,
        error: String,
    },
    /// A step's outcome is unknown (an error worth retrying).
    StepUnknown {
        step: usize,
        token: u64,
        error: String,
    },
    /// A remote step's reply deadline fired.
    DeadlineFired { step: usize, token: u64 },
    /// A backoff timer fired.
    RetryTimerFired { token: u64 },
    /// A compensation succeeded.
    CompensationSucceeded { step: usize, token: u64 },
    /// A compensation failed (retried with backoff, then parked).
    CompensationFailed {
        step: usize,
        token: u64,
        error: String,
    },
    /// An operator cancels a running instance: its completed steps are compensated.
    Cancel,
    /// An operator retries the parked step or compensation.
    OperatorRetry,
    /// An operator skips the parked step (counted as done) or compensation (counted as
    /// compensated).
    OperatorSkip,
}

/// What the runtime must do after committing a decision, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Run `step` forward: call a local step, or send a remote step's command (through
    /// the outbox, in the same commit) and schedule its deadline.
    Execute {
        step: usize,
        token: u64,
        attempt: u32,
        key: String,
    },
    /// Schedule the reply deadline of a remote step.
    ScheduleDeadline {
        step: usize,
        token: u64,
        after: Duration,
    },
    /// Schedule a backoff timer.
    ScheduleRetry { token: u64, after: Duration },
    /// Run `step`'s compensation.
    Compensate {
        step: usize,
        token: u64,
        attempt: u32,
        key: String,
    },
    /// Cancel the instance's pending timers (a deadline or a backoff that no longer
    /// matters).
    CancelTimers,
    /// The instance finished: it completed, or was compensated.
    Finished,
    /// The instance is parked; publish `SagaCompensationFailed` or `SagaNeedsAttention`,
    /// log it and count it.
    Parked { step: usize, error: String },
}

/// Why an input had no effect (logged and counted by the runtime).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// A reply or timer for an attempt that is over (a duplicate, or late).
    Stale,
    /// A reply for a step the saga is not running any more (it moved on, or compensates).
    NotAwaited,
    /// The instance has finished.
    Finished,
    /// The input does not apply in this phase (an operator retry on a running instance).
    NotApplicable(&'static str),
}

/// The outcome of [`Plan::decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Commit `progress` with `effects`.
    Apply {
        progress: Progress,
        effects: Vec<Effect>,
    },
    /// Nothing changes.
    Ignore(Ignored),
}

const STEP_NAME_MAX: usize = 64;

impl Plan {
    /// A plan of `steps` with an optional pivot (the index of the point-of-no-return step;
    /// `None`: every step is compensatable), retrying unknown outcomes with
    /// `forward_retry` and failed compensations with `compensation_retry`.
    pub fn new(
        steps: Vec<StepPlan>,
        pivot: Option<usize>,
        forward_retry: RetryPolicy,
        compensation_retry: RetryPolicy,
    ) -> Result<Plan, PlanError> {
        if steps.is_empty() {
            return Err(PlanError::NoSteps);
        }
        for (i, s) in steps.iter().enumerate() {
            let valid = !s.name.is_empty()
                && s.name.len() <= STEP_NAME_MAX
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !valid {
                return Err(PlanError::InvalidStepName(s.name.clone()));
            }
            if steps[..i].iter().any(|o| o.name == s.name) {
                return Err(PlanError::DuplicateStep(s.name.clone()));
            }
        }
        if let Some(p) = pivot {
            if p >= steps.len() {
                return Err(PlanError::PivotOutOfRange {
                    pivot: p,
                    steps: steps.len(),
                });
            }
        }
        Ok(Plan {
            steps,
            pivot,
            forward_retry,
            compensation_retry,
        })
    }

    /// The steps.
    pub fn steps(&self) -> &[StepPlan] {
        &self.steps
    }

    /// The idempotency key of `step` of `instance`, forward or compensating: the same on
    /// every attempt, so a step that may have run runs again under the same key.
    pub fn key(&self, instance: &str, step: usize, compensating: bool) -> String {
        let direction = if compensating { "undo" } else { "do" };
        format!("{instance}/{}/{direction}", self.steps[step].name)
    }

    /// Whether the pivot (if any) completed: nothing is compensated after that.
    fn past_pivot(&self, progress: &Progress) -> bool {
        self.pivot.is_some_and(|p| progress.completed.contains(&p))
    }

    /// Decides what `input` does to the instance `instance` at `progress`.
    pub fn decide(&self, instance: &str, progress: &Progress, input: &Input) -> Decision {
        use Phase::*;
        if progress.phase.is_finished() {
            return Decision::Ignore(Ignored::Finished);
        }
        let mut next = progress.clone();
        match (&progress.phase, input) {
            (New, Input::Start) => self.run_step(instance, next, 0, 1),
            (_, Input::Start) => Decision::Ignore(Ignored::NotApplicable("already started")),

            (
                Running { step, .. } | RetryingStep { step, .. },
                Input::StepSucceeded { step: s, .. },
            ) if s == step => {
                // Any attempt's success counts, even one that arrives while the next attempt
                // waits out its backoff: every attempt ran under the same key.
                next.completed.push(*step);
                let mut effects = vec![Effect::CancelTimers];
                if step + 1 == self.steps.len() {
                    next.phase = Completed;
                    effects.push(Effect::Finished);
                    Decision::Apply {
                        progress: next,
                        effects,
                    }
                } else {
                    match self.run_step(instance, next, step + 1, 1) {
                        Decision::Apply {
                            progress,
                            effects: more,
                        } => {
                            effects.extend(more);
                            Decision::Apply { progress, effects }
                        }
                        other => other,
                    }
                }
            }
            (
                Running { step, .. } | RetryingStep { step, .. },
                Input::StepFailed { step: s, error, .. },
            ) if s == step => {
                let step = *step;
                let past = self.past_pivot(progress) || self.pivot.is_some_and(|p| step > p);
                if past {
                    // Past the point of no return: nothing can be undone.
                    return self.park_attention(
                        next,
                        step,
                        format!("step {} failed after the pivot: {error}", self.name(step)),
                    );
                }
                next.failure = Some(format!("step {} failed: {error}", self.name(step)));
                let mut effects = vec![Effect::CancelTimers];
                match self.compensate_next(instance, next, None) {
                    Decision::Apply {
                        progress,
                        effects: more,
                    } => {
                        effects.extend(more);
                        Decision::Apply { progress, effects }
                    }
                    other => other,
                }
            }
            (
                Running { step, attempt },
                Input::StepUnknown {
                    step: s,
                    token,
                    error,
                },
            ) if s == step => {
                if *token != progress.token {
                    return Decision::Ignore(Ignored::Stale);
                }
                self.retry_step(next, *step, *attempt, error.clone())
            }
            (Running { step, attempt }, Input::DeadlineFired { step: s, token }) if s == step => {
                if *token != progress.token {
                    return Decision::Ignore(Ignored::Stale);
                }
                let within = self.steps[*step].reply_deadline.unwrap_or_default();
                self.retry_step(next, *step, *attempt, format!("no reply within {within:?}"))
            }
            (Compensating { step, .. }, Input::DeadlineFired { step: s, token }) if s == step => {
                if *token != progress.token {
                    return Decision::Ignore(Ignored::Stale);
                }
                // A remote compensation's reply did not come in time: a failed attempt.
                let error = format!(
                    "no compensation reply within {:?}",
                    self.steps[*step].reply_deadline.unwrap_or_default()
                );
                self.decide(
                    instance,
                    progress,
                    &Input::CompensationFailed {
                        step: *step,
                        token: *token,
                        error,
                    },
                )
            }
            (
                _,
                Input::StepSucceeded { .. }
                | Input::StepFailed { .. }
                | Input::StepUnknown { .. }
                | Input::DeadlineFired { .. },
            ) => Decision::Ignore(Ignored::NotAwaited),

            (RetryingStep { step, attempt }, Input::RetryTimerFired { token }) => {
                if *token != progress.token {
                    return Decision::Ignore(Ignored::Stale);
                }
                self.run_step(instance, next, *step, *attempt)
            }
            (RetryingCompensation { step, attempt }, Input::RetryTimerFired { token }) => {
                if *token != progress.token {
                    return Decision::Ignore(Ignored::Stale);
                }
                self.run_compensation(instance, next, *step, *attempt)
            }
            (_, Input::RetryTimerFired { .. }) => Decision::Ignore(Ignored::Stale),

            (Compensating { step, .. }, Input::CompensationSucceeded { step: s, .. })
                if s == step =>
            {
                let done = *step;
                with_first(
                    Effect::CancelTimers,
                    self.compensate_next(instance, next, Some(done)),
                )
            }
            (
                Compensating { step, attempt },
                Input::CompensationFailed {
                    step: s,
                    token,
                    error,
                },
            ) if s == step => {
                if *token != progress.token {
                    return Decision::Ignore(Ignored::Stale);
                }
                if *attempt >= self.compensation_retry.attempts() {
                    next.phase = CompensationFailed {
                        step: *step,
                        error: error.clone(),
                    };
                    Decision::Apply {
                        progress: next,
                        effects: vec![
                            Effect::CancelTimers,
                            Effect::Parked {
                                step: *step,
                                error: error.clone(),
                            },
                        ],
                    }
                } else {
                    next.token += 1;
                    next.phase = RetryingCompensation {
                        step: *step,
                        attempt: attempt + 1,
                    };
                    let after = self.compensation_retry.delay_for_attempt(*attempt);
                    Decision::Apply {
                        effects: vec![Effect::ScheduleRetry {
                            token: next.token,
                            after,
                        }],
                        progress: next,
                    }
                }
            }
            (_, Input::CompensationSucceeded { .. } | Input::CompensationFailed { .. }) => {
                Decision::Ignore(Ignored::NotAwaited)
            }

            (New | Running { .. } | RetryingStep { .. } | NeedsAttention { .. }, Input::Cancel) => {
                if self.past_pivot(progress) {
                    return Decision::Ignore(Ignored::NotApplicable(
                        "the pivot completed; the saga can only go forward",
                    ));
                }
                next.failure = Some("cancelled by an operator".into());
                let mut effects = vec![Effect::CancelTimers];
                match self.compensate_next(instance, next, None) {
                    Decision::Apply {
                        progress,
                        effects: more,
                    } => {
                        effects.extend(more);
                        Decision::Apply { progress, effects }
                    }
                    other => other,
                }
            }
            (_, Input::Cancel) => Decision::Ignore(Ignored::NotApplicable(
                "only a running or parked instance can be cancelled",
            )),

            (NeedsAttention { step, .. }, Input::OperatorRetry) => {
                self.run_step(instance, next, *step, 1)
            }
            (CompensationFailed { step, .. }, Input::OperatorRetry) => {
                self.run_compensation(instance, next, *step, 1)
            }
            (NeedsAttention { step, .. }, Input::OperatorSkip) => {
                // The operator vouches that the step's effect happened: go on forward.
                let step = *step;
                next.completed.push(step);
                if step + 1 == self.steps.len() {
                    next.phase = Completed;
                    Decision::Apply {
                        progress: next,
                        effects: vec![Effect::Finished],
                    }
                } else {
                    self.run_step(instance, next, step + 1, 1)
                }
            }
            (CompensationFailed { step, .. }, Input::OperatorSkip) => {
                let done = *step;
                self.compensate_next(instance, next, Some(done))
            }
            (_, Input::OperatorRetry | Input::OperatorSkip) => Decision::Ignore(
                Ignored::NotApplicable("only a parked instance can be retried or skipped"),
            ),
        }
    }

    fn name(&self, step: usize) -> &str {
        &self.steps[step].name
    }

    fn run_step(&self, instance: &str, mut next: Progress, step: usize, attempt: u32) -> Decision {
        next.token += 1;
        next.phase = Phase::Running { step, attempt };
        let mut effects = vec![Effect::Execute {
            step,
            token: next.token,
            attempt,
            key: self.key(instance, step, false),
        }];
        if let Some(after) = self.steps[step].reply_deadline {
            effects.push(Effect::ScheduleDeadline {
                step,
                token: next.token,
                after,
            });
        }
        Decision::Apply {
            progress: next,
            effects,
        }
    }

    fn retry_step(&self, mut next: Progress, step: usize, attempt: u32, error: String) -> Decision {
        if attempt >= self.forward_retry.attempts() {
            // Still unknown: never compensate blindly.
            return self.park_attention(
                next,
                step,
                format!(
                    "step {} outcome still unknown after {attempt} attempts: {error}",
                    self.name(step)
                ),
            );
        }
        next.token += 1;
        next.phase = Phase::RetryingStep {
            step,
            attempt: attempt + 1,
        };
        let after = self.forward_retry.delay_for_attempt(attempt);
        Decision::Apply {
            effects: vec![
                Effect::CancelTimers,
                Effect::ScheduleRetry {
                    token: next.token,
                    after,
                },
            ],
            progress: next,
        }
    }

    fn park_attention(&self, mut next: Progress, step: usize, error: String) -> Decision {
        next.phase = Phase::NeedsAttention {
            step,
            error: error.clone(),
        };
        Decision::Apply {
            progress: next,
            effects: vec![Effect::CancelTimers, Effect::Parked { step, error }],
        }
    }

    fn run_compensation(
        &self,
        instance: &str,
        mut next: Progress,
        step: usize,
        attempt: u32,
    ) -> Decision {
        next.token += 1;
        next.phase = Phase::Compensating { step, attempt };
        let mut effects = vec![Effect::Compensate {
            step,
            token: next.token,
            attempt,
            key: self.key(instance, step, true),
        }];
        if let Some(after) = self.steps[step].reply_deadline {
            effects.push(Effect::ScheduleDeadline {
                step,
                token: next.token,
                after,
            });
        }
        Decision::Apply {
            effects,
            progress: next,
        }
    }

    /// Compensates the next completed compensable step in reverse order (after `done`, the
    /// one just compensated), or finishes as compensated.
    fn compensate_next(&self, instance: &str, mut next: Progress, done: Option<usize>) -> Decision {
        if let Some(done) = done {
            next.completed.retain(|s| *s != done);
        }
        let candidate = next
            .completed
            .iter()
            .rev()
            .copied()
            .find(|s| self.steps[*s].compensable);
        match candidate {
            Some(step) => self.run_compensation(instance, next, step, 1),
            None => {
                next.completed.clear();
                next.phase = Phase::Compensated;
                Decision::Apply {
                    progress: next,
                    effects: vec![Effect::Finished],
                }
            }
        }
    }
}

/// `decision` with `effect` first (when it applies).
fn with_first(effect: Effect, decision: Decision) -> Decision {
    match decision {
        Decision::Apply {
            progress,
            mut effects,
        } => {
            effects.insert(0, effect);
            Decision::Apply { progress, effects }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "order-7";

    fn plan(pivot: Option<usize>) -> Plan {
        Plan::new(
            vec![
                StepPlan::remote("reserve-inventory", Duration::from_secs(30)),
                StepPlan::local("charge-payment"),
                StepPlan::local("create-shipment"),
                StepPlan::local("confirm-order").without_compensation(),
            ],
            pivot,
            RetryPolicy::immediate(3),
            RetryPolicy::immediate(2),
        )
        .unwrap()
    }

    /// Applies `input`, asserting it is not ignored; returns the new progress and effects.
    fn step(plan: &Plan, progress: &Progress, input: Input) -> (Progress, Vec<Effect>) {
        match plan.decide(ID, progress, &input) {
            Decision::Apply { progress, effects } => (progress, effects),
            Decision::Ignore(why) => panic!("{input:?} ignored at {:?}: {why:?}", progress.phase),
        }
    }

    fn executed(effects: &[Effect]) -> Vec<usize> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Execute { step, .. } => Some(*step),
                _ => None,
            })
            .collect()
    }

    fn compensated(effects: &[Effect]) -> Vec<usize> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Compensate { step, .. } => Some(*step),
                _ => None,
            })
            .collect()
    }

    fn ok(progress: &Progress, step: usize) -> Input {
        Input::StepSucceeded {
            step,
            token: progress.token,
        }
    }

    #[test]
    fn every_step_runs_in_order_and_the_saga_completes() {
        let p = plan(None);
        let (mut at, effects) = step(&p, &Progress::default(), Input::Start);
        assert_eq!(executed(&effects), vec![0]);
        assert!(effects.iter().any(|e| matches!(
            e,
            Effect::ScheduleDeadline { step: 0, after, .. } if *after == Duration::from_secs(30)
        )));
        for s in 0..4 {
            let (next, effects) = step(&p, &at, ok(&at, s));
            at = next;
            if s < 3 {
                assert_eq!(executed(&effects), vec![s + 1]);
            } else {
                assert!(effects.contains(&Effect::Finished));
            }
        }
        assert_eq!(at.phase, Phase::Completed);
        assert_eq!(at.completed, vec![0, 1, 2, 3]);
        assert_eq!(
            p.decide(ID, &at, &ok(&at, 3)),
            Decision::Ignore(Ignored::Finished)
        );
    }

    #[test]
    fn a_definite_failure_compensates_completed_steps_in_reverse() {
        let p = plan(None);
        let (mut at, _) = step(&p, &Progress::default(), Input::Start);
        for s in 0..2 {
            at = step(&p, &at, ok(&at, s)).0;
        }
        let failed = Input::StepFailed {
            step: 2,
            token: at.token,
            error: "no carrier".into(),
        };
        let (mut at, effects) = step(&p, &at, failed);
        assert_eq!(compensated(&effects), vec![1]);
        assert_eq!(
            at.failure.as_deref(),
            Some("step create-shipment failed: no carrier")
        );
        let mut order = vec![1];
        while let Phase::Compensating { step: s, .. } = at.phase {
            let (next, effects) = step(
                &p,
                &at,
                Input::CompensationSucceeded {
                    step: s,
                    token: at.token,
                },
            );
            order.extend(compensated(&effects));
            at = next;
        }
        assert_eq!(
            order,
            vec![1, 0],
            "reverse order, the failed step not compensated"
        );
        assert_eq!(at.phase, Phase::Compensated);
    }

    #[test]
    fn keys_are_stable_across_attempts_and_differ_by_direction() {
        let p = plan(None);
        let (at, first) = step(&p, &Progress::default(), Input::Start);
        let unknown = Input::StepUnknown {
            step: 0,
            token: at.token,
            error: "timeout".into(),
        };
        let (at, effects) = step(&p, &at, unknown);
        assert!(matches!(
            at.phase,
            Phase::RetryingStep {
                step: 0,
                attempt: 2
            }
        ));
        assert!(effects.contains(&Effect::CancelTimers));
        let (_, second) = step(&p, &at, Input::RetryTimerFired { token: at.token });
        let key = |effects: &[Effect]| {
            effects.iter().find_map(|e| match e {
                Effect::Execute { key, attempt, .. } => Some((key.clone(), *attempt)),
                _ => None,
            })
        };
        assert_eq!(
            key(&first),
            Some(("order-7/reserve-inventory/do".into(), 1))
        );
        assert_eq!(
            key(&second),
            Some(("order-7/reserve-inventory/do".into(), 2))
        );
        assert_eq!(p.key(ID, 0, true), "order-7/reserve-inventory/undo");
    }

    #[test]
    fn an_outcome_still_unknown_after_the_retries_parks_and_is_never_compensated() {
        let p = plan(None);
        let (mut at, _) = step(&p, &Progress::default(), Input::Start);
        at = step(&p, &at, ok(&at, 0)).0; // reserved
        for attempt in 1..=3 {
            let (next, effects) = step(
                &p,
                &at,
                Input::StepUnknown {
                    step: 1,
                    token: at.token,
                    error: "gateway timeout".into(),
                },
            );
            assert!(compensated(&effects).is_empty());
            at = next;
            if attempt < 3 {
                at = step(&p, &at, Input::RetryTimerFired { token: at.token }).0;
            }
        }
        let Phase::NeedsAttention { step: 1, error } = &at.phase else {
            panic!("{:?}", at.phase)
        };
        assert!(error.contains("still unknown after 3 attempts"), "{error}");
        assert_eq!(at.phase.status(), "needs-attention");
        // The operator retries: the step runs again, under the same key.
        let (at, effects) = step(&p, &at, Input::OperatorRetry);
        assert_eq!(executed(&effects), vec![1]);
        assert!(matches!(
            at.phase,
            Phase::Running {
                step: 1,
                attempt: 1
            }
        ));
    }

    #[test]
    fn a_failing_compensation_is_retried_then_parked_and_surfaced() {
        let p = plan(None);
        let (mut at, _) = step(&p, &Progress::default(), Input::Start);
        at = step(&p, &at, ok(&at, 0)).0;
        at = step(
            &p,
            &at,
            Input::StepFailed {
                step: 1,
                token: at.token,
                error: "card declined".into(),
            },
        )
        .0;
        assert!(matches!(
            at.phase,
            Phase::Compensating {
                step: 0,
                attempt: 1
            }
        ));
        let fail = |at: &Progress| Input::CompensationFailed {
            step: 0,
            token: at.token,
            error: "inventory service down".into(),
        };
        let (next, effects) = step(&p, &at, fail(&at));
        assert!(matches!(effects[..], [Effect::ScheduleRetry { .. }]));
        at = step(&p, &next, Input::RetryTimerFired { token: next.token }).0;
        let (at, effects) = step(&p, &at, fail(&at));
        assert_eq!(
            at.phase,
            Phase::CompensationFailed {
                step: 0,
                error: "inventory service down".into()
            }
        );
        assert!(effects.contains(&Effect::Parked {
            step: 0,
            error: "inventory service down".into()
        }));
        // An operator skips it: counted as compensated, the saga finishes.
        let (at, effects) = step(&p, &at, Input::OperatorSkip);
        assert_eq!(at.phase, Phase::Compensated);
        assert!(effects.contains(&Effect::Finished));
    }

    #[test]
    fn duplicate_and_late_replies_have_no_effect() {
        let p = plan(None);
        let (at, _) = step(&p, &Progress::default(), Input::Start);
        let reply = ok(&at, 0);
        let (after, _) = step(&p, &at, reply.clone());
        assert_eq!(
            p.decide(ID, &after, &reply),
            Decision::Ignore(Ignored::NotAwaited),
            "a duplicate reply for a step already done"
        );
        // A deadline timer of an earlier attempt does not touch the current one.
        let (retrying, _) = step(
            &p,
            &at,
            Input::DeadlineFired {
                step: 0,
                token: at.token,
            },
        );
        let (running, _) = step(
            &p,
            &retrying,
            Input::RetryTimerFired {
                token: retrying.token,
            },
        );
        assert_eq!(
            p.decide(
                ID,
                &running,
                &Input::DeadlineFired {
                    step: 0,
                    token: at.token
                }
            ),
            Decision::Ignore(Ignored::Stale)
        );
        // A reply that arrives after the saga moved into compensation is not applied.
        let (failed, _) = step(
            &p,
            &after,
            Input::StepFailed {
                step: 1,
                token: after.token,
                error: "declined".into(),
            },
        );
        assert_eq!(
            p.decide(ID, &failed, &ok(&after, 1)),
            Decision::Ignore(Ignored::NotAwaited)
        );
        // A retry timer of an earlier attempt is stale.
        assert_eq!(
            p.decide(ID, &failed, &Input::RetryTimerFired { token: 1 }),
            Decision::Ignore(Ignored::Stale)
        );
    }

    #[test]
    fn an_earlier_attempts_reply_during_the_backoff_settles_the_step() {
        let p = plan(None);
        let (at, _) = step(&p, &Progress::default(), Input::Start);
        let first_token = at.token;
        let (waiting, _) = step(
            &p,
            &at,
            Input::DeadlineFired {
                step: 0,
                token: first_token,
            },
        );
        assert!(matches!(waiting.phase, Phase::RetryingStep { step: 0, .. }));
        // The first attempt's reply arrives late, but before the retry: it counts.
        let (at, effects) = step(
            &p,
            &waiting,
            Input::StepSucceeded {
                step: 0,
                token: first_token,
            },
        );
        assert_eq!(executed(&effects), vec![1]);
        assert!(
            effects.contains(&Effect::CancelTimers),
            "the backoff timer goes"
        );
        assert_eq!(at.completed, vec![0]);
    }

    #[test]
    fn past_the_pivot_nothing_is_compensated() {
        // charge-payment is the pivot: after it, steps only go forward.
        let p = plan(Some(1));
        let (mut at, _) = step(&p, &Progress::default(), Input::Start);
        at = step(&p, &at, ok(&at, 0)).0;
        at = step(&p, &at, ok(&at, 1)).0;
        let (parked, effects) = step(
            &p,
            &at,
            Input::StepFailed {
                step: 2,
                token: at.token,
                error: "address unknown".into(),
            },
        );
        assert!(compensated(&effects).is_empty());
        assert!(matches!(
            parked.phase,
            Phase::NeedsAttention { step: 2, .. }
        ));
        assert_eq!(
            p.decide(ID, &parked, &Input::Cancel),
            Decision::Ignore(Ignored::NotApplicable(
                "the pivot completed; the saga can only go forward"
            ))
        );
        // The pivot itself failing compensates what came before it.
        let (mut at, _) = step(&p, &Progress::default(), Input::Start);
        at = step(&p, &at, ok(&at, 0)).0;
        let (at, effects) = step(
            &p,
            &at,
            Input::StepFailed {
                step: 1,
                token: at.token,
                error: "declined".into(),
            },
        );
        assert_eq!(compensated(&effects), vec![0]);
        assert!(matches!(at.phase, Phase::Compensating { step: 0, .. }));
    }

    #[test]
    fn an_operator_cancel_compensates_a_running_instance() {
        let p = plan(None);
        let (mut at, _) = step(&p, &Progress::default(), Input::Start);
        at = step(&p, &at, ok(&at, 0)).0;
        let (at, effects) = step(&p, &at, Input::Cancel);
        assert_eq!(compensated(&effects), vec![0]);
        assert!(effects.contains(&Effect::CancelTimers));
        assert_eq!(at.failure.as_deref(), Some("cancelled by an operator"));
        // A late success of the cancelled step is not applied.
        assert_eq!(
            p.decide(
                ID,
                &at,
                &Input::StepSucceeded {
                    step: 1,
                    token: at.token - 1
                }
            ),
            Decision::Ignore(Ignored::NotAwaited)
        );
    }

    #[test]
    fn progress_survives_a_round_trip_through_json() {
        let p = plan(None);
        let (at, _) = step(&p, &Progress::default(), Input::Start);
        let at = step(&p, &at, ok(&at, 0)).0;
        let stored = serde_json::to_string(&at).unwrap();
        assert!(stored.contains("\"phase\":\"running\""), "{stored}");
        let back: Progress = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, at);
    }

    #[test]
    fn bad_plans_are_refused() {
        let r = || RetryPolicy::immediate(1);
        assert_eq!(
            Plan::new(vec![], None, r(), r()).unwrap_err(),
            PlanError::NoSteps
        );
        assert_eq!(
            Plan::new(
                vec![StepPlan::local("a"), StepPlan::local("a")],
                None,
                r(),
                r()
            )
            .unwrap_err(),
            PlanError::DuplicateStep("a".into())
        );
        assert!(matches!(
            Plan::new(vec![StepPlan::local("a/b")], None, r(), r()),
            Err(PlanError::InvalidStepName(_))
        ));
        assert_eq!(
            Plan::new(vec![StepPlan::local("a")], Some(1), r(), r()).unwrap_err(),
            PlanError::PivotOutOfRange { pivot: 1, steps: 1 }
        );
    }
}
