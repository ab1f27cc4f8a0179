//! What every handler shares: the store, the keys, the limits, the shutdown signal.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use runnel::app::Shutdown;
use runnel_core::EventStore;
use tokio::sync::Semaphore;

use crate::auth::ApiKeys;
use crate::catalog::ServedCatalog;
use crate::limits::HttpLimits;

/// The state behind the router (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

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
            }),
        }
    }

    /// `/metrics` renders from `handle` (see [`crate::metrics::install_recorder`]).
    pub fn with_metrics(self, handle: Option<PrometheusHandle>) -> AppState {
        let inner = match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.metrics = handle;
                inner
            }
            Err(shared) => Inner {
                events: Arc::clone(&shared.events),
                keys: shared.keys.clone(),
                limits: shared.limits.clone(),
                heartbeat: shared.heartbeat,
                shutdown: shared.shutdown.clone(),
                subscribers: Arc::clone(&shared.subscribers),
                metrics: handle,
                catalog: shared.catalog.clone(),
            },
        };
        AppState {
            inner: Arc::new(inner),
        }
    }

    /// `/catalog` and `/asyncapi.json` serve `catalog` (else they answer 404
    /// `catalog-disabled`).
    pub fn with_catalog(self, catalog: Option<ServedCatalog>) -> AppState {
        let inner = match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.catalog = catalog;
                inner
            }
            Err(shared) => Inner {
                events: Arc::clone(&shared.events),
                keys: shared.keys.clone(),
                limits: shared.limits.clone(),
                heartbeat: shared.heartbeat,
                shutdown: shared.shutdown.clone(),
                subscribers: Arc::clone(&shared.subscribers),
                metrics: shared.metrics.clone(),
                catalog,
            },
        };
        AppState {
            inner: Arc::new(inner),
        }
    }
}
