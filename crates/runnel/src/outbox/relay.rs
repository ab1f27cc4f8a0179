//! [`Relay`]: publishes outbox rows through any [`Publisher`], in per-key order, and marks
//! them published only after the publisher confirmed them.
//!
//! One round: claim a batch (heads of keys plus their followers, leased to this relay),
//! publish it (topics in parallel, each key's rows in order), record what failed, mark
//! what was confirmed. A running relay that claimed rows goes on at once and marks them
//! with its next claim ([`OutboxStore::mark_published_and_claim`], one commit on SQLite);
//! it marks on its own before it waits or stops. Between rounds the relay waits for a
//! wake-up (NOTIFY on PostgreSQL, in-process on SQLite) or its polling interval. After a
//! publisher error it backs off with exponential backoff and full jitter; the failed rows
//! wait (their key blocked behind them) and nothing is skipped. Rows refused for good (an
//! invalid message) are parked after `max_attempts` for `runnel outbox retry`.

use std::sync::Arc;
use std::time::Duration;

use crate::join_once::JoinOnce;
use futures_util::future::join_all;
use runnel_core::bus::Publisher;
use runnel_core::message::BusError;
use runnel_core::outbox::{
    validate_claim, FailureAction, OutboxRecord, OutboxStore, CLAIM_LIMIT_MAX,
};
use runnel_core::{Clock, StoreError, SystemClock};
use tokio::sync::watch;
use tokio::time::Instant;

use super::metrics::RelayMetrics;
use super::routing::plan;
use crate::retry::{FullJitter, Jitter, RetryPolicy};

/// Default rows per claim.
pub const BATCH_SIZE_DEFAULT: usize = 1000;
/// Default lease: how long a dead relay's keys stay blocked before others take over.
pub const LEASE_DEFAULT: Duration = Duration::from_secs(30);
/// Default polling interval (wake-ups usually come sooner).
pub const POLL_INTERVAL_DEFAULT: Duration = Duration::from_millis(500);
/// Default retention of published rows before the purge deletes them.
pub const RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);
/// How often the relay purges published rows past the retention.
pub const PURGE_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
/// How often the relay refreshes the backlog gauges (pending, oldest age).
pub const STATUS_INTERVAL_DEFAULT: Duration = Duration::from_secs(5);
/// Default attempts before a permanently refused row is parked.
pub const MAX_ATTEMPTS_DEFAULT: u32 = 5;
/// Default backoff after publisher or store errors: 100 ms doubling to 30 s, full jitter.
pub const BACKOFF_DEFAULT: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    base_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(30),
};

/// Called after the publisher confirmed rows and before they are marked (a fault hook for
/// crash tests: the window in which a kill leads to a republish).
pub type AfterPublishHook = Arc<dyn Fn(&[u64]) + Send + Sync>;

/// How a [`Relay`] behaves.
#[derive(Clone)]
pub struct RelayOptions {
    /// This relay's name (its leases carry it). Unique per running relay; by default
    /// `relay-{pid}-{uuid}`.
    pub name: String,
    /// Rows per claim, 1..=[`CLAIM_LIMIT_MAX`].
    pub batch_size: usize,
    /// Lease per claim.
    pub lease: Duration,
    /// Longest wait for a wake-up before looking again.
    pub poll_interval: Duration,
    /// Backoff after errors (publisher outage, store trouble).
    pub backoff: RetryPolicy,
    /// Attempts before a row the publisher refuses for good is parked.
    pub max_attempts: u32,
    /// Published rows are kept this long, then purged.
    pub retention: Duration,
    pub purge_interval: Duration,
    pub status_interval: Duration,
    pub clock: Arc<dyn Clock>,
    pub jitter: Arc<dyn Jitter>,
    pub after_publish: Option<AfterPublishHook>,
}

impl std::fmt::Debug for RelayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayOptions")
            .field("name", &self.name)
            .field("batch_size", &self.batch_size)
            .field("lease", &self.lease)
            .field("poll_interval", &self.poll_interval)
            .field("backoff", &self.backoff)
            .field("max_attempts", &self.max_attempts)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            // The pid tells an operator (and a scale-out test) whose leases a row carries.
            name: format!(
                "relay-{}-{}",
                std::process::id(),
                uuid::Uuid::now_v7().simple()
            ),
            batch_size: BATCH_SIZE_DEFAULT,
            lease: LEASE_DEFAULT,
            poll_interval: POLL_INTERVAL_DEFAULT,
            backoff: BACKOFF_DEFAULT,
            max_attempts: MAX_ATTEMPTS_DEFAULT,
            retention: RETENTION_DEFAULT,
            purge_interval: PURGE_INTERVAL_DEFAULT,
            status_interval: STATUS_INTERVAL_DEFAULT,
            clock: Arc::new(SystemClock),
            jitter: Arc::new(FullJitter),
            after_publish: None,
        }
    }
}

