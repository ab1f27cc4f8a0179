//! [`Server`]: binds, refuses an open server on a public address, serves until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use runnel::app::Shutdown;
use runnel_core::EventStore;
use tokio::net::TcpListener;

use crate::auth::ApiKeys;
use crate::limits::HttpLimits;
use crate::routes::router;
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
}

impl ServerConfig {
    /// Loopback on [`BIND_DEFAULT`], no keys, default limits and heartbeat.
    pub fn local() -> ServerConfig {
        ServerConfig {
            bind: BIND_DEFAULT.parse().expect("a valid default address"),
            keys: ApiKeys::none(),
            limits: None,
            heartbeat: HEARTBEAT_DEFAULT,
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

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    state: AppState,
    local_addr: SocketAddr,
}

impl Server {
    /// Checks the configuration and binds. `shutdown` ends the server and every live
    /// subscription.
    pub async fn bind(
        config: ServerConfig,
        events: Arc<dyn EventStore>,
        shutdown: Shutdown,
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
        let state = AppState::new(events, config.keys, limits, config.heartbeat, shutdown);
        Ok(Server {
            listener,
            state,
            local_addr,
        })
    }

    /// The address it listens on (the actual port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until the shutdown signal fires, then stops accepting, ends every live
    /// subscription and waits for in-flight requests to finish.
    pub async fn run(self) -> Result<(), ServerError> {
        let shutdown = self.state.inner.shutdown.clone();
        let app = router(self.state);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.requested().await })
            .await?;
        Ok(())
    }
}
