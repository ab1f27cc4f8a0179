//! Projections: read models kept up to date from `$all`, exactly once. A [`Projection`]
//! turns each event into read-model [`Statement`]s; the [`ProjectionRunner`] applies them
//! in batches, each batch committed together with the projection's checkpoint under its
//! lease ([`ProjectionStore::commit_batch`]), so an event takes effect once even across a
//! `kill -9`, and one process at a time applies each projection (or partition).
//!
//! * **Versions and rebuilds.** Each generation writes its own tables (`{orders}` becomes
//!   `orders_v2`); the plain names are views on the current one. A new version in code, or
//!   a rebuild of the same code ([`admin::rebuild`], `runnel projections rebuild`), is a
//!   new generation that builds beside the current one, which keeps serving; once caught up
//!   it becomes current in one transaction. Retired generations' tables stay until dropped
//!   ([`admin::drop_old`]).
//! * **Errors.** A failing event is retried with backoff, then — per projection — pauses
//!   the projection (`faulted`, with the event and the error) or is parked as a dead letter
//!   naming the projection, and the projection goes on. Never skipped silently.
//! * **Replaying** (a version being built) handlers cannot send messages:
//!   [`Writes::send`] refuses with [`ProjectionError::SendWhileReplaying`].
//! * **Lag** in events and seconds: metrics `runnel_projection_lag_events` and
//!   `runnel_projection_lag_seconds`, and [`lag`].
//! * **Read your writes**: [`wait_for_position`] waits until a projection has applied
//!   everything up to a command's position, or fails with a typed timeout.
//! * **From a bus topic**: a [`TopicProjection`] reads a topic through the consumer router
//!   instead of `$all`, exactly once through a per-projection inbox committed with its
//!   rows (`App::topic_projection`; see [`TopicProjectionInbox`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use runnel::core::projection::Dialect;
//! use runnel::core::{EventFilter, EventStore, ExpectedRevision, NewEvent, RecordedEvent, StreamName};
//! use runnel::projection::{Projection, ProjectionError, ProjectionRunner, RunnerOptions, Writes};
//! use runnel_sqlite::{SqliteProjectionStore, SqliteStore};
//!
//! struct Totals;
//! impl Projection for Totals {
//!     fn name(&self) -> &str { "order_totals" }
//!     fn tables(&self) -> Vec<String> { vec!["order_totals".into()] }
//!     fn schema(&self, _: Dialect) -> Vec<String> {
//!         vec!["CREATE TABLE {order_totals} (id TEXT PRIMARY KEY, total BIGINT NOT NULL)".into()]
//!     }
//!     fn filter(&self) -> EventFilter { EventFilter::categories(["Order"]) }
//!     fn apply(&self, event: &RecordedEvent, out: &mut Writes) -> Result<(), ProjectionError> {
//!         let total = event.data_json()?["total"].as_i64().unwrap_or(0);
//!         out.execute(
//!             "INSERT INTO {order_totals} (id, total) VALUES ($1, $2) \
//!              ON CONFLICT (id) DO UPDATE SET total = excluded.total",
//!             vec![event.stream.to_string().into(), total.into()],
//!         );
//!         Ok(())
//!     }
//! }
//!
//! let store = SqliteStore::open_temporary()?;
//! store.append(&StreamName::new("Order-1")?, ExpectedRevision::Any,
//!     vec![NewEvent::json("OrderPlaced", &serde_json::json!({"total": 42}))]).await?;
//! let runner = ProjectionRunner::new(
//!     Arc::new(Totals),
//!     Arc::new(SqliteProjectionStore::new(store.clone())),
//!     Arc::new(store.clone()),
//!     RunnerOptions::default(),
//! );
//! runner.catch_up().await?; // a service runs `runner.run(shutdown)` instead
//! let total: i64 = store.read_with(|c| c.query_row(
//!     "SELECT total FROM order_totals WHERE id = 'Order-1'", [], |r| r.get(0))
//!     .map_err(|e| runnel::core::StoreError::Backend(e.to_string()))).await?;
//! assert_eq!(total, 42);
//! # Ok(()) }
//! ```

