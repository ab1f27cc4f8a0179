//! An application wired on the runtime end to end, on the embedded default: a command
//! appends events, the event store relay publishes them, a consumer with an inbox sees
//! each once; shutdown stops every task in time. The same wiring on PostgreSQL runs when
//! `RUNNEL_TEST_POSTGRES_URL` is set (required in CI).

use std::time::Duration;

use runnel::app::App;
use runnel::connect::{BusUrl, Settings, SettingsInputs, StoreUrl};
use runnel::consumer::{HandlerContext, HandlerError};
use runnel::core::outbox::TopicRouting;
use runnel::core::{ExpectedRevision, GroupName, NewEvent, StreamName, TopicName};
use runnel::outbox::EventStoreRelayOptions;
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(20);

async fn events_flow_from_the_store_through_the_bus_to_a_consumer(settings: Settings) {
    let mut app = App::connect(&settings).await.unwrap();
    app.event_store_relay(EventStoreRelayOptions {
        routing: TopicRouting::Category,
        ..EventStoreRelayOptions::default()
    });
    let (seen, mut seen_rx) = mpsc::channel(16);
    app.consumer(
        TopicName::new("Light").unwrap(),
        GroupName::new("watcher").unwrap(),
        move |consumer| {
            let seen = seen.clone();
            consumer.handler(move |ctx: HandlerContext| {
                let seen = seen.clone();
                async move {
                    let _ = seen.send(ctx.message().event_type.clone()).await;
                    Ok::<_, HandlerError>(())
                }
            })
        },
    );
    assert_eq!(
        app.task_names(),
        [
            "event-store-relay:runnel-event-relay",
            "consumer:Light/watcher"
        ]
    );
    let running = app.start().await.unwrap();
    let stream = StreamName::new(format!("Light-{}", uuid::Uuid::now_v7().simple())).unwrap();
    running
        .stores()
        .events
        .append(
            &stream,
            ExpectedRevision::NoStream,
            vec![
                NewEvent::json("Switched", &serde_json::json!({"on": true})),
                NewEvent::json("Dimmed", &serde_json::json!({"level": 3})),
            ],
        )
        .await
        .unwrap();
    let mut types = Vec::new();
    while types.len() < 2 {
        let next = tokio::time::timeout(DEADLINE, seen_rx.recv())
            .await
            .expect("the consumer saw both events in time");
        types.push(next.unwrap());
    }
    assert_eq!(types, ["Switched", "Dimmed"], "in stream order");
    let report = running.shutdown(DEADLINE).await;
    assert!(report.all_stopped_in_time(), "{report:?}");
    assert_eq!(report.restarts(), 0, "{report:?}");
}

#[tokio::test]
async fn on_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let settings = SettingsInputs::default()
        .db("--db", Some(dir.path().join("app.db")))
        .resolve()
        .unwrap();
    assert_eq!(settings.bus, BusUrl::Embedded);
    events_flow_from_the_store_through_the_bus_to_a_consumer(settings).await;
}

#[tokio::test]
async fn on_postgres() {
    let Ok(url) = std::env::var("RUNNEL_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "RUNNEL_TEST_POSTGRES_URL is not set but RUNNEL_REQUIRE_SERVICES=1"
        );
        eprintln!("SKIPPED on_postgres: RUNNEL_TEST_POSTGRES_URL is not set");
        return;
    };
    let schema = format!("e2e_{}", uuid::Uuid::now_v7().simple());
    let separator = if url.contains('?') { '&' } else { '?' };
    let settings = SettingsInputs::default()
        .store("--store", Some(format!("{url}{separator}schema={schema}")))
        .resolve()
        .unwrap();
    assert!(matches!(settings.store, StoreUrl::Postgres(_)));
    events_flow_from_the_store_through_the_bus_to_a_consumer(settings).await;
}
