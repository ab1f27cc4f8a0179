//! The [`Query`] and [`QueryHandler`] traits.

use std::future::Future;
use std::marker::PhantomData;

use async_trait::async_trait;
use runnel_core::Metadata;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A query type the [`crate::QueryBus`] can route. Queries read; they never change state.
///
/// ```
/// use runnel::Query;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct GetStock {
///     product_id: String,
/// }
///
/// impl Query for GetStock {
///     const NAME: &'static str = "GetStock";
///     type Response = u32;
/// }
/// assert_eq!(GetStock::NAME, "GetStock");
/// ```
pub trait Query: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The name the query is registered and dispatched under.
    const NAME: &'static str;
    /// What the query returns.
    type Response: Serialize + Send + 'static;
}

/// Answers one query type. The metadata says who asks (for authorization) and carries the
/// trace context.
///
/// Closures can be registered directly with [`crate::QueryBus::register_fn`].
///
/// ```
/// use runnel::core::Metadata;
/// use runnel::{async_trait, Query, QueryBus, QueryHandler};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct WhoAmI;
///
/// impl Query for WhoAmI {
///     const NAME: &'static str = "WhoAmI";
///     type Response = Option<String>;
/// }
///
/// struct Identity;
///
/// #[async_trait]
/// impl QueryHandler<WhoAmI> for Identity {
///     type Error = std::convert::Infallible;
///     async fn handle(&self, _: WhoAmI, metadata: Metadata) -> Result<Option<String>, Self::Error> {
///         Ok(metadata.user_id)
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let queries = QueryBus::new();
/// queries.register(Identity).unwrap();
/// let me = queries
///     .dispatch_with_metadata(WhoAmI, Metadata::default().with_user_id("alice"))
///     .await
///     .unwrap();
/// assert_eq!(me.as_deref(), Some("alice"));
/// # });
/// ```
#[async_trait]
pub trait QueryHandler<Q: Query>: Send + Sync + 'static {
    /// Why answering fails; the bus keeps it inspectable inside [`crate::DispatchError::Handler`].
    type Error: std::error::Error + Send + Sync + 'static;

    /// Answers one query.
    async fn handle(&self, query: Q, metadata: Metadata) -> Result<Q::Response, Self::Error>;
}

/// A closure as a [`QueryHandler`] (see [`crate::QueryBus::register_fn`]).
pub(crate) struct FnQueryHandler<F, Q, Fut, E> {
    f: F,
    // `fn(..) -> ..`: only marks the types; keeps the handler Send + Sync whatever they are.
    _types: PhantomData<fn(Q) -> (Fut, E)>,
}

impl<F, Q, Fut, E> FnQueryHandler<F, Q, Fut, E> {
    pub(crate) fn new(f: F) -> Self {
        FnQueryHandler {
            f,
            _types: PhantomData,
        }
    }
}

#[async_trait]
impl<F, Q, Fut, E> QueryHandler<Q> for FnQueryHandler<F, Q, Fut, E>
where
    Q: Query,
    F: Fn(Q, Metadata) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Q::Response, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    type Error = E;

    async fn handle(&self, query: Q, metadata: Metadata) -> Result<Q::Response, E> {
        (self.f)(query, metadata).await
    }
}
