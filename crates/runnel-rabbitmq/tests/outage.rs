//! A broker outage mid-stream: the publisher and the consumer reach RabbitMQ through a
//! TCP proxy that cuts every connection and refuses new ones for a while, then lets them
//! through again. The publisher resends what was not confirmed, the consumer resubscribes,
//! and with the SQLite inbox every message is handled exactly once in effect, in per-key
//! order. The shared broker itself keeps running.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use runnel::consumer::{Consumer, HandlerContext};
use runnel::core::bus::{Publisher, SubscribeOptions};
use runnel::core::{GroupName, Message, TopicName};
use runnel_rabbitmq::{RabbitBus, RabbitOptions};
use runnel_testkit::fault::TcpProxy;

const KEYS: usize = 4;
const MESSAGES: usize = 120;
/// Messages handled before the outage starts.
const CUT_AT: usize = 30;
/// Messages per publish call.
const BATCH: usize = 4;
/// Pause between publish calls, so the stream lasts longer than the time to the cut.
const PUBLISH_PACE: Duration = Duration::from_millis(20);
/// How long the broker stays unreachable.
const OUTAGE: Duration = Duration::from_secs(3);
const DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_publishers_resend_consumers_resubscribe_each_message_once_in_key_order() {
    let Some(url) = common::test_url() else {
        return;
    };
    let proxy = TcpProxy::start(common::server_addr(&url))
        .await
        .expect("start the proxy");
    let via_proxy = common::url_via(&url, proxy.local_addr());
    let sep = if via_proxy.contains('?') { '&' } else { '?' };
    let options = RabbitOptions::from_url(&format!(
        "{via_proxy}{sep}retention=1h&group_expires=10m&reconnect_max=500ms&publish_timeout=60s&heartbeat=5s"
    ))
    .expect("options");
    let publisher = RabbitBus::connect(options.clone())
        .await
        .expect("publisher");
    let subscriber = RabbitBus::connect(options).await.expect("subscriber");

    let suffix = runnel::core::uuid::Uuid::now_v7().simple().to_string();
    let topic = TopicName::new(format!("outage.{suffix}")).expect("topic");
    let group = GroupName::new(format!("outage-{suffix}")).expect("group");
    let effects = Arc::new(common::Effects::new().await);
    let consumer = Consumer::builder(subscriber.clone(), topic.clone(), group.clone())
        .inbox(effects.inbox.clone())
        .handler(|ctx: HandlerContext| async move { common::Effects::write(&ctx).await })
        .subscribe_options(SubscribeOptions {
            max_in_flight: 16,
            ack_timeout: Duration::from_secs(10),
            ..SubscribeOptions::default()
        })
        .start()
        .await
        .expect("start the consumer");

    let accepted_before = proxy.connections_accepted();
    // The publisher streams small batches, paced so the outage falls mid-stream.
    let publishing = {
        let (publisher, topic) = (publisher.clone(), topic.clone());
        tokio::spawn(async move {
            for batch in 0..MESSAGES / BATCH {
                let messages: Vec<Message> = (batch * BATCH..(batch + 1) * BATCH)
                    .map(|n| {
                        Message::json("Counted", &serde_json::json!({ "n": n }))
                            .with_key(format!("key-{}", n % KEYS))
                    })
                    .collect();
                publisher
                    .publish(&topic, messages)
                    .await
                    .expect("every publish succeeds, retrying through the outage");
                tokio::time::sleep(PUBLISH_PACE).await;
            }
        })
    };
    // The outage starts once the consumer is busy: every connection dropped, new ones
    // refused; it ends after OUTAGE while both sides are retrying.
    let e = effects.clone();
    common::wait_for("the consumer to be mid-stream", DEADLINE, || {
        let e = e.clone();
        async move { e.all().await.len() >= CUT_AT }
    })
    .await;
    proxy.cut();
    tokio::time::sleep(OUTAGE).await;
    let handled_during_outage = effects.all().await.len();
    assert!(
        handled_during_outage < MESSAGES,
        "the outage must interrupt the stream (all {MESSAGES} were handled before it ended)"
    );
    proxy.restore();
    tokio::time::timeout(DEADLINE, publishing)
        .await
        .expect("the publisher finishes")
        .expect("the publisher task");
    assert!(
        proxy.connections_accepted() > accepted_before,
        "the clients reconnected through the proxy"
    );

    let effects_view = effects.clone();
    common::wait_for("every message handled", DEADLINE, || {
        let e = effects_view.clone();
        async move { e.all().await.len() >= MESSAGES }
    })
    .await;
    // Anything more would be a second effect of some message.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = effects.all().await;
    let ids: HashSet<&str> = all.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(all.len(), MESSAGES, "each message has exactly one effect");
    assert_eq!(ids.len(), MESSAGES, "no message has two effects");
    let mut per_key: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for e in &all {
        per_key.entry(e.key.as_str()).or_default().push(e.n);
    }
    for (key, ns) in per_key {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, sorted, "key {key} handled in publish order");
    }
    consumer
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown");
    publisher.close().await;
    subscriber.close().await;
}
