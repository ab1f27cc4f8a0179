//! [`MetricsLayer`]: consumer metrics through the `metrics` facade.

use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::consumer::context::HandlerContext;
use crate::consumer::error::{ErrorKind, HandlerError};
use crate::consumer::handler::{BoxFuture, Outcome};

/// Deliveries handled successfully.
pub const METRIC_HANDLED: &str = "runnel_consumer_handled_total";
/// Deliveries skipped as duplicates.
pub const METRIC_DUPLICATES: &str = "runnel_consumer_duplicates_total";
/// Failed attempts.
pub const METRIC_FAILED: &str = "runnel_consumer_failed_total";
/// In-process retries.
pub const METRIC_RETRIED: &str = "runnel_consumer_retried_total";
/// Dead-lettered deliveries.
pub const METRIC_DEAD_LETTERED: &str = "runnel_consumer_dead_lettered_total";
/// Deliveries nacked to come again.
pub const METRIC_REDELIVERED: &str = "runnel_consumer_redelivered_total";
/// Deliveries left unsettled.
pub const METRIC_ABANDONED: &str = "runnel_consumer_abandoned_total";
/// Lease extensions.
pub const METRIC_LEASE_EXTENSIONS: &str = "runnel_consumer_lease_extensions_total";
/// Handling time, in seconds.
pub const METRIC_HANDLING_SECONDS: &str = "runnel_consumer_handling_seconds";
/// Deliveries in flight.
pub const METRIC_IN_FLIGHT: &str = "runnel_consumer_in_flight";
/// Consumer lag, in messages.
pub const METRIC_LAG: &str = "runnel_consumer_lag_messages";
/// Dead-letter replays meant for another group, acknowledged without handling (counted by
/// the consumer's runtime, which skips them before the layers).
pub const METRIC_REPLAYS_SKIPPED: &str = "runnel_consumer_replays_skipped_total";

/// Records consumer metrics through the `metrics` facade (any recorder: Prometheus,
/// StatsD, ...) for every delivery that passes. Every metric is labelled `topic` and
/// `group`. Install the recorder before deliveries flow.
///
/// | name | kind | meaning |
/// |---|---|---|
/// | `runnel_consumer_handled_total` | counter | deliveries handled successfully |
/// | `runnel_consumer_duplicates_total` | counter | deliveries skipped as already handled |
/// | `runnel_consumer_failed_total` | counter | failed attempts (each one) |
/// | `runnel_consumer_retried_total` | counter | in-process retries |
/// | `runnel_consumer_dead_lettered_total` | counter | deliveries stored as dead letters |
/// | `runnel_consumer_redelivered_total` | counter | deliveries handed back (nack) to come again |
/// | `runnel_consumer_abandoned_total` | counter | deliveries left unsettled (shutdown, lease lost) |
/// | `runnel_consumer_lease_extensions_total` | counter | lease extensions before long backoffs |
/// | `runnel_consumer_handling_seconds` | histogram | time from the delivery's turn to its outcome |
/// | `runnel_consumer_in_flight` | gauge | deliveries being handled now |
/// | `runnel_consumer_replays_skipped_total` | counter | dead-letter replays for another group, acked without handling (by the runtime, before the layers) |
/// | `runnel_consumer_lag_messages` | gauge | messages not yet delivered to the group, where the transport can tell (see [`LagProbe`](crate::consumer::LagProbe)) |
#[derive(Clone, Copy, Debug, Default)]
pub struct MetricsLayer;

impl MetricsLayer {
    /// The layer.
    pub fn new() -> Self {
        MetricsLayer
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics { inner }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Clone, Debug)]
pub struct Metrics<S> {
    inner: S,
}

/// Decrements the in-flight gauge however the delivery ends (even if cancelled).
struct InFlight(metrics::Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl<S> Service<HandlerContext> for Metrics<S>
where
    S: Service<HandlerContext, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = BoxFuture<Result<Outcome, HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ctx: HandlerContext) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let labels = [
                ("topic", ctx.topic().to_string()),
                ("group", ctx.group().to_string()),
            ];
            let gauge = metrics::gauge!(METRIC_IN_FLIGHT, &labels);
            gauge.increment(1.0);
            let in_flight = InFlight(gauge);
            let started = Instant::now();

            let result = inner.oneshot(ctx.clone()).await;

            metrics::histogram!(METRIC_HANDLING_SECONDS, &labels)
                .record(started.elapsed().as_secs_f64());
            drop(in_flight);
            let (failed, retries, extensions) = {
                let log = ctx.log();
                (log.failed_attempts, log.retries, log.lease_extensions)
            };
            let count = |name: &'static str, n: u32| {
                if n > 0 {
                    metrics::counter!(name, &labels).increment(u64::from(n));
                }
            };
            count(METRIC_FAILED, failed);
            count(METRIC_RETRIED, retries);
            count(METRIC_LEASE_EXTENSIONS, extensions);
            match &result {
                Ok(Outcome::Handled) => count(METRIC_HANDLED, 1),
                Ok(Outcome::Duplicate { .. }) => count(METRIC_DUPLICATES, 1),
                Ok(Outcome::DeadLettered { .. }) => count(METRIC_DEAD_LETTERED, 1),
                Err(e) if e.kind() == ErrorKind::Abandoned => count(METRIC_ABANDONED, 1),
                // Redeliver, or a failure with no dead-letter layer: the runtime nacks it.
                Err(_) => count(METRIC_REDELIVERED, 1),
            }
            result
        })
    }
}
