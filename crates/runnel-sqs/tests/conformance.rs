//! The transport conformance suite against SNS/SQS (moto locally, set
//! RUNNEL_TEST_SQS_ENDPOINT): one publisher client and three independent subscriber
//! clients, as separate processes would have.

mod common;

use runnel_testkit::transport::TransportUnderTest;

async fn fresh_transport() -> Option<TransportUnderTest> {
    let endpoint = common::endpoint("runnel-sqs conformance")?;
    let publisher = common::bus(&endpoint);
    let max_payload = publisher.options().max_payload_bytes;
    Some(
        TransportUnderTest::new(publisher.clone(), publisher)
            .with_subscriber(common::bus(&endpoint))
            .with_subscriber(common::bus(&endpoint))
            .with_max_payload_bytes(max_payload),
    )
}

runnel_testkit::transport_conformance!(fresh_transport);
