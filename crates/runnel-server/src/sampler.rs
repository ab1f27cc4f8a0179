//! Gauges of what the stores hold, sampled every [`SAMPLE_INTERVAL`] by a server that has
//! an application and metrics: the dead letters waiting and the oldest one's age, the
//! outbox backlog, and saga instances by status. (Consumers, projections and the outbox
//! relay record their own gauges as they run; these are the ones nothing else records in
//! a process that only serves.)

use std::time::Duration;

use chrono::Utc;
use runnel::app::Shutdown;
use runnel_core::dead_letter::DeadLetterFilter;

use crate::application::Application;

/// How often the stores are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(15);
/// Dead letters not replayed yet (labelled `scope="total"`, like the threshold monitor's).
pub const METRIC_DEAD_LETTERS_PENDING: &str = runnel::dead_letter::METRIC_PENDING;
/// Age of the oldest dead letter not replayed yet, in seconds (0 when there is none).
pub const METRIC_DEAD_LETTERS_OLDEST_SECONDS: &str = "runnel_dead_letters_oldest_age_seconds";
/// Saga and process-manager instances, by `kind` and `status`.
pub const METRIC_SAGA_INSTANCES: &str = "runnel_saga_instances";

/// Samples once.
pub async fn sample(app: &Application) {
    let pending = DeadLetterFilter::pending();
    match app.stores.dead_letters.count(&pending).await {
        Ok(n) => metrics::gauge!(METRIC_DEAD_LETTERS_PENDING, "scope" => "total").set(n as f64),
        Err(e) => tracing::debug!(error = %e, "sampling dead letters failed"),
    }
    match app.stores.dead_letters.list(&pending, None, 1).await {
        Ok(first) => {
            let age = first
                .first()
                .map(|d| {
                    (Utc::now() - d.dead_lettered_at).num_milliseconds().max(0) as f64 / 1000.0
                })
                .unwrap_or(0.0);
            metrics::gauge!(METRIC_DEAD_LETTERS_OLDEST_SECONDS).set(age);
        }
        Err(e) => tracing::debug!(error = %e, "sampling dead letters failed"),
    }
    if let Ok(outbox) = app.stores.outbox().await {
        match outbox.status().await {
            Ok(status) => {
                use runnel::outbox::metrics as m;
                metrics::gauge!(m::METRIC_PENDING).set(status.pending as f64);
                metrics::gauge!(m::METRIC_PARKED).set(status.parked as f64);
                metrics::gauge!(m::METRIC_OLDEST_PENDING_SECONDS)
                    .set(status.oldest_pending_age(Utc::now()).as_secs_f64());
            }
            Err(e) => tracing::debug!(error = %e, "sampling the outbox failed"),
        }
    }
    match app.stores.processors.count_by_status().await {
        Ok(counts) => {
            for c in counts {
                metrics::gauge!(
                    METRIC_SAGA_INSTANCES,
                    "kind" => c.kind,
                    "status" => c.status.as_str()
                )
                .set(c.count as f64);
            }
        }
        Err(e) => tracing::debug!(error = %e, "sampling saga instances failed"),
    }
}

/// Samples every [`SAMPLE_INTERVAL`] until `shutdown`.
pub(crate) async fn run(app: Application, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => sample(&app).await,
            _ = shutdown.requested() => return,
        }
    }
}
