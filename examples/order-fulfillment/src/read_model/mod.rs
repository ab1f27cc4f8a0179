//! The query side: order summaries enriched with customer and product names, kept by
//! three projections from `$all` and read through the query bus
//! ([`GetOrderSummary`](crate::GetOrderSummary),
//! [`FindOrdersByCustomerName`](crate::FindOrdersByCustomerName)).
//!
//! | projection | tables (views on the current version) | from |
//! |---|---|---|
//! | `customers` | `customers (customer_id, name)` | `Customer-{id}`: `CustomerRegistered`, `CustomerRenamed` |
//! | `products` | `products (sku, name, unit_price_cents)` | `Product-{sku}`: `ProductAdded`, `ProductRenamed` |
//! | `enriched_orders` | `enriched_orders`, `enriched_order_lines` (ids, status, totals, lines) | `Order-{id}`: every order event |
//! | `fulfillment_progress` | `fulfillment_progress` (reservation, payment, shipment, failure, compensations) | the services' replies on the fulfillment saga's reply topic (a topic projection) |
//!
//! Each applies its events exactly once (its rows commit with its checkpoint) on SQLite
//! and PostgreSQL alike.
//!
//! # Names are joined when an order is read, not copied into it
//!
//! The order rows hold the customer's id and each line's SKU; a summary is one SELECT
//! joining them to `customers` and `products` (LEFT JOINs). The alternative — copying the
//! names into the order rows and having the customer projection run
//! `UPDATE … WHERE customer_id = $1` on a rename — is wrong here, because these are three
//! projections, each with its own checkpoint, lease and rebuilds:
//!
//! * a projection may only write the tables it owns: the plain names are views on the
//!   *current* version, so writing another projection's rows would miss a version being
//!   rebuilt (and SQLite views are read-only);
//! * on PostgreSQL, the order projection copying the name while the customer projection
//!   renames in another transaction can interleave so that the copy keeps the old name
//!   forever (each statement only sees rows committed when it started);
//! * `$all` is ordered by commit, not by business sense: an order may come before its
//!   customer's registration. A copied name would need repair when the customer arrives.
//!
//! With the join there is nothing to keep in step: a rename shows in every order as soon
//! as `customers` applies it, and an order whose customer (or product) is not there yet
//! reads with `customer_name: None` (`product_name: None`) until it is. The join is on
//! primary keys, so it costs little.
//!
//! # Reading your own writes
//!
//! A query may carry `min_position`: the position a command committed at
//! ([`runnel::ExecuteOutcome::position`]). It then waits until all three projections have
//! applied everything up to it ([`runnel::projection::wait_for_position`]) before it reads,
//! or fails with [`ReadModelError::NotCaughtUp`] after [`ReadModel::wait_timeout`].

mod customers;
mod fulfillment;
mod orders;
mod products;
mod reader;

pub use customers::{CustomersProjection, CUSTOMERS};
pub use fulfillment::{FulfillmentProgress, FulfillmentProgressProjection, FULFILLMENT_PROGRESS};
pub use orders::{OrderSummariesProjection, ENRICHED_ORDERS, ENRICHED_ORDER_LINES};
pub use products::{ProductsProjection, PRODUCTS};
pub use reader::{EnrichedLine, EnrichedOrderSummary};

use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel::connect::Stores;
use runnel::core::{Position, StoreError};
use runnel::projection::{
    wait_for_position, Projection, ProjectionRunner, RunnerOptions, WaitError,
};
use runnel::Upcasters;

use reader::Select;

/// The projections a summary reads, all of which a read-your-writes query waits for.
pub const PROJECTIONS: [&str; 3] = [CUSTOMERS, PRODUCTS, ENRICHED_ORDERS];

/// Default longest wait for the projections to reach a query's `min_position`.
pub const WAIT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Most orders [`ReadModel::orders_by_customer_name`] returns (the newest).
pub const ORDERS_BY_NAME_MAX: usize = 100;

/// Why the read side could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadModelError {
    /// A projection did not reach the query's position in time (or is paused or faulted:
    /// see `runnel projections status`).
    #[error("the read model is not up to date with the query's position: {0}")]
    NotCaughtUp(#[from] WaitError),
    /// The store failed.
    #[error("cannot read the read model: {0}")]
    Store(#[from] StoreError),
    /// A row holds something the application never writes.
    #[error("the read model holds an unreadable row: {0}")]
    Corrupt(String),
    /// The store is neither SQLite nor PostgreSQL.
    #[error("the read model needs a SQLite or PostgreSQL store")]
    Unsupported,
}

/// The three projections that make up the read model, ready to register on an
/// [`App`](runnel::app::App). `upcasters` should hold [`crate::register_upcasters`].
pub fn projections(upcasters: &Arc<Upcasters>) -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(CustomersProjection::new(Arc::clone(upcasters))),
        Arc::new(ProductsProjection::new(Arc::clone(upcasters))),
        Arc::new(OrderSummariesProjection::new(Arc::clone(upcasters))),
    ]
}

/// The read side's queries over one store.
#[derive(Clone)]
pub struct ReadModel {
    stores: Stores,
    wait_timeout: Duration,
}

impl ReadModel {
    /// The read model in `stores`, registering `projections` (their tables and views) so
    /// that queries work in any process of the application, also one that does not run
    /// the projections (`order-fulfillment show`). Registering is idempotent.
    pub async fn open(
        stores: &Stores,
        projections: &[Arc<dyn Projection>],
    ) -> Result<ReadModel, StoreError> {
        // The fulfillment progress a summary joins (its consumer runs where fulfillment
        // does; its table must exist wherever summaries are read).
        runnel::projection::register_topic_projection(
            &FulfillmentProgressProjection::new(crate::fulfillment::reply_topic()),
            &*stores.projections,
        )
        .await?;
        for projection in projections {
            ProjectionRunner::new(
                Arc::clone(projection),
                Arc::clone(&stores.projections),
                Arc::clone(&stores.events),
                RunnerOptions::default(),
            )
            .register()
            .await?;
        }
        Ok(ReadModel {
            stores: stores.clone(),
            wait_timeout: WAIT_TIMEOUT_DEFAULT,
        })
    }

    /// The same read model, waiting at most `timeout` for a query's position.
    pub fn with_wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// The longest a query waits for its position.
    pub fn wait_timeout(&self) -> Duration {
        self.wait_timeout
    }

    /// Waits until every projection of the read model has applied `$all` up to
    /// `position`, within [`ReadModel::wait_timeout`] in all.
    pub async fn wait_for(&self, position: Position) -> Result<(), ReadModelError> {
        let deadline = Instant::now() + self.wait_timeout;
        for name in PROJECTIONS {
            let left = deadline.saturating_duration_since(Instant::now());
            wait_for_position(&*self.stores.projections, name, position, left).await?;
        }
        Ok(())
    }

    /// The summary of `order_id`, if the read model has it.
    pub async fn order_summary(
        &self,
        order_id: &str,
    ) -> Result<Option<EnrichedOrderSummary>, ReadModelError> {
        Ok(reader::read(&self.stores, Select::Order(order_id))
            .await?
            .into_iter()
            .next())
    }

    /// The orders of the customers currently named `name` (exactly), newest first, at most
    /// [`ORDERS_BY_NAME_MAX`].
    pub async fn orders_by_customer_name(
        &self,
        name: &str,
    ) -> Result<Vec<EnrichedOrderSummary>, ReadModelError> {
        reader::read(&self.stores, Select::CustomerName(name, ORDERS_BY_NAME_MAX)).await
    }
}
