//! One distributed trace across every hop: an HTTP append with an incoming W3C
//! `traceparent` → the append → the event store as outbox → the relay's publish → the
//! consumer's handler → the handler's own send, consumed again. Every span is recorded by
//! an in-memory OpenTelemetry exporter behind the `tracing-opentelemetry` layer; the test
//! asserts they share the caller's trace id and form one parent chain, on the embedded bus
//! and on NATS (`RUNNEL_TEST_NATS_URL`; skipped loudly when unset, a failure under
//! `RUNNEL_REQUIRE_SERVICES=1`).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use runnel::app::{App, ShutdownTrigger};
use runnel::connect::{Settings, SettingsInputs};
use runnel::consumer::{HandlerContext, HandlerError};
use runnel::core::bus::{StartPosition, SubscribeOptions};
use runnel::core::{GroupName, Message, TopicName};
use runnel::outbox::EventStoreRelayOptions;
use runnel_server::{Server, ServerConfig};
use serde_json::json;
use tokio::sync::mpsc;
use tracing_subscriber::layer::SubscriberExt as _;

/// Every wait in these tests ends by this deadline at the latest.
const DEADLINE: Duration = Duration::from_secs(60);

/// The process-wide exporter: one `tracing` subscriber per process, so both tests share
/// it and each picks out its own trace by the trace id it sent.
fn exporter() -> InMemorySpanExporter {
    static EXPORTER: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    EXPORTER
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
                .expect("the only subscriber of this test binary");
            (exporter, provider)
        })
        .0
        .clone()
}

fn spans_of(exporter: &InMemorySpanExporter, trace: TraceId) -> Vec<SpanData> {
    exporter
        .get_finished_spans()
        .expect("the exporter's spans")
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect()
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// The one span of `spans` that `pick` selects.
fn one<'a>(spans: &'a [SpanData], what: &str, pick: impl Fn(&SpanData) -> bool) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one {what} span expected, got {}: {:#?}",
        found.len(),
        spans
            .iter()
            .map(|s| (&s.name, s.span_kind.clone()))
            .collect::<Vec<_>>()
    );
    found[0]
}

/// New groups start at the first message: the consumers' subscriptions race the relay.
fn from_the_start() -> SubscribeOptions {
    SubscribeOptions {
        start: StartPosition::Earliest,
        ..SubscribeOptions::default()
    }
}

/// The span id a W3C `traceparent` names as the parent.
fn parent_id_of(traceparent: &str) -> (TraceId, SpanId) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    (
        TraceId::from_hex(parts[1]).unwrap(),
        SpanId::from_hex(parts[2]).unwrap(),
    )
}

