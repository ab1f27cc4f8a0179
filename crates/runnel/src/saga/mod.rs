//! Sagas: long-running processes that span services, made of steps that are compensated
//! in reverse when a later step fails.
//!
//! This module grows in layers (see `DESIGN.md`, "Stateful processors"). Today it holds
//! the control flow of an orchestrated saga as a pure state machine ([`machine`]): which
//! step runs next, when to retry, when to compensate and in which order, when to park an
//! instance for an operator, and which replies and timers no longer count. The durable
//! runtime that stores instances, timers and outbox messages in one commit per decision
//! builds on it.

pub mod machine;

pub use machine::{Decision, Effect, Ignored, Input, Phase, Plan, PlanError, Progress, StepPlan};