pub mod admin;
mod runner;
pub mod topic;

pub use runner::{
    lag, wait_for_position, Lag, OnFailure, ProjectionRunner, RunnerOptions, WaitError,
    BATCH_EVENTS_DEFAULT, BATCH_TIME_DEFAULT, METRIC_APPLIED, METRIC_LAG_EVENTS,
    METRIC_LAG_SECONDS, METRIC_PARKED,
};
pub use topic::{
    register_topic_projection, topic_consumer, StatementFailed, TopicProjection,
    TopicProjectionHandler, TopicProjectionInbox, TopicProjectionOptions, METRIC_TOPIC_DUPLICATES,
};

use std::sync::Arc;

use runnel_core::outbox::OutboxMessage;
use runnel_core::projection::{Dialect, InlineProjection, SqlValue, Statement};
use runnel_core::{EventFilter, Message, RecordedEvent, TopicName};

/// Why a projection could not apply an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The event could not be read (bad JSON, an unknown shape).
    #[error("cannot read the event: {0}")]
    Decode(String),
    /// The handler refused the event.
    #[error("{0}")]
    Failed(String),
    /// An inline projection tried to send a message.
    #[error(
        "projection {name} is inline (applied in the append's transaction): it cannot send \
         messages; send from an asynchronous projection or a consumer"
    )]
    SendWhileInline { name: String },
    /// A replaying handler tried to send a message.
    #[error(
        "projection {name} is replaying (version {version} is being built): it cannot send \
         messages; send only from the current version"
    )]
    SendWhileReplaying { name: String, version: u32 },
}

impl From<runnel_core::CodecError> for ProjectionError {
    fn from(e: runnel_core::CodecError) -> Self {
        ProjectionError::Decode(e.to_string())
    }
}

impl From<serde_json::Error> for ProjectionError {
    fn from(e: serde_json::Error) -> Self {
        ProjectionError::Decode(e.to_string())
    }
}

/// A read model kept from `$all`. `apply` runs synchronously for each event and only
/// describes writes; the runner commits them with the checkpoint.
pub trait Projection: Send + Sync + 'static {
    /// The projection's name (`[a-z0-9_]`, e.g. `order_summaries`).
    fn name(&self) -> &str;
    /// Its version: raise it to rebuild into new tables without downtime.
    fn version(&self) -> u32 {
        1
    }
    /// The tables it owns (written as `{table}` in its SQL).
    fn tables(&self) -> Vec<String>;
    /// `CREATE TABLE {table} …` (and index) statements for `dialect`.
    fn schema(&self, dialect: Dialect) -> Vec<String>;
    /// Which events it reads.
    fn filter(&self) -> EventFilter {
        EventFilter::all()
    }
    /// Partitions by stream (each with its own checkpoint and lease; order within a
    /// stream is kept). 1: unpartitioned.
    fn partitions(&self) -> u32 {
        1
    }
    /// Inline: applied inside the transaction of the append that records its events, so
    /// the read model never lags them (an event it cannot apply refuses the append). Its
    /// runner still runs: it catches the projection up (after a rebuild, a pause, or when
    /// added to a store with history) and hands over once level with the head. Inline
    /// projections are unpartitioned and cannot send messages. Registered with
    /// [`App::projection`](crate::app::App::projection) (or [`install_inline`]).
    fn inline(&self) -> bool {
        false
    }
    /// Describes the writes `event` makes.
    fn apply(&self, event: &RecordedEvent, out: &mut Writes) -> Result<(), ProjectionError>;
}

/// The writes of one event: statements for the read model, messages to send.
pub struct Writes {
    name: String,
    version: u32,
    dialect: Dialect,
    replaying: bool,
    inline: bool,
    statements: Vec<Statement>,
    outbox: Vec<OutboxMessage>,
}

impl Writes {
    pub(crate) fn new(name: &str, version: u32, dialect: Dialect, replaying: bool) -> Self {
        Writes {
            name: name.to_string(),
            version,
            dialect,
            replaying,
            inline: false,
            statements: Vec::new(),
            outbox: Vec::new(),
        }
    }

