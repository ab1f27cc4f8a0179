//! Wiring the order aggregate into an application.

use std::sync::Arc;

use runnel::core::{EventStore, SnapshotStore};
use runnel::{
    register_aggregate_command, CommandBus, DispatchError, QueryBus, Repository, UpcasterError,
    Upcasters,
};

use crate::commands::{CancelOrder, ConfirmOrder, DeliverOrder, PlaceOrder, ShipOrder};
use crate::customer::{Customer, RegisterCustomer, RenameCustomer};
use crate::order::{register_upcasters, Order};
use crate::product::{AddProduct, Product, RenameProduct};
use crate::queries::GetOrderHandler;

/// How often [`order_repository`] snapshots an order, in events. Orders are short-lived,
/// so this mostly matters for unusually busy ones.
pub const SNAPSHOT_EVERY_EVENTS: u64 = 50;

/// A fresh registry holding this crate's upcasters. Applications that share one registry
/// across aggregates and projections call [`register_upcasters`] on theirs instead.
pub fn upcasters() -> Result<Upcasters, UpcasterError> {
    let mut upcasters = Upcasters::new();
    register_upcasters(&mut upcasters)?;
    Ok(upcasters)
}

/// A repository of orders over `events`, upcasting with `upcasters` (which should hold
/// [`register_upcasters`]), snapshotting every [`SNAPSHOT_EVERY_EVENTS`] events if a
/// snapshot store is given, with the default retry policy.
pub fn order_repository(
    events: Arc<dyn EventStore>,
    snapshots: Option<Arc<dyn SnapshotStore>>,
    upcasters: Arc<Upcasters>,
) -> Repository<Order> {
    let repository = Repository::new(events).with_upcasters(upcasters);
    match snapshots {
        Some(store) => repository
            .with_snapshot_store(store)
            .with_snapshot_every(SNAPSHOT_EVERY_EVENTS),
        None => repository,
    }
}

/// Registers the order commands (`PlaceOrder`, `ConfirmOrder`, `CancelOrder`, `ShipOrder`,
/// `DeliverOrder`) on `commands` and the `GetOrder` query on `queries`, all served by
/// `repository`.
pub fn register(
    commands: &CommandBus,
    queries: &QueryBus,
    repository: Repository<Order>,
) -> Result<(), DispatchError> {
    register_aggregate_command::<PlaceOrder>(commands, repository.clone())?;
    register_aggregate_command::<ConfirmOrder>(commands, repository.clone())?;
    register_aggregate_command::<CancelOrder>(commands, repository.clone())?;
    register_aggregate_command::<ShipOrder>(commands, repository.clone())?;
    register_aggregate_command::<DeliverOrder>(commands, repository.clone())?;
    queries.register(GetOrderHandler::new(repository))
}

/// Registers the catalog commands (`RegisterCustomer`, `RenameCustomer`, `AddProduct`,
/// `RenameProduct`) on `commands`, with the `Customer` and `Product` aggregates' own
/// command enums for typed callers.
pub fn register_catalog(
    commands: &CommandBus,
    customers: Repository<Customer>,
    products: Repository<Product>,
) -> Result<(), DispatchError> {
    register_aggregate_command::<RegisterCustomer>(commands, customers.clone())?;
    register_aggregate_command::<RenameCustomer>(commands, customers.clone())?;
    commands.register_aggregate::<Customer>(customers)?;
    register_aggregate_command::<AddProduct>(commands, products.clone())?;
    register_aggregate_command::<RenameProduct>(commands, products.clone())?;
    commands.register_aggregate::<Product>(products)
}
