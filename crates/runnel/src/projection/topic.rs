//! Projections fed from a bus topic: a [`TopicProjection`] is run by the consumer router as
//! a consumer of its topic in its group, on whatever bus the application uses. Each
//! message's read-model writes commit together with the message's id in the projection's
//! inbox ([`ProjectionStore::commit_message`]), so a redelivered message — after a crash,
//! a lost ack, a dead-letter replay — writes nothing the second time.
//!
//! How it differs from a projection of `$all`:
//! * **No position.** A topic has no global position to checkpoint, so the checkpoint stays
//!   0, lag is not measured against `$all` (`runnel projections status` says `n/a`; the
//!   broker's own tools show a group's backlog), and
//!   [`wait_for_position`](super::wait_for_position) refuses a topic projection.
//!   `events_applied` counts the messages applied.
//! * **Errors go through the router.** A failing message is retried with the consumer's
//!   retry policy, then stored as a dead letter (topic and group of the projection) and
//!   acknowledged — it is never skipped silently, and other keys go on meanwhile. A topic
//!   projection does not pause on a failing message: the bus would keep redelivering it
//!   and hold back only its key, while its position means nothing to an operator. Replay
//!   the dead letter once fixed (`runnel dead-letters replay`); the inbox makes a replay
//!   of a message that did apply a no-op.
//! * **No rebuild.** A topic cannot in general be replayed from its start; `rebuild` is
//!   refused. A new [`version`](TopicProjection::version) becomes current when it
//!   registers, with empty tables filled by the messages from then on (the old
//!   generation's tables stay until `drop-old`). A process still running the old code
//!   hands its messages back to the bus ([`MessageOutcome::Retired`]) for one running the
//!   new code.
//! * **Bounded inbox.** The inbox keeps the ids of the newest
//!   [`TopicProjectionOptions::inbox_keep`] messages per projection
//!   ([`TOPIC_INBOX_KEEP_DEFAULT`]); a duplicate arriving after that many newer messages
//!   is applied again.
//!
//! Order: messages with the same key ([`Message::ordering_key`]) are applied one at a time
//! in delivery order; different keys in parallel (the router's key-ordered concurrency).

use std::sync::Arc;

use async_trait::async_trait;

use runnel_core::bus::{StartPosition, SubscribeOptions};
use runnel_core::projection::{
    Dialect, MessageCommit, MessageOutcome, ProjectionStore, TopicSource, VersionRole, VersionSpec,
    TOPIC_INBOX_KEEP_DEFAULT,
};
use runnel_core::{GroupName, Message, StoreError, TopicName};

use super::{ProjectionError, Writes};
use crate::consumer::inbox::{Inbox, InboxBegin, InboxCommit, InboxError, InboxKey};
use crate::consumer::{
    default_retry_policy, ConsumerBuilder, Handler, HandlerContext, HandlerError,
};
use crate::retry::RetryPolicy;

/// Metric: topic messages found in a projection's inbox already (redeliveries), by
/// projection.
pub const METRIC_TOPIC_DUPLICATES: &str = "runnel_projection_topic_duplicates_total";

/// A read model kept from a bus topic. `apply` runs for each message and only describes
/// writes; the consumer commits them with the message's id in the projection's inbox.
///
/// ```
/// use runnel::core::projection::Dialect;
/// use runnel::core::{Message, TopicName};
/// use runnel::projection::{ProjectionError, TopicProjection, Writes};
///
/// struct Shipments;
/// impl TopicProjection for Shipments {
///     fn name(&self) -> &str { "shipments" }
///     fn tables(&self) -> Vec<String> { vec!["shipments".into()] }
///     fn schema(&self, _: Dialect) -> Vec<String> {
///         vec!["CREATE TABLE {shipments} (order_id TEXT PRIMARY KEY, carrier TEXT NOT NULL)".into()]
///     }
///     fn topic(&self) -> TopicName { TopicName::new("shipping.ShipmentCreated").expect("a valid topic") }
///     fn apply(&self, message: &Message, out: &mut Writes) -> Result<(), ProjectionError> {
///         let body: serde_json::Value = serde_json::from_slice(&message.payload)?;
///         out.execute(
///             "INSERT INTO {shipments} (order_id, carrier) VALUES ($1, $2) \
///              ON CONFLICT (order_id) DO UPDATE SET carrier = excluded.carrier",
///             vec![body["order_id"].as_str().unwrap_or_default().into(),
///                  body["carrier"].as_str().unwrap_or_default().into()],
///         );
///         Ok(())
///     }
/// }
/// assert_eq!(Shipments.group().as_str(), "projection-shipments");
/// ```
pub trait TopicProjection: Send + Sync + 'static {
    /// The projection's name (`[a-z0-9_]`, e.g. `shipments`).
    fn name(&self) -> &str;
    /// Its version: raising it starts new, empty tables (see the [module](self) docs).
    fn version(&self) -> u32 {
        1
    }
    /// The tables it owns (written as `{table}` in its SQL).
    fn tables(&self) -> Vec<String>;
    /// `CREATE TABLE {table} …` (and index) statements for `dialect`.
    fn schema(&self, dialect: Dialect) -> Vec<String>;
    /// The topic it reads.
    fn topic(&self) -> TopicName;
    /// The consumer group it reads the topic as (default `projection-{name}`).
    fn group(&self) -> GroupName {
        GroupName::new(format!("projection-{}", self.name()))
            .expect("a projection name is a valid group name")
    }
    /// Describes the writes `message` makes.
    fn apply(&self, message: &Message, out: &mut Writes) -> Result<(), ProjectionError>;
}

