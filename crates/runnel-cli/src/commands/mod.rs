//! One module per command group.

pub mod consume;
pub mod dlq;
pub mod events;
pub mod forward;
pub mod outbox;
pub mod processors;
pub mod projections;
pub mod publish;
pub mod sagas;
pub mod schema;
pub mod serve;
pub mod streams;
