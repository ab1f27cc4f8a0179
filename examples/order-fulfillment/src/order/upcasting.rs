//! Upcasters that bring old `OrderPlaced` payloads to the current schema.

use runnel::{UpcastError, UpcasterError, Upcasters};
use serde_json::{Map, Value};

/// Registers the `OrderPlaced` chain v1 → v2 → v3 (see
/// [`crate::ORDER_PLACED_SCHEMA_VERSION`]).
pub fn register_upcasters(upcasters: &mut Upcasters) -> Result<(), UpcasterError> {
    upcasters
        .register("OrderPlaced", 1, split_address)?
        .register("OrderPlaced", 2, price_in_cents)?;
    Ok(())
}

fn object(value: &mut Value) -> Result<&mut Map<String, Value>, UpcastError> {
    value.as_object_mut().ok_or_else(UpcastError::not_an_object)
}

/// v1 → v2: the single `address` becomes both the shipping and the billing address.
fn split_address(mut payload: Value) -> Result<Value, UpcastError> {
    let fields = object(&mut payload)?;
    let address = fields
        .remove("address")
        .ok_or_else(|| UpcastError::missing_field("address"))?;
    fields.insert("billing_address".into(), address.clone());
    fields.insert("shipping_address".into(), address);
    Ok(payload)
}

/// v2 → v3: each item's `price` (always cents) is named `unit_price_cents`.
fn price_in_cents(mut payload: Value) -> Result<Value, UpcastError> {
    let items = object(&mut payload)?
        .get_mut("items")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| UpcastError::missing_field("items"))?;
    for item in items {
        let item = object(item)?;
        let price = item
            .remove("price")
            .ok_or_else(|| UpcastError::missing_field("items[].price"))?;
        item.insert("unit_price_cents".into(), price);
    }
    Ok(payload)
}
