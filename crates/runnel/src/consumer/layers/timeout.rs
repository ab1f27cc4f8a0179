//! [`TimeoutLayer`]: an attempt that runs longer than the handler timeout is cancelled and
//! counts as a retryable failure.

use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service, ServiceExt};

use crate::consumer::context::HandlerContext;
use crate::consumer::error::{HandlerError, RouterFailure};
use crate::consumer::handler::{BoxFuture, Outcome};

/// Cancels an attempt after `timeout` (tokio's timer, so tests can pause time).
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// Attempts may run for at most `timeout`.
    pub fn new(timeout: Duration) -> Self {
        TimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service of [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<HandlerContext> for Timeout<S>
where
    S: Service<HandlerContext, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = BoxFuture<Result<Outcome, HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        // Readiness is checked per call on a clone (see `call`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ctx: HandlerContext) -> Self::Future {
        let inner = self.inner.clone();
        let after = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(after, inner.oneshot(ctx)).await {
                Ok(result) => result,
                Err(_elapsed) => Err(HandlerError::retryable(RouterFailure::TimedOut { after })),
            }
        })
    }
}
