//! [`RetryLayer`]: retries a failed attempt in-process, with exponential backoff and full
//! jitter, while the delivery (and so its ordering key) stays held.
//!
//! Retrying in-process rather than by nack keeps per-key order without help from the
//! transport, and a key layer above it lets other keys go on meanwhile. Before a wait that
//! would outlast the delivery's lease, the layer extends the lease so the transport does not
//! hand the message to another consumer in the middle of the backoff.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use runnel_core::dead_letter::FailureRecord;
use runnel_core::message::BusError;
use runnel_core::{Clock, SystemClock};
use tower::{Layer, Service, ServiceExt};

use super::error_text;
use crate::consumer::context::HandlerContext;
use crate::consumer::error::{Classify, DefaultClassify, ErrorKind, HandlerError, RouterFailure};
use crate::consumer::handler::{BoxFuture, Outcome};
use crate::consumer::time::{Sleeper, TokioSleeper};
use crate::retry::{FullJitter, Jitter, RetryPolicy};

/// Retries failed attempts by a [`RetryPolicy`]; records every failure (attempt, time,
/// error text, permanent flag) for the dead-letter layer above.
///
/// * a retryable failure waits `delay_for_attempt(n)` (full jitter in
///   `[0, min(max_delay, base_delay·2ⁿ⁻¹)]`) and tries again, up to `max_attempts` in all;
/// * a permanent failure (or one the [`Classify`] hook calls permanent) is returned at once;
/// * [`ErrorKind::Redeliver`] and [`ErrorKind::Abandoned`] pass through untouched (they are
///   not failures of the message);
/// * if the consumer shuts down during a backoff, the wait is cut short and the delivery is
///   handed back with the remaining delay (`Redeliver`).
#[derive(Clone)]
pub struct RetryLayer {
    policy: RetryPolicy,
    classify: Arc<dyn Classify>,
    jitter: Arc<dyn Jitter>,
    sleeper: Arc<dyn Sleeper>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl RetryLayer {
    /// Retries by `policy`, classifying with [`DefaultClassify`], full jitter, tokio's
    /// timer and the system clock.
    pub fn new(policy: RetryPolicy) -> Self {
        RetryLayer {
            policy,
            classify: Arc::new(DefaultClassify),
            jitter: Arc::new(FullJitter),
            sleeper: Arc::new(TokioSleeper),
            clock: Arc::new(SystemClock),
        }
    }

    /// Decides the kind of unclassified errors.
    pub fn classify(mut self, classify: Arc<dyn Classify>) -> Self {
        self.classify = classify;
        self
    }

    /// Draws the waits (tests inject a scripted one).
    pub fn jitter(mut self, jitter: Arc<dyn Jitter>) -> Self {
        self.jitter = jitter;
        self
    }

    /// Waits between attempts.
    pub fn sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> Self {
        self.sleeper = sleeper;
        self
    }

    /// Stamps failure records.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The policy.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            config: self.clone(),
        }
    }
}

/// The service of [`RetryLayer`].
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    config: RetryLayer,
}

impl<S> Service<HandlerContext> for Retry<S>
where
    S: Service<HandlerContext, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = BoxFuture<Result<Outcome, HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        // Each attempt waits for the inner service's readiness itself (a concurrency slot).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ctx: HandlerContext) -> Self::Future {
        let inner = self.inner.clone();
        let config = self.config.clone();
        Box::pin(retry_loop(inner, config, ctx))
    }
}

async fn retry_loop<S>(
    mut inner: S,
    config: RetryLayer,
    ctx: HandlerContext,
) -> Result<Outcome, HandlerError>
where
    S: Service<HandlerContext, Response = Outcome, Error = HandlerError>,
{
    let attempts_max = config.policy.attempts();
    let mut attempt: u32 = 1;
    loop {
        ::tracing::Span::current().record("attempt", attempt);
        let result = match inner.ready().await {
            Ok(svc) => svc.call(ctx.for_attempt(attempt)).await,
            Err(e) => Err(HandlerError::retryable(RouterFailure::NotReady(
                e.to_string(),
            ))),
        };
        let error = match result {
            Ok(outcome) => return Ok(outcome),
            Err(e) if e.is_classified() => e,
            Err(e) => {
                let kind = config.classify.classify(e.error());
                e.classified_as(kind)
            }
        };
        let permanent = match error.kind() {
            ErrorKind::Retryable => false,
            ErrorKind::Permanent => true,
            // Not a failure of the message: the layers above hand it back as it is.
            _ => return Err(error),
        };
        ctx.log().record_failure(FailureRecord {
            attempt,
            at: config.clock.now(),
            error: error_text(error.report()),
            permanent,
        });
        if permanent {
            ::tracing::warn!(attempt, error = %error, "permanent failure; not retrying");
            return Err(error);
        }
        if attempt >= attempts_max {
            ::tracing::warn!(attempt, error = %error, "last attempt failed");
            return Err(error);
        }
        let delay = config
            .policy
            .delay_for_attempt_with(attempt, config.jitter.as_ref());
        ::tracing::info!(attempt, ?delay, error = %error, "attempt failed; retrying after backoff");
        ctx.log().retries += 1;

        // Keep the delivery ours through the wait, or the transport would redeliver it
        // elsewhere while we still hold its key.
        match ctx.shared().lease.keep_through(delay).await {
            Ok(true) => ctx.log().lease_extensions += 1,
            Ok(false) => {}
            Err(e @ BusError::DeliveryLost(_)) => {
                return Err(HandlerError::abandoned(RouterFailure::LeaseLost(e)));
            }
            // The transport may redeliver a duplicate; the idempotency layers cover that.
            Err(e) => ::tracing::warn!(error = %e, "could not extend the delivery's lease"),
        }

        let shutdown = &ctx.shared().shutdown;
        let started = tokio::time::Instant::now();
        tokio::select! {
            biased;
            () = shutdown.requested() => {
                let remaining = delay.saturating_sub(started.elapsed());
                return Err(HandlerError::redeliver(
                    RouterFailure::InterruptedBackoff { last_error: error_text(error.report()) },
                    Some(remaining),
                ));
            }
            () = config.sleeper.sleep(delay) => {}
        }
        attempt += 1;
    }
}
