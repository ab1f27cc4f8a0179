//! Routing an aggregate's commands from the bus through a [`Repository`].

use async_trait::async_trait;

use super::bus::CommandBus;
use super::envelope::CommandEnvelope;
use super::handler::{Command, CommandHandler};
use crate::aggregate::{Aggregate, ExecuteOutcome, Repository, RepositoryError};
use crate::bus::DispatchError;

/// A bus command that addresses one aggregate instance.
///
/// ```
/// use runnel::core::DomainEvent;
/// use runnel::{register_aggregate_command, Aggregate, AggregateCommand, Command, CommandBus,
///              ExecuteOutcome, Repository};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Light {
///     on: bool,
/// }
///
/// #[derive(Clone)]
/// enum LightCommand {
///     Switch(bool),
/// }
///
/// #[derive(Serialize, Deserialize)]
/// enum LightEvent {
///     Switched { on: bool },
/// }
///
/// impl DomainEvent for LightEvent {
///     fn event_type(&self) -> &'static str {
///         "Switched"
///     }
/// }
///
/// impl Aggregate for Light {
///     const TYPE: &'static str = "Light";
///     type Command = LightCommand;
///     type Event = LightEvent;
///     type Error = std::convert::Infallible;
///     fn handle(&self, LightCommand::Switch(on): LightCommand) -> Result<Vec<LightEvent>, Self::Error> {
///         Ok(if on == self.on { vec![] } else { vec![LightEvent::Switched { on }] })
///     }
///     fn apply(&mut self, LightEvent::Switched { on }: &LightEvent) {
///         self.on = *on;
///     }
/// }
///
/// /// The bus command: which light, and the aggregate command to run on it.
/// #[derive(Serialize, Deserialize)]
/// struct SwitchLight {
///     light_id: String,
///     on: bool,
/// }
///
/// impl Command for SwitchLight {
///     const NAME: &'static str = "SwitchLight";
///     type Output = ExecuteOutcome<LightEvent>;
/// }
///
/// impl AggregateCommand for SwitchLight {
///     type Aggregate = Light;
///     fn aggregate_id(&self) -> String {
///         self.light_id.clone()
///     }
///     fn into_aggregate_command(self) -> LightCommand {
///         LightCommand::Switch(self.on)
///     }
/// }
///
/// fn wire(bus: &CommandBus, lights: Repository<Light>) -> Result<(), runnel::DispatchError> {
///     register_aggregate_command::<SwitchLight>(bus, lights)
/// }
/// ```
pub trait AggregateCommand: Command {
    /// The aggregate type the command runs on.
    type Aggregate: Aggregate;

    /// The id of the aggregate instance (its stream is `{TYPE}-{id}`).
    fn aggregate_id(&self) -> String;

    /// The aggregate's own command.
    fn into_aggregate_command(self) -> <Self::Aggregate as Aggregate>::Command;
}

/// A [`CommandHandler`] that runs [`AggregateCommand`]s through a [`Repository`]. Its
/// errors are [`RepositoryError`]s of the aggregate's error type.
pub struct RepositoryHandler<A> {
    repository: Repository<A>,
}

impl<A: Aggregate> RepositoryHandler<A> {
    /// A handler over `repository`.
    pub fn new(repository: Repository<A>) -> Self {
        RepositoryHandler { repository }
    }
}

#[async_trait]
impl<A, C> CommandHandler<C> for RepositoryHandler<A>
where
    A: Aggregate,
    A::Command: Clone,
    C: AggregateCommand<Aggregate = A> + Command<Output = ExecuteOutcome<A::Event>>,
{
    type Error = RepositoryError<A::Error>;

    async fn handle(
        &self,
        envelope: CommandEnvelope<C>,
    ) -> Result<ExecuteOutcome<A::Event>, Self::Error> {
        let id = envelope.command.aggregate_id();
        self.repository
            .execute(&id, envelope.map(C::into_aggregate_command))
            .await
    }
}

/// Registers `C` on `bus`, handled by running it through `repository`.
pub fn register_aggregate_command<C>(
    bus: &CommandBus,
    repository: Repository<C::Aggregate>,
) -> Result<(), DispatchError>
where
    C: AggregateCommand + Command<Output = ExecuteOutcome<<C::Aggregate as Aggregate>::Event>>,
    <C::Aggregate as Aggregate>::Command: Clone,
{
    bus.register::<C, _>(RepositoryHandler::new(repository))
}
