//! Sagas and projections over HTTP: what `runnel sagas` and `runnel projections` do, for
//! dashboards and operators.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use runnel::projection::admin::{self as padmin, AdminError, RebuildProgress};
use runnel::saga::admin::request_action;
use runnel::saga::{OperatorAction, SagaError};
use runnel_core::clock::SystemClock;
use runnel_core::processor::{InstanceFilter, InstanceRecord, InstanceStatus, PROCESSOR_BATCH_MAX};
use serde::Deserialize;
use serde_json::Value;

use super::sees_bodies;
use crate::auth::Caller;
use crate::extract::{PathParams, QueryParams};
use crate::limits::PAGE_LIMIT_DEFAULT;
use crate::problem::Problem;
use crate::state::AppState;

/// Most history lines `GET /admin/sagas/{kind}/{id}` returns.
pub const HISTORY_LINES_MAX: usize = 1000;

fn saga_problem(e: SagaError) -> Problem {
    match e {
        SagaError::Store(e) => e.into(),
        SagaError::UnknownInstance { kind, id } => Problem::not_found(
            "unknown-saga-instance",
            format!("no instance {id:?} of {kind:?}"),
        ),
        e @ SagaError::NotApplicable { .. } => Problem::new(
            StatusCode::CONFLICT,
            "not-applicable",
            "The action does not apply to the instance now",
            e.to_string(),
        ),
        e => Problem::new(
            StatusCode::CONFLICT,
            "saga-refused",
            "The saga refused the action",
            e.to_string(),
        ),
    }
}

