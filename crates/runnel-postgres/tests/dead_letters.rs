//! The dead-letter-store conformance suite from runnel-testkit, on PostgreSQL: one test per
//! behaviour, each in its own schema.

mod common;

use std::sync::Arc;

use runnel_postgres::PostgresDeadLetters;

runnel_testkit::dead_letter_store_conformance!(async {
    let store = common::fresh_store().await?;
    Some(Arc::new(PostgresDeadLetters::new((*store).clone())))
});
