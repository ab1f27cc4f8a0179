//! The fulfillment saga end to end: orders placed on the command bus, the saga started
//! from `OrderPlaced` on the bus, the inventory, payment and shipping services answering
//! over the bus, the order confirmed (or, after compensation, cancelled), the payment
//! service's charges and refunds in its ledger — on the embedded
//! default, over NATS, on PostgreSQL and on PostgreSQL over NATS. A crashing service
//! parks the instance for an operator.

mod common;

use std::time::{Duration, Instant};

use common::service_url;

use order_fulfillment::fulfillment::{Failures, FulfillmentConfig, PAYMENT_CATEGORY};
use order_fulfillment::service::{self, OrderService};
use order_fulfillment::{Order, OrderCommand, OrderLine};
use runnel::app::{App, RunningApp};
use runnel::connect::{Settings, SettingsInputs};
use runnel::core::processor::InstanceStatus;
use runnel::core::{ReadStream, StreamName};
use runnel::saga::SagaOptions;

const DEADLINE: Duration = Duration::from_secs(60);

fn failures() -> Failures {
    Failures {
        out_of_stock: ["p-sold-out".to_string()].into_iter().collect(),
        decline_above_cents: Some(100_000),
        crash_shipping_for: Some("Crash Lane".into()),
        unshippable: Some("Atlantis".into()),
        ..Failures::default()
    }
}

async fn start(settings: Settings, config: FulfillmentConfig) -> (RunningApp, OrderService) {
    let mut app = App::connect(&settings).await.unwrap();
    let service = service::wire_with(&mut app, config).await.unwrap();
    (app.start().await.unwrap(), service)
}

async fn place(running: &RunningApp, id: &str, product: &str, cents: i64, address: &str) {
    running
        .commands()
        .execute::<Order>(
            id.to_string(),
            OrderCommand::Place {
                customer_id: "c-1".into(),
                items: vec![OrderLine::new(product, 1, cents)],
                shipping_address: address.into(),
                billing_address: None,
            },
        )
        .await
        .unwrap();
}

