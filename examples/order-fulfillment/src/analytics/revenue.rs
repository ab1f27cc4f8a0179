//! `revenue_per_product`: net revenue per product per minute.

use std::time::Duration;

use runnel::core::{codec, EventFilter};
use runnel::stream::{Agg, Emit, Job, JobBuilder, Sink, StreamError, WindowSpec};
use serde::{Deserialize, Serialize};

use super::{GRACE, OUT_OF_ORDERNESS};
use crate::fulfillment::{PaymentEvent, PAYMENT_CATEGORY};

/// The job's name (its results table is `revenue_per_product_results`).
pub const REVENUE_JOB: &str = "revenue_per_product";
/// The window: one minute of event time.
pub const REVENUE_WINDOW: Duration = Duration::from_secs(60);

/// One line's share of a payment: what it brought (negative for a refund).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct LineRevenue {
    product_id: String,
    cents: i64,
}

/// The lines of a payment as signed amounts: a charge adds, a refund takes away.
fn line_revenue(payment: PaymentEvent) -> Vec<LineRevenue> {
    let (lines, sign) = match payment {
        PaymentEvent::PaymentCharged { lines, .. } => (lines, 1),
        PaymentEvent::PaymentRefunded { lines, .. } => (lines, -1),
    };
    lines
        .into_iter()
        .map(|line| LineRevenue {
            cents: line.total_cents().unwrap_or(i64::MAX).saturating_mul(sign),
            product_id: line.product_id,
        })
        .collect()
}

/// Revenue per product per minute: tumbling one-minute windows on event time, each
/// product's net cents emitted once, when the minute closes, into the job's results
/// table (key: the product id; window start and end; value: cents).
///
/// Why the payment ledger: an order's lines are the only place that says what each
/// product costs, but an order placed is not money received — it may be declined,
/// cancelled, or refunded after a failed shipment. The payment service records each
/// charge and refund with the lines it covered ([`PaymentEvent`]), at the time the money
/// moved, so this job sums exactly what was paid, in the minute it was paid, and a refund
/// takes its lines back in the minute of the refund (a minute's net revenue can be
/// negative). Joining `OrderPlaced` with `OrderConfirmed` instead would count an order
/// only once shipped, in the minute of its confirmation, and a stream job's join cannot
/// feed a window.
pub fn revenue_per_product() -> Result<Job, StreamError> {
    let mut job = JobBuilder::new(REVENUE_JOB);
    job.events(EventFilter {
        categories: vec![PAYMENT_CATEGORY.into()],
        event_types: vec!["PaymentCharged".into(), "PaymentRefunded".into()],
    })
    .event_time(|e| e.recorded_at)
    .out_of_orderness(OUT_OF_ORDERNESS)
    .try_map(|e| Ok(codec::decode::<PaymentEvent>(&e)?))
    .flat_map(line_revenue)
    .key_by(|r: &LineRevenue| r.product_id.clone())
    .window(WindowSpec::tumbling(REVENUE_WINDOW).grace(GRACE))
    .aggregate(Agg::sum(|r: &LineRevenue| r.cents))
    .emit(Emit::OnClose)
    .to(Sink::table());
    job.build()
}
