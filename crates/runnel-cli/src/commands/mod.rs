//! One module per command group.

pub mod bench;
pub mod demo;
pub mod events;
pub mod streams;
