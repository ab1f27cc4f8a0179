//! Live subscriptions over server-sent events.
//!
//! Each subscription is the store's own catch-up-then-live subscription
//! ([`EventStore::subscribe_all`](runnel_core::EventStore::subscribe_all)) driven by the
//! client's connection: the server reads the next page from the store only when the
//! connection has taken the previous events. So a client's buffer is bounded (one page of
//! [`HttpLimits::subscription_page_events`](crate::HttpLimits) events plus the socket's
//! send buffer), a stalled client costs the writers nothing (no
//! writer ever waits for a subscriber, and no event is queued for it), and a client that
//! falls behind simply keeps catching up by reads, in order, with no gap and no overflow
//! event: there is nothing to overflow.
//!
//! The SSE `id` of an event is its `$all` position (`/subscribe/all`) or its stream
//! revision (`/subscribe/streams/{stream}`); a reconnecting client sends the last one as
//! `Last-Event-ID` and resumes right after it. Heartbeats are SSE comments
//! (`:heartbeat`) at the server's interval. At shutdown every subscription ends cleanly.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, KeepAliveStream, Sse};
use axum::Extension;
use futures_util::{Stream, StreamExt};
use runnel_core::subscription::{subscribe_all_paged, subscribe_stream_paged};
use runnel_core::{Position, RecordedEvent, StoreError};
use serde::Deserialize;

use crate::auth::Caller;
use crate::events::{filter_of, EventOut};
use crate::extract::{PathParams, QueryParams};
use crate::problem::Problem;
use crate::state::AppState;

/// The SSE `event` name of an event.
pub const SSE_EVENT: &str = "event";
/// The SSE `event` name of the last message of a subscription the store failed under.
pub const SSE_ERROR: &str = "error";

/// Query of `GET /subscribe/all`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeAllQuery {
    /// Start after this position (default 0: from the first event). `Last-Event-ID` wins.
    pub after: Option<u64>,
    pub category: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
}

/// Query of `GET /subscribe/streams/{stream}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeStreamQuery {
    /// Start after this revision (default 0: from the first event). `Last-Event-ID` wins.
    pub after: Option<u64>,
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| Problem::bad_request("Last-Event-ID must be a number this server sent")),
    }
}

type EventsOut = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;
type SseStream = Sse<KeepAliveStream<EventsOut>>;

fn sse(
    state: &AppState,
    events: runnel_core::store::EventStream,
    id_of: fn(&RecordedEvent) -> u64,
    caller: Caller,
) -> Result<SseStream, Problem> {
    let permit = state
        .inner
        .subscribers
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too-many-subscribers",
                "Too many live subscriptions",
                format!(
                    "this server holds at most {} subscriptions at once; retry later",
                    state.inner.limits.subscribers_max
                ),
            )
        })?;
    let shutdown = state.inner.shutdown.clone();
    let stream = events
        .map(move |item: Result<RecordedEvent, StoreError>| {
            // The permit lives as long as the subscription.
            let _held = &permit;
            Ok::<_, Infallible>(match item {
                Ok(event) => {
                    let id = id_of(&event);
                    let body = serde_json::to_string(&EventOut::for_caller(event, &caller))
                        .unwrap_or_else(|_| "null".into());
                    Event::default()
                        .event(SSE_EVENT)
                        .id(id.to_string())
                        .data(body)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "subscription ended by a store error");
                    // The store's subscription ends after an error; the client resumes
                    // from its last id.
                    Event::default()
                        .event(SSE_ERROR)
                        .data(Problem::from(e).body().to_string())
                }
            })
        })
        .take_until(async move { shutdown.requested().await });
    Ok(Sse::new(Box::pin(stream) as EventsOut).keep_alive(
        KeepAlive::new()
            .interval(state.inner.heartbeat)
            .text("heartbeat"),
    ))
}

/// `GET /subscribe/all`: `$all`, catch-up then live.
pub async fn subscribe_all(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<SubscribeAllQuery>,
) -> Result<SseStream, Problem> {
    let filter = filter_of(q.category.as_deref(), q.event_type.as_deref())?;
    let after = last_event_id(&headers)?.or(q.after).unwrap_or(0);
    let events = subscribe_all_paged(
        state.inner.events.clone(),
        Position(after),
        filter,
        state.inner.limits.subscription_page_events,
    );
    sse(&state, events, |e| e.position.get(), caller)
}

/// `GET /subscribe/streams/{stream}`: one stream, catch-up then live.
pub async fn subscribe_stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams(stream): PathParams<String>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<SubscribeStreamQuery>,
) -> Result<SseStream, Problem> {
    let stream = runnel_core::StreamName::new(&stream)?;
    let after = last_event_id(&headers)?.or(q.after).unwrap_or(0);
    let events = subscribe_stream_paged(
        state.inner.events.clone(),
        stream,
        after,
        state.inner.limits.subscription_page_events,
    );
    sse(&state, events, |e| e.revision, caller)
}