impl RelayOptions {
    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// Sets the rows per claim.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }
    /// Sets the lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
    /// Sets the polling interval.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }
    /// Sets the backoff.
    pub fn backoff(mut self, backoff: RetryPolicy) -> Self {
        self.backoff = backoff;
        self
    }
    /// Sets the fault hook run between publish and mark.
    pub fn after_publish(mut self, hook: AfterPublishHook) -> Self {
        self.after_publish = Some(hook);
        self
    }

    fn validate(&self) -> Result<(), RelayError> {
        validate_claim(&self.name, self.lease, self.batch_size)?;
        if self.poll_interval < Duration::from_millis(1)
            || self.poll_interval > Duration::from_secs(600)
        {
            return Err(RelayError::InvalidOptions(
                "poll_interval must be 1 ms..=10 min".into(),
            ));
        }
        if self.max_attempts == 0 {
            return Err(RelayError::InvalidOptions(
                "max_attempts must be at least 1".into(),
            ));
        }
        if self.purge_interval.is_zero() || self.status_interval.is_zero() {
            return Err(RelayError::InvalidOptions(
                "purge_interval and status_interval must be above zero".into(),
            ));
        }
        debug_assert!(self.batch_size <= CLAIM_LIMIT_MAX);
        Ok(())
    }
}

/// Errors starting or running a relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error("invalid relay options: {0}")]
    InvalidOptions(String),
    #[error("outbox store: {0}")]
    Store(#[from] StoreError),
    #[error("the relay task failed: {0}")]
    TaskFailed(String),
}

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows published and marked.
    pub published: usize,
    /// Rows whose publish failed.
    pub failed: usize,
    /// Whether a failure was transient (the relay should back off).
    pub transient_failure: bool,
}

/// What a relay did in its life, returned at shutdown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayReport {
    pub published: u64,
    pub publish_failures: u64,
    pub store_errors: u64,
    pub rounds: u64,
}

/// Publishes an outbox through a publisher. Build with [`Relay::new`], run with
/// [`Relay::start`] (a task with graceful shutdown) or drive rounds with
/// [`Relay::run_once`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use runnel::outbox::{Relay, RelayOptions};
/// use runnel::sqlite::{bus::{BusOptions, SqliteBus}, SqliteOutbox, SqliteStore};
///
/// let store = SqliteStore::open("app.db")?;
/// let bus = SqliteBus::new(store.clone(), BusOptions::default())?;
/// let relay = Relay::new(Arc::new(SqliteOutbox::new(store)), Arc::new(bus), RelayOptions::default())?;
/// let handle = relay.start();
/// // ... the application enqueues in its units of work ...
/// let report = handle.shutdown().await?;
/// println!("published {}", report.published);
/// # Ok(()) }
/// ```
pub struct Relay {
    store: Arc<dyn OutboxStore>,
    publisher: Arc<dyn Publisher>,
    options: RelayOptions,
    metrics: RelayMetrics,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay of `store` to `publisher`.
    pub fn new(
        store: Arc<dyn OutboxStore>,
        publisher: Arc<dyn Publisher>,
        options: RelayOptions,
    ) -> Result<Self, RelayError> {
        options.validate()?;
        crate::trace::install();
        let metrics = RelayMetrics::new(&options.name);
        Ok(Relay {
            store,
            publisher,
            options,
            metrics,
        })
    }

    /// The options.
    pub fn options(&self) -> &RelayOptions {
        &self.options
    }

    /// One round: claim, publish, mark. Store errors are returned (nothing was lost: the
    /// claimed rows' leases run out, or were released).
    pub async fn run_once(&self) -> Result<Round, StoreError> {
        let (round, published) = self.round(&[]).await?;
        self.mark(&published).await?;
        Ok(round)
    }

    /// Marks rows the publisher confirmed.
    async fn mark(&self, published: &[u64]) -> Result<(), StoreError> {
        if !published.is_empty() {
            self.store.mark_published(published).await?;
            self.metrics.published(published.len());
        }
        Ok(())
    }

