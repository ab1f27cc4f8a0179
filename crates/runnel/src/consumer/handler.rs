//! [`Handler`]: the application's code for one message, and [`HandlerService`], the tower
//! service at the bottom of every layer stack that runs it.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures_util::FutureExt;
use runnel_core::dead_letter::DeadLetterId;

use super::context::HandlerContext;
use super::error::{HandlerError, RouterFailure};
use super::publisher::EffectBuffer;

/// The future every service in the router returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What became of a delivery that the router can acknowledge.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler succeeded (and its effects were published).
    Handled,
    /// An idempotency layer found the message already handled; the handler did not run
    /// (or its writes were discarded). A dedup layer returns the cached result.
    Duplicate { cached_result: Option<Vec<u8>> },
    /// It failed for good and was stored as a dead letter.
    DeadLettered { id: DeadLetterId },
}

impl Outcome {
    /// A short name for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Handled => "handled",
            Outcome::Duplicate { .. } => "duplicate",
            Outcome::DeadLettered { .. } => "dead_lettered",
        }
    }
}

/// Handles one message. Return `Ok(())` when done; an error says whether trying again may
/// help (see [`HandlerError`]).
///
/// Async closures taking a [`HandlerContext`] are handlers:
///
/// ```
/// use runnel::consumer::{Handler, HandlerContext, HandlerError};
///
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced { order_id: u64 }
///
/// let handler = |ctx: HandlerContext| async move {
///     let event: OrderPlaced = ctx.json()?; // bad JSON: permanent
///     println!("order {} placed", event.order_id);
///     Ok::<(), HandlerError>(())
/// };
/// fn assert_handler(_: impl Handler) {}
/// assert_handler(handler);
/// ```
///
/// or implement the trait on a type that holds the handler's dependencies:
///
/// ```
/// use runnel::async_trait;
/// use runnel::consumer::{Handler, HandlerContext, HandlerError};
///
/// struct SendReceipt { from: String }
///
/// #[async_trait]
/// impl Handler for SendReceipt {
///     async fn handle(&self, ctx: HandlerContext) -> Result<(), HandlerError> {
///         let _ = (&self.from, ctx.message());
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles the message in `ctx`.
    async fn handle(&self, ctx: HandlerContext) -> Result<(), HandlerError>;
}

#[async_trait]
impl<F, Fut> Handler for F
where
    F: Fn(HandlerContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    async fn handle(&self, ctx: HandlerContext) -> Result<(), HandlerError> {
        self(ctx).await
    }
}

/// Runs a [`Handler`] as a tower service: catches its panics (a retryable failure), and on
/// success publishes the messages it staged through [`HandlerContext::publish`].
pub struct HandlerService {
    handler: Arc<dyn Handler>,
}

impl Clone for HandlerService {
    fn clone(&self) -> Self {
        HandlerService {
            handler: Arc::clone(&self.handler),
        }
    }
}

impl std::fmt::Debug for HandlerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandlerService")
    }
}

impl HandlerService {
    /// Wraps `handler`.
    pub fn new(handler: impl Handler) -> Self {
        Self::from_arc(Arc::new(handler))
    }

    /// Wraps a shared handler.
    pub fn from_arc(handler: Arc<dyn Handler>) -> Self {
        HandlerService { handler }
    }
}

impl tower::Service<HandlerContext> for HandlerService {
    type Response = Outcome;
    type Error = HandlerError;
    type Future = BoxFuture<Result<Outcome, HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ctx: HandlerContext) -> Self::Future {
        let handler = Arc::clone(&self.handler);
        Box::pin(async move {
            // A fresh buffer per attempt: what a failed attempt staged is never published.
            let effects = Arc::new(EffectBuffer::default());
            let ctx = ctx.with_effects(Arc::clone(&effects));
            let publisher = ctx.publisher_arc().cloned();
            let result = AssertUnwindSafe(handler.handle(ctx)).catch_unwind().await;
            match result {
                Ok(Ok(())) => {
                    let published = effects
                        .flush(publisher.as_deref())
                        .await
                        .map_err(HandlerError::retryable)?;
                    if published > 0 {
                        tracing::debug!(published, "published the handler's messages");
                    }
                    Ok(Outcome::Handled)
                }
                Ok(Err(e)) => {
                    effects.discard();
                    Err(e)
                }
                Err(panic) => {
                    effects.discard();
                    Err(HandlerError::retryable(RouterFailure::Panicked {
                        message: panic_message(&*panic),
                    }))
                }
            }
        })
    }
}

/// The text of a caught panic's payload.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}
