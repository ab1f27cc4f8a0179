//! Dead letters over HTTP.
//!
//! Paging is by a cursor (`after`, the last id of the previous page; `next` in each
//! page): dead-letter ids are handed out in commit order on every backend (SQLite has one
//! writer; on PostgreSQL a transaction-scoped lock orders inserts), so a page after a
//! cursor never misses a dead letter stored while someone pages, and never repeats one.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use runnel::dead_letter::{
    self as dl, DeadLetterError, DeadLetterSummary, ReplayProgress, ReplaySelection, ReplayTarget,
    Replayer,
};
use runnel_core::bus::Publisher;
use runnel_core::dead_letter::{
    DeadLetter, DeadLetterFilter, DeadLetterId, FailureRecord, DEAD_LETTER_LIST_LIMIT_MAX,
};
use runnel_core::{BusError, GroupName, Message, TopicName};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::sees_bodies;
use crate::auth::Caller;
use crate::extract::{JsonBody, JsonOrEmpty, PathParams, QueryParams};
use crate::limits::PAGE_LIMIT_DEFAULT;
use crate::operations::{OperationStatus, OperationView, Progress};
use crate::problem::Problem;
use crate::state::AppState;

/// Most dead letters `GET /admin/dead-letters/summary` reads; beyond, it says
/// `truncated`.
pub const SUMMARY_SCAN_MAX: u64 = 100_000;
/// Highest rate a bulk retry may ask for, in messages per second.
pub const RETRY_RATE_MAX: u32 = 100_000;
/// Longest error type a summary groups by, in characters.
pub const ERROR_TYPE_CHARS_MAX: usize = 80;

/// The filter every dead-letter route takes (query string or JSON body).
#[derive(Debug, Default, Deserialize, Serialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FilterIn {
    /// Only dead letters of this topic.
    pub topic: Option<String>,
    /// Only dead letters of this consumer group.
    pub group: Option<String>,
    /// Only those with a failure containing this text (case-insensitive).
    pub error: Option<String>,
    /// Only those dead-lettered at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only those dead-lettered before this time.
    pub until: Option<DateTime<Utc>>,
    /// Also those already replayed (default `false`).
    #[serde(default, deserialize_with = "bool_or_text")]
    #[param(required = false)]
    #[schema(required = false)]
    pub include_replayed: bool,
}

/// `true` or `false`, as a JSON boolean or as text. `GET /admin/dead-letters` flattens
/// [`FilterIn`] into its query, and a flattened struct receives every query value as a
/// string, so a plain `bool` would refuse `include_replayed=true` there.
fn bool_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum BoolOrText {
        Bool(bool),
        Text(String),
    }
    match BoolOrText::deserialize(d)? {
        BoolOrText::Bool(b) => Ok(b),
        BoolOrText::Text(t) => match t.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(serde::de::Error::custom(format!(
                "include_replayed: expected true or false, not {other:?}"
            ))),
        },
    }
}

impl FilterIn {
    fn to_filter(&self) -> Result<DeadLetterFilter, Problem> {
        let filter = DeadLetterFilter {
            topic: self
                .topic
                .as_deref()
                .map(TopicName::new)
                .transpose()
                .map_err(|e| Problem::bad_request(format!("topic: {e}")))?,
            group: self
                .group
                .as_deref()
                .map(GroupName::new)
                .transpose()
                .map_err(|e| Problem::bad_request(format!("group: {e}")))?,
            error_contains: self.error.clone(),
            since: self.since,
            until: self.until,
            include_replayed: self.include_replayed,
        };
        filter.validate().map_err(Problem::from)?;
        Ok(filter)
    }
}

fn dl_problem(e: DeadLetterError) -> Problem {
    match e {
        DeadLetterError::NotFound(id) => Problem::not_found(
            "unknown-dead-letter",
            format!("dead letter {id} does not exist (never stored, or purged)"),
        ),
        DeadLetterError::InvalidArgument(m) => Problem::bad_request(m),
        DeadLetterError::Store(e) => e.into(),
        other => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "replay-interrupted",
            "The retry stopped part-way",
            other.to_string(),
        ),
    }
}

