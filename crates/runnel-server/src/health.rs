//! `/healthz` (the process is alive) and `/readyz` (the store answers).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::problem::Problem;
use crate::state::AppState;

/// How long `/readyz` waits for the store before answering 503.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: 200 while the process serves requests.
#[utoipa::path(get, path = "/healthz", responses(
    (status = 200, description = "The process serves requests", body = crate::openapi::schemas::Liveness),
))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "alive" }))
}

/// `GET /readyz`: 200 when the store answers within [`READY_TIMEOUT`], else 503.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "The store answered within 2 s", body = crate::openapi::schemas::Readiness),
    (status = 503, description = "The store did not answer (`not-ready`)", content_type = "application/problem+json", body = crate::openapi::schemas::ProblemDoc),
))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, Problem> {
    let unavailable = |detail: String| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "The store is not reachable",
            detail,
        )
    };
    match tokio::time::timeout(READY_TIMEOUT, state.inner.events.head_position()).await {
        Ok(Ok(head)) => Ok(Json(
            json!({ "status": "ready", "head_position": head.get() }),
        )),
        Ok(Err(e)) => Err(unavailable(e.to_string())),
        Err(_) => Err(unavailable(format!(
            "the store did not answer within {}s",
            READY_TIMEOUT.as_secs()
        ))),
    }
}
