//! Commands: the [`CommandEnvelope`] that carries one with its id and metadata, the
//! [`Command`] and [`CommandHandler`] traits, the [`CommandBus`], and the glue that routes
//! an aggregate's commands through a [`crate::Repository`] — either its own command enum
//! ([`CommandBus::register_aggregate`], [`CommandBus::execute`]) or one bus command type per
//! command ([`AggregateCommand`]).

mod aggregate_handler;
mod bus;
mod envelope;
mod handler;
mod to_aggregate;

pub use aggregate_handler::{register_aggregate_command, AggregateCommand, RepositoryHandler};
pub use bus::CommandBus;
pub use envelope::CommandEnvelope;
pub use handler::{Command, CommandHandler};
pub use to_aggregate::{CommandError, ToAggregate};
