//! The fulfillment saga and its progress projection under delivery faults
//! (`runnel_testkit::faultkit`): the real inventory, payment and shipping handlers answer
//! the saga's commands, and their replies reach the saga duplicated, reordered, delayed and
//! again after the saga applied them, while the saga's runtime crashes around its commits.
//! Whatever the schedule, every order is charged at most once and refunded exactly when
//! its fulfillment was compensated after a charge, every instance ends, compensations run
//! in reverse, and the `fulfillment_progress` rows equal a recomputation from the replies.

use std::sync::Arc;
use std::time::Duration;

use order_fulfillment::fulfillment::{
    fulfillment_saga, reply_topic, service_handler, Failures, Fulfillment, INVENTORY_TOPIC,
    PAYMENTS_TOPIC, PAYMENT_CATEGORY, SHIPPING_TOPIC,
};
use order_fulfillment::read_model::FulfillmentProgressProjection;
use order_fulfillment::{Order, OrderCommand, OrderLine, OrderStatus};
use runnel::connect::{open_stores, OpenMode, StoreBackend, StoreUrl, Stores};
use runnel::core::processor::InstanceStatus;
use runnel::core::{Message, ReadStream, StoreError, StreamName, TopicName};
use runnel::saga::INSTANCE_HEADER;
use runnel::{CommandBus, QueryBus};
use runnel_testkit::faultkit::saga::{SagaFaultReport, SagaRun, ServiceHandlers};
use runnel_testkit::faultkit::{FaultKit, FaultPlan};

/// Orders per run: a quarter of each kind (fulfilled, out of stock, declined, unshippable).
const ORDERS: usize = 12;
const SEEDS: u64 = 6;
/// The saga's reply deadline in these runs; the kit's clock jumps past it when idle.
const REPLY_DEADLINE: Duration = Duration::from_secs(10);

fn failures() -> Failures {
    Failures {
        out_of_stock: ["p-sold-out".to_string()].into_iter().collect(),
        decline_above_cents: Some(100_000),
        unshippable: Some("Atlantis".into()),
        ..Failures::default()
    }
}

/// Order `n`: fulfilled, out of stock, declined or unshippable, by `n % 4`.
fn order(n: usize) -> (String, Vec<OrderLine>, String) {
    let id = format!("o{n}");
    let (product, cents, address) = match n % 4 {
        0 => ("tea", 1_200, "1 Main St"),
        1 => ("p-sold-out", 1_200, "1 Main St"),
        2 => ("tea", 250_000, "1 Main St"),
        _ => ("tea", 1_200, "Atlantis"),
    };
    (
        id,
        vec![OrderLine::new(product, 1, cents)],
        address.to_string(),
    )
}

async fn stores(dir: &tempfile::TempDir) -> Stores {
    open_stores(
        &StoreUrl::sqlite(dir.path().join("app.db")),
        OpenMode::default(),
    )
    .await
    .unwrap()
}

/// The order commands on `stores` (the saga's last step confirms the order).
fn commands(stores: &Stores) -> CommandBus {
    let (commands, queries) = (CommandBus::new(), QueryBus::new());
    let orders = order_fulfillment::order_repository(
        Arc::clone(&stores.events),
        None,
        Arc::new(order_fulfillment::upcasters().unwrap()),
    );
    order_fulfillment::register(&commands, &queries, orders.clone()).unwrap();
    commands.register_aggregate::<Order>(orders).unwrap();
    commands
}

