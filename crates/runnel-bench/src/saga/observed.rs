//! A [`ProcessorStore`] in front of the real one that sees what the saga runtime asks of
//! its store: it counts the calls by kind, and tells the client that started an instance
//! when the commit that completes it has returned. Completion is observed where it
//! happens — no polling of the instance table, no reading of the outbox — at the cost of
//! one more boxed future and two clock reads per store call (well under a microsecond,
//! against the tens to hundreds of microseconds a store call takes). It also times the
//! calls, so the report can say where a transition's time goes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use runnel::async_trait;
use runnel_core::processor::{
    CommitOutcome, DueTimer, HistoryRecord, InstanceFilter, InstanceRecord, InstanceStatus,
    ProcessorStore, StatusCount, TimerRecord, Transition,
};
use runnel_core::StoreError;
use tokio::sync::oneshot;

/// Calls of one kind and the time they took.
#[derive(Default)]
struct Meter {
    calls: AtomicU64,
    nanos: AtomicU64,
}

impl Meter {
    async fn time<T>(&self, call: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let out = call.await;
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        out
    }

    fn read(&self) -> Count {
        Count {
            calls: self.calls.load(Ordering::Relaxed),
            nanos: self.nanos.load(Ordering::Relaxed),
        }
    }
}

/// Calls of one kind and their total time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Count {
    pub calls: u64,
    pub nanos: u64,
}

impl Count {
    fn since(self, before: Count) -> Count {
        Count {
            calls: self.calls - before.calls,
            nanos: self.nanos - before.nanos,
        }
    }

    fn plus(self, o: Count) -> Count {
        Count {
            calls: self.calls + o.calls,
            nanos: self.nanos + o.nanos,
        }
    }

    /// The mean time of one call.
    pub fn mean(self) -> Duration {
        Duration::from_nanos(self.nanos / self.calls.max(1))
    }
}

/// Store calls by kind (with their time) since the store was wrapped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Calls {
    pub commits: Count,
    pub loads: Count,
    pub claims: Count,
    pub next_due: Count,
    pub other: Count,
}

impl Calls {
    /// The calls of a later snapshot since this one.
    pub fn since(self, before: Calls) -> Calls {
        Calls {
            commits: self.commits.since(before.commits),
            loads: self.loads.since(before.loads),
            claims: self.claims.since(before.claims),
            next_due: self.next_due.since(before.next_due),
            other: self.other.since(before.other),
        }
    }

    /// These calls and `other`'s.
    pub fn plus(self, o: Calls) -> Calls {
        Calls {
            commits: self.commits.plus(o.commits),
            loads: self.loads.plus(o.loads),
            claims: self.claims.plus(o.claims),
            next_due: self.next_due.plus(o.next_due),
            other: self.other.plus(o.other),
        }
    }
}

/// The wrapped store.
pub struct Observed {
    inner: Arc<dyn ProcessorStore>,
    commits: Meter,
    loads: Meter,
    claims: Meter,
    next_due: Meter,
    other: Meter,
    /// Clients waiting for their instance to complete, by instance id.
    waiting: Mutex<HashMap<String, oneshot::Sender<Instant>>>,
}

impl Observed {
    pub fn new(inner: Arc<dyn ProcessorStore>) -> Self {
        Observed {
            inner,
            commits: Meter::default(),
            loads: Meter::default(),
            claims: Meter::default(),
            next_due: Meter::default(),
            other: Meter::default(),
            waiting: Mutex::default(),
        }
    }

    /// Resolves with the instant the commit completing instance `id` returned. Call
    /// before starting the instance.
    pub fn completion_of(&self, id: &str) -> oneshot::Receiver<Instant> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), tx);
        rx
    }

    /// Forgets a client that stopped waiting (its instance failed to start).
    pub fn forget(&self, id: &str) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// The calls so far.
    pub fn calls(&self) -> Calls {
        Calls {
            commits: self.commits.read(),
            loads: self.loads.read(),
            claims: self.claims.read(),
            next_due: self.next_due.read(),
            other: self.other.read(),
        }
    }
}

#[async_trait]
impl ProcessorStore for Observed {
    async fn commit(&self, transition: Transition) -> Result<CommitOutcome, StoreError> {
        let completes =
            (transition.status == InstanceStatus::Completed).then(|| transition.id.clone());
        let outcome = self.commits.time(self.inner.commit(transition)).await?;
        if let (Some(id), CommitOutcome::Committed { .. }) = (completes, &outcome) {
            let now = Instant::now();
            let waiter = self
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            if let Some(tx) = waiter {
                // The client may have given up (its deadline passed): nothing to tell.
                let _ = tx.send(now);
            }
        }
        Ok(outcome)
    }

    async fn load(&self, kind: &str, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        self.loads.time(self.inner.load(kind, id)).await
    }

    async fn find_by_correlation(
        &self,
        kind: &str,
        correlation: &str,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        self.other
            .time(self.inner.find_by_correlation(kind, correlation))
            .await
    }

    async fn claim_due_timers(
        &self,
        kind: &str,
        versions: &[u32],
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<DueTimer>, StoreError> {
        self.claims
            .time(
                self.inner
                    .claim_due_timers(kind, versions, owner, now, lease, limit),
            )
            .await
    }

    async fn extend_timer_lease(
        &self,
        id: u64,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.other
            .time(self.inner.extend_timer_lease(id, owner, until))
            .await
    }

    async fn release_timer(
        &self,
        id: u64,
        owner: &str,
        due: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.other
            .time(self.inner.release_timer(id, owner, due))
            .await
    }

    async fn delete_timer(&self, id: u64, owner: &str) -> Result<(), StoreError> {
        self.other.time(self.inner.delete_timer(id, owner)).await
    }

    async fn next_due(&self, kind: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.next_due.time(self.inner.next_due(kind)).await
    }

    async fn list(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRecord>, StoreError> {
        self.other.time(self.inner.list(filter)).await
    }

    async fn count_by_status(&self) -> Result<Vec<StatusCount>, StoreError> {
        self.other.time(self.inner.count_by_status()).await
    }

    async fn history(
        &self,
        kind: &str,
        id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        self.other
            .time(self.inner.history(kind, id, after_seq, limit))
            .await
    }

    async fn timers(&self, kind: &str, id: &str) -> Result<Vec<TimerRecord>, StoreError> {
        self.other.time(self.inner.timers(kind, id)).await
    }

    async fn purge_finished(
        &self,
        kind: Option<&str>,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.other
            .time(self.inner.purge_finished(kind, before, limit))
            .await
    }
}
