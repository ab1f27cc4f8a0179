//! Queries by name: `POST /queries/{name}` runs the handler registered on the
//! application's query bus under `name` with the JSON body as the query and answers 200
//! with its response.
//!
//! Read your own writes: with `Runnel-Min-Position: P` (the `position` a command or an
//! append answered with), the query runs only once the read models have applied `$all` up
//! to `P` — every current projection that reads `$all`, or only those named in
//! `Runnel-Projections: a,b`. It waits at most `Prefer: wait=N` seconds
//! ([`MIN_POSITION_WAIT_DEFAULT`] without it); past that, 503 `read-model-behind` with
//! `Retry-After`. A projection that is paused or faulted answers 409 at once: it will not
//! get there on its own.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use runnel::projection::{wait_for_position, WaitError};
use runnel_core::projection::VersionRole;
use runnel_core::{Metadata, Position};
use serde_json::Value;

use crate::commands::{dispatch_problem, prefer_wait};
use crate::extract::{JsonBody, PathParams};
use crate::problem::Problem;
use crate::state::AppState;

/// The header asking for read-your-writes.
pub const MIN_POSITION_HEADER: &str = "runnel-min-position";
/// The header naming the projections to wait for.
pub const PROJECTIONS_HEADER: &str = "runnel-projections";
/// How long a query with `Runnel-Min-Position` waits for the read models by default.
pub const MIN_POSITION_WAIT_DEFAULT: Duration = Duration::from_secs(5);
/// Most projections one request may name.
pub const PROJECTIONS_NAMED_MAX: usize = 32;

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Problem> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| Problem::bad_request(format!("the {name} header is not ASCII")))
        })
        .transpose()
}

/// `POST /queries/{name}`.
pub async fn run(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    headers: HeaderMap,
    JsonBody(payload): JsonBody<Value>,
) -> Result<Response, Problem> {
    let app = state.app()?;
    if !app.queries.contains(&name) {
        return Err(dispatch_problem(
            &runnel::DispatchError::NoHandler { name: name.clone() },
            "query",
        ));
    }
    let min_position = header_text(&headers, MIN_POSITION_HEADER)?
        .map(|text| {
            text.trim().parse::<u64>().map(Position).map_err(|_| {
                Problem::bad_request(format!(
                    "Runnel-Min-Position {text:?} is not a position (a whole number)"
                ))
            })
        })
        .transpose()?;
    let named: Option<BTreeSet<String>> = header_text(&headers, PROJECTIONS_HEADER)?.map(|t| {
        t.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    if named
        .as_ref()
        .is_some_and(|n| n.len() > PROJECTIONS_NAMED_MAX)
    {
        return Err(Problem::bad_request(format!(
            "Runnel-Projections names more than {PROJECTIONS_NAMED_MAX} projections"
        )));
    }
    if let Some(position) = min_position {
        let wait = prefer_wait(&headers)?.unwrap_or(MIN_POSITION_WAIT_DEFAULT);
        wait_for_read_models(&state, position, named, wait).await?;
    }
    let output = app
        .queries
        .dispatch_json(&name, payload, Metadata::default())
        .await
        .map_err(|e| dispatch_problem(&e, "query"))?;
    Ok(Json(output).into_response())
}

async fn wait_for_read_models(
    state: &AppState,
    position: Position,
    named: Option<BTreeSet<String>>,
    wait: Duration,
) -> Result<(), Problem> {
    let store = &state.app()?.stores.projections;
    let names: BTreeSet<String> = match named {
        Some(names) => names,
        None => {
            // Every current projection of `$all` (those reading a topic have no position).
            let topic: BTreeSet<String> = store
                .topic_sources(None)
                .await?
                .into_iter()
                .map(|s| s.name)
                .collect();
            store
                .states(None)
                .await?
                .into_iter()
                .filter(|s| s.role == VersionRole::Current && !topic.contains(&s.name))
                .map(|s| s.name)
                .collect()
        }
    };
    let deadline = tokio::time::Instant::now() + wait;
    for name in names {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match wait_for_position(store.as_ref(), &name, position, left).await {
            Ok(()) => {}
            Err(WaitError::Timeout {
                name,
                wanted,
                reached,
                ..
            }) => {
                return Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "read-model-behind",
                    "The read model has not reached the position yet",
                    format!(
                        "projection {name} has applied $all up to {reached}, not yet {wanted}; \
                         retry, or wait longer with Prefer: wait=N"
                    ),
                )
                .with("projection", name)
                .with("reached", reached)
                .with("wanted", wanted)
                .retry_after(1));
            }
            Err(WaitError::Unknown(name)) => {
                return Err(Problem::not_found(
                    "unknown-projection",
                    format!("no projection named {name:?} is registered"),
                ))
            }
            Err(e @ (WaitError::ReadsTopic { .. } | WaitError::Stopped { .. })) => {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "read-model-stopped",
                    "The read model will not reach the position on its own",
                    e.to_string(),
                ))
            }
            Err(WaitError::Store(e)) => return Err(e.into()),
            Err(e) => return Err(Problem::bad_request(e.to_string())),
        }
    }
    Ok(())
}
