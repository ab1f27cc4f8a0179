//! Dead-letter tooling: list, inspect, replay, purge, and alert when dead letters pile up.
//!
//! The consumer router stores a message that failed for good — with its topic, group and
//! every failure — in a [`DeadLetterStore`](runnel_core::dead_letter::DeadLetterStore)
//! (SQLite, PostgreSQL, or in memory for tests). This module is what people and
//! operations tools do with them afterwards; `runnel dlq …` is a thin shell over it.
//!
//! * [`inspect`]: [`DeadLetterSummary`] for lists, [`show`] for one with its history,
//!   [`for_each_page`] to walk every match in bounded memory.
//! * [`replay`]: the [`Replayer`] publishes stored messages again — same id, so
//!   idempotent consumers apply each once — to the original topic or to one group only
//!   (natively through a [`GroupTargetedPublisher`], else via the [`REPLAY_GROUP_HEADER`]
//!   that routers of other groups skip), marks them replayed and reports
//!   replayed/skipped counts and progress.
//! * [`purge`](mod@purge): delete dead letters older than a cutoff.
//! * [`monitor`]: the [`ThresholdMonitor`] raises a metric, a log line and a
//!   [`DeadLetterThresholdExceeded`] event when pending dead letters cross a threshold.
//!
//! Metrics (through the `metrics` facade): [`METRIC_PENDING`] (gauge),
//! [`METRIC_THRESHOLD_ALERTS`], [`METRIC_ALERT_PUBLISH_FAILURES`], [`METRIC_REPLAYED`],
//! [`METRIC_REPLAY_SKIPPED`] and [`METRIC_PURGED`] (counters).

mod error;
pub mod inspect;
pub mod monitor;
pub mod purge;
pub mod replay;

#[cfg(test)]
mod tests;

pub use error::{DeadLetterError, ReplayFailure};
pub use inspect::{for_each_page, show, DeadLetterSummary, PAGE_SIZE_DEFAULT};
pub use monitor::{
    AlertScope, DeadLetterThresholdExceeded, ThresholdMonitor, ThresholdRule,
    CHECK_INTERVAL_DEFAULT, METRIC_ALERT_PUBLISH_FAILURES, METRIC_PENDING, METRIC_THRESHOLD_ALERTS,
};
pub use purge::{cutoff_for_age, purge, METRIC_PURGED};
pub use replay::{
    replay_targets_other_group, GroupTargetedPublisher, ReplayProgress, ReplayReport,
    ReplaySelection, ReplayTarget, Replayer, SkippedDeadLetter, METRIC_REPLAYED,
    METRIC_REPLAY_SKIPPED, REPLAY_GROUP_HEADER, REPLAY_OF_HEADER,
};