/// The error type a summary groups by: the last failure's text up to its first `:` or
/// line end (e.g. `payment declined` of `payment declined: card 4242…`), at most
/// [`ERROR_TYPE_CHARS_MAX`] characters.
pub fn error_type(failures: &[FailureRecord]) -> String {
    let text = failures.last().map_or("", |f| f.error.as_str());
    let head = text.lines().next().unwrap_or("");
    let head = head.split(':').next().unwrap_or("").trim();
    head.chars().take(ERROR_TYPE_CHARS_MAX).collect()
}

#[derive(Debug, Serialize)]
struct Group {
    topic: String,
    group: String,
    error_type: String,
    count: u64,
    oldest: DateTime<Utc>,
    newest: DateTime<Utc>,
}

/// `GET /admin/dead-letters/summary`: counts by topic, group and error type.
#[utoipa::path(get, path = "/admin/dead-letters/summary",
    params(FilterIn),
    responses((status = 200, description = "Pending dead letters counted by topic, group and error type", body = crate::openapi::schemas::DeadLetterCounts))
)]
pub async fn summary(
    State(state): State<AppState>,
    QueryParams(filter): QueryParams<FilterIn>,
) -> Result<Json<Value>, Problem> {
    let app = state.app()?;
    let filter = filter.to_filter()?;
    let store = &app.stores.dead_letters;
    let total = store.count(&filter).await?;
    let mut groups: BTreeMap<(String, String, String), Group> = BTreeMap::new();
    let mut scanned = 0u64;
    dl::for_each_page(store.as_ref(), &filter, dl::PAGE_SIZE_DEFAULT, |page| {
        for d in page {
            scanned += 1;
            let key = (
                d.topic.to_string(),
                d.group.to_string(),
                error_type(&d.failures),
            );
            let g = groups.entry(key.clone()).or_insert_with(|| Group {
                topic: key.0,
                group: key.1,
                error_type: key.2,
                count: 0,
                oldest: d.dead_lettered_at,
                newest: d.dead_lettered_at,
            });
            g.count += 1;
            g.oldest = g.oldest.min(d.dead_lettered_at);
            g.newest = g.newest.max(d.dead_lettered_at);
        }
        scanned < SUMMARY_SCAN_MAX
    })
    .await
    .map_err(dl_problem)?;
    let oldest = groups.values().map(|g| g.oldest).min();
    let mut groups: Vec<Group> = groups.into_values().collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.topic.cmp(&b.topic)));
    Ok(Json(serde_json::json!({
        "total": total,
        "oldest_dead_lettered_at": oldest,
        "groups": groups,
        "scanned": scanned,
        "truncated": scanned < total,
    })))
}

