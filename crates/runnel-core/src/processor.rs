//! Durable state of stateful processors (sagas, process managers): instances, timers and
//! their history, and the one-commit-per-transition protocol the SQLite and PostgreSQL
//! backends implement. See `DESIGN.md`, "Stateful processors".
//!
//! A processor decides in memory, then calls [`ProcessorStore::commit`] with a
//! [`Transition`]: the instance row (state, data, progress) checked against the version it
//! was read at, the outbox messages it sends, the timers it schedules and cancels, the
//! timer that caused it (deleted), the inbox mark of the message that caused it, and lines
//! of history. The backend writes all of it in one transaction or nothing.
//!
//! Timers double as the work queue: the work a process is about to do for an instance (run
//! a local step) is a timer due now, leased to that process in the same commit. If the
//! process dies, the lease lapses and another process [claims](ProcessorStore::claim_due_timers)
//! the timer and does the work again under the same idempotency key.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::outbox::OutboxMessage;

/// Longest processor kind (`saga:order-fulfillment`), instance id, correlation key, timer
/// name or lease owner, in bytes.
pub const PROCESSOR_NAME_LEN_MAX: usize = 200;
/// Largest instance data (JSON) an instance may hold, by default, in bytes.
pub const INSTANCE_DATA_MAX_DEFAULT: usize = 64 * 1024;
/// Largest instance data any configuration may allow, in bytes.
pub const INSTANCE_DATA_MAX: usize = 1024 * 1024;
/// Most timers one transition may schedule.
pub const TIMERS_PER_TRANSITION_MAX: usize = 64;
/// Most history lines one transition may add.
pub const HISTORY_PER_TRANSITION_MAX: usize = 64;
/// Longest history detail or error text kept, in bytes (longer text is cut).
pub const PROCESSOR_TEXT_LEN_MAX: usize = 4096;
/// Most rows one list, claim or purge call handles.
pub const PROCESSOR_BATCH_MAX: usize = 1000;

/// Where an instance is, as operators see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceStatus {
    /// Going forward.
    Running,
    /// Undoing completed steps.
    Compensating,
    /// Finished: every step succeeded (or a process manager reached a final state).
    Completed,
    /// Finished: a step failed and the completed steps were compensated.
    Compensated,
    /// Parked: a compensation kept failing. An operator retries or skips it.
    CompensationFailed,
    /// Parked: an outcome stayed unknown, or a step past the pivot failed.
    NeedsAttention,
}

impl InstanceStatus {
    /// Every status, in display order.
    pub const ALL: [InstanceStatus; 6] = [
        InstanceStatus::Running,
        InstanceStatus::Compensating,
        InstanceStatus::Completed,
        InstanceStatus::Compensated,
        InstanceStatus::CompensationFailed,
        InstanceStatus::NeedsAttention,
    ];

    /// The status's name (`compensation-failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Running => "running",
            InstanceStatus::Compensating => "compensating",
            InstanceStatus::Completed => "completed",
            InstanceStatus::Compensated => "compensated",
            InstanceStatus::CompensationFailed => "compensation-failed",
            InstanceStatus::NeedsAttention => "needs-attention",
        }
    }

    /// Parses a status name.
    ///
    /// ```
    /// use runnel_core::processor::InstanceStatus;
    /// assert_eq!(InstanceStatus::parse("needs-attention"), Some(InstanceStatus::NeedsAttention));
    /// assert_eq!(InstanceStatus::parse("paused"), None);
    /// ```
    pub fn parse(s: &str) -> Option<InstanceStatus> {
        InstanceStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether nothing more happens to the instance (it is kept until purged).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            InstanceStatus::Completed | InstanceStatus::Compensated
        )
    }

    /// Whether the instance waits for an operator.
    pub fn is_parked(self) -> bool {
        matches!(
            self,
            InstanceStatus::CompensationFailed | InstanceStatus::NeedsAttention
        )
    }
}

impl std::fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRecord {
    /// The processor kind (`saga:order-fulfillment`).
    pub kind: String,
    /// The instance id, unique per kind.
    pub id: String,
    /// The version of the definition the instance runs under.
    pub definition_version: u32,
    /// The correlation key it was started with (unique per kind), if any.
    pub correlation: Option<String>,
    /// A short description of where it is (`running charge-payment`), for operators.
    pub state: String,
    /// Where it is, as a status.
    pub status: InstanceStatus,
    /// The processor's own bookkeeping (JSON).
    pub progress: Vec<u8>,
    /// The application's data (JSON).
    pub data: Vec<u8>,
    /// The optimistic-concurrency version: 1 after the first commit, +1 per transition.
    pub version: u64,
    /// The last error, while parked or retrying.
    pub last_error: Option<String>,
    /// When the instance was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it finished, once it has.
    pub finished_at: Option<DateTime<Utc>>,
}

