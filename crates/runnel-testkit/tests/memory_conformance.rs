//! The conformance suite against [`InMemoryStore`]: one test per behaviour.

use std::sync::Arc;

use runnel_testkit::InMemoryStore;

runnel_testkit::event_store_conformance!(async { Arc::new(InMemoryStore::new()) });
