//! Runnel, the framework: event-sourced aggregates and their repository, schema upcasting,
//! and the command and query buses.
//!
//! * [`aggregate`]: the [`Aggregate`] trait and the [`Repository`] that loads aggregates
//!   (snapshot, then events, upcast and decoded), runs commands with optimistic
//!   concurrency and retries, and takes snapshots by policy.
//! * [`upcast`]: [`Upcasters`], chains of per-event-type schema migration steps applied
//!   on every read path.
//! * [`command`] and [`query`]: typed buses with dispatch by name and JSON for the HTTP
//!   API and the CLI.
//! * [`consumer`]: the consumer router — handlers as tower services, retry, dead letter,
//!   idempotency, timeout, key-ordered concurrency, tracing and metrics as layers.
//! * [`outbox`]: the outbox [`Relay`](outbox::Relay) (per-key order, leases, backoff),
//!   the event store as the outbox ([`EventStoreRelay`](outbox::EventStoreRelay)), the claim
//!   check for large payloads, relay metrics.
//! * [`stream`]: stream processing — event-time windows (tumbling, hopping, sliding,
//!   session), watermarks with grace and a late output, joins, exactly-once state.
//! * [`trace`]: W3C trace context across every hop (HTTP, append, outbox, broker,
//!   consumer, handler sends) on `tracing` spans bridged to OpenTelemetry.
//! * [`catalog`]: what the application registered — event types with their schema
//!   versions and JSON Schemas, commands, queries, topics with their receivers and
//!   publishers — its AsyncAPI 3.0 document, and the event schema compatibility check.
//! * [`retry`]: the [`RetryPolicy`] (exponential backoff with full jitter) shared by the
//!   repository and the consumer router.
//!
//! The storage traits and envelope types live in [`runnel_core`], re-exported as [`core`].

pub mod aggregate;
pub mod app;
pub mod bus;
pub mod catalog;
pub mod command;
pub mod connect;
pub mod consumer;
pub mod dead_letter;
mod join_once;
pub mod outbox;
pub mod projection;
pub mod query;
pub mod retry;
pub mod saga;
pub mod stream;
pub mod trace;
pub mod upcast;

pub use aggregate::{
    Aggregate, ExecuteOutcome, Loaded, Repository, RepositoryError, RetryPolicy, SnapshotPolicy,
};
pub use bus::DispatchError;
pub use command::{
    register_aggregate_command, AggregateCommand, Command, CommandBus, CommandEnvelope,
    CommandError, CommandHandler, ToAggregate,
};
pub use query::{Query, QueryBus, QueryHandler};
pub use upcast::{UpcastError, UpcasterError, Upcasters};

/// The core vocabulary (events, stream names, positions, metadata, storage traits).
pub use runnel_core as core;
/// The PostgreSQL backend (feature `postgres`): stores, bus, inbox, dead letters.
#[cfg(feature = "postgres")]
pub use runnel_postgres as postgres;
/// The embedded SQLite backend (feature `sqlite`): stores, bus, inbox, dead letters.
#[cfg(feature = "sqlite")]
pub use runnel_sqlite as sqlite;
// Handlers implement async traits; re-exported so applications agree on the version.
pub use async_trait::async_trait;
// Catalog descriptions take `JsonSchema` types; re-exported so applications agree on the
// version.
pub use schemars;
