//! What an order can be asked to do.

use serde::{Deserialize, Serialize};

use super::line::OrderLine;

/// The `Order` aggregate's commands. They are dispatched on the command bus as they are
/// (`CommandBus::execute::<Order>`), and by name as `Order` with
/// JSON such as `{"id": "o-1", "command": "Confirm"}` (serde's externally tagged form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum OrderCommand {
    /// Place a new order.
    Place {
        customer_id: String,
        items: Vec<OrderLine>,
        shipping_address: String,
        /// Defaults to the shipping address.
        #[serde(default)]
        billing_address: Option<String>,
    },
    /// Accept a pending order for fulfillment.
    Confirm,
    /// Call the order off (not once it has shipped).
    Cancel { reason: String },
    /// Hand a confirmed order to the carrier.
    Ship {
        #[serde(default)]
        tracking_number: Option<String>,
    },
    /// Record that a shipped order arrived.
    Deliver,
}
