//! What an order records.

use runnel_core::DomainEvent;
use serde::{Deserialize, Serialize};

use super::line::OrderLine;

/// The schema version `OrderPlaced` payloads are written at. Version 1 had one `address`;
/// version 2 split it into `shipping_address` and `billing_address`; version 3 renamed each
/// item's `price` to `unit_price_cents`. Older payloads are upcast on read (see
/// [`crate::register_upcasters`]).
pub const ORDER_PLACED_SCHEMA_VERSION: u32 = 3;

/// The `Order` aggregate's events. The variant name is the stored event type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum OrderEvent {
    OrderPlaced {
        customer_id: String,
        items: Vec<OrderLine>,
        shipping_address: String,
        billing_address: String,
    },
    OrderConfirmed,
    OrderCancelled {
        reason: String,
    },
    OrderShipped {
        tracking_number: Option<String>,
    },
    OrderDelivered,
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::OrderPlaced { .. } => "OrderPlaced",
            OrderEvent::OrderConfirmed => "OrderConfirmed",
            OrderEvent::OrderCancelled { .. } => "OrderCancelled",
            OrderEvent::OrderShipped { .. } => "OrderShipped",
            OrderEvent::OrderDelivered => "OrderDelivered",
        }
    }

    fn schema_version(event_type: &str) -> u32 {
        match event_type {
            "OrderPlaced" => ORDER_PLACED_SCHEMA_VERSION,
            _ => 1,
        }
    }
}
