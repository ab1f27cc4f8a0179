//! The `customers` projection: customer id → current name.

use std::sync::Arc;

use runnel::core::projection::Dialect;
use runnel::core::{EventFilter, RecordedEvent};
use runnel::projection::{Projection, ProjectionError, Writes};
use runnel::{Aggregate, Upcasters};

use crate::customer::{Customer, CustomerEvent};

/// The projection's name, and its one table (a view on the current version).
pub const CUSTOMERS: &str = "customers";

/// Keeps `customers (customer_id, name)` from the `Customer-{id}` streams: a registration
/// inserts the row, a rename overwrites the name.
pub struct CustomersProjection {
    upcasters: Arc<Upcasters>,
}

impl CustomersProjection {
    pub fn new(upcasters: Arc<Upcasters>) -> Self {
        CustomersProjection { upcasters }
    }
}

impl Projection for CustomersProjection {
    fn name(&self) -> &str {
        CUSTOMERS
    }

    fn tables(&self) -> Vec<String> {
        vec![CUSTOMERS.into()]
    }

    fn schema(&self, _dialect: Dialect) -> Vec<String> {
        vec![
            "CREATE TABLE {customers} (customer_id TEXT PRIMARY KEY, name TEXT NOT NULL)".into(),
            // `FindOrdersByCustomerName` looks customers up by name.
            "CREATE INDEX {customers}_by_name ON {customers} (name)".into(),
        ]
    }

    fn filter(&self) -> EventFilter {
        EventFilter {
            categories: vec![Customer::TYPE.into()],
            event_types: vec!["CustomerRegistered".into(), "CustomerRenamed".into()],
        }
    }

    fn apply(&self, event: &RecordedEvent, out: &mut Writes) -> Result<(), ProjectionError> {
        let name = match self.upcasters.decode::<CustomerEvent>(event)? {
            CustomerEvent::CustomerRegistered { name }
            | CustomerEvent::CustomerRenamed { name } => name,
        };
        out.execute(
            "INSERT INTO {customers} (customer_id, name) VALUES ($1, $2) \
             ON CONFLICT (customer_id) DO UPDATE SET name = excluded.name",
            vec![event.stream.id().into(), name.into()],
        );
        Ok(())
    }
}
