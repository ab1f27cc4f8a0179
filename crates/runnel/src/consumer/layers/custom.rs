//! Application layers: any tower layer over the router's boxed service, kept in a list so
//! the builder can hold layers of different types.

use std::fmt;
use std::sync::Arc;

use tower::util::BoxCloneService;
use tower::{Layer, Service};

use crate::consumer::context::HandlerContext;
use crate::consumer::error::HandlerError;
use crate::consumer::handler::Outcome;

/// The router's service, boxed: what application layers wrap.
pub type BoxHandlerService = BoxCloneService<HandlerContext, Outcome, HandlerError>;

type Wrap = Arc<dyn Fn(BoxHandlerService) -> BoxHandlerService + Send + Sync>;

/// Application layers, applied in the order they were added (the first added is the
/// outermost of them).
#[derive(Clone, Default)]
pub struct CustomLayers {
    wraps: Vec<Wrap>,
}

impl fmt::Debug for CustomLayers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomLayers")
            .field("count", &self.wraps.len())
            .finish()
    }
}

impl CustomLayers {
    /// No layers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `layer` inside the ones added before.
    pub fn push<L>(&mut self, layer: L)
    where
        L: Layer<BoxHandlerService> + Send + Sync + 'static,
        L::Service: Service<HandlerContext, Response = Outcome, Error = HandlerError>
            + Clone
            + Send
            + 'static,
        <L::Service as Service<HandlerContext>>::Future: Send + 'static,
    {
        self.wraps.push(Arc::new(move |inner| {
            BoxCloneService::new(layer.layer(inner))
        }));
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.wraps.is_empty()
    }
}

impl<S> Layer<S> for CustomLayers
where
    S: Service<HandlerContext, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Service = BoxHandlerService;

    fn layer(&self, inner: S) -> BoxHandlerService {
        // The last added wraps the inner service first, so the first added ends outermost.
        self.wraps
            .iter()
            .rev()
            .fold(BoxCloneService::new(inner), |svc, wrap| wrap(svc))
    }
}
