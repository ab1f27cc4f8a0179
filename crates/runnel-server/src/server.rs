//! [`Server`]: binds, refuses an open server on a public address, serves until shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use runnel::app::Shutdown;
use runnel::bus::BoxError;
use runnel_core::EventStore;
use tokio::net::TcpListener;

use crate::application::Application;
use crate::auth::ApiKeys;
use crate::catalog::ServedCatalog;
use crate::limits::HttpLimits;
use crate::routes::{router_with, AppRoutes};
use crate::state::AppState;

/// Default address: loopback only.
pub const BIND_DEFAULT: &str = "127.0.0.1:7411";
/// Default interval of SSE heartbeats.
pub const HEARTBEAT_DEFAULT: Duration = Duration::from_secs(15);

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    pub keys: ApiKeys,
    /// `None`: [`HttpLimits::for_store`] of the store's limits.
    pub limits: Option<HttpLimits>,
    pub heartbeat: Duration,
    /// The recorder `/metrics` renders from ([`install_recorder`](crate::metrics::install_recorder));
    /// `None`: `/metrics` answers 404 `metrics-disabled`.
    pub metrics: Option<PrometheusHandle>,
}

impl ServerConfig {
    /// Loopback on [`BIND_DEFAULT`], no keys, default limits and heartbeat, no metrics.
    pub fn local() -> ServerConfig {
        ServerConfig {
            bind: BIND_DEFAULT.parse().expect("a valid default address"),
            keys: ApiKeys::none(),
            limits: None,
            heartbeat: HEARTBEAT_DEFAULT,
            metrics: None,
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// No API key is configured and the address is not loopback: anyone who can reach
    /// it could write events.
    #[error(
        "refusing to serve {bind} without API keys: only a loopback address (127.0.0.1, ::1) \
         may be served open; configure keys (--api-keys FILE or $RUNNEL_API_KEYS) or bind \
         127.0.0.1"
    )]
    OpenPublicBind { bind: SocketAddr },
    /// The heartbeat interval is zero.
    #[error("the SSE heartbeat interval must be more than 0")]
    ZeroHeartbeat,
    /// The address could not be bound.
    #[error("cannot listen on {bind}: {source}")]
    Bind {
        bind: SocketAddr,
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("the HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A bound server, ready to [`run`](Server::run) (or to hand to an application with
/// [`Server::into_task`]).
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    events: Arc<dyn EventStore>,
    keys: ApiKeys,
    limits: HttpLimits,
    heartbeat: Duration,
    metrics: Option<PrometheusHandle>,
    catalog: Option<ServedCatalog>,
    app: Option<Application>,
    app_routes: AppRoutes,
}

/// What [`Server::into_task`] returns: a task for
/// [`App::task`](runnel::app::App::task).
pub type ServerTask =
    Box<dyn Fn(Shutdown) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync + 'static>;

impl Server {
    /// Checks the configuration and binds a server of the event store alone: commands,
    /// queries and the admin API answer 404 `no-application` (see [`Server::bind_app`]).
    pub async fn bind(
        config: ServerConfig,
        events: Arc<dyn EventStore>,
    ) -> Result<Server, ServerError> {
        Server::bind_inner(config, events, None).await
    }

    /// Checks the configuration and binds a server of a whole application: its event
    /// store, its commands and queries by name, and the admin API over its stores and bus.
    pub async fn bind_app(config: ServerConfig, app: Application) -> Result<Server, ServerError> {
        let events = Arc::clone(&app.stores.events);
        Server::bind_inner(config, events, Some(app)).await
    }

    async fn bind_inner(
        config: ServerConfig,
        events: Arc<dyn EventStore>,
        app: Option<Application>,
    ) -> Result<Server, ServerError> {
        if config.keys.is_empty() && !config.bind.ip().is_loopback() {
            return Err(ServerError::OpenPublicBind { bind: config.bind });
        }
        if config.heartbeat.is_zero() {
            return Err(ServerError::ZeroHeartbeat);
        }
        let limits = config
            .limits
            .unwrap_or_else(|| HttpLimits::for_store(events.limits()));
        let listener =
            TcpListener::bind(config.bind)
                .await
                .map_err(|source| ServerError::Bind {
                    bind: config.bind,
                    source,
                })?;
        let local_addr = listener.local_addr()?;
        Ok(Server {
            listener,
            local_addr,
            events,
            keys: config.keys,
            limits,
            heartbeat: config.heartbeat,
            metrics: config.metrics,
            catalog: None,
            app,
            app_routes: AppRoutes::new(),
        })
    }

    /// Serves `catalog` on `GET /catalog` and `GET /asyncapi.json` (viewer role), e.g.
    /// `ServedCatalog::new(&app.catalog(), "Orders", "1.4.0")` once the application's
    /// parts are registered.
    pub fn with_catalog(mut self, catalog: ServedCatalog) -> Server {
        self.catalog = Some(catalog);
        self
    }

    /// Serves an application's own routes (e.g. `POST /orders`) beside the server's,
    /// each behind the same key and role guard.
    pub fn with_routes(mut self, routes: AppRoutes) -> Server {
        self.app_routes = routes;
        self
    }

    /// The address it listens on (the actual port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` fires, then stops accepting, ends every live subscription
    /// and waits for in-flight requests to finish.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), ServerError> {
        let state = AppState::new(
            self.events,
            self.keys,
            self.limits,
            self.heartbeat,
            shutdown.clone(),
        )
        .with_metrics(self.metrics.clone())
        .with_app(self.app.clone())
        .with_catalog(self.catalog.clone());
        if let Some(handle) = self.metrics {
            tokio::spawn(crate::metrics::upkeep(handle, shutdown.clone()));
            if let Some(app) = self.app.clone() {
                tokio::spawn(crate::sampler::run(app, shutdown.clone()));
            }
        }
        axum::serve(self.listener, router_with(state, &self.app_routes))
            .with_graceful_shutdown(async move { shutdown.requested().await })
            .await?;
        Ok(())
    }

    /// This server as a task of an application ([`App::task`](runnel::app::App::task)):
    /// the first start serves the socket bound here; a restart after a failure binds the
    /// same address (the same port, also when it was chosen with port 0) again.
    pub fn into_task(self) -> ServerTask {
        let config = ServerConfig {
            bind: self.local_addr,
            keys: self.keys.clone(),
            limits: Some(self.limits.clone()),
            heartbeat: self.heartbeat,
            metrics: self.metrics.clone(),
        };
        let events = Arc::clone(&self.events);
        let catalog = self.catalog.clone();
        let app = self.app.clone();
        let app_routes = self.app_routes.clone();
        let bound = Mutex::new(Some(self));
        Box::new(move |shutdown| {
            let first = bound.lock().ok().and_then(|mut b| b.take());
            let config = config.clone();
            let events = Arc::clone(&events);
            let app = app.clone();
            let catalog = catalog.clone();
            let app_routes = app_routes.clone();
            Box::pin(async move {
                let server = match first {
                    Some(server) => server,
                    None => {
                        let mut server = Server::bind_inner(config, events, app).await?;
                        server.catalog = catalog;
                        server.app_routes = app_routes;
                        server
                    }
                };
                server.run(shutdown).await?;
                Ok(())
            })
        })
    }
}