/// What a transition expects of the stored instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedInstance {
    /// The instance must not exist yet (the transition creates it).
    New,
    /// The instance must be at this version.
    Version(u64),
}

/// A timer to schedule. A timer with the name of a pending one of the same instance
/// replaces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimerSpec {
    /// The timer's name, unique per instance (`deadline`, `retry`, `run`).
    pub name: String,
    /// When it is due.
    pub due: DateTime<Utc>,
    /// What the processor needs when it fires (JSON).
    pub payload: Vec<u8>,
    /// Leased already to this owner until this time: work the committing process starts
    /// at once, taken over by another process if the lease lapses.
    pub leased_to: Option<(String, DateTime<Utc>)>,
}

/// Which pending timers of the instance a transition cancels (before it schedules new
/// ones).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CancelTimers {
    /// None.
    #[default]
    None,
    /// Every pending timer of the instance.
    All,
    /// Those with these names.
    Named(Vec<String>),
}

/// A line of an instance's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryLine {
    /// The step (or state) it concerns, if any.
    pub step: Option<String>,
    /// What happened (`started`, `step-succeeded`, `compensation-failed`, ...).
    pub what: String,
    /// Details (an error, an attempt number).
    pub detail: Option<String>,
}

/// A stored history line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRecord {
    /// Its sequence within the instance, from 1.
    pub seq: u64,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// The line.
    pub line: HistoryLine,
}

/// One commit: everything a decision changes. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct Transition {
    /// The processor kind.
    pub kind: String,
    /// The instance id.
    pub id: String,
    /// What the stored instance must be.
    pub expected: ExpectedInstance,
    /// The definition version (stored on create; checked unchanged otherwise unless the
    /// processor upcast the instance).
    pub definition_version: u32,
    /// The correlation key (used on create; unique per kind).
    pub correlation: Option<String>,
    /// The new state description.
    pub state: String,
    /// The new status.
    pub status: InstanceStatus,
    /// The new progress.
    pub progress: Vec<u8>,
    /// The new data.
    pub data: Vec<u8>,
    /// The last error (cleared with `None`).
    pub last_error: Option<String>,
    /// Messages to send, through the outbox in the same transaction.
    pub outbox: Vec<OutboxMessage>,
    /// Timers to cancel first.
    pub cancel_timers: CancelTimers,
    /// Timers to schedule.
    pub schedule: Vec<TimerSpec>,
    /// The timer whose firing caused this transition (deleted), if any.
    pub fired_timer: Option<u64>,
    /// The inbox mark of the message that caused this transition: `(handler, message id)`.
    /// If the mark exists already, nothing is written ([`CommitOutcome::Duplicate`]).
    pub inbox: Option<(String, String)>,
    /// History lines to add.
    pub history: Vec<HistoryLine>,
}

/// What [`ProcessorStore::commit`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Written; the instance is now at `version`.
    Committed { version: u64 },
    /// The instance is not at the expected version (`actual` `None`: it does not exist,
    /// or, for [`ExpectedInstance::New`], `Some` of the existing one's version). Nothing
    /// was written: reload and decide again.
    Conflict { actual: Option<u64> },
    /// Another instance of the kind holds the correlation key: nothing was written.
    CorrelationTaken { id: String },
    /// The inbox mark exists: the message was handled before. Nothing was written.
    Duplicate,
}

/// A due timer, leased to the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueTimer {
    /// The timer's id (pass it as [`Transition::fired_timer`]).
    pub id: u64,
    /// The processor kind.
    pub kind: String,
    /// The instance.
    pub instance: String,
    /// The timer's name.
    pub name: String,
    /// When it was due.
    pub due: DateTime<Utc>,
    /// Its payload.
    pub payload: Vec<u8>,
    /// The lease's end.
    pub leased_until: DateTime<Utc>,
}

/// A pending timer, as `runnel sagas show` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimerRecord {
    /// The timer's id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// When it is due.
    pub due: DateTime<Utc>,
    /// Who holds it, and until when.
    pub leased_to: Option<(String, DateTime<Utc>)>,
}