/// Places the orders, then runs their fulfillment under `plan` with the real services.
async fn run_fulfillment(stores: &Stores, plan: FaultPlan) -> SagaFaultReport<Fulfillment> {
    let commands = commands(stores);
    let mut run = {
        let commands = commands.clone();
        SagaRun::new(
            move || fulfillment_saga(commands.clone(), REPLY_DEADLINE).unwrap(),
            Arc::clone(&stores.processors),
            stores.outbox().await.unwrap(),
        )
        .idle_advance(REPLY_DEADLINE + Duration::from_secs(1))
    };
    for n in 0..ORDERS {
        let (id, items, address) = order(n);
        commands
            .execute::<Order>(
                id.clone(),
                OrderCommand::Place {
                    customer_id: "c-1".into(),
                    items: items.clone(),
                    shipping_address: address.clone(),
                    billing_address: None,
                },
            )
            .await
            .unwrap();
        run = run.start(
            id.clone(),
            Fulfillment::new(&id, "c-1".into(), items, address),
        );
    }
    let handler = |group: &str| {
        service_handler(
            group,
            Arc::clone(&stores.dedup),
            Arc::clone(&stores.events),
            failures(),
        )
        .unwrap()
    };
    let topic = |t: &str| TopicName::new(t).unwrap();
    let services = ServiceHandlers::new()
        .on(&topic(INVENTORY_TOPIC), handler("inventory"))
        .on(&topic(PAYMENTS_TOPIC), handler("payments"))
        .on(&topic(SHIPPING_TOPIC), handler("shipping"));
    FaultKit::new(plan).run_saga(run, services).await.unwrap()
}

