//! The event-store conformance suite from runnel-testkit, on SQLite: one test per behaviour.

use std::sync::Arc;

runnel_testkit::event_store_conformance!(async {
    Arc::new(runnel_sqlite::SqliteStore::open_temporary().expect("open a temporary store"))
});
