//! The configuration entry point against the real broker: a wrong password is a typed
//! error that does not show the password; a good URL connects.

mod common;

use runnel::core::BusError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_without_showing_the_password() {
    let Some(url) = common::test_url() else {
        return;
    };
    let mut bad = url::Url::parse(&url).expect("URL");
    bad.set_username("runnel-nobody").expect("user");
    bad.set_password(Some("not-the-pass-w0rd"))
        .expect("password");
    let err = runnel_rabbitmq::connect(bad.as_str())
        .await
        .expect_err("a wrong password is refused");
    assert!(matches!(err, BusError::AuthenticationFailed(_)), "{err:?}");
    assert!(!format!("{err:?}").contains("not-the-pass-w0rd"), "{err:?}");

    let bus = runnel_rabbitmq::connect(&url).await.expect("connect");
    assert!(!format!("{bus:?}").contains(":guest@"), "{bus:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_bus_refuses_publishes_and_ends_its_subscriptions() {
    use futures_util::StreamExt;
    use runnel::core::bus::{Publisher, SubscribeOptions, Subscriber};
    use runnel::core::{GroupName, Message, TopicName};

    let Some(options) = common::test_options() else {
        return;
    };
    let bus = runnel_rabbitmq::RabbitBus::connect(options)
        .await
        .expect("connect");
    let suffix = runnel::core::uuid::Uuid::now_v7().simple().to_string();
    let topic = TopicName::new(format!("closing.{suffix}")).expect("topic");
    let group = GroupName::new(format!("closing-{suffix}")).expect("group");
    let mut stream = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .expect("subscribe");
    bus.close().await;
    let err = bus
        .publish(&topic, vec![Message::json("Late", &serde_json::json!({}))])
        .await
        .expect_err("publishing on a closed bus");
    assert_eq!(err, BusError::Closed);
    let end = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                assert_eq!(e, BusError::Closed);
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the subscription ends after the bus is closed");
}
