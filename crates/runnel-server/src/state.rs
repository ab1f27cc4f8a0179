//! What every handler shares: the store, the keys, the limits, the shutdown signal.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use runnel::app::Shutdown;
use runnel_core::EventStore;
use tokio::sync::Semaphore;

use crate::application::Application;
use crate::auth::ApiKeys;
use crate::catalog::ServedCatalog;
use crate::limits::HttpLimits;
use crate::operations::Operations;

/// The state behind the router (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Clone)]
pub(crate) struct Inner {
    pub events: Arc<dyn EventStore>,
    pub keys: ApiKeys,
    pub limits: HttpLimits,
    pub heartbeat: Duration,
    pub shutdown: Shutdown,
    /// One permit per open SSE subscription ([`HttpLimits::subscribers_max`]).
    pub subscribers: Arc<Semaphore>,
    /// What `/metrics` renders; `None`: metrics are off.
    pub metrics: Option<PrometheusHandle>,
    /// What `/catalog` and `/asyncapi.json` serve; `None`: no catalog.
    pub catalog: Option<ServedCatalog>,
    /// The application behind commands, queries and the admin API; `None`: an event
    /// store only.
    pub app: Option<Application>,
    /// Background operations (bulk dead-letter retries) and their progress.
    pub operations: Operations,
}

impl AppState {
    /// State over `events`. `shutdown` ends every live subscription when it fires.
    /// Metrics are off until [`AppState::with_metrics`].
    pub fn new(
        events: Arc<dyn EventStore>,
        keys: ApiKeys,
        limits: HttpLimits,
        heartbeat: Duration,
        shutdown: Shutdown,
    ) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                events,
                keys,
                subscribers: Arc::new(Semaphore::new(limits.subscribers_max)),
                limits,
                heartbeat,
                shutdown,
                metrics: None,
                catalog: None,
                app: None,
                operations: Operations::default(),
            }),
        }
    }

    /// `/metrics` renders from `handle` (see [`crate::metrics::install_recorder`]).
    pub fn with_metrics(self, handle: Option<PrometheusHandle>) -> AppState {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.metrics = handle;
        AppState {
            inner: Arc::new(inner),
        }
    }

    /// `/catalog` and `/asyncapi.json` serve `catalog` (else they answer 404
    /// `catalog-disabled`).
    pub fn with_catalog(self, catalog: Option<ServedCatalog>) -> AppState {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.catalog = catalog;
        AppState {
            inner: Arc::new(inner),
        }
    }

    /// Commands, queries and the admin API are served from `app`.
    pub fn with_app(self, app: Option<Application>) -> AppState {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.app = app;
        AppState {
            inner: Arc::new(inner),
        }
    }
}
