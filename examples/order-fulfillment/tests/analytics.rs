//! The analytics stream jobs on the service's own event types: `revenue_per_product` and
//! `unpaid_orders` driven by hand in a `TestDriver` with explicit event times, then both
//! on a real SQLite store (`StreamJob::catch_up`), read back through `Analytics`; and the
//! service running both while it fulfills an order.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use order_fulfillment::analytics::{
    revenue_per_product, unpaid_orders, Analytics, PaymentCheck, GRACE, PAYMENT_DEADLINE,
    UNPAID_JOB,
};
use order_fulfillment::fulfillment::payment_ledger::record;
use order_fulfillment::fulfillment::PaymentEvent;
use order_fulfillment::service;
use order_fulfillment::{
    order_repository, register, upcasters, Order, OrderCommand, OrderEvent, OrderLine, PlaceOrder,
};
use runnel::app::App;
use runnel::connect::{open_stores, OpenMode, SettingsInputs, StoreUrl};
use runnel::core::clock::VirtualClock;
use runnel::core::{codec, EventId, Metadata, Position, ReadStream, RecordedEvent, StreamName};
use runnel::stream::{job_status, Output, ResultKind, RunOptions, StreamJob, TestDriver};
use runnel::{CommandBus, QueryBus};

/// An event as the store would have recorded it on `stream` at `at`.
fn recorded<E: runnel::core::DomainEvent>(
    stream: &str,
    event: &E,
    at: DateTime<Utc>,
    position: u64,
) -> RecordedEvent {
    let new = codec::encode(event, Metadata::default()).unwrap();
    RecordedEvent {
        id: EventId::new(),
        stream: StreamName::new(stream).unwrap(),
        revision: 0,
        position: Position(position),
        recorded_at: at,
        event_type: new.event_type,
        schema_version: new.schema_version,
        content_type: new.content_type,
        data: new.data,
        metadata: new.metadata,
    }
}

/// Feeds the driver events in the order given, numbering their positions.
struct Feed {
    driver: TestDriver,
    position: u64,
}

impl Feed {
    fn new(job: runnel::stream::Job) -> Self {
        Feed {
            driver: TestDriver::new(job),
            position: 0,
        }
    }

    fn t(&self, seconds: i64) -> DateTime<Utc> {
        self.driver.epoch() + chrono::Duration::seconds(seconds)
    }

    fn send<E: runnel::core::DomainEvent>(&mut self, stream: &str, event: &E, at_s: i64) {
        self.position += 1;
        let event = recorded(stream, event, self.t(at_s), self.position);
        self.driver.send_event(event).unwrap();
    }
}

fn charged(order: &str, lines: Vec<OrderLine>) -> PaymentEvent {
    PaymentEvent::PaymentCharged {
        order_id: order.into(),
        payment_id: format!("pay-{order}"),
        amount_cents: lines.iter().map(|l| l.total_cents().unwrap()).sum(),
        lines,
    }
}

fn refunded(order: &str, lines: Vec<OrderLine>) -> PaymentEvent {
    PaymentEvent::PaymentRefunded {
        order_id: order.into(),
        payment_id: format!("pay-{order}"),
        amount_cents: lines.iter().map(|l| l.total_cents().unwrap()).sum(),
        lines,
    }
}

fn placed(lines: Vec<OrderLine>) -> OrderEvent {
    OrderEvent::OrderPlaced {
        customer_id: "c-1".into(),
        items: lines,
        shipping_address: "1 Main St".into(),
        billing_address: "1 Main St".into(),
    }
}

