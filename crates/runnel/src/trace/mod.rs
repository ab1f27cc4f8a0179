//! Distributed tracing across every hop: one W3C trace from the HTTP request through the
//! command, the stored event's metadata, the outbox row, the broker message, the consumer
//! and the handler's own sends.
//!
//! Runnel records `tracing` spans at each hop and carries the W3C trace context
//! (`traceparent`, `tracestate`) on [`Metadata`] and
//! [`Message`]:
//!
//! | hop | span | trace context |
//! |---|---|---|
//! | HTTP request (`runnel-server`) | `http.server` (kind server) | parent from the request's `traceparent` / `tracestate` headers |
//! | append ([`Repository`](crate::Repository), `POST /streams/{stream}`) | `runnel.append` | written to each event's metadata unless the caller set one |
//! | outbox enqueue | — | captured on the row when the message is built ([`OutboxMessage::new`](runnel_core::outbox::OutboxMessage::new)) unless it carries one |
//! | relay publish ([`Relay`](crate::outbox::Relay), [`EventStoreRelay`](crate::outbox::EventStoreRelay)) | `runnel.publish` (kind producer), child of the stored context | the message carries the publish span's context |
//! | transport | — | each broker's header convention (see the transport crates) |
//! | consumer ([`TracingLayer`](crate::consumer::layers::TracingLayer)) | `runnel.consume` (kind consumer), child of the message's context | — |
//! | handler sends ([`HandlerContext::publish`](crate::consumer::HandlerContext::publish)) | — | the handler's current span, unless the message carries its own |
//!
//! The spans become OpenTelemetry spans only where the process installs an OpenTelemetry
//! tracer and the `tracing-opentelemetry` layer (`runnel serve` does when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; an application does it itself). Without that
//! layer nothing is formatted or parsed per message: a context that came in is carried
//! on as it is and none is invented.

mod propagation;

pub use propagation::{extract, inject, set_parent};
pub use runnel_core::trace_context::TraceContext;

use runnel_core::message::{Message, TopicName};
use runnel_core::trace_context;
use runnel_core::Metadata;

/// Installs [`current`] as the source `runnel-core` stamps outbox rows from (see
/// [`runnel_core::trace_context`]). Idempotent and cheap; Runnel's own entry points
/// (relays, consumers, the server) call it, an application that builds outbox messages
/// outside them may call it once at start.
pub fn install() {
    trace_context::install_source(current);
}

/// The trace context of the current span (see [`inject`]).
pub fn current() -> Option<TraceContext> {
    inject(&tracing::Span::current())
}

/// Gives `metadata` the trace context of `span` unless it carries one already.
pub fn stamp_metadata(span: &tracing::Span, metadata: &mut Metadata) {
    if metadata.traceparent.is_some() {
        return;
    }
    if let Some(cx) = inject(span) {
        metadata.traceparent = Some(cx.traceparent);
        metadata.tracestate = cx.tracestate;
    }
}

/// Gives `message` the trace context of `span` unless it carries one already.
pub fn stamp_message(span: &tracing::Span, message: &mut Message) {
    if message.traceparent.is_some() {
        return;
    }
    if let Some(cx) = inject(span) {
        message.traceparent = Some(cx.traceparent);
        message.tracestate = cx.tracestate;
    }
}

/// The span of one append to `stream`: `runnel.append`.
pub fn append_span(stream: &str) -> tracing::Span {
    tracing::info_span!("runnel.append", stream, otel.kind = "internal")
}

/// The span of publishing `message` to `topic` (`runnel.publish`, kind producer), a child
/// of the context the message carries (the append or enqueue that produced it) or else of
/// the current span. With an OpenTelemetry layer the message then carries the publish
/// span's context, so the consumer's span is its child; without one the message is left
/// as it is. Keep the span until the publish is confirmed.
pub fn publish_span(topic: &TopicName, message: &mut Message) -> tracing::Span {
    let span = tracing::info_span!(
        "runnel.publish",
        otel.kind = "producer",
        messaging.destination.name = topic.as_str(),
        messaging.message.id = message.id.as_str(),
    );
    set_parent(
        &span,
        message.traceparent.as_deref(),
        message.tracestate.as_deref(),
    );
    if let Some(cx) = inject(&span) {
        message.traceparent = Some(cx.traceparent);
        message.tracestate = cx.tracestate;
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_opentelemetry_layer_contexts_pass_through_untouched() {
        let mut m = Message::json("T", &serde_json::json!({}));
        m.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        m.tracestate = Some("k=v".into());
        let before = m.clone();
        let topic = TopicName::new("t").unwrap();
        let _span = publish_span(&topic, &mut m);
        assert_eq!(m, before);
        let mut none = Message::json("T", &serde_json::json!({}));
        stamp_message(&tracing::Span::current(), &mut none);
        assert_eq!(none.traceparent, None);
        assert_eq!(current(), None);
    }
}
