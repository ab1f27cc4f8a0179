//! `fulfillment_progress`: each order's fulfillment as its services answered it — the
//! reservation, the payment, the shipment, a definite failure, and the compensations —
//! kept from the saga's reply topic. The services' replies are bus messages, not events of
//! the store, so this is a topic projection: each reply's writes commit with its id in the
//! projection's inbox (a redelivered reply writes nothing twice), and a reply it cannot
//! read is dead-lettered, never skipped.
//!
//! A summary joins this table like the customer and product names: an order placed a
//! moment ago has no row yet and reads with an empty [`FulfillmentProgress`].

use runnel::core::projection::{Dialect, SqlValue};
use runnel::core::{Message, TopicName};
use runnel::projection::{ProjectionError, TopicProjection, Writes};
use serde::{Deserialize, Serialize};

/// The projection's name and table.
pub const FULFILLMENT_PROGRESS: &str = "fulfillment_progress";

/// How far an order's fulfillment got, as the services answered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FulfillmentProgress {
    /// The furthest answer applied: `inventory-reserved`, `out-of-stock`, `payment-charged`,
    /// `payment-declined`, `shipment-created`, `shipment-rejected`, `inventory-released`,
    /// `payment-refunded` or `shipment-cancelled`; `None` before the first.
    pub stage: Option<String>,
    pub reservation_id: Option<String>,
    pub payment_id: Option<String>,
    pub tracking_number: Option<String>,
    /// Why fulfillment failed (out of stock, declined card, no carrier), if it did.
    pub failure: Option<String>,
    /// The compensations done, in the order they were answered (`inventory-released`,
    /// `payment-refunded`, `shipment-cancelled`).
    pub compensations: Vec<String>,
}

impl FulfillmentProgress {
    pub(super) fn from_columns(
        stage: Option<String>,
        reservation_id: Option<String>,
        payment_id: Option<String>,
        tracking_number: Option<String>,
        failure: Option<String>,
        compensations: Option<String>,
    ) -> FulfillmentProgress {
        FulfillmentProgress {
            stage,
            reservation_id,
            payment_id,
            tracking_number,
            failure,
            compensations: compensations
                .unwrap_or_default()
                .split(',')
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect(),
        }
    }
}

/// The projection (see the [module](self) docs).
pub struct FulfillmentProgressProjection {
    topic: TopicName,
}

impl FulfillmentProgressProjection {
    /// The projection of the replies on `reply_topic` (the fulfillment saga's).
    pub fn new(reply_topic: TopicName) -> Self {
        FulfillmentProgressProjection { topic: reply_topic }
    }
}

/// What one reply changes: its stage, and the column it sets (if any) with the reply
/// field it takes the value from.
fn change(event_type: &str) -> Option<(&'static str, Option<(&'static str, &'static str)>)> {
    Some(match event_type {
        "InventoryReserved" => (
            "inventory-reserved",
            Some(("reservation_id", "reservation_id")),
        ),
        "PaymentCharged" => ("payment-charged", Some(("payment_id", "payment_id"))),
        "ShipmentCreated" => (
            "shipment-created",
            Some(("tracking_number", "tracking_number")),
        ),
        "OutOfStock" => ("out-of-stock", Some(("failure", "product_id"))),
        "PaymentDeclined" => ("payment-declined", Some(("failure", "reason"))),
        "ShipmentRejected" => ("shipment-rejected", Some(("failure", "reason"))),
        "InventoryReleased" => ("inventory-released", None),
        "PaymentRefunded" => ("payment-refunded", None),
        "ShipmentCancelled" => ("shipment-cancelled", None),
        _ => return None,
    })
}

/// Where a stage comes in a fulfillment: forward steps, then a definite failure, then the
/// compensations in the reverse order they run. A service answers a command it is asked
/// twice (a duplicated or re-sent command) twice, each a reply of its own that the inbox
/// does not recognise, so a late second `PaymentCharged` can arrive after
/// `ShipmentCreated`: the stage only moves forward, and a compensation is listed once.
fn rank(stage: &str) -> i64 {
    match stage {
        "inventory-reserved" => 1,
        "payment-charged" => 2,
        "shipment-created" => 3,
        "out-of-stock" | "payment-declined" | "shipment-rejected" => 4,
        "shipment-cancelled" => 5,
        "payment-refunded" => 6,
        "inventory-released" => 7,
        _ => 0,
    }
}