/// Which instances [`ProcessorStore::list`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceFilter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this status.
    pub status: Option<InstanceStatus>,
    /// Only instances whose `(kind, id)` sorts after this cursor (paging).
    pub after: Option<(String, String)>,
    /// At most this many (1..=[`PROCESSOR_BATCH_MAX`]).
    pub limit: usize,
}

/// Instances per kind and status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusCount {
    /// The kind.
    pub kind: String,
    /// The status.
    pub status: InstanceStatus,
    /// How many.
    pub count: u64,
}

/// The durable state of stateful processors. Implemented by `runnel_sqlite::SqliteProcessorStore`
/// and `runnel_postgres::PostgresProcessorStore`; the conformance suite in `runnel-testkit`
/// checks both against the same behaviour.
#[async_trait]
pub trait ProcessorStore: Send + Sync + 'static {
    /// Writes `transition` in one transaction, or nothing. See [`CommitOutcome`].
    async fn commit(&self, transition: Transition) -> Result<CommitOutcome, StoreError>;

    /// The instance, if it exists.
    async fn load(&self, kind: &str, id: &str) -> Result<Option<InstanceRecord>, StoreError>;

    /// The instance started with `correlation`, if any.
    async fn find_by_correlation(
        &self,
        kind: &str,
        correlation: &str,
    ) -> Result<Option<InstanceRecord>, StoreError>;

    /// Leases up to `limit` timers of `kind` due at `now` (not leased, or leased by a
    /// lapsed owner) whose instance runs one of `versions`, to `owner` until `now + lease`.
    /// On PostgreSQL concurrent claimers never get the same timer (`SKIP LOCKED`).
    async fn claim_due_timers(
        &self,
        kind: &str,
        versions: &[u32],
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<DueTimer>, StoreError>;

    /// Extends `owner`'s lease on timer `id` to `until` (work that takes long). `false`:
    /// the lease is no longer `owner`'s (it lapsed and was taken over, or the timer is
    /// gone); stop the work and commit nothing more for it.
    async fn extend_timer_lease(
        &self,
        id: u64,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Releases `owner`'s lease on timer `id`, due again at `due` (work handed back).
    async fn release_timer(
        &self,
        id: u64,
        owner: &str,
        due: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Deletes timer `id` if `owner` still holds its lease (a timer that fired and turned
    /// out to have no effect). A timer re-scheduled or taken over meanwhile is left alone:
    /// it is someone else's work now.
    async fn delete_timer(&self, id: u64, owner: &str) -> Result<(), StoreError>;

    /// The earliest due time of `kind`'s timers not leased now, if any (how long the
    /// timer loop may sleep).
    async fn next_due(&self, kind: &str) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Instances by `filter`, in `(kind, id)` order.
    async fn list(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRecord>, StoreError>;

    /// How many instances there are per kind and status.
    async fn count_by_status(&self) -> Result<Vec<StatusCount>, StoreError>;

    /// The instance's history, oldest first (at most `limit` lines after `after_seq`).
    async fn history(
        &self,
        kind: &str,
        id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, StoreError>;

    /// The instance's pending timers, soonest first.
    async fn timers(&self, kind: &str, id: &str) -> Result<Vec<TimerRecord>, StoreError>;

    /// Deletes up to `limit` finished instances (of `kind`, or all) that finished before
    /// `before`, with their history and timers. Returns how many.
    async fn purge_finished(
        &self,
        kind: Option<&str>,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError>;
}

fn check_name(what: &str, value: &str) -> Result<(), StoreError> {
    if value.is_empty()
        || value.len() > PROCESSOR_NAME_LEN_MAX
        || value.chars().any(char::is_control)
    {
        return Err(StoreError::InvalidArgument(format!(
            "{what} {:?}: must be 1..={PROCESSOR_NAME_LEN_MAX} bytes without control characters",
            value.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

/// Checks a kind and an instance id.
pub fn validate_instance_key(kind: &str, id: &str) -> Result<(), StoreError> {
    check_name("processor kind", kind)?;
    check_name("instance id", id)
}

/// Checks a transition before anything is written: names, sizes (`max_data_bytes` for the
/// data), timer and history counts, the inbox entry.
pub fn validate_transition(t: &Transition, max_data_bytes: usize) -> Result<(), StoreError> {
    validate_instance_key(&t.kind, &t.id)?;
    if let Some(c) = &t.correlation {
        check_name("correlation key", c)?;
    }
    if t.data.len() > max_data_bytes {
        return Err(StoreError::InvalidArgument(format!(
            "instance {}/{} data is {} bytes, over the {max_data_bytes}-byte limit; keep large \
             values out of saga data (store them elsewhere and keep their id)",
            t.kind,
            t.id,
            t.data.len()
        )));
    }
    if t.progress.len() > INSTANCE_DATA_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "instance {}/{} progress is {} bytes, over {INSTANCE_DATA_MAX}",
            t.kind,
            t.id,
            t.progress.len()
        )));
    }
    if t.schedule.len() > TIMERS_PER_TRANSITION_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "a transition schedules {} timers; at most {TIMERS_PER_TRANSITION_MAX}",
            t.schedule.len()
        )));
    }
    for timer in &t.schedule {
        check_name("timer name", &timer.name)?;
        if let Some((owner, _)) = &timer.leased_to {
            check_name("lease owner", owner)?;
        }
    }
    if t.history.len() > HISTORY_PER_TRANSITION_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "a transition adds {} history lines; at most {HISTORY_PER_TRANSITION_MAX}",
            t.history.len()
        )));
    }
    if let Some((handler, message)) = &t.inbox {
        crate::idempotency::validate_inbox_entry(handler, message)?;
    }
    Ok(())
}