/// Query of `GET /admin/dead-letters`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListIn {
    #[serde(flatten)]
    filter: FilterIn,
    /// The cursor: the last id of the previous page.
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /admin/dead-letters`: one page, oldest first, with the cursor of the next.
#[utoipa::path(get, path = "/admin/dead-letters",
    params(
        FilterIn,
        ("after" = Option<u64>, Query, description = "The cursor: the previous page's `next`"),
        ("limit" = Option<u64>, Query, description = "Dead letters in the page (default 100)", minimum = 1, maximum = 1000),
    ),
    responses((status = 200, description = "One page, oldest first, without bodies", body = crate::openapi::schemas::DeadLetterPage))
)]
pub async fn list(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<ListIn>,
) -> Result<Json<Value>, Problem> {
    let app = state.app()?;
    let limit = query.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
    let max = state
        .inner
        .limits
        .page_limit_max
        .min(DEAD_LETTER_LIST_LIMIT_MAX);
    if limit == 0 || limit > max {
        return Err(
            Problem::bad_request(format!("limit {limit} is outside 1..={max}"))
                .with("limit_max", max as u64),
        );
    }
    let filter = query.filter.to_filter()?;
    let page = app
        .stores
        .dead_letters
        .list(&filter, query.after.map(DeadLetterId), limit)
        .await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|d| d.id.0))
        .flatten();
    let items: Vec<DeadLetterSummary> = page.iter().map(DeadLetterSummary::from).collect();
    Ok(Json(serde_json::json!({ "items": items, "next": next })))
}

/// A message as `GET /admin/dead-letters/{id}` shows it: everything but the payload and
/// application headers for a viewer.
#[derive(Debug, Serialize)]
struct MessageView {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    source: String,
    time: Option<DateTime<Utc>>,
    subject: Option<String>,
    content_type: String,
    key: Option<String>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    traceparent: Option<String>,
    payload_bytes: usize,
    /// Application headers; absent for a viewer.
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<BTreeMap<String, String>>,
    /// The payload: JSON inline, anything else as `{"base64": …}`; absent for a viewer.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Value>,
    /// Whether the body was left out because the caller is a viewer.
    redacted: bool,
}

fn message_view(m: &Message, bodies: bool) -> MessageView {
    let payload = bodies.then(|| {
        serde_json::from_slice::<Value>(&m.payload).unwrap_or_else(|_| {
            // Not JSON: the envelope's own encoding of the bytes.
            let encoded = serde_json::to_value(m)
                .ok()
                .and_then(|mut v| v.get_mut("payload").map(Value::take))
                .unwrap_or(Value::Null);
            serde_json::json!({ "encoded": encoded })
        })
    });
    MessageView {
        id: m.id.clone(),
        event_type: m.event_type.clone(),
        source: m.source.clone(),
        time: m.time,
        subject: m.subject.clone(),
        content_type: m.content_type.clone(),
        key: m.key.clone(),
        correlation_id: m.correlation_id.clone(),
        causation_id: m.causation_id.clone(),
        traceparent: m.traceparent.clone(),
        payload_bytes: m.payload.len(),
        headers: bodies.then(|| m.headers.clone()),
        payload,
        redacted: !bodies,
    }
}

fn dead_letter_view(d: &DeadLetter, bodies: bool) -> Value {
    serde_json::json!({
        "id": d.id,
        "topic": d.topic,
        "group": d.group,
        "message": message_view(&d.message, bodies),
        "failures": d.failures,
        "first_failed_at": d.first_failed_at,
        "last_failed_at": d.last_failed_at,
        "dead_lettered_at": d.dead_lettered_at,
        "replay_count": d.replay_count,
        "last_replayed_at": d.last_replayed_at,
    })
}

/// `GET /admin/dead-letters/{id}`.
#[utoipa::path(get, path = "/admin/dead-letters/{id}",
    params(("id" = u64, Path, description = "The dead letter's id")),
    responses((status = 200, description = "The dead letter with its failures; its message's body for operators and admins", body = crate::openapi::schemas::DeadLetterView))
)]
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams(id): PathParams<u64>,
) -> Result<Json<Value>, Problem> {
    let app = state.app()?;
    let d = dl::show(app.stores.dead_letters.as_ref(), DeadLetterId(id))
        .await
        .map_err(dl_problem)?;
    Ok(Json(dead_letter_view(&d, sees_bodies(&caller))))
}

/// Where a retry sends messages.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TargetIn {
    /// The topic each came from: every group of it gets it again.
    #[default]
    OriginalTopic,
    /// Only the group that dead-lettered each.
    OwnGroup,
    /// Only this group.
    Group(String),
}

impl TargetIn {
    fn to_target(&self) -> Result<ReplayTarget, Problem> {
        Ok(match self {
            TargetIn::OriginalTopic => ReplayTarget::OriginalTopic,
            TargetIn::OwnGroup => ReplayTarget::OwnGroup,
            TargetIn::Group(g) => ReplayTarget::Group(
                GroupName::new(g).map_err(|e| Problem::bad_request(format!("group: {e}")))?,
            ),
        })
    }
}

/// Body of `POST /admin/dead-letters/{id}/retry`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryOneIn {
    /// Default `original_topic`.
    #[serde(default)]
    #[schema(required = false)]
    target: TargetIn,
}

fn replayer(app: &crate::Application, publisher: std::sync::Arc<dyn Publisher>) -> Replayer {
    Replayer::new(app.stores.dead_letters.clone(), publisher)
}

/// `POST /admin/dead-letters/{id}/retry`: publishes one dead letter again, now.
#[utoipa::path(post, path = "/admin/dead-letters/{id}/retry",
    params(("id" = u64, Path, description = "The dead letter's id")),
    request_body(content = Option<RetryOneIn>, content_type = "application/json", description = "Optional: where to send it"),
    responses((status = 200, description = "What the retry did", body = crate::openapi::schemas::ReplayReport))
)]
pub async fn retry_one(
    State(state): State<AppState>,
    PathParams(id): PathParams<u64>,
    JsonOrEmpty(body): JsonOrEmpty<RetryOneIn>,
) -> Result<Json<Value>, Problem> {
    let app = state.app()?;
    let target = body.target.to_target()?;
    let report = replayer(app, app.bus.publisher.clone())
        .replay(
            &ReplaySelection::One(DeadLetterId(id)),
            &target,
            &mut |_| {},
        )
        .await
        .map_err(dl_problem)?;
    Ok(Json(serde_json::to_value(report).unwrap_or(Value::Null)))
}

/// Body of `POST /admin/dead-letters/retry`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryManyIn {
    /// Which dead letters (default: every pending one).
    #[serde(default)]
    #[schema(required = false)]
    pub filter: FilterIn,
    /// Default `original_topic`.
    #[serde(default)]
    #[schema(required = false)]
    pub target: TargetIn,
    /// At most this many messages per second (1..=[`RETRY_RATE_MAX`]); unlimited if absent.
    #[schema(minimum = 1, maximum = 100000)]
    pub rate_per_second: Option<u32>,
}

/// A publisher that waits for its rate and stops publishing once cancelled.
struct Throttled {
    inner: std::sync::Arc<dyn Publisher>,
    interval: Option<Duration>,
    next: tokio::sync::Mutex<tokio::time::Instant>,
    cancelled: tokio::sync::watch::Receiver<bool>,
}

#[runnel::async_trait]
impl Publisher for Throttled {
    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        {
            if let Some(interval) = self.interval {
                let mut next = self.next.lock().await;
                let now = tokio::time::Instant::now();
                let at = (*next).max(now);
                *next = at + interval * messages.len() as u32;
                drop(next);
                let mut cancelled = self.cancelled.clone();
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    _ = cancelled.wait_for(|c| *c) => {}
                }
            }
            if *self.cancelled.borrow() {
                return Err(BusError::Closed);
            }
            self.inner.publish(topic, messages).await
        }
    }
}

/// `POST /admin/dead-letters/retry`: retries every match of a filter as a background
/// operation; answers 202 with the operation (follow it at `/admin/operations/{id}`).
#[utoipa::path(post, path = "/admin/dead-letters/retry",
    request_body(content = RetryManyIn, content_type = "application/json"),
    responses((status = 202, description = "Started; follow it at `/admin/operations/{id}` (429 when 4 run already)", body = OperationView))
)]
pub async fn retry_many(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<RetryManyIn>,
) -> Result<Response, Problem> {
    let app = state.app()?.clone();
    let filter = body.filter.to_filter()?;
    let target = body.target.to_target()?;
    let interval = match body.rate_per_second {
        None => None,
        Some(r) if r == 0 || r > RETRY_RATE_MAX => {
            return Err(Problem::bad_request(format!(
                "rate_per_second {r} is outside 1..={RETRY_RATE_MAX}"
            )))
        }
        Some(r) => Some(Duration::from_secs(1) / r),
    };
    let selection = ReplaySelection::Matching(filter);
    let total = app
        .stores
        .dead_letters
        .count(match &selection {
            ReplaySelection::Matching(f) => f,
            ReplaySelection::One(_) => unreachable!(),
        })
        .await?;
    let request = serde_json::to_value(&body).unwrap_or(Value::Null);
    let (view, handle) = state
        .inner
        .operations
        .start("dead-letters.retry", &caller.name, request, total)
        .map_err(|e| {
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-operations",
                "Too many operations are running",
                e.to_string(),
            )
            .retry_after(5)
        })?;
    let publisher = std::sync::Arc::new(Throttled {
        inner: app.bus.publisher.clone(),
        interval,
        next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        cancelled: handle.cancelled(),
    });
    // With a rate, small batches keep the pace smooth and a cancel quick.
    let batch = if interval.is_some() { 10 } else { 100 };
    let replayer = replayer(&app, publisher)
        .with_batch_size(batch)
        .map_err(dl_problem)?;
    tracing::info!(
        target: "runnel_server::audit",
        key = %caller.name, operation = %view.id, total, "dead-letter retry started"
    );
    tokio::spawn(async move {
        let mut on_progress = |p: &ReplayProgress| {
            handle.progress(Progress {
                total: p.total,
                succeeded: p.replayed,
                skipped: p.skipped,
            })
        };
        let result = replayer.replay(&selection, &target, &mut on_progress).await;
        let (status, errors, report) = match result {
            Ok(report) => {
                let errors = report
                    .skipped_details
                    .iter()
                    .map(|s| format!("{}: {}", s.id, s.reason))
                    .collect();
                (OperationStatus::Succeeded, errors, Some(report))
            }
            Err(DeadLetterError::ReplayInterrupted { report, .. }) if handle.is_cancelled() => {
                (OperationStatus::Cancelled, Vec::new(), Some(report))
            }
            Err(DeadLetterError::ReplayInterrupted { report, source }) => (
                OperationStatus::Failed,
                vec![source.to_string()],
                Some(report),
            ),
            Err(e) => (OperationStatus::Failed, vec![e.to_string()], None),
        };
        if let Some(r) = report {
            handle.progress(Progress {
                total: r.total,
                succeeded: r.replayed,
                skipped: r.skipped,
            });
        }
        tracing::info!(target: "runnel_server::audit", operation = %handle.id(), ?status, "dead-letter retry ended");
        handle.finish(status, errors);
    });
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// Body of `POST /admin/dead-letters/purge`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeIn {
    /// Which dead letters (default: every pending one).
    #[serde(default)]
    #[schema(required = false)]
    pub filter: FilterIn,
    /// Only those dead-lettered before this time (required: a purge is never implicit).
    pub older_than: DateTime<Utc>,
}

/// `POST /admin/dead-letters/purge` (admin): deletes the matches dead-lettered before
/// `older_than`; answers with how many.
#[utoipa::path(post, path = "/admin/dead-letters/purge",
    request_body(content = PurgeIn, content_type = "application/json"),
    responses((status = 200, description = "How many were deleted", body = crate::openapi::schemas::Purged))
)]
pub async fn purge(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<PurgeIn>,
) -> Result<Json<Value>, Problem> {
    let app = state.app()?;
    let filter = body.filter.to_filter()?;
    let purged = dl::purge(app.stores.dead_letters.as_ref(), &filter, body.older_than)
        .await
        .map_err(dl_problem)?;
    tracing::info!(
        target: "runnel_server::audit",
        key = %caller.name, purged, older_than = %body.older_than, "dead letters purged"
    );
    Ok(Json(serde_json::json!({ "purged": purged })))
}

/// `GET /admin/operations`: the retained operations, newest first.
#[utoipa::path(get, path = "/admin/operations",
    responses((status = 200, description = "The newest 100 operations, newest first", body = Vec<OperationView>))
)]
pub async fn operations(State(state): State<AppState>) -> Json<Vec<OperationView>> {
    Json(state.inner.operations.list())
}

fn unknown_operation(id: Uuid) -> Problem {
    Problem::not_found(
        "unknown-operation",
        format!("no operation {id} (finished ones are kept up to the newest 100)"),
    )
}

/// `GET /admin/operations/{id}`.
#[utoipa::path(get, path = "/admin/operations/{id}",
    params(("id" = Uuid, Path, description = "The operation's id")),
    responses((status = 200, description = "The operation's progress", body = OperationView))
)]
pub async fn operation(
    State(state): State<AppState>,
    PathParams(id): PathParams<Uuid>,
) -> Result<Json<OperationView>, Problem> {
    state
        .inner
        .operations
        .get(id)
        .map(Json)
        .ok_or_else(|| unknown_operation(id))
}

/// `POST /admin/operations/{id}/cancel`: asks a running operation to stop after the
/// message it is publishing; answers with the operation as it is now.
#[utoipa::path(post, path = "/admin/operations/{id}/cancel",
    params(("id" = Uuid, Path, description = "The operation's id")),
    responses((status = 202, description = "Asked to stop; the operation as it is now", body = OperationView))
)]
pub async fn cancel_operation(
    State(state): State<AppState>,
    PathParams(id): PathParams<Uuid>,
) -> Result<(StatusCode, Json<OperationView>), Problem> {
    let view = state
        .inner
        .operations
        .cancel(id)
        .ok_or_else(|| unknown_operation(id))?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(error: &str) -> FailureRecord {
        FailureRecord {
            attempt: 1,
            at: Utc::now(),
            error: error.into(),
            permanent: false,
        }
    }

    #[test]
    fn error_type_is_the_head_of_the_last_error() {
        assert_eq!(
            error_type(&[failure("x"), failure("payment declined: card 4242")]),
            "payment declined"
        );
        assert_eq!(error_type(&[failure("timeout\nmore")]), "timeout");
        assert_eq!(error_type(&[]), "");
        assert_eq!(error_type(&[failure(&"e".repeat(500))]).len(), 80);
    }
}
