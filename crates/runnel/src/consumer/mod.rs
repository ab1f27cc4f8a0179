//! The consumer router: a handler is a tower [`Service`](tower::Service) over a
//! [`HandlerContext`]; retry, dead letter, idempotency, timeout, key-ordered concurrency,
//! tracing and metrics are [`layers`], stacked in an order written where the consumer is
//! built ([`ConsumerBuilder::build`]).
//!
//! * [`Consumer::builder`] configures a consumer of one topic in one group; `.start()`
//!   subscribes and returns a [`ConsumerHandle`] for graceful shutdown.
//! * [`Handler`] is the application's code (`async fn(HandlerContext) -> Result<(),
//!   HandlerError>`); [`Router`] maps event types to handlers.
//! * [`HandlerError`] says whether a failure is retryable or permanent; [`Classify`]
//!   decides for errors returned through `?`.
//! * [`inbox`]: the [`Inbox`] trait for exactly-once effects in the handler's database,
//!   implemented for `runnel_sqlite::SqliteInbox` (feature `sqlite`) and
//!   `runnel_postgres::PostgresInbox` (feature `postgres`), and in memory for tests.
//!
//! Guarantees the router keeps (each has a test in `tests/consumer_*.rs`; the end-to-end
//! ones also on the real SQLite and PostgreSQL bus, inbox and dead-letter store in
//! `tests/e2e_*.rs`, including a consumer killed with SIGKILL mid-batch):
//! * per-key order: deliveries with the same [`ordering_key`](runnel_core::message::Message::ordering_key)
//!   are handled one at a time, in delivery order — retries included — while other keys
//!   run in parallel, at most `max_concurrency` attempts at once;
//! * a failing message is retried with exponential backoff and full jitter, then stored as
//!   a dead letter with every failure and acked; it never blocks other keys and is never
//!   dropped (a failing dead-letter store means a nack);
//! * nothing grows without bound: per-key queues and the deliveries held are bounded, and
//!   when full the consumer stops pulling from the subscription;
//! * with an inbox, a redelivered or republished message has its effects once;
//! * a dead-letter replay addressed to another group is acknowledged without handling;
//! * shutdown acks nothing unfinished.

mod board;
mod builder;
mod context;
mod error;
mod handler;
pub mod inbox;
mod lag;
pub mod layers;
mod publisher;
mod router;
mod runtime;
mod time;

pub use board::{lag_board, ConsumerLag, BOARD_ENTRIES_MAX, METRIC_LAG_SECONDS};
pub use builder::{
    default_retry_policy, ConsumerBuilder, HANDLER_TIMEOUT_DEFAULT, MAX_CONCURRENCY_DEFAULT,
    MAX_CONCURRENCY_MAX, RETRY_ATTEMPTS_MAX_DEFAULT, RETRY_BASE_DELAY_DEFAULT,
    RETRY_MAX_DELAY_DEFAULT, SHUTDOWN_GRACE_DEFAULT,
};
pub use context::{HandlerContext, InboxScope};
pub use error::{
    BoxError, Classify, ConsumerError, DefaultClassify, ErrorKind, HandlerError, RouterFailure,
};
pub(crate) use handler::panic_message;
pub use handler::{BoxFuture, Handler, HandlerService, Outcome};
pub use inbox::{Inbox, InboxBegin, InboxCommit, InboxError, InboxKey, MemoryInbox};
pub use lag::{LagProbe, LAG_PROBE_INTERVAL_DEFAULT};
pub use publisher::{EffectPublisher, EFFECTS_PER_ATTEMPT_MAX};
pub use router::Router;
pub use runtime::{Consumer, ConsumerHandle, ShutdownReport, UNHANDLED_FAILURE_NACK_DELAY};
pub use time::{Sleeper, TokioSleeper};
