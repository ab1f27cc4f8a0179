//! The transport conformance suite from runnel-testkit against the real NATS JetStream
//! server in `RUNNEL_TEST_NATS_URL`: one test per behaviour. Each check gets a publisher
//! and three subscribers, each on its own connection (as separate processes would be).

use runnel_testkit::transport::TransportUnderTest;

async fn fresh_transport() -> Option<TransportUnderTest> {
    let url = std::env::var("RUNNEL_TEST_NATS_URL").ok()?;
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
