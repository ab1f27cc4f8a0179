//! The `Order` aggregate: its state and its rules.

use runnel::Aggregate;
use serde::{Deserialize, Serialize};

use super::command::OrderCommand;
use super::error::OrderError;
use super::event::OrderEvent;
use super::line::{OrderLine, ORDER_LINES_MAX};
use super::status::OrderStatus;

/// An order's state, folded from its events. The default is "not placed yet".
///
/// The rules: an order is placed once, with at least one item, positive quantities and
/// non-negative prices; only a pending order can be confirmed; only a confirmed order can
/// be shipped; only a shipped order can be delivered; a shipped, delivered or cancelled
/// order cannot be cancelled. The total is computed from the items.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    status: Option<OrderStatus>,
    customer_id: String,
    items: Vec<OrderLine>,
    total_cents: i64,
    shipping_address: String,
    billing_address: String,
    cancel_reason: Option<String>,
    tracking_number: Option<String>,
}

impl Order {
    /// Where the order is (`None`: not placed).
    pub fn status(&self) -> Option<OrderStatus> {
        self.status
    }

    pub fn customer_id(&self) -> &str {
        &self.customer_id
    }

    pub fn items(&self) -> &[OrderLine] {
        &self.items
    }

    /// The sum of quantity × unit price over all items, in cents.
    pub fn total_cents(&self) -> i64 {
        self.total_cents
    }

    pub fn shipping_address(&self) -> &str {
        &self.shipping_address
    }

    pub fn billing_address(&self) -> &str {
        &self.billing_address
    }

    /// Why the order was cancelled, if it was.
    pub fn cancel_reason(&self) -> Option<&str> {
        self.cancel_reason.as_deref()
    }

    /// The carrier's tracking number, once shipped (if the carrier gave one).
    pub fn tracking_number(&self) -> Option<&str> {
        self.tracking_number.as_deref()
    }

    fn placed_status(&self) -> Result<OrderStatus, OrderError> {
        self.status.ok_or(OrderError::NotFound)
    }

    fn place(
        &self,
        customer_id: String,
        lines: Vec<OrderLine>,
        shipping_address: String,
        billing_address: Option<String>,
    ) -> Result<Vec<OrderEvent>, OrderError> {
        if self.status.is_some() {
            return Err(OrderError::AlreadyPlaced);
        }
        if customer_id.trim().is_empty() {
            return Err(OrderError::MissingCustomer);
        }
        if lines.is_empty() {
            return Err(OrderError::NoItems);
        }
        if lines.len() > ORDER_LINES_MAX {
            return Err(OrderError::TooManyItems {
                count: lines.len(),
                limit: ORDER_LINES_MAX,
            });
        }
        for (index, line) in lines.iter().enumerate() {
            if line.product_id.trim().is_empty() {
                return Err(OrderError::MissingProductId { index });
            }
            if line.quantity == 0 {
                return Err(OrderError::InvalidQuantity {
                    product_id: line.product_id.clone(),
                });
            }
            if line.unit_price_cents < 0 {
                return Err(OrderError::NegativePrice {
                    product_id: line.product_id.clone(),
                    unit_price_cents: line.unit_price_cents,
                });
            }
        }
        // Checked here so that `apply`, which must not fail, never meets an overflow.
        total_cents(&lines).ok_or(OrderError::TotalTooLarge)?;
        if shipping_address.trim().is_empty() {
            return Err(OrderError::MissingShippingAddress);
        }
        let billing_address = billing_address
            .filter(|a| !a.trim().is_empty())
            .unwrap_or_else(|| shipping_address.clone());
        Ok(vec![OrderEvent::OrderPlaced {
            customer_id,
            items: lines,
            shipping_address,
            billing_address,
        }])
    }
}

/// The order total, `None` on overflow.
fn total_cents(lines: &[OrderLine]) -> Option<i64> {
    lines
        .iter()
        .try_fold(0i64, |sum, line| sum.checked_add(line.total_cents()?))
}

impl Aggregate for Order {
    const TYPE: &'static str = "Order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place {
                customer_id,
                items,
                shipping_address,
                billing_address,
            } => self.place(customer_id, items, shipping_address, billing_address),
            OrderCommand::Confirm => match self.placed_status()? {
                OrderStatus::Pending => Ok(vec![OrderEvent::OrderConfirmed]),
                status => Err(OrderError::CannotConfirm { status }),
            },
            OrderCommand::Cancel { reason } => match self.placed_status()? {
                status @ (OrderStatus::Shipped
                | OrderStatus::Delivered
                | OrderStatus::Cancelled) => Err(OrderError::CannotCancel { status }),
                OrderStatus::Pending | OrderStatus::Confirmed => {
                    if reason.trim().is_empty() {
                        return Err(OrderError::MissingCancelReason);
                    }
                    Ok(vec![OrderEvent::OrderCancelled { reason }])
                }
            },
            OrderCommand::Ship { tracking_number } => match self.placed_status()? {
                OrderStatus::Confirmed => Ok(vec![OrderEvent::OrderShipped { tracking_number }]),
                status => Err(OrderError::CannotShip { status }),
            },
            OrderCommand::Deliver => match self.placed_status()? {
                OrderStatus::Shipped => Ok(vec![OrderEvent::OrderDelivered]),
                status => Err(OrderError::CannotDeliver { status }),
            },
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderPlaced {
                customer_id,
                items,
                shipping_address,
                billing_address,
            } => {
                self.status = Some(OrderStatus::Pending);
                self.customer_id = customer_id.clone();
                self.items = items.clone();
                // `handle` refused overflowing orders; saturate rather than panic on an
                // event written by anything else.
                self.total_cents = total_cents(items).unwrap_or(i64::MAX);
                self.shipping_address = shipping_address.clone();
                self.billing_address = billing_address.clone();
            }
            OrderEvent::OrderConfirmed => self.status = Some(OrderStatus::Confirmed),
            OrderEvent::OrderCancelled { reason } => {
                self.status = Some(OrderStatus::Cancelled);
                self.cancel_reason = Some(reason.clone());
            }
            OrderEvent::OrderShipped { tracking_number } => {
                self.status = Some(OrderStatus::Shipped);
                self.tracking_number = tracking_number.clone();
            }
            OrderEvent::OrderDelivered => self.status = Some(OrderStatus::Delivered),
        }
    }
}
