//! The `Product` aggregate (stream `Product-{sku}`): added to the catalog with a name and a
//! list price, renamed later. Order lines name their product by SKU only (with the price
//! the order was placed at); the read side shows the product's name
//! (see [`crate::read_model`]).

use runnel::{Aggregate, AggregateCommand, Command, ExecuteOutcome};
use runnel_core::DomainEvent;
use serde::{Deserialize, Serialize};

/// Longest product name, in characters.
pub const PRODUCT_NAME_LEN_MAX: usize = 200;

/// A product's state, folded from its events. The default is "not in the catalog".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    name: Option<String>,
    unit_price_cents: i64,
}

impl Product {
    /// The current name (`None`: not in the catalog).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The list price, in cents.
    pub fn unit_price_cents(&self) -> i64 {
        self.unit_price_cents
    }
}

/// What a product can be asked to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ProductCommand {
    /// Add the product to the catalog. Adding it again exactly as it is changes nothing
    /// (a retried request is harmless); with another name or price it is refused.
    Add { name: String, unit_price_cents: i64 },
    /// Give a product a new name (the same name again changes nothing).
    Rename { name: String },
}

/// What a product records. The SKU is the stream's id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ProductEvent {
    ProductAdded { name: String, unit_price_cents: i64 },
    ProductRenamed { name: String },
}

impl DomainEvent for ProductEvent {
    fn event_type(&self) -> &'static str {
        match self {
            ProductEvent::ProductAdded { .. } => "ProductAdded",
            ProductEvent::ProductRenamed { .. } => "ProductRenamed",
        }
    }
}

/// Why the `Product` aggregate refused a command. Nothing was recorded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProductError {
    #[error("the product is already in the catalog as {existing:?}; rename it instead")]
    AlreadyAdded { existing: String },
    #[error("no such product; add it first")]
    NotFound,
    #[error("the product name is empty")]
    EmptyName,
    #[error("the product name has {len} characters; at most {limit} are allowed")]
    NameTooLong { len: usize, limit: usize },
    #[error("the price is {unit_price_cents} cents; prices may not be negative")]
    NegativePrice { unit_price_cents: i64 },
}

fn checked_name(name: String) -> Result<String, ProductError> {
    let name = name.trim().to_string();
    if name.is_empty() {
        return Err(ProductError::EmptyName);
    }
    let len = name.chars().count();
    if len > PRODUCT_NAME_LEN_MAX {
        return Err(ProductError::NameTooLong {
            len,
            limit: PRODUCT_NAME_LEN_MAX,
        });
    }
    Ok(name)
}

impl Aggregate for Product {
    const TYPE: &'static str = "Product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;

    fn handle(&self, command: ProductCommand) -> Result<Vec<ProductEvent>, ProductError> {
        match (command, &self.name) {
            (
                ProductCommand::Add {
                    name,
                    unit_price_cents,
                },
                existing,
            ) => {
                let name = checked_name(name)?;
                if unit_price_cents < 0 {
                    return Err(ProductError::NegativePrice { unit_price_cents });
                }
                match existing {
                    None => Ok(vec![ProductEvent::ProductAdded {
                        name,
                        unit_price_cents,
                    }]),
                    Some(existing)
                        if *existing == name && self.unit_price_cents == unit_price_cents =>
                    {
                        Ok(vec![])
                    }
                    Some(existing) => Err(ProductError::AlreadyAdded {
                        existing: existing.clone(),
                    }),
                }
            }
            (ProductCommand::Rename { .. }, None) => Err(ProductError::NotFound),
            (ProductCommand::Rename { name }, Some(existing)) => {
                let name = checked_name(name)?;
                if name == *existing {
                    Ok(vec![])
                } else {
                    Ok(vec![ProductEvent::ProductRenamed { name }])
                }
            }
        }
    }

    fn apply(&mut self, event: &ProductEvent) {
        match event {
            ProductEvent::ProductAdded {
                name,
                unit_price_cents,
            } => {
                self.name = Some(name.clone());
                self.unit_price_cents = *unit_price_cents;
            }
            ProductEvent::ProductRenamed { name } => self.name = Some(name.clone()),
        }
    }
}

/// Add a product to the catalog. JSON:
/// `{"sku": "p-1", "name": "Espresso cup", "unit_price_cents": 1250}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddProduct {
    pub sku: String,
    pub name: String,
    pub unit_price_cents: i64,
}

/// Rename a product. JSON: `{"sku": "p-1", "name": "Espresso cup, white"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameProduct {
    pub sku: String,
    pub name: String,
}

impl Command for AddProduct {
    const NAME: &'static str = "AddProduct";
    type Output = ExecuteOutcome<ProductEvent>;
}

impl AggregateCommand for AddProduct {
    type Aggregate = Product;

    fn aggregate_id(&self) -> String {
        self.sku.clone()
    }

    fn into_aggregate_command(self) -> ProductCommand {
        ProductCommand::Add {
            name: self.name,
            unit_price_cents: self.unit_price_cents,
        }
    }
}

impl Command for RenameProduct {
    const NAME: &'static str = "RenameProduct";
    type Output = ExecuteOutcome<ProductEvent>;
}

impl AggregateCommand for RenameProduct {
    type Aggregate = Product;

    fn aggregate_id(&self) -> String {
        self.sku.clone()
    }

    fn into_aggregate_command(self) -> ProductCommand {
        ProductCommand::Rename { name: self.name }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn added() -> Product {
        let mut p = Product::default();
        p.apply(&ProductEvent::ProductAdded {
            name: "Cup".into(),
            unit_price_cents: 500,
        });
        p
    }

    #[test]
    fn adding_again_exactly_records_nothing_otherwise_it_is_refused() {
        let p = added();
        let again = ProductCommand::Add {
            name: "Cup".into(),
            unit_price_cents: 500,
        };
        assert_eq!(p.handle(again), Ok(vec![]));
        let other = ProductCommand::Add {
            name: "Cup".into(),
            unit_price_cents: 600,
        };
        assert_eq!(
            p.handle(other),
            Err(ProductError::AlreadyAdded {
                existing: "Cup".into()
            })
        );
    }

    #[test]
    fn negative_prices_and_unknown_products_are_refused() {
        let add = ProductCommand::Add {
            name: "Cup".into(),
            unit_price_cents: -1,
        };
        assert_eq!(
            Product::default().handle(add),
            Err(ProductError::NegativePrice {
                unit_price_cents: -1
            })
        );
        assert_eq!(
            Product::default().handle(ProductCommand::Rename { name: "Mug".into() }),
            Err(ProductError::NotFound)
        );
        assert_eq!(
            added().handle(ProductCommand::Rename { name: "Mug".into() }),
            Ok(vec![ProductEvent::ProductRenamed { name: "Mug".into() }])
        );
    }
}
