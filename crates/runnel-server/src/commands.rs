//! Commands by name: `POST /commands/{name}` runs the handler registered on the
//! application's command bus under `name` with the JSON body as the command.
//!
//! - Without `Prefer: wait=N`, the answer is 202 with the command id (which is also the
//!   correlation id of everything the command causes) as soon as the command is accepted;
//!   its outcome is at `GET /commands/{name}/{id}` for [`OUTCOME_TTL`].
//! - With `Prefer: wait=N` (N seconds, at most [`WAIT_MAX`]), the answer is the outcome
//!   (200 with the handler's output, or the problem) if it comes within N seconds, else 202.
//! - `Idempotency-Key: K` (1..=[`IDEMPOTENCY_KEY_LEN_MAX`] bytes) makes the command id
//!   derive from the caller's key name and K: sending the same key again runs nothing and
//!   answers with the first outcome (header `Idempotent-Replayed: true`), or 202 while the
//!   first is still running. The key is kept for [`OUTCOME_TTL`] in the application's dedup
//!   store, so it holds across restarts and across server processes on one database.
//!
//! A refusal (invalid payload, a domain rejection) is an outcome like any other and is
//! kept; a transient failure (the store unavailable) is not: the key is released so the
//! same request may be sent again.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use runnel::{CommandEnvelope, DispatchError};
use runnel_core::idempotency::DedupClaim;
use runnel_core::{Metadata, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::Caller;
use crate::extract::{JsonBody, PathParams};
use crate::problem::Problem;
use crate::state::AppState;

/// Longest `Idempotency-Key`, in bytes.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;
/// Longest wait a `Prefer: wait=N` may ask for.
pub const WAIT_MAX: Duration = Duration::from_secs(60);
/// How long an outcome (and an idempotency key) is kept.
pub const OUTCOME_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a running command holds its key: a server that dies mid-command leaves the
/// key claimable again after this.
pub const RUNNING_LOCK_TTL: Duration = Duration::from_secs(300);
/// The header naming the idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// What `POST /commands/{name}` answers with 202, and `GET /commands/{name}/{id}` while
/// the command runs.
#[derive(Debug, Serialize, Deserialize)]
pub struct Accepted {
    pub command_id: String,
    /// The correlation id of the events and messages the command causes.
    pub correlation_id: String,
    pub status: &'static str,
}

/// A kept outcome: the handler's output or the problem it ended with.
#[derive(Debug, Serialize, Deserialize)]
struct Outcome {
    /// 200 for an output, else the problem's status.
    status: u16,
    body: Value,
}

/// What 200 carries.
#[derive(Debug, Serialize)]
struct Completed<'a> {
    command_id: &'a str,
    correlation_id: &'a str,
    status: &'static str,
    output: Value,
}

fn dedup_key(name: &str, command_id: &str) -> String {
    format!("runnel-http/commands/{name}/{command_id}")
}

