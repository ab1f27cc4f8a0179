//! [`ThresholdMonitor`]: alerts when pending dead letters pile up.
//!
//! Dead letters are bugs, bad data or an outage downstream; a growing pile is the signal
//! to look. Each [`ThresholdRule`] watches the pending (not yet replayed) dead letters of
//! one scope — everything, a topic, or one group of a topic. On every
//! [`check`](ThresholdMonitor::check) the monitor sets a gauge per rule, and when a count
//! goes **above** its threshold it raises one alert, three ways:
//!
//! * the counter [`METRIC_THRESHOLD_ALERTS`] (and the gauge [`METRIC_PENDING`] always);
//! * a `tracing::warn!`;
//! * a [`DeadLetterThresholdExceeded`] event, returned to the caller and, when configured
//!   with [`publish_alerts_to`](ThresholdMonitor::publish_alerts_to), published to a topic
//!   (so a consumer can page someone, open a ticket, post to chat).
//!
//! A rule fires once per crossing: it stays quiet while the count stays above, and re-arms
//! once the count is back at or below the threshold (after a replay or a purge).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use runnel_core::bus::Publisher;
use runnel_core::dead_letter::{DeadLetterFilter, DeadLetterStore};
use runnel_core::{Clock, GroupName, Message, SystemClock, TopicName};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::error::DeadLetterError;

/// Metric: pending dead letters per rule's scope (gauge, labelled `scope`, and `topic` /
/// `group` where the scope has them).
pub const METRIC_PENDING: &str = "runnel_dead_letters_pending";
/// Metric: threshold alerts raised (counter, labelled like [`METRIC_PENDING`]).
pub const METRIC_THRESHOLD_ALERTS: &str = "runnel_dead_letter_threshold_alerts_total";
/// Metric: alert events that could not be published (counter).
pub const METRIC_ALERT_PUBLISH_FAILURES: &str = "runnel_dead_letter_alert_publish_failures_total";
/// Most rules one monitor checks (each costs one count query per check).
pub const RULES_MAX: usize = 256;
/// Shortest interval [`ThresholdMonitor::run_until`] accepts.
pub const CHECK_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// A sensible interval for [`ThresholdMonitor::run_until`].
pub const CHECK_INTERVAL_DEFAULT: Duration = Duration::from_secs(30);
/// The CloudEvents `source` of alert events.
pub const ALERT_SOURCE: &str = "urn:runnel:dead-letter-monitor";

/// Which pending dead letters a rule counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum AlertScope {
    /// Every pending dead letter.
    Total,
    /// Those of one topic (all groups).
    Topic { topic: TopicName },
    /// Those of one group of one topic.
    Group { topic: TopicName, group: GroupName },
}

impl AlertScope {
    /// The filter counting this scope's pending dead letters.
    pub fn filter(&self) -> DeadLetterFilter {
        match self {
            AlertScope::Total => DeadLetterFilter::pending(),
            AlertScope::Topic { topic } => DeadLetterFilter {
                topic: Some(topic.clone()),
                ..DeadLetterFilter::pending()
            },
            AlertScope::Group { topic, group } => DeadLetterFilter {
                topic: Some(topic.clone()),
                group: Some(group.clone()),
                ..DeadLetterFilter::pending()
            },
        }
    }

    fn labels(&self) -> Vec<metrics::Label> {
        match self {
            AlertScope::Total => vec![metrics::Label::new("scope", "total")],
            AlertScope::Topic { topic } => vec![
                metrics::Label::new("scope", "topic"),
                metrics::Label::new("topic", topic.to_string()),
            ],
            AlertScope::Group { topic, group } => vec![
                metrics::Label::new("scope", "group"),
                metrics::Label::new("topic", topic.to_string()),
                metrics::Label::new("group", group.to_string()),
            ],
        }
    }
}