/// [`rank`] of the row's current stage, in SQL (0 before the first answer).
const STAGE_RANK: &str = "CASE stage \
     WHEN 'inventory-reserved' THEN 1 WHEN 'payment-charged' THEN 2 \
     WHEN 'shipment-created' THEN 3 \
     WHEN 'out-of-stock' THEN 4 WHEN 'payment-declined' THEN 4 WHEN 'shipment-rejected' THEN 4 \
     WHEN 'shipment-cancelled' THEN 5 WHEN 'payment-refunded' THEN 6 \
     WHEN 'inventory-released' THEN 7 ELSE 0 END";

impl TopicProjection for FulfillmentProgressProjection {
    fn name(&self) -> &str {
        FULFILLMENT_PROGRESS
    }

    fn tables(&self) -> Vec<String> {
        vec![FULFILLMENT_PROGRESS.into()]
    }

    fn schema(&self, _: Dialect) -> Vec<String> {
        vec!["CREATE TABLE {fulfillment_progress} (\
                order_id TEXT PRIMARY KEY, \
                stage TEXT, \
                reservation_id TEXT, \
                payment_id TEXT, \
                tracking_number TEXT, \
                failure TEXT, \
                compensations TEXT NOT NULL DEFAULT '')"
            .into()]
    }

    fn topic(&self) -> TopicName {
        self.topic.clone()
    }

    fn apply(&self, message: &Message, out: &mut Writes) -> Result<(), ProjectionError> {
        let Some((stage, column)) = change(&message.event_type) else {
            // Another reply type (a newer service's): nothing this table keeps.
            return Ok(());
        };
        let body: serde_json::Value = serde_json::from_slice(&message.payload)?;
        let Some(order_id) = body["order_id"].as_str() else {
            return Err(ProjectionError::Decode(format!(
                "reply {} ({}) names no order_id",
                message.id, message.event_type
            )));
        };
        out.execute(
            "INSERT INTO {fulfillment_progress} (order_id) VALUES ($1) \
             ON CONFLICT (order_id) DO NOTHING",
            vec![order_id.into()],
        );
        match column {
            Some((column, field)) => {
                let value = match &body[field] {
                    serde_json::Value::String(s) => SqlValue::from(s.as_str()),
                    serde_json::Value::Null => SqlValue::Null,
                    other => SqlValue::from(other.to_string()),
                };
                let value = match (stage, value) {
                    ("out-of-stock", SqlValue::Text(p)) => {
                        SqlValue::from(format!("out of stock: {p}"))
                    }
                    ("payment-declined", SqlValue::Text(r)) => {
                        SqlValue::from(format!("card declined: {r}"))
                    }
                    ("shipment-rejected", SqlValue::Text(r)) => {
                        SqlValue::from(format!("no shipment: {r}"))
                    }
                    (_, v) => v,
                };
                out.execute(
                    format!(
                        "UPDATE {{fulfillment_progress}} SET \
                         stage = CASE WHEN {STAGE_RANK} <= $4 THEN $2 ELSE stage END, \
                         {column} = $3 WHERE order_id = $1"
                    ),
                    vec![order_id.into(), stage.into(), value, rank(stage).into()],
                );
            }
            None => out.execute(
                format!(
                    "UPDATE {{fulfillment_progress}} SET \
                     stage = CASE WHEN {STAGE_RANK} <= $3 THEN $2 ELSE stage END, \
                     compensations = CASE \
                         WHEN compensations = '' THEN $2 \
                         WHEN ',' || compensations || ',' LIKE '%,' || $2 || ',%' THEN compensations \
                         ELSE compensations || ',' || $2 END \
                     WHERE order_id = $1"
                ),
                vec![order_id.into(), stage.into(), rank(stage).into()],
            ),
        }
        Ok(())
    }
}
