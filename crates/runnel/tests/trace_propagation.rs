//! `runnel::trace`: inject and extract W3C trace context through `tracing` spans with an
//! OpenTelemetry layer installed (an SDK tracer, no exporter), and the pass-through rules
//! that keep an incoming context when there is none to add.

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use runnel::core::{Message, TopicName};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt as _;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Runs `f` with a subscriber that has the OpenTelemetry layer.
fn with_otel<T>(f: impl FnOnce() -> T) -> T {
    let provider = SdkTracerProvider::builder().build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, f)
}

fn ids(traceparent: &str) -> (TraceId, SpanId) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    (
        TraceId::from_hex(parts[1]).unwrap(),
        SpanId::from_hex(parts[2]).unwrap(),
    )
}

#[test]
fn inject_writes_the_spans_own_context_as_traceparent() {
    with_otel(|| {
        let span = tracing::info_span!("work");
        let cx = runnel::trace::inject(&span).expect("a span with a context");
        let sc = span.context().span().span_context().clone();
        assert_eq!(
            cx.traceparent,
            format!("00-{}-{}-01", sc.trace_id(), sc.span_id())
        );
        assert_eq!(cx.tracestate, None);
        assert!(runnel_core_parse(&cx.traceparent));
    });
}

fn runnel_core_parse(tp: &str) -> bool {
    runnel::core::trace_context::parse_traceparent(tp).is_some()
}

#[test]
fn extract_then_set_parent_continues_the_remote_trace_with_its_state() {
    with_otel(|| {
        let span = tracing::info_span!("child");
        assert!(runnel::trace::set_parent(
            &span,
            Some(PARENT),
            Some("rojo=00f067aa0ba902b7")
        ));
        let cx = runnel::trace::inject(&span).unwrap();
        let (trace, parent) = ids(PARENT);
        let (child_trace, child_span) = ids(&cx.traceparent);
        assert_eq!(child_trace, trace, "same trace");
        assert_ne!(child_span, parent, "a span of its own");
        assert_eq!(cx.tracestate.as_deref(), Some("rojo=00f067aa0ba902b7"));
        assert!(cx.traceparent.ends_with("-01"), "sampled flag carried");
    });
}

#[test]
fn invalid_incoming_context_starts_a_new_trace_and_invalid_state_is_dropped_alone() {
    with_otel(|| {
        let span = tracing::info_span!("child");
        assert!(!runnel::trace::set_parent(&span, Some("00-nonsense"), None));
        let cx = runnel::trace::inject(&span).unwrap();
        assert_ne!(ids(&cx.traceparent).0, ids(PARENT).0);

        let span = tracing::info_span!("child");
        assert!(runnel::trace::set_parent(
            &span,
            Some(PARENT),
            Some("not a=valid=state")
        ));
        let cx = runnel::trace::inject(&span).unwrap();
        assert_eq!(ids(&cx.traceparent).0, ids(PARENT).0);
        assert_eq!(cx.tracestate, None);
    });
}

#[test]
fn publish_span_is_a_child_of_the_message_context_and_replaces_it() {
    with_otel(|| {
        let topic = TopicName::new("orders").unwrap();
        let mut m = Message::json("OrderPlaced", &serde_json::json!({}));
        m.traceparent = Some(PARENT.into());
        let span = runnel::trace::publish_span(&topic, &mut m);
        let sc = span.context().span().span_context().clone();
        let (trace, own) = ids(m.traceparent.as_deref().unwrap());
        assert_eq!(trace, ids(PARENT).0);
        assert_eq!(own, sc.span_id(), "the message now names the publish span");
    });
}

#[test]
fn stamping_keeps_an_incoming_context_even_with_a_layer() {
    with_otel(|| {
        let span = tracing::info_span!("append");
        let mut kept = runnel::core::Metadata::default().with_trace_context(PARENT, None);
        runnel::trace::stamp_metadata(&span, &mut kept);
        assert_eq!(kept.traceparent.as_deref(), Some(PARENT));
        let mut fresh = runnel::core::Metadata::default();
        runnel::trace::stamp_metadata(&span, &mut fresh);
        let sc = span.context().span().span_context().clone();
        assert_eq!(ids(fresh.traceparent.as_deref().unwrap()).1, sc.span_id());
    });
}

#[test]
fn without_a_layer_nothing_is_injected_and_incoming_contexts_pass_through() {
    let span = tracing::info_span!("work");
    assert!(runnel::trace::inject(&span).is_none());
    assert!(!runnel::trace::set_parent(&span, Some(PARENT), None));
    let topic = TopicName::new("orders").unwrap();
    let mut m = Message::json("OrderPlaced", &serde_json::json!({}));
    m.traceparent = Some(PARENT.into());
    m.tracestate = Some("k=v".into());
    let before = m.clone();
    let _span = runnel::trace::publish_span(&topic, &mut m);
    assert_eq!(m, before, "an incoming context is never dropped");
}
