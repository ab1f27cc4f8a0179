//! The transport conformance suite again, on partitioned groups (`partitions=3`): every
//! topic's messages go to three partition subjects and each group's partitions are
//! balanced over its subscribers. Each check gets a publisher and three subscribers, each
//! on its own connection.

use runnel_testkit::transport::TransportUnderTest;

async fn fresh_transport() -> Option<TransportUnderTest> {
    let base = std::env::var("RUNNEL_TEST_NATS_URL").ok()?;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}partitions=3");
    let connect = || async {
        runnel_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect to NATS at RUNNEL_TEST_NATS_URL: {e}"))
    };
    let publisher = connect().await;
    let limit = publisher.max_payload_bytes();
    let mut t = TransportUnderTest::new(publisher.clone(), connect().await);
    t = t
        .with_subscriber(connect().await)
        .with_subscriber(connect().await);
    Some(t.with_max_payload_bytes(limit))
}

runnel_testkit::transport_conformance!(fresh_transport);