/// Waits until the saga of `id` is finished or parked, and the read model shows the
/// order in `order_status`.
async fn settled(
    service: &OrderService,
    id: &str,
    status: InstanceStatus,
    order_status: &str,
) -> runnel::saga::SagaInstance<order_fulfillment::fulfillment::Fulfillment> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let instance = service.fulfillment.load(id).await.unwrap();
        let row = service.read_model.order_summary(id).await.unwrap();
        if let (Some(instance), Some(row)) = (&instance, &row) {
            if instance.record.status == status && row.status.as_str() == order_status {
                return instance.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "order {id}: saga {:?}, read model {:?}; wanted {status} and {order_status}",
            instance.map(|i| (i.record.status, i.record.state, i.record.last_error)),
            row.map(|r| r.status)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn history(service: &OrderService, id: &str) -> Vec<(String, Option<String>)> {
    service
        .fulfillment
        .store()
        .history(service.fulfillment.kind(), id, 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|h| (h.line.what, h.line.step))
        .collect()
}

/// An order that goes through, one out of stock, one declined and one no carrier serves.
async fn orders_are_fulfilled_or_compensated(settings: Settings) {
    let run = uuid::Uuid::now_v7().simple().to_string();
    let id = |name: &str| format!("{name}-{}", &run[run.len() - 10..]);
    let (running, service) = start(
        settings,
        FulfillmentConfig {
            faults: failures().into(),
            services: order_fulfillment::fulfillment::SERVICE_GROUPS.to_vec(),
            ..FulfillmentConfig::default()
        },
    )
    .await;
    place(&running, &id("ok"), "p-1", 2500, "1 Main St").await;
    place(&running, &id("sold-out"), "p-sold-out", 2500, "1 Main St").await;
    place(&running, &id("declined"), "p-1", 500_000, "1 Main St").await;
    place(&running, &id("nowhere"), "p-1", 2500, "Atlantis").await;

    let ok = settled(&service, &id("ok"), InstanceStatus::Completed, "confirmed").await;
    assert!(ok.data.reservation_id.is_some());
    assert!(ok.data.payment_id.is_some());
    assert!(ok.data.tracking_number.is_some());

    let sold_out = settled(
        &service,
        &id("sold-out"),
        InstanceStatus::Compensated,
        "cancelled",
    )
    .await;
    assert!(sold_out.record.last_error.unwrap().contains("out of stock"));
    let steps = history(&service, &id("sold-out")).await;
    assert!(
        !steps
            .iter()
            .any(|(_, s)| s.as_deref() == Some("charge-payment")),
        "no payment was attempted: {steps:?}"
    );

    settled(
        &service,
        &id("declined"),
        InstanceStatus::Compensated,
        "cancelled",
    )
    .await;
    let steps = history(&service, &id("declined")).await;
    assert!(
        steps.contains(&("compensated".into(), Some("reserve-inventory".into()))),
        "the reservation was released: {steps:?}"
    );

    settled(
        &service,
        &id("nowhere"),
        InstanceStatus::Compensated,
        "cancelled",
    )
    .await;
    let compensated: Vec<Option<String>> = history(&service, &id("nowhere"))
        .await
        .into_iter()
        .filter(|(what, _)| what == "compensated")
        .map(|(_, step)| step)
        .collect();
    assert_eq!(
        compensated,
        vec![
            Some("charge-payment".to_string()),
            Some("reserve-inventory".to_string())
        ],
        "refund, then release"
    );

    // The payment service's ledger: a charge for each order it charged, a refund for the
    // one it refunded, nothing for a declined card or an order never charged.
    let ledger = |name: &str| {
        let stores = running.stores().clone();
        let stream = format!("{PAYMENT_CATEGORY}-{}", id(name));
        async move {
            stores
                .events
                .read_stream(&StreamName::new(stream).unwrap(), ReadStream::forward(100))
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.event_type)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ledger("ok").await, ["PaymentCharged"]);
    assert_eq!(
        ledger("nowhere").await,
        ["PaymentCharged", "PaymentRefunded"]
    );
    assert!(ledger("declined").await.is_empty());
    assert!(ledger("sold-out").await.is_empty());
    let report = running.shutdown(DEADLINE).await;
    assert!(report.all_stopped_in_time(), "{report:?}");
}

fn embedded(dir: &std::path::Path) -> Settings {
    SettingsInputs::default()
        .db("--db", Some(dir.join("app.db")))
        .resolve()
        .unwrap()
}

fn nats_bus(url: &str) -> String {
    common::nats_bus_of_its_own(url, "ful")
}

fn postgres_store(url: &str) -> String {
    let schema = format!("ful_{}", uuid::Uuid::now_v7().simple());
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}schema={schema}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fulfillment_on_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    orders_are_fulfilled_or_compensated(embedded(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fulfillment_over_nats() {
    let Some(nats) = service_url("RUNNEL_TEST_NATS_URL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let settings = SettingsInputs::default()
        .db("--db", Some(dir.path().join("app.db")))
        .bus("--bus", Some(nats_bus(&nats)))
        .resolve()
        .unwrap();
    orders_are_fulfilled_or_compensated(settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fulfillment_on_postgres() {
    let Some(pg) = service_url("RUNNEL_TEST_POSTGRES_URL") else {
        return;
    };
    let settings = SettingsInputs::default()
        .store("--store", Some(postgres_store(&pg)))
        .resolve()
        .unwrap();
    orders_are_fulfilled_or_compensated(settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fulfillment_on_postgres_over_nats() {
    let (Some(pg), Some(nats)) = (
        service_url("RUNNEL_TEST_POSTGRES_URL"),
        service_url("RUNNEL_TEST_NATS_URL"),
    ) else {
        return;
    };
    let settings = SettingsInputs::default()
        .store("--store", Some(postgres_store(&pg)))
        .bus("--bus", Some(nats_bus(&nats)))
        .resolve()
        .unwrap();
    orders_are_fulfilled_or_compensated(settings).await;
}

/// The shipping service crashes on every attempt: the consumer dead-letters the command,
/// the saga's reply deadline fires, the command is sent again under the same key, and
/// after the retries the instance waits for an operator — nothing is compensated blindly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashing_service_parks_the_saga_for_an_operator() {
    let dir = tempfile::tempdir().unwrap();
    let (running, service) = start(
        embedded(dir.path()),
        FulfillmentConfig {
            faults: failures().into(),
            services: order_fulfillment::fulfillment::SERVICE_GROUPS.to_vec(),
            reply_deadline: Duration::from_millis(500),
            saga: SagaOptions {
                poll_interval: Duration::from_millis(50),
                ..SagaOptions::default()
            },
            ..FulfillmentConfig::default()
        },
    )
    .await;
    place(&running, "crash-1", "p-1", 2500, "7 Crash Lane").await;
    let parked = settled(
        &service,
        "crash-1",
        InstanceStatus::NeedsAttention,
        "pending",
    )
    .await;
    assert!(
        parked
            .record
            .last_error
            .as_deref()
            .unwrap()
            .contains("still unknown"),
        "{:?}",
        parked.record.last_error
    );
    assert_eq!(parked.record.state, "needs attention at create-shipment");
    let steps = history(&service, "crash-1").await;
    assert!(
        !steps.iter().any(|(what, _)| what == "compensated"),
        "nothing compensated blindly: {steps:?}"
    );
    let report = running.shutdown(DEADLINE).await;
    assert!(report.all_stopped_in_time(), "{report:?}");
}
