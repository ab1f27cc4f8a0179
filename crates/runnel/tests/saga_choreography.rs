//! Choreography on a running application: billing reacts to `OrderPlaced` by sending
//! `ChargePayment`, which carries the order's correlation id and the event as its cause;
//! a reaction that fails publishes nothing.

use std::time::Duration;

use runnel::app::App;
use runnel::connect::SettingsInputs;
use runnel::consumer::{HandlerContext, HandlerError, Router};
use runnel::core::bus::{StartPosition, SubscribeOptions};
use runnel::core::dead_letter::DeadLetterFilter;
use runnel::core::{GroupName, Message, TopicName};
use runnel::saga::choreography::react;
use tokio::sync::mpsc;

/// Both consumers see what was published before their groups existed.
fn earliest() -> SubscribeOptions {
    SubscribeOptions {
        start: StartPosition::Earliest,
        ..SubscribeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaction_sends_its_command_with_correlation_and_causation() {
    let dir = tempfile::tempdir().unwrap();
    let settings = SettingsInputs::default()
        .db("--db", Some(dir.path().join("app.db")))
        .resolve()
        .unwrap();
    let mut app = App::connect(&settings).await.unwrap();
    app.consumer(
        TopicName::new("orders").unwrap(),
        GroupName::new("billing").unwrap(),
        |c| {
            c.subscribe_options(earliest())
                .retry(runnel::RetryPolicy::immediate(1))
                .handler(
                    Router::new()
                        .route(
                            "OrderPlaced",
                            react(|event: &Message| {
                                let order = event.payload_json()?;
                                Ok(vec![(
                                    TopicName::new("payments")?,
                                    Message::json(
                                        "ChargePayment",
                                        &serde_json::json!({"order": order["order"]}),
                                    ),
                                )])
                            }),
                        )
                        .route("Broken", react(|_| Err("cannot react to this".into()))),
                )
        },
    );
    let (seen, mut seen_rx) = mpsc::channel(8);
    app.consumer(
        TopicName::new("payments").unwrap(),
        GroupName::new("payments").unwrap(),
        move |c| {
            let seen = seen.clone();
            c.subscribe_options(earliest())
                .handler(move |ctx: HandlerContext| {
                    let seen = seen.clone();
                    async move {
                        let _ = seen.send(ctx.message().clone()).await;
                        Ok::<_, HandlerError>(())
                    }
                })
        },
    );
    let running = app.start().await.unwrap();
    let mut placed = Message::json("OrderPlaced", &serde_json::json!({"order": "o-1"}));
    placed.correlation_id = Some("checkout-42".into());
    let broken = Message::json("Broken", &serde_json::json!({}));
    running
        .bus()
        .publisher
        .publish(
            &TopicName::new("orders").unwrap(),
            vec![broken, placed.clone()],
        )
        .await
        .unwrap();
    let charge = tokio::time::timeout(Duration::from_secs(20), seen_rx.recv())
        .await
        .expect("the command arrived in time")
        .unwrap();
    assert_eq!(charge.event_type, "ChargePayment");
    assert_eq!(charge.correlation_id.as_deref(), Some("checkout-42"));
    assert_eq!(charge.causation_id.as_deref(), Some(placed.id.as_str()));
    assert_eq!(charge.payload_json().unwrap()["order"], "o-1");
    // The failed reaction was dead-lettered, and published nothing: effects go out only
    // when the handler succeeds, before the delivery is settled.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let letters = running
            .stores()
            .dead_letters
            .list(&DeadLetterFilter::default(), None, 10)
            .await
            .unwrap();
        if letters.iter().any(|l| l.message.event_type == "Broken") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Broken was not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen_rx.try_recv().is_err(), "only one command");
    let report = running.shutdown(Duration::from_secs(20)).await;
    assert!(report.all_stopped_in_time(), "{report:?}");
}
