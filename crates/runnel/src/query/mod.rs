//! Queries: the [`Query`] and [`QueryHandler`] traits and the [`QueryBus`].

mod bus;
mod handler;

pub use bus::QueryBus;
pub use handler::{Query, QueryHandler};
