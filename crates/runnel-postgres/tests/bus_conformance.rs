//! The transport conformance suite from runnel-testkit on the PostgreSQL bus: one test per
//! behaviour, each in its own fresh schema. The second subscriber is a bus on a separate
//! store (its own pool and LISTEN connection) on the same schema — what a second process
//! would have — so consumers of one group really compete through `FOR UPDATE SKIP LOCKED`.

mod common;

use runnel_postgres::bus::{BusOptions, PostgresBus};
use runnel_postgres::{PostgresOptions, PostgresStore};
use runnel_testkit::transport::TransportUnderTest;

/// Connections per store: the suite's consumers need few, and tests run in parallel.
const POOL_SIZE: u32 = 4;

async fn bus_on(url: &str, schema: &str) -> PostgresBus {
    let options = PostgresOptions::new(url)
        .schema(schema)
        .pool_size(POOL_SIZE);
    let store = PostgresStore::connect_with(options)
        .await
        .expect("connect to the test PostgreSQL");
    PostgresBus::new(store, BusOptions::default())
        .await
        .expect("start the bus")
}

async fn fresh_transport() -> Option<TransportUnderTest> {
    let url = common::postgres_url()?;
    let schema = common::fresh_schema();
    let bus = bus_on(&url, &schema).await;
    let other_process = bus_on(&url, &schema).await;
    Some(TransportUnderTest::from_bus(bus).with_subscriber(std::sync::Arc::new(other_process)))
}

runnel_testkit::transport_conformance!(fresh_transport);