/// How a topic projection's consumer runs.
#[derive(Clone, Debug)]
pub struct TopicProjectionOptions {
    /// Message ids the inbox keeps per projection ([`TOPIC_INBOX_KEEP_DEFAULT`]).
    pub inbox_keep: u64,
    /// The subscription (`start` is [`StartPosition::Earliest`]: a new projection sees
    /// what the topic still holds, not only what comes after it started).
    pub subscribe: SubscribeOptions,
    /// Retries of a failing message before it is dead-lettered (the router's
    /// [`default_retry_policy`]).
    pub retry: RetryPolicy,
}

impl Default for TopicProjectionOptions {
    fn default() -> Self {
        TopicProjectionOptions {
            inbox_keep: TOPIC_INBOX_KEEP_DEFAULT,
            subscribe: SubscribeOptions {
                start: StartPosition::Earliest,
                ..SubscribeOptions::default()
            },
            retry: default_retry_policy(),
        }
    }
}

/// Records the projection's topic source, registers its version and makes the version's
/// newest generation current (a topic cannot fill a building generation from history).
/// Returns the generation to write to. Idempotent; a version older than the newest
/// registered is refused.
pub async fn register_topic_projection(
    projection: &dyn TopicProjection,
    store: &dyn ProjectionStore,
) -> Result<u32, StoreError> {
    let name = projection.name().to_string();
    store
        .set_topic_source(&TopicSource {
            name: name.clone(),
            topic: projection.topic().to_string(),
            group: projection.group().to_string(),
        })
        .await?;
    store
        .register(&VersionSpec {
            name: name.clone(),
            version: projection.version(),
            tables: projection.tables(),
            schema: projection.schema(store.dialect()),
            partitions: 1,
        })
        .await?;
    let newest = store
        .states(Some(&name))
        .await?
        .into_iter()
        .filter(|s| s.code_version == projection.version() && s.role != VersionRole::Retired)
        .max_by_key(|s| s.version)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "projection {name} version {} registered but has no live generation",
                projection.version()
            ))
        })?;
    if newest.role == VersionRole::Building {
        // Registered again after a crash between `register` and here, or a new version:
        // either way it becomes current now (nothing would ever fill it otherwise).
        tracing::warn!(
            projection = %name,
            version = projection.version(),
            generation = newest.version,
            "a new version of a topic projection is current with empty tables: a topic is not replayed"
        );
        store.switch(&name, newest.version).await?;
    }
    Ok(newest.version)
}

/// Configures `builder` to run `projection`'s generation `generation`: its handler, its
/// inbox (the projection store), `options.subscribe` and `options.retry`. The
/// application's dead-letter store (already on `builder`) takes failing messages.
pub fn topic_consumer(
    builder: ConsumerBuilder,
    projection: Arc<dyn TopicProjection>,
    store: Arc<dyn ProjectionStore>,
    generation: u32,
    options: &TopicProjectionOptions,
) -> ConsumerBuilder {
    let inbox = TopicProjectionInbox {
        name: projection.name().to_string(),
        generation,
        store,
        inbox_keep: options.inbox_keep,
    };
    builder
        .subscribe_options(options.subscribe.clone())
        .retry(options.retry)
        .inbox(Arc::new(inbox))
        .handler(TopicProjectionHandler { projection })
}

