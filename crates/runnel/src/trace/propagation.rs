//! W3C trace context in and out of `tracing` spans: [`inject`] reads a span's
//! OpenTelemetry context as `traceparent` / `tracestate` strings, [`extract`] parses them
//! back into a parent context, and [`set_parent`] makes a span a child of it.
//!
//! Both ends go through `tracing-opentelemetry`: a span has an OpenTelemetry context only
//! when its subscriber has that crate's layer. Without one, [`inject`] returns `None`
//! after one type check (no string is formatted), and [`set_parent`] does nothing — the
//! trace context already on a message or an event is then carried on untouched.

use std::str::FromStr;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use runnel_core::trace_context::{parse_traceparent, TraceContext};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `traceparent` version written.
const VERSION: &str = "00";

/// The trace context of `span` as W3C headers; `None` when the span has no valid
/// OpenTelemetry context (no OpenTelemetry layer installed, or the span is disabled).
///
/// ```
/// // Without an OpenTelemetry layer there is nothing to inject.
/// let span = tracing::info_span!("work");
/// assert!(runnel::trace::inject(&span).is_none());
/// ```
pub fn inject(span: &tracing::Span) -> Option<TraceContext> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let span_ref = cx.span();
    let sc = span_ref.span_context();
    if !sc.is_valid() {
        return None;
    }
    Some(format_context(sc))
}

/// `sc` as W3C headers (`sc` must be valid).
pub(crate) fn format_context(sc: &SpanContext) -> TraceContext {
    // Only the sampled bit is defined for version 00.
    let flags = sc.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8();
    let traceparent = format!("{VERSION}-{}-{}-{flags:02x}", sc.trace_id(), sc.span_id());
    let state = sc.trace_state().header();
    TraceContext {
        traceparent,
        tracestate: (!state.is_empty()).then_some(state),
    }
}

/// The remote parent context `traceparent` / `tracestate` describe; `None` if the
/// `traceparent` is not valid W3C trace context. An invalid `tracestate` is dropped on
/// its own (the W3C rule: the parent stays usable).
///
/// ```
/// use opentelemetry::trace::TraceContextExt;
/// let cx = runnel::trace::extract(
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
///     Some("congo=t61rcWkgMzE"),
/// )
/// .unwrap();
/// let sc = cx.span().span_context().clone();
/// assert!(sc.is_remote() && sc.is_sampled());
/// assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(sc.trace_state().get("congo"), Some("t61rcWkgMzE"));
/// assert!(runnel::trace::extract("nonsense", None).is_none());
/// ```
pub fn extract(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
    let parsed = parse_traceparent(traceparent)?;
    let trace_id = TraceId::from_hex(parsed.trace_id).ok()?;
    let span_id = SpanId::from_hex(parsed.parent_id).ok()?;
    let flags = TraceFlags::new(parsed.flags & TraceFlags::SAMPLED.to_u8());
    let state = tracestate
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    let sc = SpanContext::new(trace_id, span_id, flags, true, state);
    Some(Context::new().with_remote_span_context(sc))
}

/// Makes `span` a child of the remote context `traceparent` / `tracestate` carry.
/// Returns whether it did: `false` without a `traceparent`, with an invalid one, for a
/// disabled span, without an OpenTelemetry layer, or once the span has started (set the
/// parent right after creating the span, before entering it).
pub fn set_parent(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> bool {
    let Some(traceparent) = traceparent else {
        return false;
    };
    if span.is_disabled() {
        return false;
    }
    match extract(traceparent, tracestate) {
        Some(cx) => span.set_parent(cx).is_ok(),
        None => false,
    }
}
