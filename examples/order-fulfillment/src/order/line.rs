//! One line of an order.

use serde::{Deserialize, Serialize};

/// Most lines one order may hold. Bounds the event size and the work of every load.
pub const ORDER_LINES_MAX: usize = 100;

/// A product, how many of it, and the price of one, in cents.
///
/// The price is signed so that a negative price in a request reaches the aggregate and is
/// refused with [`crate::OrderError::NegativePrice`] instead of failing to parse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    pub product_id: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

impl OrderLine {
    /// A line of `quantity` × `product_id` at `unit_price_cents` each.
    pub fn new(product_id: impl Into<String>, quantity: u32, unit_price_cents: i64) -> Self {
        OrderLine {
            product_id: product_id.into(),
            quantity,
            unit_price_cents,
        }
    }

    /// Quantity × unit price, `None` on overflow.
    pub fn total_cents(&self) -> Option<i64> {
        self.unit_price_cents.checked_mul(i64::from(self.quantity))
    }
}
