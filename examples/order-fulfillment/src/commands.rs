//! The order commands on the [`runnel::CommandBus`]. Each names its order and converts to
//! an [`OrderCommand`]; each returns the [`ExecuteOutcome`] of running it.
//!
//! Unknown JSON fields are refused so that a misspelt optional field is a
//! [`runnel::DispatchError::InvalidPayload`] rather than silently ignored.

use runnel::{AggregateCommand, Command, ExecuteOutcome};
use serde::{Deserialize, Serialize};

use crate::order::{Order, OrderCommand, OrderEvent, OrderLine};

/// Place a new order.
///
/// JSON: `{"order_id": "o-1", "customer_id": "c-1", "items": [{"product_id": "p-1",
/// "quantity": 2, "unit_price_cents": 1250}], "shipping_address": "1 Main St"}`
/// (`billing_address` is optional and defaults to the shipping address).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    pub order_id: String,
    pub customer_id: String,
    pub items: Vec<OrderLine>,
    pub shipping_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_address: Option<String>,
}

/// Confirm a pending order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmOrder {
    pub order_id: String,
}

/// Cancel a pending or confirmed order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOrder {
    pub order_id: String,
    pub reason: String,
}

/// Ship a confirmed order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipOrder {
    pub order_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
}

/// Record the delivery of a shipped order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliverOrder {
    pub order_id: String,
}

/// Implements [`Command`] and [`AggregateCommand`] for one bus command.
macro_rules! order_command {
    ($ty:ident, |$cmd:ident| $convert:expr) => {
        impl Command for $ty {
            const NAME: &'static str = stringify!($ty);
            type Output = ExecuteOutcome<OrderEvent>;
        }

        impl AggregateCommand for $ty {
            type Aggregate = Order;

            fn aggregate_id(&self) -> String {
                self.order_id.clone()
            }

            fn into_aggregate_command(self) -> OrderCommand {
                let $cmd = self;
                $convert
            }
        }
    };
}

order_command!(PlaceOrder, |c| OrderCommand::Place {
    customer_id: c.customer_id,
    items: c.items,
    shipping_address: c.shipping_address,
    billing_address: c.billing_address,
});
order_command!(ConfirmOrder, |_c| OrderCommand::Confirm);
order_command!(CancelOrder, |c| OrderCommand::Cancel { reason: c.reason });
order_command!(ShipOrder, |c| OrderCommand::Ship {
    tracking_number: c.tracking_number
});
order_command!(DeliverOrder, |_c| OrderCommand::Deliver);
