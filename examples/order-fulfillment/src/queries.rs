//! The order queries on the [`runnel::QueryBus`].

use runnel::core::Metadata;
use runnel::{async_trait, Query, QueryHandler, Repository, RepositoryError};
use serde::{Deserialize, Serialize};

use crate::order::{Order, OrderError, OrderLine, OrderStatus};

/// The current state of one order, read from its events (`null` if there is no such
/// order). JSON: `{"order_id": "o-1"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetOrder {
    pub order_id: String,
}

impl Query for GetOrder {
    const NAME: &'static str = "GetOrder";
    type Response = Option<OrderSummary>;
}

/// An order as [`GetOrder`] returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSummary {
    pub order_id: String,
    /// The revision of the order's stream this summary reflects.
    pub revision: u64,
    pub status: OrderStatus,
    pub customer_id: String,
    pub items: Vec<OrderLine>,
    pub total_cents: i64,
    pub shipping_address: String,
    pub billing_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
}

impl OrderSummary {
    /// The summary of `order` at `revision`, `None` if it was never placed.
    pub fn of(order_id: &str, revision: u64, order: &Order) -> Option<Self> {
        Some(OrderSummary {
            order_id: order_id.to_string(),
            revision,
            status: order.status()?,
            customer_id: order.customer_id().to_string(),
            items: order.items().to_vec(),
            total_cents: order.total_cents(),
            shipping_address: order.shipping_address().to_string(),
            billing_address: order.billing_address().to_string(),
            cancel_reason: order.cancel_reason().map(str::to_string),
            tracking_number: order.tracking_number().map(str::to_string),
        })
    }
}

/// Answers [`GetOrder`] by loading the aggregate through the repository.
pub struct GetOrderHandler {
    repository: Repository<Order>,
}

impl GetOrderHandler {
    pub fn new(repository: Repository<Order>) -> Self {
        GetOrderHandler { repository }
    }
}

#[async_trait]
impl QueryHandler<GetOrder> for GetOrderHandler {
    type Error = RepositoryError<OrderError>;

    async fn handle(
        &self,
        query: GetOrder,
        _metadata: Metadata,
    ) -> Result<Option<OrderSummary>, Self::Error> {
        let loaded = self.repository.load(&query.order_id).await?;
        Ok(loaded
            .revision
            .and_then(|revision| OrderSummary::of(&query.order_id, revision, &loaded.state)))
    }
}
