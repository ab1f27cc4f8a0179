//! The `enriched_orders` projection: one row per order and one per order line, holding ids
//! only — the names come from `customers` and `products` when the order is read.

use std::sync::Arc;

use runnel::core::projection::Dialect;
use runnel::core::{EventFilter, RecordedEvent};
use runnel::projection::{Projection, ProjectionError, Writes};
use runnel::{Aggregate, Upcasters};

use crate::order::{Order, OrderEvent, OrderLine, OrderStatus};

/// The projection's name, and its order table (a view on the current version).
pub const ENRICHED_ORDERS: &str = "enriched_orders";
/// The projection's line table.
pub const ENRICHED_ORDER_LINES: &str = "enriched_order_lines";

/// Keeps `enriched_orders` (status, totals, the customer's id) and `enriched_order_lines`
/// (SKU, quantity and the price each line was ordered at) from the `Order-{id}` streams,
/// upcasting old `OrderPlaced` payloads on the way.
pub struct OrderSummariesProjection {
    upcasters: Arc<Upcasters>,
}

impl OrderSummariesProjection {
    /// `upcasters` should hold [`crate::register_upcasters`].
    pub fn new(upcasters: Arc<Upcasters>) -> Self {
        OrderSummariesProjection { upcasters }
    }
}

fn position(event: &RecordedEvent) -> Result<i64, ProjectionError> {
    i64::try_from(event.position.get()).map_err(|_| {
        ProjectionError::Failed(format!(
            "position {} does not fit a BIGINT column",
            event.position.get()
        ))
    })
}

impl Projection for OrderSummariesProjection {
    fn name(&self) -> &str {
        ENRICHED_ORDERS
    }

    fn tables(&self) -> Vec<String> {
        vec![ENRICHED_ORDERS.into(), ENRICHED_ORDER_LINES.into()]
    }

    fn schema(&self, _dialect: Dialect) -> Vec<String> {
        vec![
            "CREATE TABLE {enriched_orders} (
                order_id TEXT PRIMARY KEY,
                customer_id TEXT NOT NULL,
                status TEXT NOT NULL,
                total_cents BIGINT NOT NULL,
                item_count BIGINT NOT NULL,
                placed_position BIGINT NOT NULL,
                last_position BIGINT NOT NULL
             )"
            .into(),
            "CREATE INDEX {enriched_orders}_by_customer \
             ON {enriched_orders} (customer_id, placed_position)"
                .into(),
            "CREATE TABLE {enriched_order_lines} (
                order_id TEXT NOT NULL,
                line_no BIGINT NOT NULL,
                sku TEXT NOT NULL,
                quantity BIGINT NOT NULL,
                unit_price_cents BIGINT NOT NULL,
                PRIMARY KEY (order_id, line_no)
             )"
            .into(),
        ]
    }

    fn filter(&self) -> EventFilter {
        EventFilter {
            categories: vec![Order::TYPE.into()],
            event_types: [
                "OrderPlaced",
                "OrderConfirmed",
                "OrderCancelled",
                "OrderShipped",
                "OrderDelivered",
            ]
            .map(String::from)
            .to_vec(),
        }
    }

    fn apply(&self, event: &RecordedEvent, out: &mut Writes) -> Result<(), ProjectionError> {
        let order_id = event.stream.id();
        let at = position(event)?;
        let status = match self.upcasters.decode::<OrderEvent>(event)? {
            OrderEvent::OrderPlaced {
                customer_id, items, ..
            } => {
                // The aggregate refused overflowing totals; saturate rather than fail on an
                // event written by anything else.
                let total: i64 = items
                    .iter()
                    .map(|l| l.total_cents().unwrap_or(i64::MAX))
                    .fold(0i64, i64::saturating_add);
                let count: i64 = items.iter().map(|l| i64::from(l.quantity)).sum();
                out.execute(
                    "INSERT INTO {enriched_orders} (order_id, customer_id, status, total_cents, \
                     item_count, placed_position, last_position) \
                     VALUES ($1, $2, $3, $4, $5, $6, $6)",
                    vec![
                        order_id.into(),
                        customer_id.into(),
                        OrderStatus::Pending.as_str().into(),
                        total.into(),
                        count.into(),
                        at.into(),
                    ],
                );
                for (
                    line_no,
                    OrderLine {
                        product_id,
                        quantity,
                        unit_price_cents,
                    },
                ) in items.into_iter().enumerate()
                {
                    out.execute(
                        "INSERT INTO {enriched_order_lines} \
                         (order_id, line_no, sku, quantity, unit_price_cents) \
                         VALUES ($1, $2, $3, $4, $5)",
                        vec![
                            order_id.into(),
                            (line_no as i64).into(),
                            product_id.into(),
                            quantity.into(),
                            unit_price_cents.into(),
                        ],
                    );
                }
                return Ok(());
            }
            OrderEvent::OrderConfirmed => OrderStatus::Confirmed,
            OrderEvent::OrderCancelled { .. } => OrderStatus::Cancelled,
            OrderEvent::OrderShipped { .. } => OrderStatus::Shipped,
            OrderEvent::OrderDelivered => OrderStatus::Delivered,
        };
        out.execute(
            "UPDATE {enriched_orders} SET status = $2, last_position = $3 WHERE order_id = $1",
            vec![order_id.into(), status.as_str().into(), at.into()],
        );
        Ok(())
    }
}