    /// A round up to its mark: marks `unmarked` (the previous round's published rows) and
    /// claims in one store call, publishes, records the failures. Returns the round and
    /// the rows it published, which the caller marks — at once, or with the next claim.
    /// `round.published` counts them.
    async fn round(&self, unmarked: &[u64]) -> Result<(Round, Vec<u64>), StoreError> {
        let o = &self.options;
        let rows = if unmarked.is_empty() {
            self.store.claim(&o.name, o.lease, o.batch_size).await?
        } else {
            let rows = self
                .store
                .mark_published_and_claim(unmarked, &o.name, o.lease, o.batch_size)
                .await?;
            self.metrics.published(unmarked.len());
            rows
        };
        let mut round = Round {
            claimed: rows.len(),
            ..Round::default()
        };
        if rows.is_empty() {
            return Ok((round, Vec::new()));
        }
        let attempts: std::collections::HashMap<u64, u32> =
            rows.iter().map(|r| (r.seq, r.attempts)).collect();
        // One producer span per row, a child of the context captured at enqueue; the
        // message carries the span's context. Held until the round's publishes are done.
        let mut publish_spans: Vec<tracing::Span> = Vec::with_capacity(rows.len());
        let items = rows
            .into_iter()
            .map(|r: OutboxRecord| {
                let mut message = r.message;
                publish_spans.push(crate::trace::publish_span(&r.topic, &mut message));
                (r.seq, r.topic, message)
            })
            .collect();
        let lanes = plan(items);
        let outcomes = join_all(lanes.into_iter().map(|lane| {
            let publisher = Arc::clone(&self.publisher);
            async move {
                let mut published: Vec<u64> = Vec::new();
                let mut failed: Option<(Vec<u64>, BusError)> = None;
                for call in lane {
                    let seqs: Vec<u64> = call.items.iter().map(|(s, _)| *s).collect();
                    if let Some((rest, _)) = failed.as_mut() {
                        rest.extend(seqs);
                        continue;
                    }
                    let messages = call.items.into_iter().map(|(_, m)| m).collect();
                    match publisher.publish(&call.topic, messages).await {
                        Ok(()) => published.extend(seqs),
                        Err(e) => failed = Some((seqs, e)),
                    }
                }
                (published, failed)
            }
        }))
        .await;

        let mut published: Vec<u64> = Vec::new();
        let mut failures: Vec<(Vec<u64>, BusError)> = Vec::new();
        for (p, f) in outcomes {
            published.extend(p);
            failures.extend(f);
        }
        for (seqs, error) in failures {
            round.failed += seqs.len();
            self.metrics.error(if error.is_transient() {
                "publish_unavailable"
            } else {
                "publish_refused"
            });
            tracing::warn!(relay = %o.name, rows = seqs.len(), error = %error, "outbox publish failed");
            let now = o.clock.now();
            if error.is_transient() {
                round.transient_failure = true;
                // The broker is away: the rows are due again at once; the relay's own
                // backoff spaces the retries (and keeps the key's order: nothing after
                // them was published).
                self.store
                    .record_failure(&seqs, &error.to_string(), FailureAction::RetryAt(now))
                    .await?;
            } else {
                let (park, retry): (Vec<u64>, Vec<u64>) = seqs.iter().partition(|s| {
                    attempts.get(s).copied().unwrap_or(0).saturating_add(1) >= o.max_attempts
                });
                if !park.is_empty() {
                    self.metrics.error("parked");
                    self.store
                        .record_failure(&park, &error.to_string(), FailureAction::Park)
                        .await?;
                }
                if !retry.is_empty() {
                    let attempt = retry
                        .iter()
                        .map(|s| attempts.get(s).copied().unwrap_or(0) + 1)
                        .max()
                        .unwrap_or(1);
                    let delay = o.backoff.delay_for_attempt_with(attempt, &*o.jitter);
                    let at = now + chrono::Duration::from_std(delay).unwrap_or_default();
                    self.store
                        .record_failure(&retry, &error.to_string(), FailureAction::RetryAt(at))
                        .await?;
                }
            }
        }
        // Marked (by the caller) after the failures are recorded: a claim leases only
        // heads, and a failed row becomes its key's head the moment the rows before it
        // are marked — by then it must carry its backoff (and no longer this relay's
        // intent to touch it).
        if !published.is_empty() {
            if let Some(hook) = &o.after_publish {
                hook(&published);
            }
            round.published = published.len();
        }
        Ok((round, published))
    }

    /// Runs the relay as a task until [`RelayHandle::shutdown`].
    pub fn start(self) -> RelayHandle {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(self.run(stopped));
        RelayHandle {
            stop,
            task: JoinOnce::new(task),
        }
    }

