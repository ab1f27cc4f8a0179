//! Every rule of the `Order` aggregate, checked on the aggregate alone (no store).

use order_fulfillment::{
    Order, OrderCommand, OrderError, OrderEvent, OrderLine, OrderStatus, ORDER_LINES_MAX,
};
use runnel::Aggregate;

fn place_command(lines: Vec<OrderLine>) -> OrderCommand {
    OrderCommand::Place {
        customer_id: "cust-1".into(),
        items: lines,
        shipping_address: "1 Dock Road".into(),
        billing_address: None,
    }
}

fn run(order: &mut Order, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
    let events = order.handle(command)?;
    for e in &events {
        order.apply(e);
    }
    Ok(events)
}

fn order_in(status: OrderStatus) -> Order {
    let mut order = Order::default();
    run(&mut order, place_command(vec![OrderLine::new("p", 1, 100)])).unwrap();
    let path: &[OrderCommand] = match status {
        OrderStatus::Pending => &[],
        OrderStatus::Confirmed => &[OrderCommand::Confirm],
        OrderStatus::Shipped => &[
            OrderCommand::Confirm,
            OrderCommand::Ship {
                tracking_number: None,
            },
        ],
        OrderStatus::Delivered => &[
            OrderCommand::Confirm,
            OrderCommand::Ship {
                tracking_number: None,
            },
            OrderCommand::Deliver,
        ],
        OrderStatus::Cancelled => &[OrderCommand::Cancel {
            reason: "changed mind".into(),
        }],
    };
    for command in path {
        run(&mut order, command.clone()).unwrap();
    }
    assert_eq!(order.status(), Some(status));
    order
}

const ALL: [OrderStatus; 5] = [
    OrderStatus::Pending,
    OrderStatus::Confirmed,
    OrderStatus::Shipped,
    OrderStatus::Delivered,
    OrderStatus::Cancelled,
];

#[test]
fn placing_records_items_addresses_and_computes_the_total() {
    let mut order = Order::default();
    let events = run(
        &mut order,
        place_command(vec![
            OrderLine::new("apple", 3, 120),
            OrderLine::new("free-sticker", 1, 0),
        ]),
    )
    .unwrap();
    assert!(matches!(events[..], [OrderEvent::OrderPlaced { .. }]));
    assert_eq!(order.status(), Some(OrderStatus::Pending));
    assert_eq!(order.total_cents(), 360);
    assert_eq!(order.items().len(), 2);
    assert_eq!(order.customer_id(), "cust-1");
    assert_eq!(
        order.billing_address(),
        "1 Dock Road",
        "billing defaults to shipping"
    );
}

#[test]
fn an_order_cannot_be_placed_twice() {
    let mut order = order_in(OrderStatus::Pending);
    let err = run(&mut order, place_command(vec![OrderLine::new("p", 1, 1)])).unwrap_err();
    assert_eq!(err, OrderError::AlreadyPlaced);
}

#[test]
fn an_order_needs_at_least_one_item() {
    let err = Order::default().handle(place_command(vec![])).unwrap_err();
    assert_eq!(err, OrderError::NoItems);
}

#[test]
fn quantities_must_be_positive() {
    let err = Order::default()
        .handle(place_command(vec![
            OrderLine::new("ok", 1, 1),
            OrderLine::new("zero", 0, 1),
        ]))
        .unwrap_err();
    assert_eq!(
        err,
        OrderError::InvalidQuantity {
            product_id: "zero".into()
        }
    );
}

#[test]
fn prices_may_not_be_negative() {
    let err = Order::default()
        .handle(place_command(vec![OrderLine::new("refund", 1, -5)]))
        .unwrap_err();
    assert_eq!(
        err,
        OrderError::NegativePrice {
            product_id: "refund".into(),
            unit_price_cents: -5
        }
    );
}

#[test]
fn an_overflowing_total_is_refused() {
    let err = Order::default()
        .handle(place_command(vec![OrderLine::new(
            "a",
            u32::MAX,
            i64::MAX / 2,
        )]))
        .unwrap_err();
    assert_eq!(err, OrderError::TotalTooLarge);
}

