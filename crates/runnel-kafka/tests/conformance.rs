//! The transport conformance suite from runnel-testkit against a real Kafka-protocol
//! broker (`RUNNEL_TEST_KAFKA_BROKERS=host:port`; unset → every check is skipped loudly).
//! Each check gets a publisher and two subscribers on independent clients (separate
//! librdkafka instances, as separate processes would have).

use std::sync::Arc;

use runnel_kafka::{KafkaBus, KafkaOptions};
use runnel_testkit::transport::TransportUnderTest;

async fn fresh_transport() -> Option<TransportUnderTest> {
    let brokers = std::env::var("RUNNEL_TEST_KAFKA_BROKERS").ok()?;
    let bus = |brokers: &str| {
        KafkaBus::new(KafkaOptions::new(brokers)).unwrap_or_else(|e| panic!("kafka bus: {e}"))
    };
    Some(TransportUnderTest::from_bus(bus(&brokers)).with_subscriber(Arc::new(bus(&brokers))))
}

runnel_testkit::transport_conformance!(fresh_transport);
