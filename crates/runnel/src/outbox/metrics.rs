//! Relay metrics through the `metrics` facade (any recorder: Prometheus, StatsD, ...).
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `runnel_outbox_published_total` | counter | `relay` | rows published and marked (its rate is the publish rate) |
//! | `runnel_outbox_relay_errors_total` | counter | `relay`, `kind` | `publish_unavailable`, `publish_refused`, `parked`, `store` |
//! | `runnel_outbox_pending` | gauge | — | rows not yet published (parked included) |
//! | `runnel_outbox_parked` | gauge | — | rows parked after repeated failures |
//! | `runnel_outbox_oldest_pending_seconds` | gauge | — | age of the oldest pending row |
//! | `runnel_outbox_events_published_total` | counter | `relay` | events published by an [`EventStoreRelay`](super::EventStoreRelay) |

use chrono::{DateTime, Utc};
use runnel_core::outbox::OutboxStatus;

/// Rows published and marked.
pub const METRIC_PUBLISHED: &str = "runnel_outbox_published_total";
/// Relay errors, by kind.
pub const METRIC_RELAY_ERRORS: &str = "runnel_outbox_relay_errors_total";
/// Pending rows.
pub const METRIC_PENDING: &str = "runnel_outbox_pending";
/// Parked rows.
pub const METRIC_PARKED: &str = "runnel_outbox_parked";
/// Age of the oldest pending row, in seconds.
pub const METRIC_OLDEST_PENDING_SECONDS: &str = "runnel_outbox_oldest_pending_seconds";
/// Events published by an event-store relay.
pub const METRIC_EVENTS_PUBLISHED: &str = "runnel_outbox_events_published_total";

/// The handles one relay records through.
#[derive(Clone, Debug)]
pub(crate) struct RelayMetrics {
    relay: String,
}

impl RelayMetrics {
    pub(crate) fn new(relay: &str) -> Self {
        RelayMetrics {
            relay: relay.to_string(),
        }
    }

    pub(crate) fn published(&self, n: usize) {
        metrics::counter!(METRIC_PUBLISHED, "relay" => self.relay.clone()).increment(n as u64);
    }

    pub(crate) fn events_published(&self, n: usize) {
        metrics::counter!(METRIC_EVENTS_PUBLISHED, "relay" => self.relay.clone())
            .increment(n as u64);
    }

    pub(crate) fn error(&self, kind: &'static str) {
        metrics::counter!(METRIC_RELAY_ERRORS, "relay" => self.relay.clone(), "kind" => kind)
            .increment(1);
    }

    pub(crate) fn status(&self, status: &OutboxStatus, now: DateTime<Utc>) {
        metrics::gauge!(METRIC_PENDING).set(status.pending as f64);
        metrics::gauge!(METRIC_PARKED).set(status.parked as f64);
        metrics::gauge!(METRIC_OLDEST_PENDING_SECONDS)
            .set(status.oldest_pending_age(now).as_secs_f64());
    }
}
