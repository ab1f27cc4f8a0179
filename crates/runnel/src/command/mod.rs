//! Commands: the [`CommandEnvelope`] that carries one with its id and metadata, the
//! [`Command`] and [`CommandHandler`] traits, the [`CommandBus`], and the glue that routes
//! an aggregate's commands through a [`crate::Repository`].

mod aggregate_handler;
mod bus;
mod envelope;
mod handler;

pub use aggregate_handler::{register_aggregate_command, AggregateCommand, RepositoryHandler};
pub use bus::CommandBus;
pub use envelope::CommandEnvelope;
pub use handler::{Command, CommandHandler};
