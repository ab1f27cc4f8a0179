//! Schema migration on read: an event type's payload is carried from the schema version it
//! was stored at to the one the Rust type reads, one step (n → n+1) at a time.
//!
//! Stored events are never rewritten; every read path (the [`crate::Repository`],
//! projections, subscriptions) runs the chain through [`Upcasters::upcast_recorded`] and then
//! decodes with [`runnel_core::codec::decode_value`].

mod error;
mod registry;

pub use error::{UpcastError, UpcasterError};
pub use registry::{UpcastStep, Upcasters, UPCAST_STEPS_PER_TYPE_MAX};