/// The payment ledger's event types for `order`.
async fn ledger(stores: &Stores, order: &str) -> Vec<String> {
    let stream = StreamName::new(format!("{PAYMENT_CATEGORY}-{order}")).unwrap();
    stores
        .events
        .read_stream(&stream, ReadStream::forward(100))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

/// The event types of the commands the saga sent for `order`, in order.
fn commands_of(report: &SagaFaultReport<Fulfillment>, order: &str) -> Vec<String> {
    report
        .commands
        .iter()
        .filter(|c| c.message.headers.get(INSTANCE_HEADER).map(String::as_str) == Some(order))
        .map(|c| c.message.event_type.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fulfillment_saga_charges_each_order_at_most_once_under_reply_faults() {
    let (mut crashes, mut duplicates, mut after_effect, mut reorders) = (0, 0, 0, 0);
    for seed in 0..SEEDS {
        let dir = tempfile::tempdir().unwrap();
        let stores = stores(&dir).await;
        let report = run_fulfillment(&stores, FaultPlan::chaotic(seed)).await;
        crashes += report.crashes.len();
        duplicates += report.duplicates + report.command_duplicates;
        after_effect += report.redeliveries_after_effect;
        reorders += report.reorders;
        assert!(report.unsettled.is_empty(), "{report}");
        assert!(report.failed.is_empty(), "{report}: {:?}", report.failed);
        assert!(
            report.unanswered.is_empty(),
            "{report}: {:?}",
            report.unanswered
        );

        let repository = order_fulfillment::order_repository(
            Arc::clone(&stores.events),
            None,
            Arc::new(order_fulfillment::upcasters().unwrap()),
        );
        for instance in &report.instances {
            let id = instance.data.order_id.clone();
            let n: usize = id[1..].parse().unwrap();
            let status = instance.record.status;
            let paid = ledger(&stores, &id).await;
            let charges = paid.iter().filter(|t| *t == "PaymentCharged").count();
            let refunds = paid.iter().filter(|t| *t == "PaymentRefunded").count();
            // Every instance final, and the one its order calls for.
            let wanted = if n % 4 == 0 {
                InstanceStatus::Completed
            } else {
                InstanceStatus::Compensated
            };
            assert_eq!(status, wanted, "order {id}: {report}");
            // Charged at most once; refunded exactly when compensated after a charge.
            assert!(charges <= 1, "order {id} charged {charges} times: {report}");
            assert_eq!(
                refunds,
                usize::from(status == InstanceStatus::Compensated && charges == 1),
                "order {id}: ledger {paid:?}: {report}"
            );
            assert_eq!(
                charges,
                usize::from(n % 4 == 0 || n % 4 == 3),
                "order {id}: {report}"
            );
            // Compensations in reverse: the shipment's (none here: it was refused), then the
            // refund, then the release — whatever was sent more than once.
            let sent = commands_of(&report, &id);
            let undo: Vec<&str> = sent
                .iter()
                .map(String::as_str)
                .filter(|t| matches!(*t, "CancelShipment" | "RefundPayment" | "ReleaseInventory"))
                .collect();
            let first_release = undo.iter().position(|t| *t == "ReleaseInventory");
            let last_refund = undo.iter().rposition(|t| *t == "RefundPayment");
            if let (Some(release), Some(refund)) = (first_release, last_refund) {
                assert!(refund < release, "order {id}: compensations {undo:?}");
            }
            // The order followed its fulfillment.
            let order = repository.load(&id).await.unwrap();
            let confirmed = order.state.status() == Some(OrderStatus::Confirmed);
            assert_eq!(confirmed, status == InstanceStatus::Completed, "order {id}");
        }
    }
    assert!(
        crashes > 0 && duplicates > 0 && after_effect > 0 && reorders > 0,
        "the runs injected every fault: {crashes} crashes, {duplicates} duplicates, \
         {after_effect} redeliveries after effect, {reorders} reorders"
    );
}

/// `fulfillment_progress` rows, by order id.
async fn progress_rows(stores: &Stores) -> Vec<Vec<Option<String>>> {
    let StoreBackend::Sqlite(store) = stores.backend() else {
        panic!("a SQLite store")
    };
    store
        .read_with(|conn| {
            let backend = |e: &dyn std::fmt::Display| StoreError::Backend(e.to_string());
            let mut stmt = conn
                .prepare(
                    "SELECT order_id, stage, reservation_id, payment_id, tracking_number, \
                     failure, compensations FROM fulfillment_progress ORDER BY order_id",
                )
                .map_err(|e| backend(&e))?;
            let rows = stmt
                .query_map([], |r| (0..7).map(|i| r.get(i)).collect())
                .map_err(|e| backend(&e))?;
            rows.collect::<Result<Vec<Vec<Option<String>>>, _>>()
                .map_err(|e| backend(&e))
        })
        .await
        .unwrap()
}

/// Runs the projection over `replies` under `plan` on a fresh store; returns its rows.
async fn project(replies: &[Message], plan: FaultPlan) -> Vec<Vec<Option<String>>> {
    let dir = tempfile::tempdir().unwrap();
    let stores = stores(&dir).await;
    let report = FaultKit::new(plan)
        .run_topic_projection(
            Arc::new(FulfillmentProgressProjection::new(reply_topic())),
            Arc::clone(&stores.projections),
            replies.to_vec(),
        )
        .await
        .unwrap();
    assert!(report.failed.is_empty(), "{report}");
    progress_rows(&stores).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fulfillment_progress_equals_a_recomputation_under_duplicated_and_reordered_replies() {
    // The replies the real services gave a run of the saga (itself under faults: some
    // commands were answered twice).
    let dir = tempfile::tempdir().unwrap();
    let stores = stores(&dir).await;
    let saga = run_fulfillment(&stores, FaultPlan::chaotic(99)).await;
    assert!(saga.unsettled.is_empty(), "{saga}");
    let replies = saga.replies.clone();
    assert!(replies.len() >= ORDERS * 2, "{saga}");

    // The recomputation: each reply once, in publish order.
    let expected = project(&replies, FaultPlan::default()).await;
    assert_eq!(expected.len(), ORDERS, "a row per order");
    for row in &expected {
        let id = row[0].clone().unwrap();
        let n: usize = id[1..].parse().unwrap();
        // The furthest stage, each compensation once, whatever the services answered twice.
        let (stage, compensations) = match n % 4 {
            0 => ("shipment-created", ""),
            1 => ("out-of-stock", ""),
            2 => ("inventory-released", "inventory-released"),
            _ => ("inventory-released", "payment-refunded,inventory-released"),
        };
        assert_eq!(row[1].as_deref(), Some(stage), "{row:?}");
        assert_eq!(row[6].as_deref(), Some(compensations), "{row:?}");
    }

    for seed in 0..SEEDS {
        let plan = FaultPlan {
            duplicate: 0.3,
            reorder_window: 6,
            delay: 0.2,
            delay_max_deliveries: 8,
            crash_after_effect: 0.2,
            ..FaultPlan::chaotic(seed)
        };
        let rows = project(&replies, plan.clone()).await;
        assert_eq!(rows, expected, "seed {seed}, plan {plan:?}");
    }
}
