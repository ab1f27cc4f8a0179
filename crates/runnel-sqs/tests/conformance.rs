//! The transport conformance suite against SNS/SQS (moto locally, set
//! RUNNEL_TEST_SQS_ENDPOINT): one publisher client and three independent subscriber
//! clients, as separate processes would have.
//!
//! `StartPosition::Earliest` replays the SNS FIFO topic's archive (`ArchivePolicy` on the
//! topic, `ReplayPolicy` on the new group's subscription). moto does not implement replay,
//! so the factory probes the endpoint once: where replay is refused, the suite's Earliest
//! check proves that such a subscription is refused with an error instead (see
//! `TransportUnderTest::with_earliest_unsupported`); against AWS the full check runs.

mod common;

use runnel_core::bus::{StartPosition, SubscribeOptions, Subscriber};
use runnel_core::{GroupName, TopicName};
use runnel_testkit::transport::TransportUnderTest;
use tokio::sync::OnceCell;

/// Why the endpoint cannot replay a topic's archive, or `None` when it can.
async fn replay_gap(endpoint: &str) -> Option<String> {
    static PROBE: OnceCell<Option<String>> = OnceCell::const_new();
    PROBE
        .get_or_init(|| async {
            let bus = common::bus(endpoint);
            let suffix = runnel_core::uuid::Uuid::now_v7().simple().to_string();
            let topic = TopicName::new(format!("replay-probe-{suffix}")).expect("topic name");
            let group = GroupName::new(format!("probe-{suffix}")).expect("group name");
            let options = SubscribeOptions {
                start: StartPosition::Earliest,
                ..SubscribeOptions::default()
            };
            match bus.subscribe(&topic, &group, options).await {
                Ok(_) => None,
                Err(e @ runnel_core::BusError::EarliestUnavailable { .. }) => Some(e.to_string()),
                Err(e) => panic!("probing the endpoint for SNS replay failed: {e}"),
            }
        })
        .await
        .clone()
}

async fn fresh_transport() -> Option<TransportUnderTest> {
    let endpoint = common::endpoint("runnel-sqs conformance")?;
    let publisher = common::bus(&endpoint);
    let max_payload = publisher.options().max_payload_bytes;
    let mut transport = TransportUnderTest::new(publisher.clone(), publisher)
        .with_subscriber(common::bus(&endpoint))
        .with_subscriber(common::bus(&endpoint))
        .with_max_payload_bytes(max_payload);
    if let Some(reason) = replay_gap(&endpoint).await {
        transport = transport.with_earliest_unsupported(reason);
    }
    Some(transport)
}

runnel_testkit::transport_conformance!(fresh_transport);
