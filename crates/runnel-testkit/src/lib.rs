//! Test support for Runnel: an in-memory store for unit tests ([`InMemoryStore`]) and the
//! conformance suite every storage backend runs ([`conformance`],
//! [`event_store_conformance!`]), and the transport conformance suite every publisher /
//! subscriber runs ([`transport`], [`transport_conformance!`]), and the dedup-store suite
//! ([`dedup`], [`dedup_store_conformance!`]), and the projection-store suite
//! ([`projections`], [`projection_store_conformance!`]). The suites share one per-check
//! [`harness`]. [`append_hook`] decorates an event store's appends (e.g. counting
//! conflicts with [`append_hook::ConflictCounter`]). [`fault::TcpProxy`] cuts and restores
//! connections to a real server to simulate outages; [`interop`] runs the plain-client
//! scripts of the interoperability tests. [`aggregate::AggregateTest`] tests an aggregate's
//! decisions in given / when / then form. [`faultkit::FaultKit`] runs a user's consumer
//! handler under duplicated, reordered and delayed deliveries and crashes between effect
//! and ack, for the user's own invariant checks — and a user's saga
//! ([`faultkit::saga`]: faulty reply delivery, runtime crashes around commits) and
//! projections ([`faultkit::projection`]: topic projections under delivery faults,
//! projections of `$all` with the runner killed around its commits).

pub mod aggregate;
pub mod append_hook;
pub mod conformance;
pub mod dead_letters;
pub mod dedup;
pub mod fault;
pub mod faultkit;
pub mod harness;
pub mod interop;
pub mod memory;
pub mod outbox;
pub mod processors;
pub mod projections;
pub mod saga;
pub mod transport;

pub use conformance::run_event_store_suite;
pub use memory::InMemoryStore;

/// `docs/testing.md`, compiled and run as a doc test so its example keeps working.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/testing.md")]
pub struct TestingGuide;
