//! The dead-letter-store conformance suite from runnel-testkit, on SQLite: one test per
//! behaviour, each on a fresh temporary file.

use std::sync::Arc;

use runnel_sqlite::{SqliteDeadLetters, SqliteStore};

runnel_testkit::dead_letter_store_conformance!(async {
    let store = SqliteStore::open_temporary().expect("open a temporary store");
    Arc::new(SqliteDeadLetters::new(store))
});
