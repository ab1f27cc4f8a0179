//! The event store over HTTP: append with optimistic concurrency, read a stream, read
//! `$all`, list streams.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};

use chrono::{DateTime, Utc};
use runnel_core::store::{EventFilter, ReadDirection, ReadStream};
use runnel_core::{ExpectedRevision, Metadata, NewEvent, Position, RecordedEvent, StreamName};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Caller;
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::limits::PAGE_LIMIT_DEFAULT;
use crate::problem::Problem;
use crate::state::AppState;

/// The header carrying an append's expected revision.
pub const EXPECTED_REVISION_HEADER: &str = "runnel-expected-revision";

/// One event to append.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// The event type, e.g. `OrderPlaced`: ASCII letters, digits and `_.:-`, at most 128
    /// bytes.
    #[serde(rename = "type")]
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub event_type: String,
    /// The payload (any JSON value but null; `{}` for none).
    #[serde(default)]
    #[schema(required = true, value_type = serde_json::Value)]
    pub data: Option<Box<RawValue>>,
    /// The event id (a UUID): the idempotency key of the append. A fresh UUIDv7 if absent.
    #[serde(default)]
    pub id: Option<Uuid>,
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::schemas::MetadataDoc>)]
    pub metadata: Option<Metadata>,
    /// The version of the payload's schema (default 1), for upcasters on read.
    #[serde(default)]
    pub schema_version: Option<u32>,
}

/// The outcome of an append.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AppendOut {
    /// The stream's revision after the append (send it as the next expected revision).
    pub revision: u64,
    /// The `$all` position of the last appended event.
    pub position: u64,
}

/// An event as read.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventOut {
    pub id: Uuid,
    pub stream: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub revision: u64,
    pub position: u64,
    pub recorded_at: DateTime<Utc>,
    pub schema_version: u32,
    pub content_type: String,
    /// JSON payloads inline; anything else as `{"base64": "…"}`; `null` for a viewer.
    #[schema(value_type = serde_json::Value)]
    pub data: Box<RawValue>,
    #[schema(value_type = crate::openapi::schemas::MetadataDoc)]
    pub metadata: Metadata,
    /// `true` when `data` was left out (`null`) because the caller is a viewer, who never
    /// sees message bodies.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
}

impl EventOut {
    /// The event as `caller` may see it: without its data for a viewer.
    pub fn for_caller(e: RecordedEvent, caller: &Caller) -> EventOut {
        let mut out = EventOut::from(e);
        if !crate::admin::sees_bodies(caller) {
            out.data = RawValue::from_string("null".into()).expect("valid JSON");
            out.redacted = true;
        }
        out
    }
}

impl From<RecordedEvent> for EventOut {
    fn from(e: RecordedEvent) -> EventOut {
        let data = match String::from_utf8(e.data.clone())
            .ok()
            .and_then(|s| RawValue::from_string(s).ok())
        {
            Some(raw) => raw,
            // Not JSON: the store's own envelope encoding (base64).
            None => {
                let value = serde_json::to_value(&e)
                    .ok()
                    .and_then(|mut v| v.get_mut("data").map(serde_json::Value::take))
                    .unwrap_or(serde_json::Value::Null);
                RawValue::from_string(value.to_string())
                    .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("valid"))
            }
        };
        EventOut {
            id: *e.id.as_uuid(),
            stream: e.stream.to_string(),
            event_type: e.event_type,
            revision: e.revision,
            position: e.position.get(),
            recorded_at: e.recorded_at,
            schema_version: e.schema_version,
            content_type: e.content_type,
            data,
            metadata: e.metadata,
            redacted: false,
        }
    }
}

fn stream_name(raw: &str) -> Result<StreamName, Problem> {
    Ok(StreamName::new(raw)?)
}

/// Parses `Runnel-Expected-Revision`: `any` (also when absent), `no-stream`,
/// `stream-exists` or a revision number.
pub fn parse_expected(headers: &HeaderMap) -> Result<ExpectedRevision, Problem> {
    let Some(value) = headers.get(EXPECTED_REVISION_HEADER) else {
        return Ok(ExpectedRevision::Any);
    };
    let text = value.to_str().unwrap_or("").trim();
    match text {
        "any" => Ok(ExpectedRevision::Any),
        "no-stream" => Ok(ExpectedRevision::NoStream),
        "stream-exists" => Ok(ExpectedRevision::StreamExists),
        n => n.parse::<u64>().map(ExpectedRevision::Exact).map_err(|_| {
            Problem::bad_request(format!(
                "Runnel-Expected-Revision {n:?} is not `any`, `no-stream`, `stream-exists` or a revision number"
            ))
        }),
    }
}

