//! The `products` projection: SKU → current name and list price.

use std::sync::Arc;

use runnel::core::projection::Dialect;
use runnel::core::{EventFilter, RecordedEvent};
use runnel::projection::{Projection, ProjectionError, Writes};
use runnel::{Aggregate, Upcasters};

use crate::product::{Product, ProductEvent};

/// The projection's name, and its one table (a view on the current version).
pub const PRODUCTS: &str = "products";

/// Keeps `products (sku, name, unit_price_cents)` from the `Product-{sku}` streams.
pub struct ProductsProjection {
    upcasters: Arc<Upcasters>,
}

impl ProductsProjection {
    pub fn new(upcasters: Arc<Upcasters>) -> Self {
        ProductsProjection { upcasters }
    }
}

impl Projection for ProductsProjection {
    fn name(&self) -> &str {
        PRODUCTS
    }

    fn tables(&self) -> Vec<String> {
        vec![PRODUCTS.into()]
    }

    fn schema(&self, _dialect: Dialect) -> Vec<String> {
        vec![
            "CREATE TABLE {products} (sku TEXT PRIMARY KEY, name TEXT NOT NULL, \
              unit_price_cents BIGINT NOT NULL)"
                .into(),
        ]
    }

    fn filter(&self) -> EventFilter {
        EventFilter {
            categories: vec![Product::TYPE.into()],
            event_types: vec!["ProductAdded".into(), "ProductRenamed".into()],
        }
    }

    fn apply(&self, event: &RecordedEvent, out: &mut Writes) -> Result<(), ProjectionError> {
        let sku = event.stream.id();
        match self.upcasters.decode::<ProductEvent>(event)? {
            ProductEvent::ProductAdded {
                name,
                unit_price_cents,
            } => out.execute(
                "INSERT INTO {products} (sku, name, unit_price_cents) VALUES ($1, $2, $3) \
                 ON CONFLICT (sku) DO UPDATE SET name = excluded.name, \
                 unit_price_cents = excluded.unit_price_cents",
                vec![sku.into(), name.into(), unit_price_cents.into()],
            ),
            ProductEvent::ProductRenamed { name } => out.execute(
                "UPDATE {products} SET name = $2 WHERE sku = $1",
                vec![sku.into(), name.into()],
            ),
        }
        Ok(())
    }
}
