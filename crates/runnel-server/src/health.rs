//! `/healthz` (the process is alive) and `/readyz` (the store and the bus answer).

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
    (status = 200, description = "The store (and the bus, serving an application) answered within 2 s", body = crate::openapi::schemas::Readiness),
    (status = 503, description = "The store or the bus did not answer (`not-ready`)", content_type = "application/problem+json", body = crate::openapi::schemas::ProblemDoc),
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
    let head = match tokio::time::timeout(READY_TIMEOUT, state.inner.events.head_position()).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => return Err(unavailable(e.to_string())),
        Err(_) => {
            return Err(unavailable(format!(
                "the store did not answer within {}s",
                READY_TIMEOUT.as_secs()
            )))
        }
    };
    // The bus too, when the server serves an application (a broker's round trip; the
    // embedded bus lives in the store checked above).
    if let Some(app) = &state.inner.app {
        let bus = app.bus.url().to_string();
        match tokio::time::timeout(READY_TIMEOUT, app.bus.publisher.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not-ready",
                    "The bus is not reachable",
                    format!("{bus}: {e}"),
                ))
            }
            Err(_) => {
                return Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not-ready",
                    "The bus is not reachable",
                    format!("{bus} did not answer within {}s", READY_TIMEOUT.as_secs()),
                ))
            }
        }
    }
    Ok(Json(
        json!({ "status": "ready", "head_position": head.get() }),
    ))
}