/// `POST /streams/{stream}`: appends a JSON array of events.
#[utoipa::path(post, path = "/streams/{stream}",
    params(
        ("stream" = String, Path, description = "A stream name, `{category}-{id}`: the category an ASCII letter then letters, digits and `_`; the id letters, digits and `-_.:@`; at most 200 bytes", max_length = 200, pattern = "^[A-Za-z][A-Za-z0-9_]*-[A-Za-z0-9._:@-]+$"),
        ("Runnel-Expected-Revision" = Option<String>, Header, description = "`any` (the default), `no-stream`, `stream-exists` or the stream's current revision; a mismatch is 409 `conflict` and writes nothing", pattern = "^(any|no-stream|stream-exists|[0-9]+)$"),
    ),
    request_body(content = Vec<EventIn>, content_type = "application/json", description = "The events to append, in order (at least one)"),
    responses(
        (status = 201, description = "Appended (or the same events were appended before: the original answer)", body = AppendOut),
    )
)]
pub async fn append(
    State(state): State<AppState>,
    PathParams(stream): PathParams<String>,
    headers: HeaderMap,
    JsonBody(events): JsonBody<Vec<EventIn>>,
) -> Result<(StatusCode, Json<AppendOut>), Problem> {
    let stream = stream_name(&stream)?;
    let expected = parse_expected(&headers)?;
    let mut events = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let data = e.data.ok_or_else(|| {
                Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-append",
                    "The append was refused; nothing was written",
                    format!("event {i} has no `data` (send {{}} for an empty payload)"),
                )
            })?;
            // The payload's bytes as sent (already checked to be JSON by the parser): no
            // detour through a `serde_json::Value` and back.
            let mut event = NewEvent::bytes(
                e.event_type,
                runnel_core::CONTENT_TYPE_JSON,
                data.get().as_bytes().to_vec(),
            );
            if let Some(id) = e.id {
                event = event.with_id(id);
            }
            if let Some(metadata) = e.metadata {
                event = event.with_metadata(metadata);
            }
            if let Some(version) = e.schema_version {
                event = event.with_schema_version(version);
            }
            Ok(event)
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    // The append span, a child of the request's; events without a trace context of their
    // own carry its context (see `runnel::trace`).
    let span = runnel::trace::append_span(stream.as_str());
    for event in &mut events {
        runnel::trace::stamp_metadata(&span, &mut event.metadata);
    }
    let result = state
        .inner
        .events
        .append(&stream, expected, events)
        .instrument(span)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(AppendOut {
            revision: result.next_expected_revision,
            position: result.position.get(),
        }),
    ))
}

fn page_limit(state: &AppState, limit: Option<usize>) -> Result<usize, Problem> {
    let max = state.inner.limits.page_limit_max;
    match limit.unwrap_or(PAGE_LIMIT_DEFAULT.min(max)) {
        0 => Err(Problem::bad_request("limit must be at least 1")),
        n if n > max => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "page-too-large",
            "The page limit is over the maximum",
            format!("limit {n} is over the maximum page size of {max}; page with `next`"),
        )
        .with("limit_max", max as u64)),
        n => Ok(n),
    }
}

/// Query of `GET /streams/{stream}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadStreamQuery {
    /// The first revision to return (inclusive); default: the start (forward) or the end
    /// (backward).
    pub from: Option<u64>,
    /// Events in the page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `forward` (default) or `backward`.
    #[param(value_type = Option<crate::openapi::schemas::ReadDirectionDoc>)]
    pub direction: Option<ReadDirection>,
}

/// One page of a stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamPage {
    pub stream: String,
    #[schema(value_type = crate::openapi::schemas::ReadDirectionDoc)]
    pub direction: ReadDirection,
    pub events: Vec<EventOut>,
    /// The `from` of the next page; `null` when this page reached the end.
    pub next: Option<u64>,
}

/// `GET /streams/{stream}`: one page of a stream, forward or backward.
#[utoipa::path(get, path = "/streams/{stream}",
    params(("stream" = String, Path, description = "A stream name, `{category}-{id}`: the category an ASCII letter then letters, digits and `_`; the id letters, digits and `-_.:@`; at most 200 bytes", max_length = 200, pattern = "^[A-Za-z][A-Za-z0-9_]*-[A-Za-z0-9._:@-]+$"), ReadStreamQuery),
    responses(
        (status = 200, description = "One page (a stream with no events is 404 `stream-not-found`); event data is `null` for a viewer", body = StreamPage),
    )
)]
pub async fn read_stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams(stream): PathParams<String>,
    QueryParams(q): QueryParams<ReadStreamQuery>,
) -> Result<Json<StreamPage>, Problem> {
    let stream = stream_name(&stream)?;
    let limit = page_limit(&state, q.limit)?;
    let direction = q.direction.unwrap_or(ReadDirection::Forward);
    let options = ReadStream {
        direction,
        from_revision: q.from,
        limit,
        metadata: true,
    };
    let events = state.inner.events.read_stream(&stream, options).await?;
    if events.is_empty() && state.inner.events.stream_revision(&stream).await?.is_none() {
        return Err(Problem::not_found(
            "stream-not-found",
            format!("stream {stream} has no events"),
        ));
    }
    let next = match (events.len() == limit, events.last(), direction) {
        (true, Some(last), ReadDirection::Forward) => Some(last.revision + 1),
        (true, Some(last), ReadDirection::Backward) if last.revision > 1 => Some(last.revision - 1),
        _ => None,
    };
    Ok(Json(StreamPage {
        stream: stream.to_string(),
        direction,
        events: events
            .into_iter()
            .map(|e| EventOut::for_caller(e, &caller))
            .collect(),
        next,
    }))
}

