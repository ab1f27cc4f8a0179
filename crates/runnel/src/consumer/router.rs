//! [`Router`]: one handler per event type, for consumers of topics that carry several
//! (the CloudEvents `type`, always present on a Runnel message).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::context::HandlerContext;
use super::error::HandlerError;
use super::handler::Handler;

/// Routes each message to the handler registered for its event type. Messages of other
/// types go to the [`fallback`](Router::fallback) if one is set, and are otherwise
/// acknowledged without handling (a consumer usually cares about a few of a topic's types;
/// set a fallback that returns [`HandlerError::permanent`] to dead-letter unknown types
/// instead).
///
/// A router is itself a [`Handler`], so it goes under the same layers.
///
/// ```
/// use runnel::consumer::{HandlerContext, HandlerError, Router};
///
/// async fn on_placed(ctx: HandlerContext) -> Result<(), HandlerError> { Ok(()) }
/// async fn on_cancelled(ctx: HandlerContext) -> Result<(), HandlerError> { Ok(()) }
///
/// let router = Router::new()
///     .route("OrderPlaced", on_placed)
///     .route("OrderCancelled", on_cancelled);
/// assert!(router.routes("OrderPlaced"));
/// assert!(!router.routes("OrderShipped"));
/// ```
#[derive(Clone, Default)]
pub struct Router {
    routes: HashMap<String, Arc<dyn Handler>>,
    fallback: Option<Arc<dyn Handler>>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<&String> = self.routes.keys().collect();
        types.sort();
        f.debug_struct("Router")
            .field("event_types", &types)
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl Router {
    /// A router with no routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends messages of `event_type` to `handler`.
    ///
    /// # Panics
    /// If `event_type` already has a handler: each type has exactly one per consumer (a
    /// startup bug, like a duplicate route in an HTTP router).
    pub fn route(mut self, event_type: impl Into<String>, handler: impl Handler) -> Self {
        let event_type = event_type.into();
        assert!(
            !self.routes.contains_key(&event_type),
            "event type {event_type:?} already has a handler in this router"
        );
        self.routes.insert(event_type, Arc::new(handler));
        self
    }

    /// Sends messages of every unrouted type to `handler`.
    pub fn fallback(mut self, handler: impl Handler) -> Self {
        self.fallback = Some(Arc::new(handler));
        self
    }

    /// Whether `event_type` has a handler of its own.
    pub fn routes(&self, event_type: &str) -> bool {
        self.routes.contains_key(event_type)
    }
}

#[async_trait]
impl Handler for Router {
    async fn handle(&self, ctx: HandlerContext) -> Result<(), HandlerError> {
        match self.routes.get(ctx.event_type()).or(self.fallback.as_ref()) {
            Some(handler) => handler.handle(ctx).await,
            None => {
                tracing::debug!(
                    event_type = ctx.event_type(),
                    "no handler for this event type; acknowledged without handling"
                );
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_core::message::{GroupName, Message, TopicName};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn ctx(event_type: &str) -> HandlerContext {
        HandlerContext::detached(
            Message::json(event_type, &serde_json::json!({})),
            TopicName::new("t").unwrap(),
            GroupName::new("g").unwrap(),
        )
    }

    #[tokio::test]
    async fn routes_by_event_type_and_falls_back() {
        let hits = Arc::new(AtomicU32::new(0));
        let h = Arc::clone(&hits);
        let router = Router::new()
            .route("A", move |_ctx: HandlerContext| {
                let h = Arc::clone(&h);
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            })
            .fallback(|_ctx: HandlerContext| async {
                Err(HandlerError::permanent("unknown event type"))
            });
        router.handle(ctx("A")).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert!(router.handle(ctx("B")).await.is_err());
        assert!(Router::new().handle(ctx("B")).await.is_ok());
    }

    #[test]
    #[should_panic(expected = "already has a handler")]
    fn duplicate_routes_are_refused() {
        let h = |_ctx: HandlerContext| async { Ok(()) };
        let _ = Router::new().route("A", h).route("A", h);
    }
}