/// The handler of a topic projection's consumer: `apply` into the inbox's [`Writes`].
pub struct TopicProjectionHandler {
    projection: Arc<dyn TopicProjection>,
}

impl TopicProjectionHandler {
    /// The handler of `projection` (under a [`TopicProjectionInbox`]).
    pub fn new(projection: Arc<dyn TopicProjection>) -> Self {
        TopicProjectionHandler { projection }
    }
}

#[async_trait]
impl Handler for TopicProjectionHandler {
    async fn handle(&self, ctx: HandlerContext) -> Result<(), HandlerError> {
        let mut writes = ctx.scope::<Writes>().await?;
        match self.projection.apply(ctx.message(), &mut writes) {
            Ok(()) => Ok(()),
            // Bytes that do not decode never will: straight to the dead letters.
            Err(e @ ProjectionError::Decode(_)) => Err(HandlerError::permanent(e)),
            Err(e @ ProjectionError::SendWhileReplaying { .. }) => Err(HandlerError::permanent(e)),
            Err(e) => Err(HandlerError::retryable(e)),
        }
    }
}

/// A topic projection's inbox: the scope is the message's [`Writes`]; committing runs
/// [`ProjectionStore::commit_message`]. Whether a message is a duplicate is decided in
/// the commit's transaction (no read before the handler: `apply` is cheap and pure). The
/// marks are the projection's own, whatever the [`InboxKey`]'s handler name: every
/// process and group applying the projection shares them.
pub struct TopicProjectionInbox {
    name: String,
    generation: u32,
    store: Arc<dyn ProjectionStore>,
    inbox_keep: u64,
}

impl TopicProjectionInbox {
    /// The inbox of generation `generation` of projection `name`.
    pub fn new(
        name: impl Into<String>,
        generation: u32,
        store: Arc<dyn ProjectionStore>,
        inbox_keep: u64,
    ) -> Self {
        TopicProjectionInbox {
            name: name.into(),
            generation,
            store,
            inbox_keep,
        }
    }
}

/// A statement of the projection failed; nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("projection {name}: statement {index} failed: {error}")]
pub struct StatementFailed {
    /// The projection.
    pub name: String,
    /// Which statement of the message's writes.
    pub index: usize,
    /// The database's error.
    pub error: String,
}

#[async_trait]
impl Inbox for TopicProjectionInbox {
    type Scope = Writes;

    async fn begin(&self, _key: &InboxKey) -> Result<InboxBegin<Writes>, InboxError> {
        Ok(InboxBegin::Started(Writes::new(
            &self.name,
            self.generation,
            self.store.dialect(),
            false,
        )))
    }

    async fn commit(&self, key: &InboxKey, mut writes: Writes) -> Result<InboxCommit, InboxError> {
        let (statements, outbox) = writes.take();
        let outcome = self
            .store
            .commit_message(MessageCommit {
                name: self.name.clone(),
                version: self.generation,
                message_id: key.message_id.clone(),
                statements,
                outbox,
                inbox_keep: self.inbox_keep,
            })
            .await?;
        match outcome {
            MessageOutcome::Committed => {
                metrics::counter!(super::METRIC_APPLIED, "projection" => self.name.clone())
                    .increment(1);
                Ok(InboxCommit::Committed)
            }
            MessageOutcome::Duplicate => {
                metrics::counter!(METRIC_TOPIC_DUPLICATES, "projection" => self.name.clone())
                    .increment(1);
                Ok(InboxCommit::AlreadyProcessed)
            }
            MessageOutcome::StatementFailed { index, error } => {
                Err(InboxError::Writes(Box::new(StatementFailed {
                    name: self.name.clone(),
                    index,
                    error,
                })))
            }
            MessageOutcome::Retired => {
                tracing::warn!(
                    projection = %self.name,
                    generation = self.generation,
                    "this process runs a retired version of the projection; handing the message back"
                );
                // A store error makes the inbox layer hand the delivery back (after a
                // delay) without counting it as a failure of the message.
                Err(InboxError::Store(StoreError::Unavailable(format!(
                    "generation {} of projection {} is retired; a process running the newer \
                     version applies its messages",
                    self.generation, self.name
                ))))
            }
        }
    }
}