/// The command id for an idempotency key: a UUID from the caller's key name, the
/// command's name and the key, so two callers' keys never collide.
fn command_id_for(caller: &str, name: &str, key: &str) -> String {
    let digest = Sha256::digest(format!("{caller}\u{1f}{name}\u{1f}{key}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Reads `Prefer: wait=N`: `None` without it; a value over [`WAIT_MAX`] is refused.
pub(crate) fn prefer_wait(headers: &HeaderMap) -> Result<Option<Duration>, Problem> {
    for value in headers.get_all("prefer") {
        let text = value
            .to_str()
            .map_err(|_| Problem::bad_request("the Prefer header is not ASCII"))?;
        for pref in text.split(',') {
            let pref = pref.trim();
            if let Some(n) = pref.strip_prefix("wait=") {
                let secs: u64 = n.trim().parse().map_err(|_| {
                    Problem::bad_request(format!(
                        "Prefer: wait={n} is not a whole number of seconds"
                    ))
                })?;
                let wait = Duration::from_secs(secs);
                if wait > WAIT_MAX {
                    return Err(Problem::bad_request(format!(
                        "Prefer: wait={secs} is over the limit of {} seconds",
                        WAIT_MAX.as_secs()
                    ))
                    .with("limit_seconds", WAIT_MAX.as_secs()));
                }
                return Ok(Some(wait));
            }
        }
    }
    Ok(None)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| Problem::bad_request("the Idempotency-Key header is not ASCII"))?;
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_LEN_MAX {
        return Err(Problem::bad_request(format!(
            "Idempotency-Key must be 1..={IDEMPOTENCY_KEY_LEN_MAX} bytes"
        ))
        .with("limit_bytes", IDEMPOTENCY_KEY_LEN_MAX as u64));
    }
    Ok(Some(key.to_string()))
}

/// Whether a handler failure is transient: somewhere in its chain the store was
/// unavailable. Such an outcome is not kept (the same request may be sent again).
fn is_transient(e: &DispatchError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.handler_error().map(|e| {
        let e: &(dyn std::error::Error + 'static) = e;
        e
    });
    while let Some(err) = source {
        if let Some(store) = err.downcast_ref::<StoreError>() {
            if store.is_transient() || matches!(store, StoreError::Closed) {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// The problem a failed dispatch answers with.
pub(crate) fn dispatch_problem(e: &DispatchError, what: &str) -> Problem {
    let detail = e.to_string();
    match e {
        DispatchError::NoHandler { name } => Problem::not_found(
            if what == "command" {
                "unknown-command"
            } else {
                "unknown-query"
            },
            format!("no {what} is registered as {name:?}; GET /catalog lists them"),
        ),
        DispatchError::InvalidPayload { .. } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-payload",
            format!("The body is not a valid {what}"),
            detail,
        ),
        DispatchError::Handler(_) if is_transient(e) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            "The store is unavailable",
            format!("{detail}; nothing was kept, send the same request again"),
        ),
        DispatchError::Handler(_) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            if what == "command" {
                "command-rejected"
            } else {
                "query-failed"
            },
            format!("The {what} handler refused or failed"),
            detail,
        ),
        _ => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "dispatch-failed",
            format!("The {what} could not be dispatched"),
            detail,
        ),
    }
}

fn completed_response(command_id: &str, outcome: Outcome, replayed: bool) -> Response {
    let mut response = if outcome.status == 200 {
        Json(Completed {
            command_id,
            correlation_id: command_id,
            status: "completed",
            output: outcome.body,
        })
        .into_response()
    } else {
        let status =
            StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, outcome.body.to_string()).into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static(crate::problem::PROBLEM_CONTENT_TYPE),
        );
        r
    };
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

fn accepted(command_id: &str, name: &str) -> Response {
    let mut response = (
        StatusCode::ACCEPTED,
        Json(Accepted {
            command_id: command_id.to_string(),
            correlation_id: command_id.to_string(),
            status: "running",
        }),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/commands/{name}/{command_id}")) {
        response
            .headers_mut()
            .insert(axum::http::header::LOCATION, location);
    }
    response
}

/// `POST /commands/{name}`.
pub async fn send(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams(name): PathParams<String>,
    headers: HeaderMap,
    JsonBody(payload): JsonBody<Value>,
) -> Result<Response, Problem> {
    let app = state.app()?;
    let wait = prefer_wait(&headers)?;
    let key = idempotency_key(&headers)?;
    if !app.commands.contains(&name) {
        return Err(dispatch_problem(
            &DispatchError::NoHandler { name: name.clone() },
            "command",
        ));
    }
    let command_id = match &key {
        Some(key) => command_id_for(&caller.name, &name, key),
        None => Uuid::now_v7().to_string(),
    };
    let dedup = app.stores.dedup.clone();
    let dkey = dedup_key(&name, &command_id);
    let token = match dedup.claim(&dkey, RUNNING_LOCK_TTL).await? {
        DedupClaim::Acquired { token } => token,
        DedupClaim::Completed { result } => {
            let outcome: Outcome = serde_json::from_slice(&result).map_err(|e| {
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "outcome-unreadable",
                    "The kept outcome cannot be read",
                    e.to_string(),
                )
            })?;
            return Ok(completed_response(&command_id, outcome, true));
        }
        DedupClaim::InProgress => {
            return match wait {
                Some(wait) => Ok(wait_for_outcome(&state, &name, &command_id, wait)
                    .await?
                    .map_or_else(
                        || accepted(&command_id, &name),
                        |o| completed_response(&command_id, o, true),
                    )),
                None => Ok(accepted(&command_id, &name)),
            };
        }
    };
    let commands = app.commands.clone();
    let metadata = Metadata {
        correlation_id: Some(command_id.clone()),
        causation_id: Some(command_id.clone()),
        ..Metadata::default()
    };
    let envelope = CommandEnvelope::new(payload)
        .with_command_id(command_id.clone())
        .with_metadata(metadata);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let task_name = name.clone();
    let task_id = command_id.clone();
    let who = caller.name.clone();
    // The command runs on its own task: a client that disconnects or stops waiting does
    // not cancel it half-way, and its outcome is kept either way.
    tokio::spawn(async move {
        let result = commands.dispatch_json_envelope(&task_name, envelope).await;
        let outcome = match &result {
            Ok(output) => Some(Outcome {
                status: 200,
                body: output.clone(),
            }),
            Err(e) if is_transient(e) => None,
            Err(e) => {
                let problem = dispatch_problem(e, "command");
                Some(Outcome {
                    status: problem.status.as_u16(),
                    body: problem.body(),
                })
            }
        };
        tracing::info!(
            target: "runnel_server::audit",
            key = %who, command = %task_name, command_id = %task_id,
            ok = result.is_ok(), "command"
        );
        match &outcome {
            Some(o) => {
                let bytes = serde_json::to_vec(o).unwrap_or_default();
                if let Err(e) = dedup.complete(&dkey, &token, bytes, OUTCOME_TTL).await {
                    tracing::warn!(error = %e, command_id = %task_id, "the command's outcome could not be kept");
                }
            }
            None => {
                if let Err(e) = dedup.release(&dkey, &token).await {
                    tracing::warn!(error = %e, command_id = %task_id, "the command's key could not be released");
                }
            }
        }
        let answer = match (result, outcome) {
            (_, Some(o)) => Ok(o),
            (Err(e), None) => Err(dispatch_problem(&e, "command")),
            (Ok(_), None) => unreachable!("an output is always an outcome"),
        };
        let _ = done_tx.send(answer);
    });
    let Some(wait) = wait else {
        return Ok(accepted(&command_id, &name));
    };
    match tokio::time::timeout(wait, done_rx).await {
        Ok(Ok(Ok(outcome))) => Ok(completed_response(&command_id, outcome, false)),
        Ok(Ok(Err(problem))) => Err(problem),
        Ok(Err(_)) => Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "command-task-failed",
            "The command's task ended without an outcome",
            "the handler panicked; see the server's log",
        )),
        Err(_) => Ok(accepted(&command_id, &name)),
    }
}

