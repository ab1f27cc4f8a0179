//! [`DeadLetterLayer`]: a delivery whose handling failed for good (the last attempt, or a
//! permanent error) is stored with its whole failure history and then acknowledged — never
//! silently dropped: if the store fails, the delivery is nacked to come back later.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use runnel_core::dead_letter::{DeadLetterStore, FailureRecord, NewDeadLetter};
use runnel_core::{Clock, SystemClock};
use tower::{Layer, Service, ServiceExt};

use super::error_text;
use crate::consumer::context::HandlerContext;
use crate::consumer::error::{ErrorKind, HandlerError, RouterFailure};
use crate::consumer::handler::{BoxFuture, Outcome};

/// How long a delivery waits before coming back when the dead-letter store failed.
pub const DEAD_LETTER_STORE_FAILURE_NACK_DELAY: Duration = Duration::from_secs(10);

/// Stores final failures in a [`DeadLetterStore`]: topic, group, message and every
/// failure record (attempt, time, error text, permanent flag; the store derives the first
/// and last failure times). Successful outcomes, [`ErrorKind::Redeliver`] and
/// [`ErrorKind::Abandoned`] pass through.
#[derive(Clone)]
pub struct DeadLetterLayer {
    store: Arc<dyn DeadLetterStore>,
    clock: Arc<dyn Clock>,
    nack_delay: Duration,
}

impl fmt::Debug for DeadLetterLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterLayer")
            .field("nack_delay", &self.nack_delay)
            .finish_non_exhaustive()
    }
}

impl DeadLetterLayer {
    /// Dead-letters into `store`.
    pub fn new(store: Arc<dyn DeadLetterStore>) -> Self {
        DeadLetterLayer {
            store,
            clock: Arc::new(SystemClock),
            nack_delay: DEAD_LETTER_STORE_FAILURE_NACK_DELAY,
        }
    }

    /// How long a delivery waits before coming back when the store failed.
    pub fn nack_delay_on_store_failure(mut self, delay: Duration) -> Self {
        self.nack_delay = delay;
        self
    }

    /// Stamps the failure record it writes when no retry layer recorded any.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

impl<S> Layer<S> for DeadLetterLayer {
    type Service = DeadLetter<S>;
    fn layer(&self, inner: S) -> DeadLetter<S> {
        DeadLetter {
            inner,
            config: self.clone(),
        }
    }
}

/// The service of [`DeadLetterLayer`].
#[derive(Clone, Debug)]
pub struct DeadLetter<S> {
    inner: S,
    config: DeadLetterLayer,
}

impl<S> Service<HandlerContext> for DeadLetter<S>
where
    S: Service<HandlerContext, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = BoxFuture<Result<Outcome, HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ctx: HandlerContext) -> Self::Future {
        let inner = self.inner.clone();
        let config = self.config.clone();
        Box::pin(async move {
            let error = match inner.oneshot(ctx.clone()).await {
                Ok(outcome) => return Ok(outcome),
                Err(e) => e,
            };
            if !matches!(error.kind(), ErrorKind::Retryable | ErrorKind::Permanent) {
                return Err(error);
            }
            let (failures, first_failed_at, last_failed_at) = {
                let mut log = ctx.log();
                if log.failures.is_empty() {
                    // No retry layer below recorded the failure: record the final one.
                    log.record_failure(FailureRecord {
                        attempt: ctx.attempt(),
                        at: config.clock.now(),
                        error: error_text(error.report()),
                        permanent: error.kind() == ErrorKind::Permanent,
                    });
                }
                (
                    log.failures.clone(),
                    log.first_failed_at,
                    log.last_failed_at,
                )
            };
            let attempts = failures.len();
            let dead_letter = NewDeadLetter {
                topic: ctx.topic().clone(),
                group: ctx.group().clone(),
                message: ctx.message().clone(),
                failures,
            };
            match config.store.put(dead_letter).await {
                Ok(id) => {
                    ::tracing::warn!(
                        dead_letter_id = %id,
                        attempts,
                        ?first_failed_at,
                        ?last_failed_at,
                        error = %error,
                        "dead-lettered"
                    );
                    Ok(Outcome::DeadLettered { id })
                }
                Err(store_error) => {
                    ::tracing::error!(
                        error = %store_error,
                        handler_error = %error,
                        "storing the dead letter failed; nacking so the message comes back"
                    );
                    Err(HandlerError::redeliver(
                        RouterFailure::DeadLetterStoreFailed {
                            store_error,
                            handler_error: error_text(error.report()),
                        },
                        Some(config.nack_delay),
                    ))
                }
            }
        })
    }
}
