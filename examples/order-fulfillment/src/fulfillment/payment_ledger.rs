//! The payment service's ledger: each charge and refund it makes, recorded in the event
//! store (stream `Payment-{order}`), so what was paid is a fact of `$all` that the stream
//! jobs ([`crate::analytics`]) read — the bus replies to the saga are gone once consumed.
//!
//! A recorded event's id is derived from the command's idempotency key: the service
//! records before it remembers its answer, so a command redelivered after a crash in
//! between records again, and the store recognises the event instead of keeping two.

use runnel::consumer::HandlerError;
use runnel::core::{
    codec, EventId, EventStore, ExpectedRevision, Metadata, StoreError, StreamName,
};
use runnel_core::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::order::OrderLine;

/// The category of the ledger's streams (`Payment-{order}`).
pub const PAYMENT_CATEGORY: &str = "Payment";

/// What the payment service records. The variant name is the stored event type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum PaymentEvent {
    /// The order's total was charged; `lines` are the order's lines it paid for.
    PaymentCharged {
        order_id: String,
        payment_id: String,
        amount_cents: i64,
        lines: Vec<OrderLine>,
    },
    /// A charge was refunded (fulfillment failed after the payment); `lines` as charged.
    PaymentRefunded {
        order_id: String,
        payment_id: String,
        amount_cents: i64,
        lines: Vec<OrderLine>,
    },
}

impl DomainEvent for PaymentEvent {
    fn event_type(&self) -> &'static str {
        match self {
            PaymentEvent::PaymentCharged { .. } => "PaymentCharged",
            PaymentEvent::PaymentRefunded { .. } => "PaymentRefunded",
        }
    }
}

impl PaymentEvent {
    /// The order paid or refunded.
    pub fn order_id(&self) -> &str {
        match self {
            PaymentEvent::PaymentCharged { order_id, .. }
            | PaymentEvent::PaymentRefunded { order_id, .. } => order_id,
        }
    }

    /// The ledger entry for a payment command the service answered `answer_type`
    /// (`PaymentCharged`, `PaymentRefunded`), `None` for any other answer (a declined
    /// card records nothing). `command` is the saga's command body.
    pub fn of_answer(answer_type: &str, command: &serde_json::Value) -> Option<Self> {
        let order_id = command["order_id"].as_str()?.to_string();
        let payment_id = format!("pay-{order_id}");
        let amount_cents = command["total_cents"].as_i64().unwrap_or(0);
        let lines: Vec<OrderLine> =
            serde_json::from_value(command["items"].clone()).unwrap_or_default();
        match answer_type {
            "PaymentCharged" => Some(PaymentEvent::PaymentCharged {
                order_id,
                payment_id,
                amount_cents,
                lines,
            }),
            "PaymentRefunded" => Some(PaymentEvent::PaymentRefunded {
                order_id,
                payment_id,
                amount_cents,
                lines,
            }),
            _ => None,
        }
    }
}

/// Records `event` for the command with idempotency key `key` (once, whatever the
/// redeliveries).
pub async fn record(
    events: &dyn EventStore,
    key: &str,
    event: &PaymentEvent,
) -> Result<(), HandlerError> {
    let stream = StreamName::new(format!("{PAYMENT_CATEGORY}-{}", event.order_id()))
        .map_err(HandlerError::permanent)?;
    let id = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("order-fulfillment/payments/{key}").as_bytes(),
    );
    let new = codec::encode(event, Metadata::default())
        .map_err(HandlerError::permanent)?
        .with_id(EventId::from(id));
    match events
        .append(&stream, ExpectedRevision::Any, vec![new])
        .await
    {
        Ok(_) | Err(StoreError::DuplicateEventId { .. }) => Ok(()),
        Err(e) => Err(HandlerError::retryable(e)),
    }
}
