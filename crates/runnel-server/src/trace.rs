//! The server span of every request: `http.server` (OpenTelemetry kind server) with the
//! route template, the method and the status, a child of the request's W3C
//! `traceparent` / `tracestate` headers when it sends valid ones (else the root of a new
//! trace). Everything a handler does (the append, the command) runs inside it, so the
//! stored events and the messages published from them join the caller's trace — see
//! `runnel::trace` and the "Tracing" section of docs/server.md.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use tracing::field::Empty;
use tracing::Instrument;

use crate::metrics::{method_label, ROUTE_UNMATCHED};

/// The W3C header carrying the caller's span.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// The W3C header carrying vendor trace state.
pub const TRACESTATE_HEADER: &str = "tracestate";

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Middleware: runs the request in its server span.
pub async fn server_span(req: Request, next: Next) -> Response {
    runnel::trace::install();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str())
        .unwrap_or(ROUTE_UNMATCHED);
    let method = method_label(req.method());
    let span = tracing::info_span!(
        "http.server",
        otel.kind = "server",
        otel.name = Empty,
        otel.status_code = Empty,
        http.request.method = method,
        http.route = route,
        http.response.status_code = Empty,
    );
    if !span.is_disabled() {
        // OpenTelemetry names server spans `{method} {route}`.
        span.record("otel.name", format!("{method} {route}"));
        runnel::trace::set_parent(
            &span,
            header(req.headers(), TRACEPARENT_HEADER),
            header(req.headers(), TRACESTATE_HEADER),
        );
    }
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}