async fn trace_spans_http_outbox_broker_and_handler(settings: Settings) {
    let exporter = exporter();
    let trace_hex = format!("{:032x}", uuid::Uuid::now_v7().as_u128());
    let caller_span = "00f067aa0ba902b7";
    let incoming = format!("00-{trace_hex}-{caller_span}-01");
    let trace = TraceId::from_hex(&trace_hex).unwrap();

    let mut app = App::connect(&settings).await.unwrap();
    app.event_store_relay(EventStoreRelayOptions::default());
    let invoices = TopicName::new("Billing.InvoiceRequested").unwrap();
    let forward_to = invoices.clone();
    app.consumer(
        TopicName::new("Order.OrderPlaced").unwrap(),
        GroupName::new("billing").unwrap(),
        move |c| {
            let topic = forward_to.clone();
            c.subscribe_options(from_the_start())
                .handler(move |ctx: HandlerContext| {
                    let topic = topic.clone();
                    async move {
                        let order = ctx
                            .message()
                            .payload_json()
                            .map_err(HandlerError::permanent)?;
                        ctx.publish(
                            &topic,
                            vec![Message::json(
                                "InvoiceRequested",
                                &json!({ "order": order }),
                            )],
                        )
                        .await?;
                        Ok::<_, HandlerError>(())
                    }
                })
        },
    );
    let (seen_tx, mut seen_rx) = mpsc::channel::<Message>(16);
    app.consumer(
        invoices.clone(),
        GroupName::new("invoicing").unwrap(),
        move |c| {
            let seen = seen_tx.clone();
            c.subscribe_options(from_the_start())
                .handler(move |ctx: HandlerContext| {
                    let seen = seen.clone();
                    async move {
                        let _ = seen.send(ctx.message().clone()).await;
                        Ok::<_, HandlerError>(())
                    }
                })
        },
    );
    let server = Server::bind(
        ServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..ServerConfig::local()
        },
        app.stores().events.clone(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", server.local_addr());
    let events = app.stores().events.clone();
    let running = app.start().await.unwrap();
    let (trigger, shutdown) = ShutdownTrigger::new();
    let http = tokio::spawn(server.run(shutdown));

    // The HTTP hop, continuing the caller's trace.
    let response = reqwest::Client::new()
        .post(format!("{base}/streams/Order-1"))
        .header("traceparent", &incoming)
        .header("tracestate", "caller=1")
        .json(&json!([{ "type": "OrderPlaced", "data": { "total": 3 } }]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);

    // The handler's send arrives at the second consumer.
    let invoice = tokio::time::timeout(DEADLINE, seen_rx.recv())
        .await
        .expect("the handler's send is consumed before the deadline")
        .expect("a message");
    assert_eq!(invoice.event_type, "InvoiceRequested");

    // Spans are exported as they end; the second consume span ends right after its
    // handler returned.
    let started = Instant::now();
    let spans = loop {
        let spans = spans_of(&exporter, trace);
        let consumes = spans.iter().filter(|s| s.name == "runnel.consume").count();
        if consumes >= 2 && spans.iter().any(|s| s.span_kind == SpanKind::Server) {
            break spans;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "spans of the trace did not all end: {:#?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let http_span = one(&spans, "server", |s| s.span_kind == SpanKind::Server);
    assert_eq!(http_span.name, "POST /streams/{stream}");
    assert_eq!(
        attribute(http_span, "http.route").as_deref(),
        Some("/streams/{stream}")
    );
    assert_eq!(
        attribute(http_span, "http.response.status_code").as_deref(),
        Some("201")
    );
    assert_eq!(
        http_span.parent_span_id,
        SpanId::from_hex(caller_span).unwrap(),
        "the HTTP span is the child of the incoming traceparent"
    );
    assert!(http_span.parent_span_is_remote);
    assert_eq!(
        http_span.span_context.trace_state().get("caller"),
        Some("1")
    );

    let append = one(&spans, "append", |s| s.name == "runnel.append");
    assert_eq!(append.parent_span_id, http_span.span_context.span_id());

    // The stored event carries the append span's context.
    let stored = events
        .read_stream(
            &runnel::core::StreamName::new("Order-1").unwrap(),
            runnel::core::ReadStream::forward(10),
        )
        .await
        .unwrap();
    let stored_tp = stored[0]
        .metadata
        .traceparent
        .clone()
        .expect("a stored traceparent");
    assert_eq!(
        parent_id_of(&stored_tp),
        (trace, append.span_context.span_id())
    );

    let publish = one(&spans, "publish", |s| s.name == "runnel.publish");
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(publish.parent_span_id, append.span_context.span_id());

    let consume_order = one(&spans, "consume of the event", |s| {
        s.name == "runnel.consume" && attribute(s, "topic").as_deref() == Some("Order.OrderPlaced")
    });
    assert_eq!(consume_order.span_kind, SpanKind::Consumer);
    assert_eq!(consume_order.parent_span_id, publish.span_context.span_id());

    // The handler's own send carries the handler's span, and its consumer continues it.
    let sent_tp = invoice
        .traceparent
        .clone()
        .expect("the handler's send has a traceparent");
    assert_eq!(
        parent_id_of(&sent_tp),
        (trace, consume_order.span_context.span_id())
    );
    let consume_invoice = one(&spans, "consume of the handler's send", |s| {
        s.name == "runnel.consume"
            && attribute(s, "topic").as_deref() == Some("Billing.InvoiceRequested")
    });
    assert_eq!(
        consume_invoice.parent_span_id,
        consume_order.span_context.span_id()
    );

    trigger.fire();
    tokio::time::timeout(DEADLINE, http)
        .await
        .expect("the server stops before the deadline")
        .unwrap()
        .unwrap();
    let report = running.shutdown(DEADLINE).await;
    assert!(report.all_stopped_in_time(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_spans_http_outbox_broker_and_handler_on_the_embedded_bus() {
    let dir = tempfile::tempdir().unwrap();
    let settings = SettingsInputs::default()
        .db("--db", Some(dir.path().join("app.db")))
        .resolve()
        .unwrap();
    trace_spans_http_outbox_broker_and_handler(settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_spans_http_outbox_broker_and_handler_on_nats() {
    let url = match std::env::var("RUNNEL_TEST_NATS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "RUNNEL_TEST_NATS_URL is not set but RUNNEL_REQUIRE_SERVICES=1"
            );
            eprintln!("SKIPPED: RUNNEL_TEST_NATS_URL is not set");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    // Subject and stream prefixes of its own: runs and concurrent tests share nothing.
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let tag = &tag[tag.len() - 12..];
    let separator = if url.contains('?') { '&' } else { '?' };
    let bus = format!("{url}{separator}subject_prefix=trace{tag}&stream_prefix=TRACE{tag}");
    let settings = SettingsInputs::default()
        .db("--db", Some(dir.path().join("app.db")))
        .bus("--bus", Some(bus))
        .resolve()
        .unwrap();
    trace_spans_http_outbox_broker_and_handler(settings).await;
}
