//! The `Order` aggregate: its state, commands, events, errors and event upcasters.

mod aggregate;
mod command;
mod error;
mod event;
mod line;
mod status;
mod upcasting;

pub use aggregate::Order;
pub use command::OrderCommand;
pub use error::OrderError;
pub use event::{OrderEvent, ORDER_PLACED_SCHEMA_VERSION};
pub use line::{OrderLine, ORDER_LINES_MAX};
pub use status::OrderStatus;
pub use upcasting::register_upcasters;
