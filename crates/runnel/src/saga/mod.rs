//! Sagas: long-running processes that span services, made of steps that are compensated
//! in reverse when a later step fails — durable across crashes, on the embedded store and
//! on PostgreSQL.
//!
//! * [`SagaDefinition`]: a saga's name, version and ordered steps over typed data. A step
//!   is *local* (an async function given the data and a stable idempotency key) or
//!   *remote* (a command sent over the bus, settled by a reply on the saga's reply topic
//!   within a deadline); either may have a compensation. One step may be the pivot.
//! * [`machine`]: the control flow as a pure state machine — which step runs next, when to
//!   retry, when to compensate and in which order, when to park an instance.
//! * [`SagaRuntime`]: starts instances and applies replies, timers and operator actions,
//!   each decision one commit of a [`ProcessorStore`](runnel_core::processor::ProcessorStore)
//!   with the messages it sends (outbox) and the timers it schedules.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use runnel::saga::{SagaDefinition, SagaRuntime, StepContext, StepError};
//! use runnel::core::processor::InstanceStatus;
//! use runnel_sqlite::{SqliteProcessorStore, SqliteStore};
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct Order { total: u32, charged: bool }
//!
//! let saga = SagaDefinition::<Order>::builder("checkout", 1)
//!     .local("charge", |mut ctx: StepContext<Order>| async move {
//!         // call the payment provider with ctx.key as its idempotency key
//!         ctx.data.charged = true;
//!         Ok::<_, StepError>(ctx.data)
//!     })
//!     .compensate_local(|mut ctx: StepContext<Order>| async move {
//!         ctx.data.charged = false; // refund, same key discipline
//!         Ok(ctx.data)
//!     })
//!     .local("confirm", |ctx: StepContext<Order>| async move { Ok(ctx.data) })
//!     .build()?;
//! let store = Arc::new(SqliteProcessorStore::new(SqliteStore::open_temporary()?));
//! let sagas = SagaRuntime::new(saga, store);
//! sagas.start("order-1", Order { total: 30, charged: false }).await?;
//! sagas.tick().await?; // a service runs `sagas.run(shutdown)` instead
//! let instance = sagas.load("order-1").await?.unwrap();
//! assert_eq!(instance.record.status, InstanceStatus::Completed);
//! assert!(instance.data.charged);
//! # Ok(()) }
//! ```

pub mod admin;
pub mod choreography;
mod definition;
mod handler;
pub mod machine;
pub mod process;
mod runtime;

pub use definition::{
    default_compensation_retry, default_forward_retry, DefinitionError, LateReplyPolicy,
    OrphanPolicy, RemoteCall, Reply, SagaBuilder, SagaData, SagaDefinition, StepContext, StepError,
    StepResult, REPLY_DEADLINE_DEFAULT, REPLY_OUTCOME_HEADER, SAGA_NAME_LEN_MAX,
};
pub use handler::reply_handler;
pub use machine::{Decision, Effect, Ignored, Input, Phase, Plan, PlanError, Progress, StepPlan};
pub use runtime::{
    reply_to, CrashPoint, OperatorAction, ReplyHandled, SagaError, SagaInstance, SagaOptions,
    SagaRuntime, StartRequest, Started, CONFLICT_RETRIES_MAX, DIRECTION_HEADER,
    IDEMPOTENCY_KEY_HEADER, INSTANCE_HEADER, LEASE_DEFAULT, MAX_CONCURRENCY_DEFAULT,
    METRIC_IGNORED, METRIC_PARKED, METRIC_STEP_SECONDS, METRIC_TRANSITIONS, POLL_INTERVAL_DEFAULT,
    REPLY_TO_HEADER, SAGA_HEADER, STEP_HEADER, STEP_TIMEOUT_DEFAULT, TOKEN_HEADER,
};