impl fmt::Display for AlertScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlertScope::Total => f.write_str("all dead letters"),
            AlertScope::Topic { topic } => write!(f, "topic {topic}"),
            AlertScope::Group { topic, group } => write!(f, "topic {topic}, group {group}"),
        }
    }
}

/// Alert when more than `threshold` dead letters of `scope` are pending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThresholdRule {
    pub scope: AlertScope,
    /// The alert fires when the pending count goes above this (`0`: on the first one).
    pub threshold: u64,
}

impl ThresholdRule {
    /// Every pending dead letter, above `threshold`.
    pub fn total(threshold: u64) -> Self {
        ThresholdRule {
            scope: AlertScope::Total,
            threshold,
        }
    }

    /// One topic's pending dead letters, above `threshold`.
    pub fn topic(topic: TopicName, threshold: u64) -> Self {
        ThresholdRule {
            scope: AlertScope::Topic { topic },
            threshold,
        }
    }

    /// One group's pending dead letters on `topic`, above `threshold`.
    pub fn group(topic: TopicName, group: GroupName, threshold: u64) -> Self {
        ThresholdRule {
            scope: AlertScope::Group { topic, group },
            threshold,
        }
    }
}

/// The alert event: more than `threshold` dead letters of `scope` are pending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterThresholdExceeded {
    #[serde(flatten)]
    pub scope: AlertScope,
    pub pending: u64,
    pub threshold: u64,
    pub detected_at: DateTime<Utc>,
}

impl DeadLetterThresholdExceeded {
    /// The event type (CloudEvents `type`) of the alert message.
    pub const EVENT_TYPE: &'static str = "DeadLetterThresholdExceeded";

    /// The alert as a bus message: JSON data, a fresh id, keyed by scope so alerts of one
    /// scope stay in order.
    pub fn to_message(&self) -> Message {
        let data = serde_json::to_value(self).unwrap_or_else(|e| {
            // Every field is plainly serializable; keep the alert rather than lose it.
            serde_json::json!({ "scope": self.scope.to_string(), "encoding_error": e.to_string() })
        });
        let mut message = Message::json(Self::EVENT_TYPE, &data).with_key(self.scope.to_string());
        message.source = ALERT_SOURCE.to_string();
        message.time = Some(self.detected_at);
        message
    }

    /// Reads an alert back from a message (for the consumer that pages someone).
    pub fn from_message(message: &Message) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(&message.payload)
    }
}

/// Watches pending dead-letter counts against [`ThresholdRule`]s (see the
/// [module docs](self)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runnel::dead_letter::DeadLetterError> {
/// use std::sync::Arc;
/// use runnel::dead_letter::{ThresholdMonitor, ThresholdRule};
/// let store = Arc::new(runnel_testkit::dead_letters::InMemoryDeadLetters::new());
/// let monitor = ThresholdMonitor::new(store, vec![ThresholdRule::total(100)])?;
/// for alert in monitor.check().await? {
///     eprintln!("{} dead letters pending in {}", alert.pending, alert.scope);
/// }
/// # Ok(()) }
/// ```
pub struct ThresholdMonitor {
    store: Arc<dyn DeadLetterStore>,
    rules: Vec<ThresholdRule>,
    /// Per rule: whether it fired and has not re-armed yet. Held for a whole check, so
    /// concurrent checks cannot both fire for one crossing.
    tripped: Mutex<Vec<bool>>,
    alerts: Option<(Arc<dyn Publisher>, TopicName)>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for ThresholdMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThresholdMonitor")
            .field("rules", &self.rules)
            .field("alert_topic", &self.alerts.as_ref().map(|(_, t)| t))
            .finish_non_exhaustive()
    }
}

