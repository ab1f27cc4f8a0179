//! The event-store conformance suite from runnel-testkit, unchanged, on PostgreSQL: one test
//! per behaviour, each in its own schema.

mod common;

runnel_testkit::event_store_conformance!(async { common::fresh_store().await });