/// (minute after the epoch, product, cents) of each output.
fn revenue(feed: &Feed, outputs: &[Output]) -> Vec<(i64, String, i64)> {
    let epoch = feed.driver.epoch().timestamp_millis();
    let mut rows: Vec<(i64, String, i64)> = outputs
        .iter()
        .map(|o| {
            assert_eq!(o.kind, ResultKind::Final, "{o:?}");
            let w = o.window.expect("a windowed result");
            assert_eq!(w.end - w.start, 60_000, "one minute: {o:?}");
            (
                (w.start - epoch) / 60_000,
                o.key.clone(),
                o.value.as_i64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn revenue_per_product_sums_paid_lines_per_minute_once_at_close() {
    let mut feed = Feed::new(revenue_per_product().unwrap());
    let o1 = vec![
        OrderLine::new("p-1", 2, 500),
        OrderLine::new("p-2", 1, 1250),
    ];
    feed.send("Payment-o-1", &charged("o-1", o1.clone()), 10);
    feed.send(
        "Payment-o-2",
        &charged("o-2", vec![OrderLine::new("p-1", 1, 500)]),
        50,
    );
    // Minute 1: o-1 is refunded (its lines come off), o-3 pays.
    feed.send("Payment-o-1", &refunded("o-1", o1), 70);
    feed.send(
        "Payment-o-3",
        &charged("o-3", vec![OrderLine::new("p-2", 2, 1250)]),
        80,
    );
    // The watermark (1:20 less 5 s) is short of minute 0's end plus the grace.
    assert!(
        feed.driver.outputs().is_empty(),
        "{:?}",
        feed.driver.outputs()
    );

    // The payments fall quiet: the watermark follows the clock, both minutes close.
    feed.driver.advance_clock(Duration::from_secs(200));
    let out = feed.driver.take_outputs();
    assert_eq!(
        revenue(&feed, &out),
        [
            (0, "p-1".to_string(), 1500),
            (0, "p-2".to_string(), 1250),
            (1, "p-1".to_string(), -1000),
            (1, "p-2".to_string(), 1250),
        ]
    );
    assert!(
        feed.driver.state_keys().is_empty(),
        "closed minutes leave no state"
    );

    // Emitted once: nothing more as time goes on; a charge for a closed minute goes to the
    // late output, not into a result.
    feed.driver.advance_clock(Duration::from_secs(3600));
    feed.send(
        "Payment-o-4",
        &charged("o-4", vec![OrderLine::new("p-1", 1, 500)]),
        20,
    );
    assert!(feed.driver.take_outputs().is_empty());
    let late = feed.driver.take_late();
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0].key, "p-1");
}

fn checks(outputs: &[Output]) -> Vec<PaymentCheck> {
    outputs
        .iter()
        .map(|o| {
            assert_eq!(o.kind, ResultKind::Record, "{o:?}");
            serde_json::from_value(o.value.clone()).unwrap()
        })
        .collect()
}

#[test]
fn unpaid_orders_are_reported_only_after_the_deadline_and_grace() {
    let mut feed = Feed::new(unpaid_orders(Arc::new(upcasters().unwrap())).unwrap());
    let line = || vec![OrderLine::new("p-1", 1, 500)];
    feed.send("Order-o-1", &placed(line()), 0);
    feed.send("Order-o-2", &placed(line()), 60);
    feed.send("Order-o-3", &placed(line()), 120);
    // o-2 is paid at minute 14: within its 15 minutes, reported paid at once.
    feed.send("Payment-o-2", &charged("o-2", line()), 14 * 60);
    // o-3 is paid at minute 18, 16 minutes after it was placed: too late.
    feed.send("Payment-o-3", &charged("o-3", line()), 18 * 60);
    let paid = checks(&feed.driver.take_outputs());
    assert_eq!(paid.len(), 1, "{paid:?}");
    assert_eq!(paid[0].order_id, "o-2");
    assert!(paid[0].paid);
    assert_eq!(paid[0].payment_id.as_deref(), Some("pay-o-2"));
    assert_eq!(paid[0].paid_at, Some(feed.t(14 * 60)));

    // The orders fall quiet. o-1's deadline plus the grace ends at 15:30: with the
    // watermark one second short of it (the clock less 5 s of out-of-orderness), nothing.
    let deadline = PAYMENT_DEADLINE + GRACE;
    feed.driver.advance_clock(deadline + Duration::from_secs(4));
    assert!(feed.driver.take_outputs().is_empty());
    assert_eq!(
        feed.driver.watermark(),
        Some(feed.t(deadline.as_secs() as i64 - 1))
    );
    // Two seconds later it has passed: o-1 is unpaid, o-3 (placed at 2:00) not yet due.
    feed.driver.advance_clock(Duration::from_secs(2));
    let unpaid = checks(&feed.driver.take_outputs());
    assert_eq!(unpaid.len(), 1, "{unpaid:?}");
    assert_eq!(unpaid[0].order_id, "o-1");
    assert!(!unpaid[0].paid);
    assert_eq!(unpaid[0].placed_at, feed.t(0));
    assert_eq!(unpaid[0].total_cents, 500);

    feed.driver.advance_clock(Duration::from_secs(3600));
    let unpaid = checks(&feed.driver.take_outputs());
    assert_eq!(
        unpaid
            .iter()
            .map(|c| (c.order_id.as_str(), c.paid))
            .collect::<Vec<_>>(),
        [("o-3", false)],
        "o-3's late payment does not count, and a payment without an order is no result"
    );
    assert!(feed.driver.state_keys().is_empty(), "every order settled");
}

#[tokio::test]
async fn both_jobs_on_a_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let stores = open_stores(
        &StoreUrl::sqlite(dir.path().join("orders.db")),
        OpenMode::default(),
    )
    .await
    .unwrap();
    let upcasters = Arc::new(upcasters().unwrap());
    let (commands, queries) = (CommandBus::new(), QueryBus::new());
    register(
        &commands,
        &queries,
        order_repository(Arc::clone(&stores.events), None, Arc::clone(&upcasters)),
    )
    .unwrap();
    let lines_1 = vec![
        OrderLine::new("p-1", 2, 500),
        OrderLine::new("p-2", 1, 1250),
    ];
    for (id, items) in [
        ("o-1", lines_1.clone()),
        ("o-2", vec![OrderLine::new("p-1", 1, 500)]),
    ] {
        commands
            .send(PlaceOrder {
                order_id: id.into(),
                customer_id: "c-1".into(),
                items,
                shipping_address: "1 Main St".into(),
                billing_address: None,
            })
            .await
            .unwrap();
    }
    // o-1 is paid — the payment service's command delivered twice records it once.
    let charge = charged("o-1", lines_1);
    for _ in 0..2 {
        record(stores.events.as_ref(), "charge-o-1", &charge)
            .await
            .unwrap();
    }
    let ledger = stores
        .events
        .read_stream(
            &StreamName::new("Payment-o-1").unwrap(),
            ReadStream::forward(10),
        )
        .await
        .unwrap();
    assert_eq!(ledger.len(), 1);

    // An hour on (the job's clock), with the store quiet: every window and deadline of
    // the events just recorded has passed.
    let options = || RunOptions {
        clock: Arc::new(VirtualClock::at(Utc::now() + chrono::Duration::hours(1))),
        idle_after: Duration::ZERO,
        ..RunOptions::default()
    };
    let revenue = StreamJob::on(&stores, revenue_per_product().unwrap(), options());
    assert_eq!(revenue.catch_up().await.unwrap(), 1, "the one charge");
    let unpaid = StreamJob::on(
        &stores,
        unpaid_orders(Arc::clone(&upcasters)).unwrap(),
        options(),
    );
    assert_eq!(
        unpaid.catch_up().await.unwrap(),
        3,
        "two orders and the charge"
    );

    let analytics = Analytics::open(&stores, &upcasters).await.unwrap();
    // The charge was recorded within one minute: one row per product.
    let mut rows: Vec<(String, i64)> = analytics
        .revenue_per_product(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            assert_eq!(r.window_end - r.window_start, chrono::Duration::minutes(1));
            (r.product_id, r.revenue_cents)
        })
        .collect();
    rows.sort();
    assert_eq!(rows, [("p-1".to_string(), 1000), ("p-2".to_string(), 1250)]);
    let p2 = analytics.revenue_per_product(Some("p-2")).await.unwrap();
    assert_eq!(p2.len(), 1);
    assert_eq!(p2[0].revenue_cents, 1250);

    let unpaid_orders = analytics.unpaid_orders().await.unwrap();
    assert_eq!(
        unpaid_orders
            .iter()
            .map(|c| (c.order_id.as_str(), c.paid, c.total_cents))
            .collect::<Vec<_>>(),
        [("o-2", false, 500)]
    );
}

