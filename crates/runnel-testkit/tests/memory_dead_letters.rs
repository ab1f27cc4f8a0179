//! The dead-letter-store conformance suite against [`InMemoryDeadLetters`].

use std::sync::Arc;

use runnel_testkit::dead_letters::InMemoryDeadLetters;

runnel_testkit::dead_letter_store_conformance!(async { Arc::new(InMemoryDeadLetters::new()) });