impl ThresholdMonitor {
    /// A monitor of `store` with `rules` (1..=[`RULES_MAX`], no scope twice).
    pub fn new(
        store: Arc<dyn DeadLetterStore>,
        rules: Vec<ThresholdRule>,
    ) -> Result<Self, DeadLetterError> {
        if rules.is_empty() || rules.len() > RULES_MAX {
            return Err(DeadLetterError::InvalidArgument(format!(
                "a threshold monitor needs 1..={RULES_MAX} rules, got {}",
                rules.len()
            )));
        }
        for (i, rule) in rules.iter().enumerate() {
            if rules[..i].iter().any(|r| r.scope == rule.scope) {
                return Err(DeadLetterError::InvalidArgument(format!(
                    "two threshold rules for {}",
                    rule.scope
                )));
            }
        }
        let tripped = Mutex::new(vec![false; rules.len()]);
        Ok(ThresholdMonitor {
            store,
            rules,
            tripped,
            alerts: None,
            clock: Arc::new(SystemClock),
        })
    }

    /// Also publishes every alert as a [`DeadLetterThresholdExceeded`] message to `topic`.
    pub fn publish_alerts_to(mut self, publisher: Arc<dyn Publisher>, topic: TopicName) -> Self {
        self.alerts = Some((publisher, topic));
        self
    }

    /// Stamps alerts' `detected_at` from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The rules.
    pub fn rules(&self) -> &[ThresholdRule] {
        &self.rules
    }

    /// Counts each rule's scope, updates the gauges, and returns the alerts that fired now
    /// (a rule already above its threshold since an earlier check does not fire again).
    /// Publishing an alert can fail without failing the check: it is logged and counted in
    /// [`METRIC_ALERT_PUBLISH_FAILURES`], and the alert is still returned.
    pub async fn check(&self) -> Result<Vec<DeadLetterThresholdExceeded>, DeadLetterError> {
        let mut tripped = self.tripped.lock().await;
        let mut fired = Vec::new();
        for (rule, tripped) in self.rules.iter().zip(tripped.iter_mut()) {
            let pending = self.store.count(&rule.scope.filter()).await?;
            let labels = rule.scope.labels();
            metrics::gauge!(METRIC_PENDING, labels.clone()).set(pending as f64);
            let above = pending > rule.threshold;
            if above && !*tripped {
                *tripped = true;
                metrics::counter!(METRIC_THRESHOLD_ALERTS, labels).increment(1);
                tracing::warn!(
                    scope = %rule.scope,
                    pending,
                    threshold = rule.threshold,
                    "dead letters above the alert threshold: inspect with `runnel dlq list`, \
                     fix the cause, then `runnel dlq replay`"
                );
                fired.push(DeadLetterThresholdExceeded {
                    scope: rule.scope.clone(),
                    pending,
                    threshold: rule.threshold,
                    detected_at: self.clock.now(),
                });
            } else if !above && *tripped {
                *tripped = false;
                tracing::info!(
                    scope = %rule.scope,
                    pending,
                    threshold = rule.threshold,
                    "dead letters back at or under the alert threshold; the alert is re-armed"
                );
            }
        }
        drop(tripped);
        if let Some((publisher, topic)) = &self.alerts {
            if !fired.is_empty() {
                let messages = fired.iter().map(|a| a.to_message()).collect();
                if let Err(e) = publisher.publish(topic, messages).await {
                    metrics::counter!(METRIC_ALERT_PUBLISH_FAILURES).increment(1);
                    tracing::error!(%topic, error = %e, alerts = fired.len(), "cannot publish dead-letter alerts");
                }
            }
        }
        Ok(fired)
    }

    /// Checks every `interval` until `shutdown` completes. Failed checks are logged and
    /// retried at the next tick.
    pub async fn run_until(
        self,
        interval: Duration,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DeadLetterError> {
        if interval < CHECK_INTERVAL_MIN {
            return Err(DeadLetterError::InvalidArgument(format!(
                "check interval {interval:?} is under the {CHECK_INTERVAL_MIN:?} minimum"
            )));
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                _ = ticker.tick() => {
                    if let Err(e) = self.check().await {
                        tracing::warn!(error = %e, "dead-letter threshold check failed; retrying at the next tick");
                    }
                }
            }
        }
    }
}
