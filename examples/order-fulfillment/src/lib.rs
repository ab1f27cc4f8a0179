//! The reference application's aggregates, their bus commands, and its queries.
//!
//! * [`Order`] is the aggregate: place, confirm, cancel, ship and deliver, with the rules
//!   that keep an order consistent.
//! * [`PlaceOrder`], [`ConfirmOrder`], [`CancelOrder`], [`ShipOrder`] and [`DeliverOrder`]
//!   are the commands on the [`runnel::CommandBus`]; [`GetOrder`] is the query on the
//!   [`runnel::QueryBus`].
//! * [`register`] wires them all to a [`runnel::Repository<Order>`]; [`order_repository`]
//!   builds one with this crate's upcasters and snapshot policy.
//! * [`Customer`] and [`Product`] (with [`RegisterCustomer`], [`RenameCustomer`],
//!   [`AddProduct`], [`RenameProduct`]; [`register_catalog`]) give orders' ids their names.
//! * The [`read_model`] keeps order summaries enriched with those names, queried with
//!   [`GetOrderSummary`] and [`FindOrdersByCustomerName`].
//! * The [`analytics`] stream jobs compute revenue per product per minute and find orders
//!   not paid within 15 minutes, queried with [`GetRevenuePerProduct`] and
//!   [`ListUnpaidOrders`].
//!
//! ```
//! use std::sync::Arc;
//! use runnel::{CommandBus, QueryBus};
//! use runnel::core::EventStore;
//!
//! fn wire(store: Arc<dyn EventStore>) -> Result<(CommandBus, QueryBus), Box<dyn std::error::Error>> {
//!     let (commands, queries) = (CommandBus::new(), QueryBus::new());
//!     let orders = order_fulfillment::order_repository(store, None, Arc::new(order_fulfillment::upcasters()?));
//!     order_fulfillment::register(&commands, &queries, orders)?;
//!     Ok((commands, queries))
//! }
//! ```

pub mod analytics;
pub mod commands;
pub mod customer;
pub mod fulfillment;
pub mod http;
pub mod order;
pub mod product;
pub mod queries;
pub mod read_model;
pub mod service;
mod wiring;

pub use analytics::{
    Analytics, GetRevenuePerProduct, ListUnpaidOrders, PaymentCheck, ProductRevenue,
};
pub use commands::{CancelOrder, ConfirmOrder, DeliverOrder, PlaceOrder, ShipOrder};
pub use customer::{Customer, CustomerEvent, RegisterCustomer, RenameCustomer};
pub use order::{
    register_upcasters, Order, OrderCommand, OrderError, OrderEvent, OrderLine, OrderStatus,
    ORDER_LINES_MAX, ORDER_PLACED_SCHEMA_VERSION,
};
pub use product::{AddProduct, Product, ProductEvent, RenameProduct};
pub use queries::{
    register_read_model_queries, FindOrdersByCustomerName, GetOrder, GetOrderSummary, OrderSummary,
};
pub use read_model::{EnrichedLine, EnrichedOrderSummary, ReadModel, ReadModelError};
pub use wiring::{order_repository, register, register_catalog, upcasters, SNAPSHOT_EVERY_EVENTS};
