//! The transport conformance suite from runnel-testkit on the embedded bus (SQLite): one
//! test per behaviour, each on a fresh temporary database file. The second subscriber is
//! a separate bus on a clone of the same store, as a second component of one application
//! would build it.

use runnel_sqlite::bus::{BusOptions, SqliteBus};
use runnel_sqlite::SqliteStore;
use runnel_testkit::transport::TransportUnderTest;

runnel_testkit::transport_conformance!(async {
    let store = SqliteStore::open_temporary().expect("open a temporary store");
    let bus = SqliteBus::new(store.clone(), BusOptions::default()).expect("bus");
    let other = SqliteBus::new(store, BusOptions::default()).expect("second bus");
    TransportUnderTest::from_bus(bus).with_subscriber(std::sync::Arc::new(other))
});
