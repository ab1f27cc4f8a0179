//! Dispatching an aggregate's own command enum on the [`CommandBus`]: no per-command
//! struct, no macro. [`CommandBus::register_aggregate`] registers the aggregate once
//! under its type name; [`CommandBus::execute`] sends it one command and returns the
//! aggregate's typed error when it refuses.

use std::fmt;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::bus::CommandBus;
use super::envelope::CommandEnvelope;
use super::handler::{Command, CommandHandler};
use crate::aggregate::{Aggregate, ExecuteOutcome, Repository, RepositoryError};
use crate::bus::DispatchError;

/// An aggregate's own command addressed to one instance: what the bus carries for
/// [`CommandBus::execute`]. By name it is dispatched under the aggregate's `TYPE`, with
/// the JSON `{"id": "…", "command": <the command's serde form>}`.
#[derive(Serialize, Deserialize)]
#[serde(
    bound(
        serialize = "A::Command: Serialize",
        deserialize = "A::Command: DeserializeOwned"
    ),
    deny_unknown_fields
)]
pub struct ToAggregate<A: Aggregate> {
    /// The instance (its stream is `{TYPE}-{id}`).
    pub id: String,
    /// The aggregate's command.
    pub command: A::Command,
}

impl<A: Aggregate> fmt::Debug for ToAggregate<A>
where
    A::Command: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToAggregate")
            .field("aggregate", &A::TYPE)
            .field("id", &self.id)
            .field("command", &self.command)
            .finish()
    }
}

impl<A> Command for ToAggregate<A>
where
    A: Aggregate,
    A::Command: Serialize + DeserializeOwned + Sync,
{
    const NAME: &'static str = A::TYPE;
    type Output = ExecuteOutcome<A::Event>;
}

/// Why [`CommandBus::execute`] failed, with the aggregate's own error typed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E> {
    /// Loading, deciding or appending failed; [`RepositoryError::Domain`] holds the
    /// aggregate's refusal (see [`CommandError::rejected`]).
    #[error(transparent)]
    Repository(RepositoryError<E>),
    /// The bus could not run the command (the aggregate is not registered).
    #[error(transparent)]
    Dispatch(DispatchError),
}

impl<E> CommandError<E> {
    /// The aggregate's own error, when it refused the command.
    pub fn rejected(&self) -> Option<&E> {
        match self {
            CommandError::Repository(e) => e.domain(),
            CommandError::Dispatch(_) => None,
        }
    }

    /// Whether the aggregate refused the command (nothing was written).
    pub fn is_rejected(&self) -> bool {
        self.rejected().is_some()
    }
}

/// Runs [`ToAggregate`] commands through a repository.
struct AggregateHandler<A> {
    repository: Repository<A>,
}

#[async_trait]
impl<A> CommandHandler<ToAggregate<A>> for AggregateHandler<A>
where
    A: Aggregate,
    A::Command: Clone + Serialize + DeserializeOwned + Sync,
{
    type Error = RepositoryError<A::Error>;

    async fn handle(
        &self,
        envelope: CommandEnvelope<ToAggregate<A>>,
    ) -> Result<ExecuteOutcome<A::Event>, Self::Error> {
        let ToAggregate { id, command } = envelope.command;
        let envelope = CommandEnvelope {
            command_id: envelope.command_id,
            command,
            metadata: envelope.metadata,
        };
        self.repository.execute(&id, envelope).await
    }
}

impl CommandBus {
    /// Registers aggregate `A`: its command enum is dispatched by [`CommandBus::execute`]
    /// (and by name, under `A::TYPE`), each run through `repository`.
    ///
    /// ```
    /// use runnel::core::DomainEvent;
    /// use runnel::{Aggregate, CommandBus, Repository};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Light { on: bool }
    ///
    /// #[derive(Clone, Serialize, Deserialize)]
    /// enum LightCommand { Switch { on: bool } }
    ///
    /// #[derive(Debug, PartialEq, Serialize, Deserialize)]
    /// enum LightEvent { Switched { on: bool } }
    /// impl DomainEvent for LightEvent {
    ///     fn event_type(&self) -> &'static str { "Switched" }
    /// }
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("the light is already {0}")]
    /// struct AlreadySo(&'static str);
    ///
    /// impl Aggregate for Light {
    ///     const TYPE: &'static str = "Light";
    ///     type Command = LightCommand;
    ///     type Event = LightEvent;
    ///     type Error = AlreadySo;
    ///     fn handle(&self, LightCommand::Switch { on }: LightCommand) -> Result<Vec<LightEvent>, AlreadySo> {
    ///         if on == self.on { return Err(AlreadySo(if on { "on" } else { "off" })) }
    ///         Ok(vec![LightEvent::Switched { on }])
    ///     }
    ///     fn apply(&mut self, LightEvent::Switched { on }: &LightEvent) { self.on = *on; }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = std::sync::Arc::new(runnel_testkit::InMemoryStore::new());
    /// let bus = CommandBus::new();
    /// bus.register_aggregate(Repository::<Light>::new(store))?;
    ///
    /// let outcome = bus.execute::<Light>("hall", LightCommand::Switch { on: true }).await?;
    /// assert_eq!(outcome.events, vec![LightEvent::Switched { on: true }]);
    /// // The refusal comes back as the aggregate's own type: no downcasting.
    /// let err = bus.execute::<Light>("hall", LightCommand::Switch { on: true }).await.unwrap_err();
    /// assert_eq!(err.rejected().map(|e| e.0), Some("on"));
    /// # Ok(()) }
    /// ```
    pub fn register_aggregate<A>(&self, repository: Repository<A>) -> Result<(), DispatchError>
    where
        A: Aggregate,
        A::Command: Clone + Serialize + DeserializeOwned + Sync,
    {
        self.register::<ToAggregate<A>, _>(AggregateHandler { repository })
    }

    /// Runs `command` on aggregate `A` with id `id` (fresh command id, empty metadata).
    pub async fn execute<A>(
        &self,
        id: impl Into<String>,
        command: A::Command,
    ) -> Result<ExecuteOutcome<A::Event>, CommandError<A::Error>>
    where
        A: Aggregate,
        A::Command: Serialize + DeserializeOwned + Sync,
    {
        self.execute_envelope::<A>(id, CommandEnvelope::new(command))
            .await
    }

    /// Runs `envelope`'s command on aggregate `A` with id `id`, keeping the envelope's
    /// command id (an idempotency key) and metadata (correlation, user).
    pub async fn execute_envelope<A>(
        &self,
        id: impl Into<String>,
        envelope: CommandEnvelope<A::Command>,
    ) -> Result<ExecuteOutcome<A::Event>, CommandError<A::Error>>
    where
        A: Aggregate,
        A::Command: Serialize + DeserializeOwned + Sync,
    {
        let id = id.into();
        let envelope = envelope.map(|command| ToAggregate::<A> { id, command });
        match self.dispatch(envelope).await {
            Ok(outcome) => Ok(outcome),
            Err(DispatchError::Handler(boxed)) => {
                // The handler registered for `ToAggregate<A>` fails only with this type.
                match boxed.downcast::<RepositoryError<A::Error>>() {
                    Ok(e) => Err(CommandError::Repository(*e)),
                    Err(other) => Err(CommandError::Dispatch(DispatchError::Handler(other))),
                }
            }
            Err(e) => Err(CommandError::Dispatch(e)),
        }
    }
}
