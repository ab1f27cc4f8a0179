//! The order queries on the [`runnel::QueryBus`]: [`GetOrder`] loads the aggregate (always
//! current, one order at a time); [`GetOrderSummary`] and [`FindOrdersByCustomerName`]
//! read the [read model](crate::read_model), enriched with customer and product names.
//! Each is registered under its `NAME`, which is how the HTTP API and the CLI dispatch it
//! (`QueryBus::dispatch_json("GetOrderSummary", {"order_id": "o-1"})`).

use runnel::core::{Metadata, Position};
use runnel::{
    async_trait, DispatchError, Query, QueryBus, QueryHandler, Repository, RepositoryError,
};
use serde::{Deserialize, Serialize};

use crate::order::{Order, OrderError, OrderLine, OrderStatus};
use crate::read_model::{EnrichedOrderSummary, ReadModel, ReadModelError};

/// The current state of one order, read from its events (`null` if there is no such
/// order). JSON: `{"order_id": "o-1"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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

/// An order as the read model shows it, with its customer's and products' current names
/// (`null` if the read model does not have the order). JSON:
/// `{"order_id": "o-1"}`, or `{"order_id": "o-1", "min_position": 42}` to read your own
/// write: the query first waits until the read model has applied `$all` up to position 42
/// (the [`ExecuteOutcome::position`](runnel::ExecuteOutcome::position) of the command).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetOrderSummary {
    pub order_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<u64>")]
    pub min_position: Option<Position>,
}

impl Query for GetOrderSummary {
    const NAME: &'static str = "GetOrderSummary";
    type Response = Option<EnrichedOrderSummary>;
}

/// The orders of the customers currently named `customer_name` (exactly; a renamed
/// customer's orders are found under the new name), newest first, at most
/// [`ORDERS_BY_NAME_MAX`](crate::read_model::ORDERS_BY_NAME_MAX). JSON:
/// `{"customer_name": "Ada Lovelace"}`, optionally with `min_position` as in
/// [`GetOrderSummary`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindOrdersByCustomerName {
    pub customer_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<u64>")]
    pub min_position: Option<Position>,
}

impl Query for FindOrdersByCustomerName {
    const NAME: &'static str = "FindOrdersByCustomerName";
    type Response = Vec<EnrichedOrderSummary>;
}

/// Answers [`GetOrderSummary`] and [`FindOrdersByCustomerName`] from the read model.
#[derive(Clone)]
pub struct ReadModelQueries {
    read_model: ReadModel,
}

impl ReadModelQueries {
    pub fn new(read_model: ReadModel) -> Self {
        ReadModelQueries { read_model }
    }

    async fn caught_up(&self, min_position: Option<Position>) -> Result<(), ReadModelError> {
        match min_position {
            Some(position) => self.read_model.wait_for(position).await,
            None => Ok(()),
        }
    }
}

#[async_trait]
impl QueryHandler<GetOrderSummary> for ReadModelQueries {
    type Error = ReadModelError;

    async fn handle(
        &self,
        query: GetOrderSummary,
        _metadata: Metadata,
    ) -> Result<Option<EnrichedOrderSummary>, ReadModelError> {
        self.caught_up(query.min_position).await?;
        self.read_model.order_summary(&query.order_id).await
    }
}

#[async_trait]
impl QueryHandler<FindOrdersByCustomerName> for ReadModelQueries {
    type Error = ReadModelError;

    async fn handle(
        &self,
        query: FindOrdersByCustomerName,
        _metadata: Metadata,
    ) -> Result<Vec<EnrichedOrderSummary>, ReadModelError> {
        self.caught_up(query.min_position).await?;
        self.read_model
            .orders_by_customer_name(&query.customer_name)
            .await
    }
}

/// Registers [`GetOrderSummary`] and [`FindOrdersByCustomerName`] on `queries`, answered
/// from `read_model`.
pub fn register_read_model_queries(
    queries: &QueryBus,
    read_model: ReadModel,
) -> Result<(), DispatchError> {
    let handler = ReadModelQueries::new(read_model);
    queries.register::<GetOrderSummary, _>(handler.clone())?;
    queries.register::<FindOrdersByCustomerName, _>(handler)
}
