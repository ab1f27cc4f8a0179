//! Analytics: two [stream jobs](runnel::stream) over `$all`, run by the service beside the
//! read model, with their results read by two queries.
//!
//! | job | reads | window | result | query |
//! |---|---|---|---|---|
//! | [`revenue_per_product`] | `PaymentCharged`, `PaymentRefunded` (the payment ledger) | tumbling 1 min of event time, emitted once at close | the job's results table: net cents per product per minute | [`GetRevenuePerProduct`] |
//! | [`unpaid_orders`] | `OrderPlaced` left-joined with `PaymentCharged` by order id | 15 min after placing, plus the grace | the job's results table: per order, whether it was paid in time | [`ListUnpaidOrders`] |
//!
//! Both use each event's `recorded_at` as its event time (when the order was placed, when
//! the payment was charged), allow [`OUT_OF_ORDERNESS`] between writers that record
//! concurrently, and keep windows open [`GRACE`] past their end. When the store is quiet
//! the job's watermark follows the clock, so a minute's revenue and an unpaid order show
//! up without waiting for the next event. A record later than the grace goes to the job's
//! late output (`StreamLate-{job}`), never silently dropped.

mod results;
mod revenue;
mod unpaid;

pub use results::{
    Analytics, GetRevenuePerProduct, ListUnpaidOrders, ProductRevenue, REVENUE_ROWS_MAX,
    UNPAID_ORDERS_MAX,
};
pub use revenue::{revenue_per_product, REVENUE_JOB, REVENUE_WINDOW};
pub use unpaid::{unpaid_orders, PaymentCheck, PAYMENT_DEADLINE, UNPAID_JOB};

use std::sync::Arc;
use std::time::Duration;

use runnel::app::App;
use runnel::stream::{RunOptions, StreamJob};
use runnel::Upcasters;

/// How far out of order events may be recorded by concurrent writers.
pub const OUT_OF_ORDERNESS: Duration = Duration::from_secs(5);
/// How long past a window's end (on the watermark) its events still count.
pub const GRACE: Duration = Duration::from_secs(30);

type WireError = Box<dyn std::error::Error + Send + Sync>;

/// Registers both jobs as tasks of `app` (`stream-job:revenue_per_product:v1`,
/// `stream-job:unpaid_orders:v1`) and their queries on its query bus; returns the
/// reader of their results. The jobs' tables are registered here already, so the
/// queries work before the jobs' first batch (and in a process that does not run them).
pub async fn wire(app: &mut App, upcasters: &Arc<Upcasters>) -> Result<Analytics, WireError> {
    let analytics = Analytics::open(app.stores(), upcasters).await?;
    app.stream_job(revenue_per_product()?);
    app.stream_job(unpaid_orders(Arc::clone(upcasters))?);
    results::register_queries(app.queries(), analytics.clone())?;
    Ok(analytics)
}

/// Registers the tables of both jobs in `stores` (idempotent).
pub(crate) async fn register_tables(
    stores: &runnel::connect::Stores,
    upcasters: &Arc<Upcasters>,
) -> Result<(), WireError> {
    for job in [
        revenue_per_product()?,
        unpaid_orders(Arc::clone(upcasters))?,
    ] {
        StreamJob::on(stores, job, RunOptions::default())
            .register()
            .await?;
    }
    Ok(())
}