#[test]
fn too_many_lines_are_refused() {
    let lines = (0..=ORDER_LINES_MAX)
        .map(|i| OrderLine::new(format!("p{i}"), 1, 1))
        .collect();
    let err = Order::default().handle(place_command(lines)).unwrap_err();
    assert!(matches!(err, OrderError::TooManyItems { .. }), "{err:?}");
}

#[test]
fn customer_product_and_shipping_address_are_required() {
    let mut cmd = place_command(vec![OrderLine::new("p", 1, 1)]);
    if let OrderCommand::Place { customer_id, .. } = &mut cmd {
        *customer_id = " ".into();
    }
    assert_eq!(
        Order::default().handle(cmd).unwrap_err(),
        OrderError::MissingCustomer
    );
    assert_eq!(
        Order::default()
            .handle(place_command(vec![OrderLine::new("", 1, 1)]))
            .unwrap_err(),
        OrderError::MissingProductId { index: 0 }
    );
    let mut cmd = place_command(vec![OrderLine::new("p", 1, 1)]);
    if let OrderCommand::Place {
        shipping_address, ..
    } = &mut cmd
    {
        shipping_address.clear();
    }
    assert_eq!(
        Order::default().handle(cmd).unwrap_err(),
        OrderError::MissingShippingAddress
    );
}

#[test]
fn commands_on_an_unplaced_order_are_not_found() {
    for command in [
        OrderCommand::Confirm,
        OrderCommand::Cancel { reason: "x".into() },
        OrderCommand::Ship {
            tracking_number: None,
        },
        OrderCommand::Deliver,
    ] {
        assert_eq!(
            Order::default().handle(command).unwrap_err(),
            OrderError::NotFound
        );
    }
}

#[test]
fn only_a_pending_order_can_be_confirmed() {
    for status in ALL {
        let result = order_in(status).handle(OrderCommand::Confirm);
        if status == OrderStatus::Pending {
            assert_eq!(result.unwrap(), vec![OrderEvent::OrderConfirmed]);
        } else {
            assert_eq!(result.unwrap_err(), OrderError::CannotConfirm { status });
        }
    }
}

#[test]
fn shipped_delivered_or_cancelled_orders_cannot_be_cancelled() {
    for status in ALL {
        let result = order_in(status).handle(OrderCommand::Cancel {
            reason: "too slow".into(),
        });
        match status {
            OrderStatus::Pending | OrderStatus::Confirmed => {
                assert_eq!(
                    result.unwrap(),
                    vec![OrderEvent::OrderCancelled {
                        reason: "too slow".into()
                    }]
                )
            }
            _ => assert_eq!(result.unwrap_err(), OrderError::CannotCancel { status }),
        }
    }
}

#[test]
fn a_cancellation_needs_a_reason() {
    let err = order_in(OrderStatus::Pending)
        .handle(OrderCommand::Cancel { reason: "".into() })
        .unwrap_err();
    assert_eq!(err, OrderError::MissingCancelReason);
}

#[test]
fn only_a_confirmed_order_can_be_shipped() {
    for status in ALL {
        let result = order_in(status).handle(OrderCommand::Ship {
            tracking_number: Some("TRK1".into()),
        });
        if status == OrderStatus::Confirmed {
            assert_eq!(
                result.unwrap(),
                vec![OrderEvent::OrderShipped {
                    tracking_number: Some("TRK1".into())
                }]
            );
        } else {
            assert_eq!(result.unwrap_err(), OrderError::CannotShip { status });
        }
    }
}

#[test]
fn only_a_shipped_order_can_be_delivered() {
    for status in ALL {
        let result = order_in(status).handle(OrderCommand::Deliver);
        if status == OrderStatus::Shipped {
            assert_eq!(result.unwrap(), vec![OrderEvent::OrderDelivered]);
        } else {
            assert_eq!(result.unwrap_err(), OrderError::CannotDeliver { status });
        }
    }
}

#[test]
fn error_messages_say_what_is_wrong() {
    assert_eq!(
        OrderError::CannotShip {
            status: OrderStatus::Pending
        }
        .to_string(),
        "only a confirmed order can be shipped; this one is pending"
    );
}