/// The service runs both jobs as tasks of its application and answers their queries by
/// name: an order fulfilled end to end (placed, charged by the payment service) reaches
/// `unpaid_orders` while the service runs.
#[tokio::test]
async fn the_service_runs_both_jobs_and_answers_their_queries() {
    let dir = tempfile::tempdir().unwrap();
    let settings = SettingsInputs::gather(dir.path())
        .unwrap()
        .db("--db", Some(dir.path().join("service.db")))
        .bus("--bus", Some("embedded".to_string()))
        .resolve()
        .unwrap();
    let mut app = App::connect(&settings).await.unwrap();
    service::wire(&mut app).await.unwrap();
    let names = app.task_names();
    assert!(
        names.contains(&"stream-job:revenue_per_product:v1"),
        "{names:?}"
    );
    assert!(names.contains(&"stream-job:unpaid_orders:v1"), "{names:?}");
    let running = app.start().await.unwrap();
    running
        .commands()
        .execute::<Order>(
            "o-live".to_string(),
            OrderCommand::Place {
                customer_id: "c-1".into(),
                items: vec![OrderLine::new("p-1", 1, 700)],
                shipping_address: "1 Main St".into(),
                billing_address: None,
            },
        )
        .await
        .unwrap();
    // The order and its charge, once the payment service has charged it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = job_status(running.stores(), UNPAID_JOB)
            .await
            .unwrap()
            .expect("the job is registered");
        if status.records >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job did not see the order and its charge: {status:?}"
        );
        let head = running.stores().events.head_position().await.unwrap();
        running
            .stores()
            .events
            .wait_for_events(head, Duration::from_millis(100))
            .await
            .unwrap();
    }
    let unpaid = running
        .queries()
        .dispatch_json(
            "ListUnpaidOrders",
            serde_json::json!({}),
            Metadata::default(),
        )
        .await
        .unwrap();
    assert_eq!(unpaid, serde_json::json!([]), "the order was paid in time");
    let revenue = running
        .queries()
        .dispatch_json(
            "GetRevenuePerProduct",
            serde_json::json!({"product_id": "p-1"}),
            Metadata::default(),
        )
        .await
        .unwrap();
    assert!(revenue.is_array(), "{revenue}");
    let report = running.shutdown(Duration::from_secs(30)).await;
    assert!(report.all_stopped_in_time(), "{report:?}");
}
