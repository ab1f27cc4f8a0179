//! The transport conformance suite from runnel-testkit against the real RabbitMQ named by
//! `RUNNEL_TEST_AMQP_URL`: one test per behaviour, each on a fresh publisher and two
//! subscribers on independent connections (as separate processes would connect).

use std::sync::Arc;

use runnel_rabbitmq::RabbitBus;
use runnel_testkit::transport::TransportUnderTest;

mod common;

async fn fresh_transport() -> Option<TransportUnderTest> {
    let options = common::test_options()?;
    let publisher = RabbitBus::connect(options.clone())
        .await
        .expect("connect the publisher");
    let first = RabbitBus::connect(options.clone())
        .await
        .expect("connect subscriber 1");
    let second = RabbitBus::connect(options)
        .await
        .expect("connect subscriber 2");
    Some(TransportUnderTest::new(publisher, first).with_subscriber(second as Arc<_>))
}

runnel_testkit::transport_conformance!(fresh_transport);