    async fn run(self, mut stop: watch::Receiver<bool>) -> RelayReport {
        let o = self.options.clone();
        let mut report = RelayReport::default();
        let mut consecutive_errors: u32 = 0;
        let mut next_purge = Instant::now() + o.purge_interval;
        let mut next_status = Instant::now();
        // Rows published by the last round and not yet marked: when a round claimed rows
        // the relay goes on at once, and the next claim marks them in the same store call
        // (one commit on SQLite). Marked before any wait, and before the leases are
        // released at shutdown.
        let mut unmarked: Vec<u64> = Vec::new();
        tracing::info!(relay = %o.name, "outbox relay started");
        while !*stop.borrow() {
            let now = Instant::now();
            if now >= next_status {
                next_status = now + o.status_interval;
                match self.store.status().await {
                    Ok(status) => self.metrics.status(&status, o.clock.now()),
                    Err(e) => tracing::debug!(error = %e, "outbox status failed"),
                }
            }
            if now >= next_purge {
                next_purge = now + o.purge_interval;
                self.purge().await;
            }
            let wait = match self.round(&unmarked).await {
                Ok((round, published)) => {
                    report.rounds += 1;
                    report.published += round.published as u64;
                    report.publish_failures += round.failed as u64;
                    unmarked = published;
                    if round.claimed > 0 && !round.transient_failure {
                        consecutive_errors = 0;
                        // More may be waiting: go on at once (the claim marks `unmarked`).
                        continue;
                    }
                    if let Err(e) = self.mark(&unmarked).await {
                        report.store_errors += 1;
                        self.metrics.error("store");
                        consecutive_errors = consecutive_errors.saturating_add(1);
                        tracing::warn!(relay = %o.name, error = %e, "outbox relay mark failed");
                        Some(
                            o.backoff
                                .delay_for_attempt_with(consecutive_errors, &*o.jitter),
                        )
                    } else if round.transient_failure {
                        unmarked.clear();
                        consecutive_errors = consecutive_errors.saturating_add(1);
                        Some(
                            o.backoff
                                .delay_for_attempt_with(consecutive_errors, &*o.jitter),
                        )
                    } else {
                        unmarked.clear();
                        consecutive_errors = 0;
                        None
                    }
                }
                // `unmarked` is kept and marked again (idempotent) by the next round.
                Err(e) => {
                    report.store_errors += 1;
                    self.metrics.error("store");
                    consecutive_errors = consecutive_errors.saturating_add(1);
                    tracing::warn!(relay = %o.name, error = %e, "outbox relay round failed");
                    Some(
                        o.backoff
                            .delay_for_attempt_with(consecutive_errors, &*o.jitter),
                    )
                }
            };
            match wait {
                Some(delay) => {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => {}
                    }
                }
                None => {
                    tokio::select! {
                        r = self.store.wait_for_messages(o.poll_interval) => {
                            if r.is_err() {
                                tokio::time::sleep(o.poll_interval).await;
                            }
                        }
                        _ = stop.changed() => {}
                    }
                }
            }
        }
        if let Err(e) = self.mark(&unmarked).await {
            // Their leases run out and they are published again (at least once).
            tracing::warn!(relay = %o.name, error = %e, rows = unmarked.len(), "cannot mark the last round at shutdown");
        }
        match self.store.release(&o.name).await {
            Ok(n) if n > 0 => tracing::debug!(relay = %o.name, rows = n, "released leases"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(relay = %o.name, error = %e, "cannot release leases; they run out")
            }
        }
        tracing::info!(relay = %o.name, published = report.published, "outbox relay stopped");
        report
    }

    async fn purge(&self) {
        let o = &self.options;
        let before = o.clock.now() - chrono::Duration::from_std(o.retention).unwrap_or_default();
        loop {
            match self
                .store
                .purge_published(before, runnel_core::outbox::PURGE_BATCH_MAX)
                .await
            {
                Ok(n) if n as usize >= runnel_core::outbox::PURGE_BATCH_MAX => continue,
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox purge failed; retrying later");
                    return;
                }
            }
        }
    }
}

/// A running relay.
#[derive(Debug)]
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    task: JoinOnce<RelayReport>,
}

impl RelayHandle {
    /// Graceful shutdown: the round in progress finishes (its confirmed rows are marked),
    /// the relay's leases are released, and its report returned.
    pub async fn shutdown(mut self) -> Result<RelayReport, RelayError> {
        let _ = self.stop.send(true);
        self.stopped().await
    }

    /// Waits until the relay's task ends without being asked to (it panicked). Cancel-safe,
    /// for a supervisor that selects on it beside its own shutdown signal.
    pub async fn stopped(&mut self) -> Result<RelayReport, RelayError> {
        self.task.join().await.map_err(RelayError::TaskFailed)
    }

    /// Stops the task at once, without releasing leases (they run out) — what a crash does.
    pub fn abort(self) {
        self.task.abort();
    }
}
