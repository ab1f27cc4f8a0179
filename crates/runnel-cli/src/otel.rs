//! OpenTelemetry export of Runnel's spans, on only when configured: when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, every
//! command installs a tracer that sends spans over OTLP http/protobuf, and the
//! `tracing-opentelemetry` layer that turns Runnel's `tracing` spans (HTTP request,
//! append, publish, consume) into OpenTelemetry spans. The exporter reads the other
//! standard variables itself (`OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT`); the service
//! name is `OTEL_SERVICE_NAME`, else `runnel`. Unset, nothing of this runs. The endpoint
//! must be plain `http://` (a collector next to the process): the exporter has no TLS.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;

/// The variable that turns export on (and where spans go: `{endpoint}/v1/traces`).
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The signal-specific variant, used as it is.
pub const TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// The service name unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME_DEFAULT: &str = "runnel";

/// Checks the endpoint variables: each set one must be an `http://` URL. The exporter is
/// built without TLS (no second TLS stack in the binary): send to a collector or agent
/// next to the process, which forwards over TLS.
fn check_endpoints() -> anyhow::Result<()> {
    for var in [ENDPOINT_VAR, TRACES_ENDPOINT_VAR] {
        let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) else {
            continue;
        };
        let value = value.to_string_lossy();
        let rest = value.strip_prefix("http://").unwrap_or_default();
        if rest.is_empty() || rest.starts_with('/') {
            anyhow::bail!(
                "{var}={value:?} is not an http:// URL with a host; spans are exported over \
                 plain OTLP/HTTP (no TLS): point it at a local OpenTelemetry collector, \
                 e.g. http://127.0.0.1:4318"
            );
        }
    }
    Ok(())
}

/// Whether export is configured.
pub fn configured() -> bool {
    [ENDPOINT_VAR, TRACES_ENDPOINT_VAR]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// The installed tracer provider; dropping it flushes the spans still batched (a short
/// command exits right after its work).
pub struct OtelGuard {
    provider: SdkTracerProvider,
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("warning: OpenTelemetry spans may be lost: {e}");
        }
    }
}

/// The spans exported: Runnel's at `INFO` and above (its hop spans are `INFO`), never the
/// HTTP client's that carries the export itself (that would trace the exporter forever).
pub fn span_filter() -> Targets {
    Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
        .with_target("reqwest", LevelFilter::OFF)
        .with_target("h2", LevelFilter::OFF)
        .with_target("opentelemetry", LevelFilter::OFF)
        .with_target("opentelemetry_sdk", LevelFilter::OFF)
        .with_target("opentelemetry_otlp", LevelFilter::OFF)
        .with_target("lapin", LevelFilter::OFF)
}

/// The tracer provider with a batching OTLP http/protobuf exporter, and the layer.
pub fn install<S>() -> anyhow::Result<(
    OtelGuard,
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
)>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    check_endpoints()?;
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| {
            anyhow::anyhow!("cannot build the OTLP span exporter ({ENDPOINT_VAR}): {e}")
        })?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(SERVICE_NAME_DEFAULT);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("runnel");
    runnel::trace::install();
    Ok((
        OtelGuard { provider },
        tracing_opentelemetry::layer().with_tracer(tracer),
    ))
}
