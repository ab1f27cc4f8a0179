//! [`TracingLayer`]: one span per delivery, so every log line of every layer and of the
//! handler carries the delivery's identity.

use std::task::{Context, Poll};

use tower::{Layer, Service};
use tracing::field::Empty;
use tracing::Instrument;

use crate::consumer::context::HandlerContext;
use crate::consumer::error::{ErrorKind, HandlerError};
use crate::consumer::handler::{BoxFuture, Outcome};

/// Wraps each delivery in an `INFO` span named `runnel.consume` with the fields `topic`,
/// `group`, `message_id`, `event_type`, `key`, `delivery_attempt`, `attempt` (updated by the
/// retry layer), `correlation_id`, `causation_id` and `outcome` (set at the end).
///
/// The span is the OpenTelemetry consumer span of the message (`otel.kind = consumer`):
/// its parent is the trace context the message carries (`traceparent` / `tracestate`,
/// see [`crate::trace`]), so the handler and everything it sends join the producer's
/// trace. Without an OpenTelemetry layer that costs nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingLayer;

impl TracingLayer {
    /// The layer.
    pub fn new() -> Self {
        TracingLayer
    }
}

impl<S> Layer<S> for TracingLayer {
    type Service = Tracing<S>;
    fn layer(&self, inner: S) -> Tracing<S> {
        crate::trace::install();
        Tracing { inner }
    }
}

/// The service of [`TracingLayer`].
#[derive(Clone, Debug)]
pub struct Tracing<S> {
    inner: S,
}

impl<S> Service<HandlerContext> for Tracing<S>
where
    S: Service<HandlerContext, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = BoxFuture<Result<Outcome, HandlerError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        // Outermost layers pass readiness through: the key-order layer below applies
        // back-pressure here.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, ctx: HandlerContext) -> Self::Future {
        let m = ctx.message();
        let span = tracing::info_span!(
            "runnel.consume",
            topic = %ctx.topic(),
            group = %ctx.group(),
            message_id = %m.id,
            event_type = %m.event_type,
            key = m.ordering_key().unwrap_or(""),
            delivery_attempt = ctx.delivery_attempt(),
            attempt = ctx.attempt(),
            correlation_id = m.correlation_id.as_deref().unwrap_or(""),
            causation_id = m.causation_id.as_deref().unwrap_or(""),
            outcome = Empty,
            otel.kind = "consumer",
        );
        crate::trace::set_parent(&span, m.traceparent.as_deref(), m.tracestate.as_deref());
        // Readiness was checked by the caller on this very service (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = inner.call(ctx);
        Box::pin(
            async move {
                let result = fut.await;
                let outcome = match &result {
                    Ok(o) => o.as_str(),
                    Err(e) => match e.kind() {
                        ErrorKind::Redeliver { .. } => "redeliver",
                        ErrorKind::Abandoned => "abandoned",
                        _ => "failed",
                    },
                };
                tracing::Span::current().record("outcome", outcome);
                tracing::debug!(outcome, "delivery done");
                result
            }
            .instrument(span),
        )
    }
}
