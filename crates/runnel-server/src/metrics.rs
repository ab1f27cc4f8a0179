//! `/metrics`: every metric the process records through the `metrics` facade, in the
//! Prometheus text format, rendered from the recorder's handle by an ordinary route (no
//! listener of its own: the same port, keys and limits as the rest of the API).
//!
//! [`install_recorder`] installs the process-wide recorder once (`runnel serve` does);
//! [`request_duration`] is the middleware that times every request by route template.
//! [`METRIC_NAMES`] lists every metric name Runnel defines, so the example alert rules and
//! dashboard under `deploy/` can be checked against it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use runnel::app::Shutdown;

use crate::problem::Problem;
use crate::state::AppState;

/// HTTP request duration by route template, method and status (OpenTelemetry's
/// `http.server.request.duration`, in seconds).
pub const METRIC_HTTP_REQUEST_DURATION: &str = "http_server_request_duration_seconds";

/// The `http_route` label of a request no route matched (never the concrete path).
pub const ROUTE_UNMATCHED: &str = "unmatched";

/// Bucket bounds, in seconds, of every histogram whose name ends in `_seconds`: from a
/// millisecond (a cached read) to a minute (a slow handler or saga step).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The `Content-Type` of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric name Runnel records, from the constants next to the code that records
/// them (histograms are exposed with `_bucket`, `_sum` and `_count` suffixes).
pub const METRIC_NAMES: &[&str] = &[
    METRIC_HTTP_REQUEST_DURATION,
    runnel::app::METRIC_TASK_RESTARTS,
    runnel::app::METRIC_TASKS_RUNNING,
    runnel::consumer::layers::METRIC_HANDLED,
    runnel::consumer::layers::METRIC_DUPLICATES,
    runnel::consumer::layers::METRIC_FAILED,
    runnel::consumer::layers::METRIC_RETRIED,
    runnel::consumer::layers::METRIC_DEAD_LETTERED,
    runnel::consumer::layers::METRIC_REDELIVERED,
    runnel::consumer::layers::METRIC_ABANDONED,
    runnel::consumer::layers::METRIC_LEASE_EXTENSIONS,
    runnel::consumer::layers::METRIC_HANDLING_SECONDS,
    runnel::consumer::layers::METRIC_IN_FLIGHT,
    runnel::consumer::layers::METRIC_LAG,
    runnel::consumer::METRIC_LAG_SECONDS,
    runnel::connect::metered::METRIC_APPENDED_EVENTS,
    runnel::connect::metered::METRIC_APPEND_DURATION,
    runnel::connect::metered::METRIC_SENT_MESSAGES,
    runnel::connect::metered::METRIC_SEND_DURATION,
    crate::sampler::METRIC_DEAD_LETTERS_OLDEST_SECONDS,
    crate::sampler::METRIC_SAGA_INSTANCES,
    runnel::consumer::layers::METRIC_REPLAYS_SKIPPED,
    runnel::dead_letter::METRIC_PENDING,
    runnel::dead_letter::METRIC_THRESHOLD_ALERTS,
    runnel::dead_letter::METRIC_ALERT_PUBLISH_FAILURES,
    runnel::dead_letter::METRIC_REPLAYED,
    runnel::dead_letter::METRIC_REPLAY_SKIPPED,
    runnel::dead_letter::METRIC_PURGED,
    runnel::outbox::metrics::METRIC_PUBLISHED,
    runnel::outbox::metrics::METRIC_EVENTS_PUBLISHED,
    runnel::outbox::metrics::METRIC_RELAY_ERRORS,
    runnel::outbox::metrics::METRIC_PENDING,
    runnel::outbox::metrics::METRIC_PARKED,
    runnel::outbox::metrics::METRIC_OLDEST_PENDING_SECONDS,
    runnel::projection::METRIC_APPLIED,
    runnel::projection::METRIC_LAG_EVENTS,
    runnel::projection::METRIC_LAG_SECONDS,
    runnel::projection::METRIC_PARKED,
    runnel::projection::METRIC_TOPIC_DUPLICATES,
    runnel::saga::METRIC_TRANSITIONS,
    runnel::saga::METRIC_PARKED,
    runnel::saga::METRIC_IGNORED,
    runnel::saga::METRIC_STEP_SECONDS,
    runnel::stream::METRIC_RECORDS,
    runnel::stream::METRIC_OUTPUTS,
    runnel::stream::METRIC_LATE,
    runnel::stream::METRIC_WATERMARK,
    runnel::stream::METRIC_LAG_EVENTS,
    runnel::stream::METRIC_STATE_ROWS,
];

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Another `metrics` recorder is already installed in this process: only one can be,
    /// so either use that one's exporter or leave Runnel's `/metrics` off.
    #[error("cannot install the Prometheus recorder: {0}")]
    Install(String),
}

/// The handle of the recorder this crate installed, if it did.
static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the Prometheus recorder as the process-wide `metrics` recorder (histograms
/// whose names end in `_seconds` get [`SECONDS_BUCKETS`]) and returns its handle, for
/// [`ServerConfig::metrics`](crate::ServerConfig::metrics). Calling it again returns the
/// same handle: a process has one recorder.
pub fn install_recorder() -> Result<PrometheusHandle, MetricsError> {
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), SECONDS_BUCKETS)
        .map_err(|e| MetricsError::Install(e.to_string()))?
        .install_recorder()
        .map_err(|e| MetricsError::Install(e.to_string()))?;
    *installed = Some(handle.clone());
    Ok(handle)
}

/// How often histogram samples are folded into their buckets when nobody scrapes (a
/// scrape folds them too), so an unscraped server's memory stays bounded.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Folds histogram samples every [`UPKEEP_INTERVAL`] until `shutdown`.
pub(crate) async fn upkeep(handle: PrometheusHandle, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            _ = shutdown.requested() => return,
        }
    }
}

/// `GET /metrics`: the Prometheus text exposition of every metric recorded so far.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Every metric of the process, Prometheus text exposition format 0.0.4 (404 `metrics-disabled` without a recorder)", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
))]
pub async fn render(State(state): State<AppState>) -> Response {
    match &state.inner.metrics {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
            )],
            handle.render(),
        )
            .into_response(),
        None => Problem::new(
            StatusCode::NOT_FOUND,
            "metrics-disabled",
            "Metrics are not enabled",
            "this server was started without a metrics recorder \
             (ServerConfig::metrics; `runnel serve` always has one)",
        )
        .into_response(),
    }
}

/// Middleware: records [`METRIC_HTTP_REQUEST_DURATION`] for every request, labelled with
/// the route template (`/streams/{stream}`, never the concrete path), the method and the
/// status code. The time is to the response head: for an SSE subscription, until the
/// stream opens.
pub async fn request_duration(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| ROUTE_UNMATCHED.to_string());
    let method = method_label(req.method());
    let response = next.run(req).await;
    let labels = [
        ("http_route", route),
        ("http_request_method", method.to_string()),
        (
            "http_response_status_code",
            response.status().as_u16().to_string(),
        ),
    ];
    metrics::histogram!(METRIC_HTTP_REQUEST_DURATION, &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// A method outside the standard set is `_OTHER`, as OpenTelemetry says: a client
/// cannot make up label values.
pub(crate) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}