/// Polls the kept outcome of `command_id` until it is there or `wait` passes.
async fn wait_for_outcome(
    state: &AppState,
    name: &str,
    command_id: &str,
    wait: Duration,
) -> Result<Option<Outcome>, Problem> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(outcome) = kept_outcome(state, name, command_id).await? {
            return Ok(Some(outcome));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The kept outcome, `None` while running; 404 when unknown (never sent, or older than
/// [`OUTCOME_TTL`]).
async fn kept_outcome(
    state: &AppState,
    name: &str,
    command_id: &str,
) -> Result<Option<Outcome>, Problem> {
    let app = state.app()?;
    let key = dedup_key(name, command_id);
    // A claim is the dedup store's only read: a claim that acquires means nobody ran it,
    // and is released at once.
    match app
        .stores
        .dedup
        .claim(&key, Duration::from_millis(1))
        .await?
    {
        DedupClaim::Completed { result } => Ok(serde_json::from_slice(&result).ok()),
        DedupClaim::InProgress => Ok(None),
        DedupClaim::Acquired { token } => {
            let _ = app.stores.dedup.release(&key, &token).await;
            Err(Problem::not_found(
                "unknown-command-id",
                format!(
                    "no command {command_id} of {name:?} ran here within the last {} hours",
                    OUTCOME_TTL.as_secs() / 3600
                ),
            ))
        }
    }
}

/// `GET /commands/{name}/{id}`: the outcome of a command sent earlier (202 while it runs).
pub async fn outcome(
    State(state): State<AppState>,
    PathParams((name, command_id)): PathParams<(String, String)>,
) -> Result<Response, Problem> {
    if command_id.is_empty() || command_id.len() > 64 {
        return Err(Problem::bad_request("a command id is 1..=64 bytes"));
    }
    match kept_outcome(&state, &name, &command_id).await? {
        Some(outcome) => Ok(completed_response(&command_id, outcome, false)),
        None => Ok(accepted(&command_id, &name)),
    }
}

/// `GET /commands`: the names of the registered commands.
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, Problem> {
    let app = state.app()?;
    Ok(Json(
        serde_json::json!({ "commands": app.commands.names() }),
    ))
}
