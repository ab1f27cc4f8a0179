//! [`InboxLayer`]: runs each attempt inside an [`Inbox`] scope, so the handler's writes and
//! the processed-message mark commit together (exactly-once effects where the handler's
//! state lives in the inbox's database).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service, ServiceExt};

use super::consumer_name;

use crate::consumer::context::HandlerContext;
use crate::consumer::error::{HandlerError, RouterFailure};
use crate::consumer::handler::{BoxFuture, Outcome};
use crate::consumer::inbox::{ErasedInbox, Inbox, InboxCommit, InboxError, InboxKey, ScopeError};

/// How long a delivery waits before coming back when the inbox store failed.
pub const INBOX_UNAVAILABLE_NACK_DELAY: Duration = Duration::from_secs(1);

/// Opens the inbox's scope before the handler, commits it (with the processed mark) after
/// a successful attempt, rolls it back after a failed one. A message already marked is
/// acknowledged as [`Outcome::Duplicate`] without running the handler.
///
/// The mark is per handler: by default [`consumer_name`] (`"{topic}/{group}"`), so each
/// consumer group of a topic handles a message once; set [`handler_name`](Self::handler_name) to share or split
/// marks differently.
#[derive(Clone)]
pub struct InboxLayer {
    inbox: Arc<dyn ErasedInbox>,
    handler_name: Option<String>,
}

impl fmt::Debug for InboxLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxLayer")
            .field("handler_name", &self.handler_name)
            .finish_non_exhaustive()
    }
}

impl InboxLayer {
    /// Uses `inbox`.
    pub fn new<I: Inbox>(inbox: I) -> Self {
        Self::from_arc(Arc::new(inbox))
    }

    /// Uses a shared `inbox` (the test keeps a handle to look inside).
    pub fn from_arc<I: Inbox>(inbox: Arc<I>) -> Self {
        InboxLayer {
            inbox: inbox as Arc<dyn ErasedInbox>,
            handler_name: None,
        }
    }

    /// Marks messages under `name` instead of the default (keep it within
    /// [`CONSUMER_NAME_LEN_MAX`](super::CONSUMER_NAME_LEN_MAX) bytes: stores refuse longer).
    pub fn handler_name(mut self, name: impl Into<String>) -> Self {
        self.handler_name = Some(name.into());
        self
    }
}

impl<S> Layer<S> for InboxLayer {
    type Service = InboxService<S>;
    fn layer(&self, inner: S) -> InboxService<S> {
        InboxService {
            inner,
            config: self.clone(),
        }
    }
}

/// The service of [`InboxLayer`].
#[derive(Clone, Debug)]
pub struct InboxService<S> {
    inner: S,
    config: InboxLayer,
}

fn inbox_failed(error: InboxError) -> HandlerError {
    match error {
        // The store is down: not the message's fault; come back later.
        InboxError::Store(e) => HandlerError::redeliver(
            RouterFailure::InboxUnavailable(e),
            Some(INBOX_UNAVAILABLE_NACK_DELAY),
        ),
        // The handler's own writes failed: a failed attempt like any other.
        InboxError::Writes(e) => HandlerError::unclassified(e),
    }
}

impl<S> Service<HandlerContext> for InboxService<S>
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
            let key = InboxKey {
                handler: config
                    .handler_name
                    .clone()
                    .unwrap_or_else(|| consumer_name(ctx.topic(), ctx.group())),
                message_id: ctx.message().id.clone(),
            };
            let inbox = &config.inbox;
            let Some(slot) = inbox.begin(&key).await.map_err(inbox_failed)? else {
                ::tracing::debug!(%key, "already processed (inbox); skipping the handler");
                return Ok(Outcome::Duplicate {
                    cached_result: None,
                });
            };
            match inner.oneshot(ctx.with_scope_slot(Arc::clone(&slot))).await {
                Ok(outcome) => match inbox.commit(&key, slot).await {
                    Ok(InboxCommit::Committed) => Ok(outcome),
                    Ok(InboxCommit::AlreadyProcessed) => {
                        ::tracing::debug!(%key, "a concurrent duplicate committed first; this attempt's writes were discarded");
                        Ok(Outcome::Duplicate {
                            cached_result: None,
                        })
                    }
                    Err(ScopeError::Inbox(e)) => Err(inbox_failed(e)),
                    Err(e @ (ScopeError::StillHeld | ScopeError::Missing)) => {
                        Err(HandlerError::retryable(e))
                    }
                },
                Err(e) => {
                    if let Err(rollback) = inbox.rollback(&key, slot).await {
                        // Nothing was committed either way; the store cleans up.
                        ::tracing::warn!(%key, error = %rollback, "inbox rollback failed");
                    }
                    Err(e)
                }
            }
        })
    }
}
