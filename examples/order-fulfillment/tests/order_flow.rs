//! The order application end to end over the buses and the repository: the happy path,
//! racing commands, snapshots, upcasting of old events, metadata propagation and dispatch
//! by name.

mod common;

use std::sync::Arc;

use common::*;
use order_fulfillment::{
    order_repository, CancelOrder, ConfirmOrder, DeliverOrder, GetOrder, OrderError, OrderEvent,
    OrderStatus, OrderSummary, ShipOrder,
};
use runnel::core::{
    CodecError, EventStore, ExpectedRevision, Metadata, NewEvent, SnapshotStore, StreamName,
};
use runnel::{CommandEnvelope, DispatchError, Repository, RepositoryError, RetryPolicy, Upcasters};
use serde_json::json;

fn order_error(err: &DispatchError) -> Option<&OrderError> {
    err.downcast_handler_error::<RepositoryError<OrderError>>()?
        .domain()
}

#[tokio::test]
async fn order_goes_from_placed_to_delivered() {
    let app = app();
    let placed = app.commands.send(place("o-1")).await.unwrap();
    assert_eq!(placed.revision, Some(1));
    assert!(matches!(
        placed.events[..],
        [OrderEvent::OrderPlaced { .. }]
    ));
    app.commands
        .send(ConfirmOrder {
            order_id: "o-1".into(),
        })
        .await
        .unwrap();
    app.commands
        .send(ShipOrder {
            order_id: "o-1".into(),
            tracking_number: Some("TRK-9".into()),
        })
        .await
        .unwrap();
    let delivered = app
        .commands
        .send(DeliverOrder {
            order_id: "o-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(delivered.revision, Some(4));

    let summary = app
        .queries
        .dispatch(GetOrder {
            order_id: "o-1".into(),
        })
        .await
        .unwrap()
        .expect("the order exists");
    assert_eq!(summary.status, OrderStatus::Delivered);
    assert_eq!(summary.total_cents, 3 * 120 + 250);
    assert_eq!(summary.tracking_number.as_deref(), Some("TRK-9"));
    assert_eq!(summary.revision, 4);
    assert_eq!(
        types(&stored(&app.store, "Order-o-1").await),
        [
            "OrderPlaced",
            "OrderConfirmed",
            "OrderShipped",
            "OrderDelivered"
        ]
    );
}

#[tokio::test]
async fn refused_command_is_a_typed_error_and_stores_nothing() {
    let app = app();
    app.commands.send(place("o-1")).await.unwrap();
    let err = app
        .commands
        .send(ShipOrder {
            order_id: "o-1".into(),
            tracking_number: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        order_error(&err),
        Some(&OrderError::CannotShip {
            status: OrderStatus::Pending
        })
    );
    let err = app.commands.send(place("o-1")).await.unwrap_err();
    assert_eq!(order_error(&err), Some(&OrderError::AlreadyPlaced));
    assert_eq!(stored(&app.store, "Order-o-1").await.len(), 1);
}

#[tokio::test]
async fn cancel_racing_a_confirm_is_retried_and_both_land() {
    let app = app();
    app.commands.send(place("o-1")).await.unwrap();
    // The cancel loads the pending order; before its append lands, a confirm commits.
    let rival = app.commands.clone();
    app.hooked.hook().before_next_append(Box::pin(async move {
        rival
            .send(ConfirmOrder {
                order_id: "o-1".into(),
            })
            .await
            .unwrap();
    }));
    let outcome = app
        .commands
        .send(CancelOrder {
            order_id: "o-1".into(),
            reason: "found it cheaper".into(),
        })
        .await
        .unwrap();
    assert_eq!(outcome.attempts, 2, "the conflict was retried once");
    assert_eq!(outcome.revision, Some(3));
    assert_eq!(
        types(&stored(&app.store, "Order-o-1").await),
        ["OrderPlaced", "OrderConfirmed", "OrderCancelled"]
    );
}

#[tokio::test]
async fn confirm_racing_a_cancel_is_refused_after_reloading() {
    let app = app();
    app.commands.send(place("o-1")).await.unwrap();
    let rival = app.commands.clone();
    app.hooked.hook().before_next_append(Box::pin(async move {
        rival
            .send(CancelOrder {
                order_id: "o-1".into(),
                reason: "out of budget".into(),
            })
            .await
            .unwrap();
    }));
    let err = app
        .commands
        .send(ConfirmOrder {
            order_id: "o-1".into(),
        })
        .await
        .unwrap_err();
    // The retry re-ran the rules on the fresh state instead of blindly appending.
    assert_eq!(
        order_error(&err),
        Some(&OrderError::CannotConfirm {
            status: OrderStatus::Cancelled
        })
    );
    assert_eq!(
        types(&stored(&app.store, "Order-o-1").await),
        ["OrderPlaced", "OrderCancelled"]
    );
}

#[tokio::test]
async fn snapshot_round_trip_loads_the_same_order() {
    let store = runnel_testkit::InMemoryStore::new();
    let upcasters = Arc::new(order_fulfillment::upcasters().unwrap());
    let snapshots: Arc<dyn SnapshotStore> = Arc::new(store.clone());
    let repo = order_repository(Arc::new(store.clone()), Some(snapshots), upcasters.clone())
        .with_snapshot_every(2);
    let (commands, queries) = (runnel::CommandBus::new(), runnel::QueryBus::new());
    order_fulfillment::register(&commands, &queries, repo.clone()).unwrap();
    commands.send(place("o-1")).await.unwrap();
    commands
        .send(ConfirmOrder {
            order_id: "o-1".into(),
        })
        .await
        .unwrap();
    commands
        .send(ShipOrder {
            order_id: "o-1".into(),
            tracking_number: None,
        })
        .await
        .unwrap();

    let snapshot = store
        .load_snapshot(&StreamName::new("Order-o-1").unwrap())
        .await
        .unwrap()
        .expect("a snapshot at revision 2");
    assert_eq!(snapshot.revision, 2);
    let from_snapshot = repo.load("o-1").await.unwrap();
    let replayed = Repository::new(Arc::new(store.clone()))
        .with_upcasters(upcasters)
        .load("o-1")
        .await
        .unwrap();
    assert_eq!(from_snapshot, replayed);
    assert_eq!(from_snapshot.state.status(), Some(OrderStatus::Shipped));
    assert_eq!(from_snapshot.revision, Some(3));
}

/// `OrderPlaced` as the first release wrote it: one address, prices in `price`.
fn order_placed_v1() -> NewEvent {
    NewEvent::json(
        "OrderPlaced",
        &json!({
            "customer_id": "cust-old",
            "items": [{"product_id": "sku-1", "quantity": 2, "price": 999}],
            "address": "7 Old Lane",
        }),
    )
    .with_schema_version(1)
}

async fn seed_legacy_order(store: &dyn EventStore) {
    store
        .append(
            &StreamName::new("Order-legacy").unwrap(),
            ExpectedRevision::NoStream,
            vec![order_placed_v1()],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn v1_order_placed_is_upcast_to_the_current_schema_on_load() {
    let app = app();
    seed_legacy_order(&app.store).await;
    let summary = app
        .queries
        .dispatch(GetOrder {
            order_id: "legacy".into(),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.shipping_address, "7 Old Lane");
    assert_eq!(summary.billing_address, "7 Old Lane");
    assert_eq!(summary.items[0].unit_price_cents, 999);
    assert_eq!(summary.total_cents, 1998);
    assert_eq!(summary.status, OrderStatus::Pending);
    // An upcast order takes new commands like any other.
    let confirmed = app
        .commands
        .send(ConfirmOrder {
            order_id: "legacy".into(),
        })
        .await
        .unwrap();
    assert_eq!(confirmed.revision, Some(2));
}

#[tokio::test]
async fn v2_order_placed_takes_only_the_last_step() {
    let app = app();
    let v2 = NewEvent::json(
        "OrderPlaced",
        &json!({
            "customer_id": "c",
            "items": [{"product_id": "sku-1", "quantity": 1, "price": 5}],
            "shipping_address": "ship here",
            "billing_address": "bill there",
        }),
    )
    .with_schema_version(2);
    app.store
        .append(
            &StreamName::new("Order-v2").unwrap(),
            ExpectedRevision::NoStream,
            vec![v2],
        )
        .await
        .unwrap();
    let loaded = app.repository.load("v2").await.unwrap();
    assert_eq!(loaded.state.billing_address(), "bill there");
    assert_eq!(loaded.state.total_cents(), 5);
}

#[tokio::test]
async fn v1_order_placed_without_upcasters_is_unsupported_schema_version() {
    let store = runnel_testkit::InMemoryStore::new();
    seed_legacy_order(&store).await;
    let repo = order_repository(Arc::new(store), None, Arc::new(Upcasters::new()));
    let err = repo.load("legacy").await.unwrap_err();
    assert!(
        matches!(
            err,
            RepositoryError::Codec(CodecError::UnsupportedSchemaVersion {
                found: 1,
                expected: 3,
                ..
            })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn correlation_and_causation_reach_every_stored_event() {
    let app = app();
    let place = CommandEnvelope::new(place("o-1"))
        .with_correlation_id("checkout-77")
        .with_user_id("alice");
    let place_id = place.command_id.clone();
    app.commands.dispatch(place).await.unwrap();
    let confirm = CommandEnvelope::new(ConfirmOrder {
        order_id: "o-1".into(),
    })
    .with_correlation_id("checkout-77")
    .with_user_id("saga:fulfillment");
    let confirm_id = confirm.command_id.clone();
    app.commands.dispatch(confirm).await.unwrap();

    let events = stored(&app.store, "Order-o-1").await;
    for e in &events {
        assert_eq!(e.metadata.correlation_id.as_deref(), Some("checkout-77"));
    }
    assert_eq!(
        events[0].metadata.causation_id.as_deref(),
        Some(place_id.as_str())
    );
    assert_eq!(events[0].metadata.user_id.as_deref(), Some("alice"));
    assert_eq!(
        events[1].metadata.causation_id.as_deref(),
        Some(confirm_id.as_str())
    );
    assert_eq!(
        events[1].metadata.user_id.as_deref(),
        Some("saga:fulfillment")
    );
}

#[tokio::test]
async fn commands_and_queries_dispatch_by_name_with_json() {
    let app = app();
    assert_eq!(
        app.commands.names(),
        [
            "CancelOrder",
            "ConfirmOrder",
            "DeliverOrder",
            "PlaceOrder",
            "ShipOrder"
        ]
    );
    assert_eq!(app.queries.names(), ["GetOrder"]);
    let metadata = Metadata::default().with_correlation_id("http-1");
    let out = app
        .commands
        .dispatch_json(
            "PlaceOrder",
            json!({
                "order_id": "o-9",
                "customer_id": "cust-2",
                "items": [{"product_id": "sku-1", "quantity": 4, "unit_price_cents": 25}],
                "shipping_address": "9 Quay",
            }),
            metadata.clone(),
        )
        .await
        .unwrap();
    assert_eq!(out["stream"], "Order-o-9");
    assert_eq!(out["revision"], 1);
    assert!(out["events"][0]["OrderPlaced"].is_object());
    app.commands
        .dispatch_json("ConfirmOrder", json!({"order_id": "o-9"}), metadata)
        .await
        .unwrap();

    let summary = app
        .queries
        .dispatch_json("GetOrder", json!({"order_id": "o-9"}), Metadata::default())
        .await
        .unwrap();
    let summary: OrderSummary = serde_json::from_value(summary).unwrap();
    assert_eq!(summary.status, OrderStatus::Confirmed);
    assert_eq!(summary.total_cents, 100);
    let missing = app
        .queries
        .dispatch_json("GetOrder", json!({"order_id": "nope"}), Metadata::default())
        .await
        .unwrap();
    assert_eq!(missing, json!(null));
}

#[tokio::test]
async fn unknown_command_name_is_a_no_handler_error() {
    let app = app();
    let err = app
        .commands
        .dispatch_json(
            "RefundOrder",
            json!({"order_id": "o-1"}),
            Metadata::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DispatchError::NoHandler { name } if name == "RefundOrder"),
        "{err:?}"
    );
}

#[tokio::test]
async fn malformed_json_is_rejected_and_nothing_is_stored() {
    let app = app();
    for payload in [
        json!({"order_id": "o-1"}),
        json!({"order_id": "o-1", "customer_id": "c", "items": [], "shipping_address": "x", "colour": "red"}),
        json!({"order_id": "o-1", "customer_id": "c", "items": [{"product_id": "p", "quantity": -1, "unit_price_cents": 1}], "shipping_address": "x"}),
    ] {
        let err = app
            .commands
            .dispatch_json("PlaceOrder", payload, Metadata::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, DispatchError::InvalidPayload { .. }),
            "{err:?}"
        );
    }
    assert!(stored(&app.store, "Order-o-1").await.is_empty());
}

#[tokio::test]
async fn order_rules_reject_bad_json_values_with_domain_errors() {
    let app = app();
    let err = app
        .commands
        .dispatch_json(
            "PlaceOrder",
            json!({"order_id": "o-1", "customer_id": "c", "items": [], "shipping_address": "x"}),
            Metadata::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(order_error(&err), Some(&OrderError::NoItems));
    assert_eq!(err.to_string(), "the order has no items; add at least one");
}

#[tokio::test]
async fn heavily_contended_order_gives_up_with_a_typed_error() {
    let store = runnel_testkit::InMemoryStore::new();
    let hooked = hooked_store(store.clone());
    let repo = order_repository(
        Arc::new(hooked.clone()),
        None,
        Arc::new(order_fulfillment::upcasters().unwrap()),
    )
    .with_retry_policy(RetryPolicy::no_retry());
    let (commands, queries) = (runnel::CommandBus::new(), runnel::QueryBus::new());
    order_fulfillment::register(&commands, &queries, repo).unwrap();
    commands.send(place("o-1")).await.unwrap();
    let rival = commands.clone();
    hooked.hook().before_next_append(Box::pin(async move {
        rival
            .send(ConfirmOrder {
                order_id: "o-1".into(),
            })
            .await
            .unwrap();
    }));
    let err = commands
        .send(CancelOrder {
            order_id: "o-1".into(),
            reason: "r".into(),
        })
        .await
        .unwrap_err();
    let repo_err = err
        .downcast_handler_error::<RepositoryError<OrderError>>()
        .unwrap();
    assert!(
        matches!(
            repo_err,
            RepositoryError::ConflictRetriesExhausted { attempts: 1, .. }
        ),
        "{repo_err:?}"
    );
}