/// Query of `GET /all` (and the filter of `GET /subscribe/all`).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadAllQuery {
    /// Events after this position (exclusive); default 0, the start.
    pub after: Option<u64>,
    /// Events in the page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Only these categories (comma-separated).
    pub category: Option<String>,
    /// Only these event types (comma-separated).
    #[serde(rename = "type")]
    pub event_type: Option<String>,
}

/// The filter a `category` / `type` pair of query parameters names.
pub(crate) fn filter_of(
    category: Option<&str>,
    types: Option<&str>,
) -> Result<EventFilter, Problem> {
    let list = |s: Option<&str>| -> Vec<String> {
        s.map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
    };
    let filter = EventFilter {
        categories: list(category),
        event_types: list(types),
    };
    filter.validate()?;
    Ok(filter)
}

/// One page of `$all`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AllPage {
    pub events: Vec<EventOut>,
    /// The `after` of the next page: everything matching up to it has been returned
    /// (it moves past positions the filter skipped, so paging never rereads them).
    pub next_after: u64,
}

/// `GET /all`: one page of `$all` after a position, optionally filtered.
#[utoipa::path(get, path = "/all",
    params(ReadAllQuery),
    responses(
        (status = 200, description = "One page of `$all`; event data is `null` for a viewer", body = AllPage),
    )
)]
pub async fn read_all(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    QueryParams(q): QueryParams<ReadAllQuery>,
) -> Result<Json<AllPage>, Problem> {
    let limit = page_limit(&state, q.limit)?;
    let filter = filter_of(q.category.as_deref(), q.event_type.as_deref())?;
    let after = Position(q.after.unwrap_or(0));
    // The head first: a page shorter than the limit holds everything matching up to it.
    let head = state.inner.events.head_position().await?;
    let events = state.inner.events.read_all(after, &filter, limit).await?;
    let last = events.last().map_or(after, |e| e.position);
    let next_after = if events.len() < limit {
        last.max(head).max(after)
    } else {
        last
    };
    Ok(Json(AllPage {
        events: events
            .into_iter()
            .map(|e| EventOut::for_caller(e, &caller))
            .collect(),
        next_after: next_after.get(),
    }))
}

/// Query of `GET /streams`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListStreamsQuery {
    /// Only streams of this category.
    pub category: Option<String>,
    /// Streams after this name (exclusive): the previous page's `next_after`.
    pub after: Option<String>,
    /// Streams in the page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// One stream in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamOut {
    pub stream: String,
    pub revision: u64,
    pub last_position: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One page of streams.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamsPage {
    pub streams: Vec<StreamOut>,
    /// The `after` of the next page; `null` when this page reached the end.
    pub next_after: Option<String>,
}

/// `GET /streams`: streams in name order, optionally of one category.
#[utoipa::path(get, path = "/streams",
    params(ListStreamsQuery),
    responses((status = 200, description = "One page of streams, in name order", body = StreamsPage))
)]
pub async fn list_streams(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListStreamsQuery>,
) -> Result<Json<StreamsPage>, Problem> {
    let limit = page_limit(&state, q.limit)?;
    if let Some(c) = &q.category {
        runnel_core::stream_name::validate_category(c)?;
    }
    let after = q.after.as_deref().map(stream_name).transpose()?;
    let streams = state
        .inner
        .events
        .list_streams(q.category.as_deref(), after.as_ref(), limit)
        .await?;
    let next_after = if streams.len() == limit {
        streams.last().map(|s| s.stream.to_string())
    } else {
        None
    };
    Ok(Json(StreamsPage {
        streams: streams
            .into_iter()
            .map(|s| StreamOut {
                stream: s.stream.to_string(),
                revision: s.revision,
                last_position: s.last_position.get(),
                created_at: s.created_at,
                updated_at: s.updated_at,
            })
            .collect(),
        next_after,
    }))
}