    /// The database's dialect (for SQL that differs).
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Whether this version is being rebuilt (its events are history, not news).
    pub fn is_replaying(&self) -> bool {
        self.replaying
    }

    /// Adds a statement: SQL with `$1, $2, …` placeholders and `{table}` names.
    pub fn execute(&mut self, sql: impl Into<String>, params: Vec<SqlValue>) {
        self.statements.push(Statement {
            sql: sql.into(),
            params,
        });
    }

    /// Sends `message` to `topic` through the outbox, committed with the batch. Refused
    /// while replaying: a rebuild must not send yesterday's notifications again.
    pub fn send(&mut self, topic: TopicName, message: Message) -> Result<(), ProjectionError> {
        if self.inline {
            return Err(ProjectionError::SendWhileInline {
                name: self.name.clone(),
            });
        }
        if self.replaying {
            return Err(ProjectionError::SendWhileReplaying {
                name: self.name.clone(),
                version: self.version,
            });
        }
        self.outbox.push(OutboxMessage::new(topic, message));
        Ok(())
    }

    pub(crate) fn take(&mut self) -> (Vec<Statement>, Vec<OutboxMessage>) {
        (
            std::mem::take(&mut self.statements),
            std::mem::take(&mut self.outbox),
        )
    }
}

/// A [`Projection`] as the stores' [`InlineProjection`]: its statements for one event,
/// computed with the store's dialect, with sending refused.
struct Inline {
    projection: Arc<dyn Projection>,
    filter: EventFilter,
    dialect: Dialect,
}

impl InlineProjection for Inline {
    fn name(&self) -> &str {
        self.projection.name()
    }
    fn code_version(&self) -> u32 {
        self.projection.version()
    }
    fn wants(&self, category: &str, event_type: &str) -> bool {
        (self.filter.categories.is_empty() || self.filter.categories.iter().any(|c| c == category))
            && (self.filter.event_types.is_empty()
                || self.filter.event_types.iter().any(|t| t == event_type))
    }
    fn statements(&self, event: &RecordedEvent) -> Result<Vec<Statement>, String> {
        let p = &self.projection;
        let mut writes = Writes::new(p.name(), p.version(), self.dialect, false);
        writes.inline = true;
        p.apply(event, &mut writes).map_err(|e| e.to_string())?;
        Ok(writes.take().0)
    }
}

/// `projection` as the stores' [`InlineProjection`] for a database of `dialect`: what
/// [`install_inline`] registers; for wiring a store by hand
/// (`SqliteStore::add_inline_projection`, `PostgresStore::add_inline_projection`).
pub fn inline_projection(
    projection: Arc<dyn Projection>,
    dialect: Dialect,
) -> Arc<dyn InlineProjection> {
    Arc::new(Inline {
        filter: projection.filter(),
        dialect,
        projection,
    })
}

/// Makes `projection` inline on `stores`' event store: from now on every append applies it
/// in its own transaction (see [`Projection::inline`]). Its runner must run as well (it
/// registers the projection and catches it up): [`App::projection`](crate::app::App::projection)
/// does both. Refused for partitioned projections.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(unreachable_code, unused_variables)
)]
pub fn install_inline(
    stores: &crate::connect::Stores,
    projection: Arc<dyn Projection>,
) -> Result<(), runnel_core::StoreError> {
    if projection.partitions() > 1 {
        return Err(runnel_core::StoreError::InvalidArgument(format!(
            "projection {} is inline and has {} partitions: inline projections are unpartitioned",
            projection.name(),
            projection.partitions()
        )));
    }
    let inline = inline_projection(projection, stores.projections.dialect());
    match stores.backend() {
        #[cfg(feature = "sqlite")]
        crate::connect::StoreBackend::Sqlite(store) => store.add_inline_projection(inline),
        #[cfg(feature = "postgres")]
        crate::connect::StoreBackend::Postgres(store) => store.add_inline_projection(inline),
        #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
        crate::connect::StoreBackend::NoBackend(never) => match *never {},
    }
    Ok(())
}