/// Checks a claim's arguments.
pub fn validate_claim(
    kind: &str,
    owner: &str,
    lease: Duration,
    limit: usize,
) -> Result<(), StoreError> {
    check_name("processor kind", kind)?;
    check_name("lease owner", owner)?;
    if lease < crate::outbox::LEASE_MIN || lease > crate::outbox::LEASE_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "timer lease {lease:?}: must be {:?}..={:?}",
            crate::outbox::LEASE_MIN,
            crate::outbox::LEASE_MAX
        )));
    }
    check_limit(limit)
}

/// Checks a list, claim or purge limit: 1..=[`PROCESSOR_BATCH_MAX`].
pub fn check_limit(limit: usize) -> Result<(), StoreError> {
    if limit == 0 || limit > PROCESSOR_BATCH_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "limit {limit}: must be 1..={PROCESSOR_BATCH_MAX}"
        )));
    }
    Ok(())
}

/// `text` cut to [`PROCESSOR_TEXT_LEN_MAX`] bytes on a character boundary.
pub fn cut_text(text: &str) -> String {
    if text.len() <= PROCESSOR_TEXT_LEN_MAX {
        return text.to_string();
    }
    let mut end = PROCESSOR_TEXT_LEN_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition() -> Transition {
        Transition {
            kind: "saga:orders".into(),
            id: "o-1".into(),
            expected: ExpectedInstance::New,
            definition_version: 1,
            correlation: None,
            state: "new".into(),
            status: InstanceStatus::Running,
            progress: b"{}".to_vec(),
            data: b"{}".to_vec(),
            last_error: None,
            outbox: vec![],
            cancel_timers: CancelTimers::None,
            schedule: vec![],
            fired_timer: None,
            inbox: None,
            history: vec![],
        }
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in InstanceStatus::ALL {
            assert_eq!(InstanceStatus::parse(s.as_str()), Some(s));
        }
        assert!(InstanceStatus::Compensated.is_finished());
        assert!(InstanceStatus::NeedsAttention.is_parked());
        assert!(!InstanceStatus::Running.is_finished());
    }

    #[test]
    fn oversized_data_and_bad_names_are_refused() {
        assert!(validate_transition(&transition(), 10).is_ok());
        let mut t = transition();
        t.data = vec![b'x'; 11];
        let e = validate_transition(&t, 10).unwrap_err();
        assert!(e.to_string().contains("over the 10-byte limit"), "{e}");
        let mut t = transition();
        t.id = String::new();
        assert!(validate_transition(&t, 10).is_err());
        let mut t = transition();
        t.schedule = vec![
            TimerSpec {
                name: "x".into(),
                due: Utc::now(),
                payload: vec![],
                leased_to: None,
            };
            TIMERS_PER_TRANSITION_MAX + 1
        ];
        assert!(validate_transition(&t, 10).is_err());
        assert!(validate_claim("k", "me", Duration::from_millis(1), 10).is_err());
        assert!(validate_claim("k", "me", Duration::from_secs(5), 0).is_err());
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let long = "é".repeat(PROCESSOR_TEXT_LEN_MAX);
        let cut = cut_text(&long);
        assert!(cut.len() <= PROCESSOR_TEXT_LEN_MAX + '…'.len_utf8());
        assert_eq!(cut_text("short"), "short");
    }
}
