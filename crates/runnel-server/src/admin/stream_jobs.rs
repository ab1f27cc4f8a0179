//! Stream jobs (`runnel::stream`) over HTTP: what `runnel processors` does, for dashboards
//! and operators. A job runs as the projection `stream_job_{job}`; these routes speak of
//! the job by its own name.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, SecondsFormat, Utc};
use runnel::stream::{self, JobStatus, Millis};
use runnel_core::projection::{ProjectionStore, VersionRole};
use runnel_core::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::extract::PathParams;
use crate::problem::Problem;
use crate::state::AppState;

/// A job's status as the API and `runnel --json processors` show it: every figure of
/// [`JobStatus`], times both as RFC 3339 and as milliseconds since the epoch.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct JobView {
    /// The job (without the `stream_job_` prefix of its projection).
    pub name: String,
    /// The generation running (a reset makes a new one).
    pub version: u32,
    /// `running`, `paused` or `faulted`.
    pub status: String,
    /// The last `$all` position applied.
    pub position: u64,
    /// The head of `$all`.
    pub head: u64,
    /// Positions of `$all` not applied yet.
    pub lag_events: u64,
    /// The job's watermark, RFC 3339 (`null` until every source has seen an event).
    pub watermark: Option<String>,
    /// The watermark in milliseconds since the epoch.
    pub watermark_ms: Option<i64>,
    /// Per source (in the order the job declares them), the largest event time seen,
    /// RFC 3339 (`null`: none yet).
    pub source_times: Vec<Option<String>>,
    /// The same in milliseconds since the epoch.
    pub source_times_ms: Vec<Option<i64>>,
    /// Records processed since the generation started.
    pub records: u64,
    /// Results emitted since the generation started.
    pub outputs: u64,
    /// Late records routed to the late output since the generation started.
    pub late: u64,
    /// Rows in the job's state table (windows, join buffers, tables; the meta row is not
    /// counted).
    pub state_rows: u64,
    /// Bytes of those rows.
    pub state_bytes: u64,
    /// The error the job is faulted on.
    pub last_error: Option<String>,
    /// The process holding the job's lease (`null`: no one runs it now).
    pub lease_owner: Option<String>,
}

/// Milliseconds since the epoch as RFC 3339 (`None` outside chrono's range).
pub fn rfc3339_ms(ms: Millis) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

impl From<JobStatus> for JobView {
    fn from(s: JobStatus) -> JobView {
        JobView {
            watermark: s.watermark.and_then(rfc3339_ms),
            watermark_ms: s.watermark,
            source_times: s
                .source_times
                .iter()
                .map(|t| t.and_then(rfc3339_ms))
                .collect(),
            source_times_ms: s.source_times,
            name: s.name,
            version: s.version,
            status: s.status,
            position: s.position.get(),
            head: s.head.get(),
            lag_events: s.lag_events,
            records: s.records,
            outputs: s.outputs,
            late: s.late,
            state_rows: s.state_rows,
            state_bytes: s.state_bytes,
            last_error: s.last_error,
            lease_owner: s.lease_owner,
        }
    }
}

/// `GET /admin/processors`.
#[derive(Serialize, ToSchema)]
pub struct JobList {
    /// Every stream job of the store, by name.
    pub processors: Vec<JobView>,
}

/// `POST /admin/processors/{name}/reset` (202).
#[derive(Serialize, ToSchema)]
pub struct ResetStarted {
    pub name: String,
    /// The new generation, filled from the start of `$all`.
    pub version: u32,
    /// The generation it replaces once caught up.
    pub previous_version: u32,
    /// `false`: a reset was under way already (this is its generation).
    pub created: bool,
    /// Where its progress is (`/admin/processors/{name}`).
    pub progress: String,
}

fn unknown(name: &str) -> Problem {
    Problem::not_found(
        "unknown-processor",
        format!(
            "no stream job named {name:?} runs on this store (GET /admin/processors lists them)"
        ),
    )
}

/// The generation of job `name` that serves now (the newest live one if none is current
/// yet); `None` when no such job runs on the store.
pub async fn current_version(
    projections: &dyn ProjectionStore,
    name: &str,
) -> Result<Option<u32>, StoreError> {
    let states = projections
        .states(Some(&format!("{}{name}", stream::JOB_PREFIX)))
        .await?;
    let live = || states.iter().filter(|s| s.role != VersionRole::Retired);
    Ok(live()
        .find(|s| s.role == VersionRole::Current)
        .or_else(|| live().max_by_key(|s| s.version))
        .map(|s| s.version))
}

/// Every job's status, by name.
pub async fn statuses(stores: &runnel::connect::Stores) -> Result<Vec<JobView>, StoreError> {
    let mut views = Vec::new();
    for name in stream::processor_names(stores.projections.as_ref()).await? {
        // A job dropped between the two reads is left out.
        if let Some(s) = stream::job_status(stores, &name).await? {
            views.push(s.into());
        }
    }
    Ok(views)
}

/// `GET /admin/processors`: every stream job with its position, lag, watermark, late
/// records and state size.
#[utoipa::path(get, path = "/admin/processors",
    responses((status = 200, description = "Every stream job with its position, lag, watermark, late records and state size", body = JobList))
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<JobList>, Problem> {
    let app = state.app()?;
    Ok(Json(JobList {
        processors: statuses(&app.stores).await?,
    }))
}

/// `GET /admin/processors/{name}`: one job's status.
#[utoipa::path(get, path = "/admin/processors/{name}",
    params(("name" = String, Path, description = "The stream job (404 `unknown-processor` if no such job runs on the store)")),
    responses((status = 200, description = "The job's position, lag, watermark, source times, counters, state size and lease", body = JobView))
)]
pub async fn status(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<Json<JobView>, Problem> {
    let app = state.app()?;
    let s = stream::job_status(&app.stores, &name)
        .await?
        .ok_or_else(|| unknown(&name))?;
    Ok(Json(s.into()))
}

/// `POST /admin/processors/{name}/reset`: starts the job over. A new generation with empty
/// state processes `$all` from the start beside the current one and replaces it once
/// caught up; its results are emitted again.
#[utoipa::path(post, path = "/admin/processors/{name}/reset",
    params(("name" = String, Path, description = "The stream job (404 `unknown-processor` if no such job runs on the store; nothing changes)")),
    responses((status = 202, description = "The new generation is being built by the services running the job", body = ResetStarted))
)]
pub async fn reset(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams(name): PathParams<String>,
) -> Result<(StatusCode, Json<ResetStarted>), Problem> {
    let app = state.app()?;
    let previous_version = current_version(app.stores.projections.as_ref(), &name)
        .await?
        .ok_or_else(|| unknown(&name))?;
    let started = stream::reset(app.stores.projections.as_ref(), &name).await?;
    tracing::info!(
        target: "runnel_server::audit",
        key = %caller.name, processor = %name, version = started.version, "stream job reset"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(ResetStarted {
            progress: format!("/admin/processors/{name}"),
            name,
            version: started.version,
            previous_version,
            created: started.created,
        }),
    ))
}
