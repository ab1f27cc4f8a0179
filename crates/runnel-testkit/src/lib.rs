//! Test support for Runnel: an in-memory store for unit tests ([`InMemoryStore`]) and the
//! conformance suite every storage backend runs ([`conformance`],
//! [`event_store_conformance!`]).

pub mod conformance;
pub mod memory;

pub use conformance::run_event_store_suite;
pub use memory::InMemoryStore;
