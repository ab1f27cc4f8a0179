//! The payment service under delivery faults (`runnel_testkit::faultkit`): duplicated,
//! reordered and delayed commands, and crashes between the charge and the ack. Whatever
//! the schedule, each order is charged once in the ledger and every command is answered,
//! with the same answer each time it is asked.

use std::collections::BTreeMap;
use std::sync::Arc;

use order_fulfillment::fulfillment::{service_handler, Failures, PAYMENT_CATEGORY};
use runnel::connect::{open_stores, OpenMode, StoreUrl};
use runnel::core::{Message, ReadStream, StreamName};
use runnel::saga::{IDEMPOTENCY_KEY_HEADER, REPLY_TO_HEADER};
use runnel_testkit::faultkit::{FaultKit, FaultPlan};

const ORDERS: usize = 12;
const SEEDS: u64 = 8;

fn charge(order: usize) -> Message {
    Message::json(
        "ChargePayment",
        &serde_json::json!({
            "order_id": format!("o{order}"),
            "total_cents": 1_000 + order as i64,
            "items": [{"product_id": "tea", "quantity": 1, "unit_price_cents": 1_000 + order as i64}],
        }),
    )
    .with_id(format!("charge-o{order}"))
    .with_key(format!("Order-o{order}"))
    .with_header(REPLY_TO_HEADER, "sagas.fulfillment.replies")
    .with_header(IDEMPOTENCY_KEY_HEADER, format!("fulfillment/o{order}/charge"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_service_charges_each_order_once_under_delivery_faults() {
    for seed in 0..SEEDS {
        let dir = tempfile::tempdir().unwrap();
        let stores = open_stores(
            &StoreUrl::sqlite(dir.path().join("payments.db")),
            OpenMode::default(),
        )
        .await
        .unwrap();
        let handler = service_handler(
            "payments",
            Arc::clone(&stores.dedup),
            Arc::clone(&stores.events),
            Failures::default(),
        )
        .unwrap();
        let messages = (0..ORDERS).map(charge).collect();
        let plan = FaultPlan::chaotic(seed);
        let report = FaultKit::new(plan).run(handler, messages).await.unwrap();
        assert!(report.failed.is_empty(), "seed {seed}: {:?}", report.failed);
        assert!(
            report.deliveries > ORDERS,
            "seed {seed}: the plan injected no fault"
        );

        // Charged once per order, whatever was delivered twice or after a lost ack.
        for order in 0..ORDERS {
            let stream = StreamName::new(format!("{PAYMENT_CATEGORY}-o{order}")).unwrap();
            let events = stores
                .events
                .read_stream(&stream, ReadStream::forward(100))
                .await
                .unwrap();
            let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
            assert_eq!(types, vec!["PaymentCharged"], "seed {seed}, order o{order}");
        }

        // Every command answered, and every answer to one command the same.
        let mut answers: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        for (_, reply) in &report.published {
            assert_eq!(reply.event_type, "PaymentCharged", "seed {seed}");
            let data: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
            let id = data["payment_id"].as_str().unwrap().to_string();
            if let Some(before) = answers.insert(id.clone(), data.clone()) {
                assert_eq!(before, data, "seed {seed}: {id} answered differently");
            }
        }
        assert_eq!(answers.len(), ORDERS, "seed {seed}: every order answered");
    }
}
