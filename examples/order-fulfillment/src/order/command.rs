//! What an order can be asked to do.

use super::line::OrderLine;

/// The `Order` aggregate's commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderCommand {
    /// Place a new order.
    Place {
        customer_id: String,
        items: Vec<OrderLine>,
        shipping_address: String,
        /// Defaults to the shipping address.
        billing_address: Option<String>,
    },
    /// Accept a pending order for fulfillment.
    Confirm,
    /// Call the order off (not once it has shipped).
    Cancel { reason: String },
    /// Hand a confirmed order to the carrier.
    Ship { tracking_number: Option<String> },
    /// Record that a shipped order arrived.
    Deliver,
}
