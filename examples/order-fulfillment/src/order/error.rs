//! Why an order refuses a command.

use super::status::OrderStatus;

/// Why the `Order` aggregate refused a command. Nothing was recorded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OrderError {
    #[error("the order has already been placed; place a new order with a new order id")]
    AlreadyPlaced,

    #[error("no such order; place it first")]
    NotFound,

    #[error("the order has no items; add at least one")]
    NoItems,

    #[error("the order has {count} items; at most {limit} are allowed — split it")]
    TooManyItems { count: usize, limit: usize },

    #[error("the customer id is empty")]
    MissingCustomer,

    #[error("the shipping address is empty")]
    MissingShippingAddress,

    #[error("item {index} has an empty product id")]
    MissingProductId { index: usize },

    #[error("the quantity of {product_id:?} is 0; quantities must be positive")]
    InvalidQuantity { product_id: String },

    #[error("the price of {product_id:?} is {unit_price_cents} cents; prices may not be negative")]
    NegativePrice {
        product_id: String,
        unit_price_cents: i64,
    },

    #[error("the order total overflows; split the order")]
    TotalTooLarge,

    #[error("a cancellation needs a reason")]
    MissingCancelReason,

    #[error("only a pending order can be confirmed; this one is {status}")]
    CannotConfirm { status: OrderStatus },

    #[error("a {status} order cannot be cancelled")]
    CannotCancel { status: OrderStatus },

    #[error("only a confirmed order can be shipped; this one is {status}")]
    CannotShip { status: OrderStatus },

    #[error("only a shipped order can be delivered; this one is {status}")]
    CannotDeliver { status: OrderStatus },
}
