//! The [`QueryBus`]: one handler per query type, dispatched by type or by name.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use runnel_core::Metadata;
use serde_json::Value;
use tracing::Instrument;

use super::handler::{FnQueryHandler, Query, QueryHandler};
use crate::bus::registry::{JsonCall, JsonFuture, Registry};
use crate::bus::DispatchError;

/// What a query dispatch by name carries: the JSON query and the caller's metadata.
type JsonQuery = (Value, Metadata);

/// The future a typed query handler returns once its error is boxed.
type TypedFuture<Q> = BoxFuture<'static, Result<<Q as Query>::Response, DispatchError>>;

/// The typed side of a registration: the handler with its error already boxed.
struct TypedQueryHandler<Q: Query> {
    call: Arc<dyn Fn(Q, Metadata) -> TypedFuture<Q> + Send + Sync>,
}

/// Routes each query to its one registered handler.
///
/// Dispatch by type ([`QueryBus::dispatch`]) for Rust callers; by name with a JSON payload
/// ([`QueryBus::dispatch_json`]) for the HTTP API and the CLI. Cloning is cheap and every
/// clone is the same bus.
///
/// ```
/// use runnel::core::Metadata;
/// use runnel::{Query, QueryBus};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Square {
///     n: i64,
/// }
///
/// impl Query for Square {
///     const NAME: &'static str = "Square";
///     type Response = i64;
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let queries = QueryBus::new();
/// queries
///     .register_fn(|q: Square, _meta: Metadata| async move {
///         Ok::<_, std::convert::Infallible>(q.n * q.n)
///     })
///     .unwrap();
/// assert_eq!(queries.dispatch(Square { n: 3 }).await.unwrap(), 9);
/// let out = queries
///     .dispatch_json("Square", serde_json::json!({"n": 4}), Metadata::default())
///     .await
///     .unwrap();
/// assert_eq!(out, serde_json::json!(16));
/// # });
/// ```
#[derive(Clone, Default)]
pub struct QueryBus {
    registry: Arc<Registry<JsonQuery>>,
}

impl fmt::Debug for QueryBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryBus")
            .field("queries", &self.names())
            .finish()
    }
}

impl QueryBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for queries of type `Q`. A second handler for the same name is
    /// [`DispatchError::AlreadyRegistered`].
    pub fn register<Q, H>(&self, handler: H) -> Result<(), DispatchError>
    where
        Q: Query,
        H: QueryHandler<Q>,
    {
        let handler = Arc::new(handler);
        let typed = TypedQueryHandler::<Q> {
            call: Arc::new(move |query: Q, metadata: Metadata| {
                let handler = Arc::clone(&handler);
                Box::pin(async move {
                    handler
                        .handle(query, metadata)
                        .await
                        .map_err(|e| DispatchError::Handler(Box::new(e)))
                })
            }),
        };
        let call = Arc::clone(&typed.call);
        let json: JsonCall<JsonQuery> =
            Arc::new(move |(payload, metadata): JsonQuery| -> JsonFuture {
                let call = Arc::clone(&call);
                Box::pin(async move {
                    let query: Q = serde_json::from_value(payload).map_err(|e| {
                        DispatchError::InvalidPayload {
                            name: Q::NAME.to_string(),
                            message: e.to_string(),
                        }
                    })?;
                    let response = call(query, metadata).await?;
                    serde_json::to_value(response).map_err(|e| DispatchError::EncodeOutput {
                        name: Q::NAME.to_string(),
                        message: e.to_string(),
                    })
                })
            });
        self.registry
            .insert(Q::NAME, std::any::type_name::<Q>(), Arc::new(typed), json)
    }

    /// Registers an async closure as the handler for queries of type `Q`.
    pub fn register_fn<Q, F, Fut, E>(&self, f: F) -> Result<(), DispatchError>
    where
        Q: Query,
        F: Fn(Q, Metadata) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Q::Response, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.register::<Q, _>(FnQueryHandler::new(f))
    }

    /// Answers `query` with empty metadata.
    pub async fn dispatch<Q: Query>(&self, query: Q) -> Result<Q::Response, DispatchError> {
        self.dispatch_with_metadata(query, Metadata::default())
            .await
    }

    /// Answers `query` on behalf of the caller described by `metadata`.
    pub async fn dispatch_with_metadata<Q: Query>(
        &self,
        query: Q,
        metadata: Metadata,
    ) -> Result<Q::Response, DispatchError> {
        let handler = self
            .registry
            .typed::<TypedQueryHandler<Q>>(Q::NAME, std::any::type_name::<Q>())?;
        let span = tracing::debug_span!("query", name = Q::NAME);
        (handler.call)(query, metadata).instrument(span).await
    }

    /// Answers the query registered as `name`, deserialized from `payload`; returns the
    /// response as JSON.
    pub async fn dispatch_json(
        &self,
        name: &str,
        payload: Value,
        metadata: Metadata,
    ) -> Result<Value, DispatchError> {
        let call = self.registry.json(name)?;
        let span = tracing::debug_span!("query", name);
        call((payload, metadata)).instrument(span).await
    }

    /// The registered query names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.registry.names()
    }

    /// Whether a handler is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.registry.contains(name)
    }
}
