//! `unpaid_orders`: orders not paid within 15 minutes of being placed.

use std::sync::Arc;
use std::time::Duration;

use runnel::core::{codec, EventFilter};
use runnel::stream::{Job, JobBuilder, JoinSpec, Sink, StreamError};
use runnel::Upcasters;
use runnel_core::chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{GRACE, OUT_OF_ORDERNESS};
use crate::fulfillment::{PaymentEvent, PAYMENT_CATEGORY};
use crate::order::{Order, OrderEvent};

/// The job's name (its results table is `unpaid_orders_results`).
pub const UNPAID_JOB: &str = "unpaid_orders";
/// How long after placing an order its payment may come.
pub const PAYMENT_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// A placed order, as the join keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Placed {
    order_id: String,
    customer_id: String,
    total_cents: i64,
    placed_at: DateTime<Utc>,
}

/// A charge, as the join keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Charged {
    payment_id: String,
    charged_at: DateTime<Utc>,
}

/// What the job writes for each order (the value in its results table, keyed by order
/// id): the order, and its payment if one came within [`PAYMENT_DEADLINE`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCheck {
    pub order_id: String,
    pub customer_id: String,
    pub total_cents: i64,
    pub placed_at: DateTime<Utc>,
    /// `false`: no payment within the deadline (an unpaid order).
    pub paid: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<DateTime<Utc>>,
}

/// Orders not paid within [`PAYMENT_DEADLINE`] of being placed: `OrderPlaced` left-joined
/// with the payment ledger's `PaymentCharged`, both keyed by order id, within the
/// deadline and with [`GRACE`]. An order whose charge arrives in time is written at once
/// with `paid: true`; an order without one is written with `paid: false` only once the
/// deadline plus the grace has passed on the watermark — never before, so an order paid
/// at minute 14 is never reported unpaid. Both go to the job's results table, one row per
/// order, which [`ListUnpaidOrders`](super::ListUnpaidOrders) reads for `paid: false`.
///
/// Why the results table and not a stream of `UnpaidOrder-{order}` events: a join emits
/// its pairs as well as its unmatched orders to the same sink, and a stream would hold an
/// `UnpaidOrder` event for every paid order too; a row per order, with the verdict in it,
/// says exactly what happened to each. (A filter after a join would let unmatched orders
/// alone go to a stream.)
///
/// `upcasters` brings older `OrderPlaced` payloads to the current shape.
pub fn unpaid_orders(upcasters: Arc<Upcasters>) -> Result<Job, StreamError> {
    let mut job = JobBuilder::new(UNPAID_JOB);
    let orders = job
        .events(EventFilter {
            categories: vec![<Order as runnel::Aggregate>::TYPE.into()],
            event_types: vec!["OrderPlaced".into()],
        })
        .event_time(|e| e.recorded_at)
        .out_of_orderness(OUT_OF_ORDERNESS)
        .try_map(move |e| {
            let OrderEvent::OrderPlaced {
                customer_id, items, ..
            } = upcasters.decode::<OrderEvent>(&e)?
            else {
                return Err(StreamError::Decode(format!(
                    "event {} is not an OrderPlaced",
                    e.id
                )));
            };
            let total_cents = items
                .iter()
                .try_fold(0i64, |sum, line| sum.checked_add(line.total_cents()?))
                .unwrap_or(i64::MAX);
            Ok(Placed {
                order_id: e.stream.id().to_string(),
                customer_id,
                total_cents,
                placed_at: e.recorded_at,
            })
        })
        .key_by(|p: &Placed| p.order_id.clone());
    let charges = job
        .events(EventFilter {
            categories: vec![PAYMENT_CATEGORY.into()],
            event_types: vec!["PaymentCharged".into()],
        })
        .event_time(|e| e.recorded_at)
        .out_of_orderness(OUT_OF_ORDERNESS)
        .try_map(|e| match codec::decode::<PaymentEvent>(&e)? {
            PaymentEvent::PaymentCharged {
                order_id,
                payment_id,
                ..
            } => Ok((
                order_id,
                Charged {
                    payment_id,
                    charged_at: e.recorded_at,
                },
            )),
            other => Err(StreamError::Decode(format!(
                "event {} is not a PaymentCharged: {other:?}",
                e.id
            ))),
        })
        .key_by(|(order_id, _): &(String, Charged)| order_id.clone())
        .map_values(|(_, charge)| charge);
    orders
        .join(
            charges,
            JoinSpec::left(PAYMENT_DEADLINE).grace(GRACE),
            |_order_id, placed: Option<&Placed>, charge: Option<&Charged>| check(placed, charge),
        )
        .to(Sink::table());
    job.build()
}

/// The verdict for one order (a left join always has the order).
fn check(placed: Option<&Placed>, charge: Option<&Charged>) -> Option<PaymentCheck> {
    let placed = placed?;
    Some(PaymentCheck {
        order_id: placed.order_id.clone(),
        customer_id: placed.customer_id.clone(),
        total_cents: placed.total_cents,
        placed_at: placed.placed_at,
        paid: charge.is_some(),
        payment_id: charge.map(|c| c.payment_id.clone()),
        paid_at: charge.map(|c| c.charged_at),
    })
}