fn json_or_text(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// An instance as the API shows it; its data and progress only to operators and admins.
fn instance_view(r: &InstanceRecord, bodies: bool) -> Value {
    let mut v = serde_json::json!({
        "kind": r.kind,
        "id": r.id,
        "definition_version": r.definition_version,
        "correlation": r.correlation,
        "state": r.state,
        "status": r.status.as_str(),
        "version": r.version,
        "last_error": r.last_error,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "finished_at": r.finished_at,
        "redacted": !bodies,
    });
    if bodies {
        v["data"] = json_or_text(&r.data);
        v["progress"] = json_or_text(&r.progress);
    }
    v
}

/// Query of `GET /admin/sagas`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaListIn {
    kind: Option<String>,
    status: Option<String>,
    /// The cursor: `kind/id` of the last instance of the previous page.
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /admin/sagas`: counts by kind and status, and one page of instances.
pub async fn sagas(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    QueryParams(q): QueryParams<SagaListIn>,
) -> Result<Json<Value>, Problem> {
    let app = state.app()?;
    let limit = q.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
    let max = state.inner.limits.page_limit_max.min(PROCESSOR_BATCH_MAX);
    if limit == 0 || limit > max {
        return Err(Problem::bad_request(format!(
            "limit {limit} is outside 1..={max}"
        )));
    }
    let status = q
        .status
        .as_deref()
        .map(|s| {
            InstanceStatus::parse(s)
                .ok_or_else(|| Problem::bad_request(format!("status {s:?} is not a saga status")))
        })
        .transpose()?;
    let after = q
        .after
        .as_deref()
        .map(|c| {
            c.split_once('/')
                .map(|(k, i)| (k.to_string(), i.to_string()))
                .ok_or_else(|| Problem::bad_request("after is `kind/id` of the last instance"))
        })
        .transpose()?;
    let store = &app.stores.processors;
    let page = store
        .list(&InstanceFilter {
            kind: q.kind.clone(),
            status,
            after,
            limit,
        })
        .await?;
    let counts: Vec<Value> = store
        .count_by_status()
        .await?
        .into_iter()
        .filter(|c| q.kind.as_ref().is_none_or(|k| *k == c.kind))
        .map(|c| serde_json::json!({"kind": c.kind, "status": c.status.as_str(), "count": c.count}))
        .collect();
    let next = (page.len() == limit)
        .then(|| page.last().map(|r| format!("{}/{}", r.kind, r.id)))
        .flatten();
    let bodies = sees_bodies(&caller);
    let items: Vec<Value> = page.iter().map(|r| instance_view(r, bodies)).collect();
    Ok(Json(
        serde_json::json!({ "counts": counts, "items": items, "next": next }),
    ))
}

/// `GET /admin/sagas/{kind}/{id}`: one instance with its timers and history.
pub async fn saga(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams((kind, id)): PathParams<(String, String)>,
) -> Result<Json<Value>, Problem> {
    let app = state.app()?;
    let store = &app.stores.processors;
    let record = store.load(&kind, &id).await?.ok_or_else(|| {
        saga_problem(SagaError::UnknownInstance {
            kind: kind.clone(),
            id: id.clone(),
        })
    })?;
    let history = store.history(&kind, &id, 0, HISTORY_LINES_MAX).await?;
    let timers = store.timers(&kind, &id).await?;
    let mut view = instance_view(&record, sees_bodies(&caller));
    view["history"] = history
        .iter()
        .map(|h| {
            serde_json::json!({
                "seq": h.seq, "at": h.at, "step": h.line.step, "what": h.line.what,
                "detail": h.line.detail,
            })
        })
        .collect();
    view["timers"] = timers
        .iter()
        .map(|t| serde_json::json!({"name": t.name, "due": t.due}))
        .collect();
    Ok(Json(view))
}

/// `POST /admin/sagas/{kind}/{id}/{action}` (`retry`, `skip-step`, `compensate`): asks the
/// service running the saga to apply the action; answers 202 with the instance as it was.
pub async fn saga_action(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams((kind, id, action)): PathParams<(String, String, String)>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let app = state.app()?;
    let action = match action.as_str() {
        "retry" => OperatorAction::Retry,
        "skip-step" => OperatorAction::Skip,
        "compensate" => OperatorAction::Compensate,
        other => {
            return Err(Problem::not_found(
                "unknown-action",
                format!("{other:?} is not an action: retry, skip-step or compensate"),
            ))
        }
    };
    let record = request_action(
        app.stores.processors.as_ref(),
        &SystemClock,
        &kind,
        &id,
        action,
    )
    .await
    .map_err(saga_problem)?;
    tracing::info!(
        target: "runnel_server::audit",
        key = %caller.name, saga = %kind, id = %id, action = action.as_str(), "saga action requested"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(instance_view(&record, sees_bodies(&caller))),
    ))
}

fn projection_problem(e: AdminError) -> Problem {
    match e {
        AdminError::Unknown(name) => Problem::not_found(
            "unknown-projection",
            format!("no projection named {name:?} is registered"),
        ),
        e @ AdminError::WrongState { .. } => Problem::new(
            StatusCode::CONFLICT,
            "wrong-state",
            "The projection is not in a state the action applies to",
            e.to_string(),
        ),
        AdminError::Store(e) => e.into(),
        e => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "projection-admin-failed",
            "The projection action failed",
            e.to_string(),
        ),
    }
}

/// `GET /admin/projections`: every generation of every projection, with lag.
pub async fn projections(State(state): State<AppState>) -> Result<Json<Value>, Problem> {
    let app = state.app()?;
    let status = padmin::status(
        app.stores.projections.as_ref(),
        app.stores.events.as_ref(),
        None,
    )
    .await
    .map_err(projection_problem)?;
    Ok(Json(serde_json::json!({ "generations": status })))
}

/// `GET /admin/projections/{name}`: its generations, and a running rebuild's progress.
pub async fn projection(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<Json<Value>, Problem> {
    let app = state.app()?;
    let (store, events) = (app.stores.projections.as_ref(), app.stores.events.as_ref());
    let status = padmin::status(store, events, Some(&name))
        .await
        .map_err(projection_problem)?;
    if status.is_empty() {
        return Err(projection_problem(AdminError::Unknown(name)));
    }
    let mut rebuilds = Vec::new();
    for g in status
        .iter()
        .filter(|g| g.role == runnel_core::projection::VersionRole::Building)
    {
        if let RebuildProgress::Building {
            done,
            total,
            status,
            error,
        } = padmin::rebuild_progress(store, events, &name, g.version)
            .await
            .map_err(projection_problem)?
        {
            rebuilds.push(serde_json::json!({
                "version": g.version, "done": done, "total": total,
                "status": status.as_str(), "error": error,
            }));
        }
    }
    Ok(Json(
        serde_json::json!({ "name": name, "generations": status, "rebuilds": rebuilds }),
    ))
}

/// `POST /admin/projections/{name}/{action}` (`pause`, `resume`, `retry`, `skip`,
/// `rebuild`, `drop-old`).
pub async fn projection_action(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams((name, action)): PathParams<(String, String)>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let app = state.app()?;
    let store = app.stores.projections.as_ref();
    let body = match action.as_str() {
        "pause" => {
            serde_json::json!({"changed": padmin::pause(store, &name).await.map_err(projection_problem)?})
        }
        "resume" => {
            serde_json::json!({"changed": padmin::resume(store, &name).await.map_err(projection_problem)?})
        }
        "retry" => {
            serde_json::json!({"changed": padmin::retry(store, &name).await.map_err(projection_problem)?})
        }
        "skip" => {
            serde_json::json!({"skipped": padmin::skip(store, &name).await.map_err(projection_problem)?})
        }
        "drop-old" => {
            serde_json::json!({"dropped": padmin::drop_old(store, &name).await.map_err(projection_problem)?})
        }
        "rebuild" => {
            let started = padmin::rebuild(store, &name)
                .await
                .map_err(projection_problem)?;
            serde_json::json!({
                "version": started.version,
                "code_version": started.code_version,
                "created": started.created,
                "progress": format!("/admin/projections/{name}"),
            })
        }
        other => {
            return Err(Problem::not_found(
                "unknown-action",
                format!(
                    "{other:?} is not an action: pause, resume, retry, skip, rebuild or drop-old"
                ),
            ))
        }
    };
    tracing::info!(
        target: "runnel_server::audit",
        key = %caller.name, projection = %name, action = %action, "projection action"
    );
    let status = if action == "rebuild" {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)))
}
