//! The outbox over HTTP: its backlog, and retrying parked rows.

use axum::extract::State;
use axum::{Extension, Json};
use chrono::Utc;
use runnel_core::TopicName;
use serde::Deserialize;
use serde_json::Value;

use crate::auth::Caller;
use crate::extract::JsonOrEmpty;
use crate::problem::Problem;
use crate::state::AppState;

async fn outbox(
    state: &AppState,
) -> Result<std::sync::Arc<dyn runnel_core::outbox::OutboxStore>, Problem> {
    state.app()?.stores.outbox().await.map_err(|e| {
        Problem::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            "The outbox cannot be opened",
            e.to_string(),
        )
    })
}

/// `GET /admin/outbox`: pending and parked rows, the oldest pending one's age, per topic.
pub async fn status(State(state): State<AppState>) -> Result<Json<Value>, Problem> {
    let status = outbox(&state).await?.status().await?;
    let age = status.oldest_pending_age(Utc::now()).as_secs_f64();
    let mut body = serde_json::to_value(&status).unwrap_or(Value::Null);
    body["oldest_pending_age_seconds"] = age.into();
    Ok(Json(body))
}

/// Body of `POST /admin/outbox/retry-parked`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryParkedIn {
    /// Only this topic's parked rows (all without it).
    topic: Option<String>,
}

/// `POST /admin/outbox/retry-parked`: makes parked rows claimable again.
pub async fn retry_parked(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonOrEmpty(body): JsonOrEmpty<RetryParkedIn>,
) -> Result<Json<Value>, Problem> {
    let topic = body
        .topic
        .as_deref()
        .map(TopicName::new)
        .transpose()
        .map_err(|e| Problem::bad_request(format!("topic: {e}")))?;
    let retried = outbox(&state).await?.retry_parked(topic.as_ref()).await?;
    tracing::info!(
        target: "runnel_server::audit",
        key = %caller.name, retried, topic = ?topic.as_ref().map(|t| t.to_string()), "outbox parked rows retried"
    );
    Ok(Json(serde_json::json!({ "retried": retried })))
}
