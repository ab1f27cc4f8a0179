//! [`ProcessorStore`] on PostgreSQL: instances, timers and history in the tables of
//! migration 9, each transition one transaction with its outbox rows and inbox mark.
//! Processes sharing the schema race safely: the instance row's version check (and its
//! row lock) orders transitions of one instance, unique indexes decide racing creates, and
//! claims lock timers with `FOR UPDATE SKIP LOCKED`, so no two claimers lease one timer.
//! See the crate's DESIGN.md, "Processors".

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::message::MESSAGE_PAYLOAD_MAX_DEFAULT;
use runnel_core::outbox::validate_enqueue;
use runnel_core::processor::{
    check_limit, cut_text, validate_claim, validate_instance_key, validate_transition,
    CancelTimers, CommitOutcome, DueTimer, ExpectedInstance, HistoryLine, HistoryRecord,
    InstanceFilter, InstanceRecord, InstanceStatus, ProcessorStore, StatusCount, TimerRecord,
    TimerSpec, Transition, INSTANCE_DATA_MAX, INSTANCE_DATA_MAX_DEFAULT,
};
use runnel_core::{Clock, StoreError, SystemClock};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, Row};

use crate::error_map::map_sqlx;
use crate::idempotency::PostgresInbox;
use crate::outbox::{insert_rows, outbox_names};
use crate::store::PostgresStore;

/// How often a create tries again when its insert hit a unique key whose row was gone by
/// the time it looked which one (purged in between). Only a purge racing the create
/// causes this, and a purged row does not come back, so a second round settles it.
const CREATE_ROUNDS_MAX: usize = 3;

/// Processor state in a [`PostgresStore`]'s schema (created by the store's migrations).
/// Cheap to clone; clones share the store's pool.
///
/// ```no_run
/// # async fn demo(store: runnel_postgres::PostgresStore) -> Result<(), runnel_core::StoreError> {
/// use runnel_core::processor::*;
/// use runnel_postgres::PostgresProcessorStore;
///
/// let processors = PostgresProcessorStore::new(store);
/// let created = processors
///     .commit(Transition {
///         kind: "saga:orders".into(),
///         id: "o-1".into(),
///         expected: ExpectedInstance::New,
///         definition_version: 1,
///         correlation: Some("order-1".into()),
///         state: "running".into(),
///         status: InstanceStatus::Running,
///         progress: b"{}".to_vec(),
///         data: br#"{"total":3}"#.to_vec(),
///         last_error: None,
///         outbox: vec![],
///         cancel_timers: CancelTimers::None,
///         schedule: vec![],
///         fired_timer: None,
///         inbox: None,
///         history: vec![],
///     })
///     .await?;
/// assert_eq!(created, CommitOutcome::Committed { version: 1 });
/// assert_eq!(processors.load("saga:orders", "o-1").await?.unwrap().version, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresProcessorStore {
    store: PostgresStore,
    inbox: PostgresInbox,
    tables: Arc<Tables>,
    clock: Arc<dyn Clock>,
    max_data_bytes: usize,
}

/// The qualified names of the tables a transition writes.
struct Tables {
    instances: String,
    timers: String,
    history: String,
    outbox: String,
    outbox_channel: String,
}

impl std::fmt::Debug for PostgresProcessorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresProcessorStore")
            .field("schema", &self.store.schema())
            .field("max_data_bytes", &self.max_data_bytes)
            .finish_non_exhaustive()
    }
}

const INSTANCE_COLUMNS: &str = "kind, id, definition_version, correlation, state, status, \
     progress, data, version, last_error, created_at, updated_at, finished_at";

fn instance_from_row(row: &PgRow) -> Result<InstanceRecord, StoreError> {
    let bad = |e: sqlx::Error| StoreError::Corrupt(format!("unreadable instance row: {e}"));
    let kind: String = row.try_get(0).map_err(bad)?;
    let id: String = row.try_get(1).map_err(bad)?;
    let definition_version: i64 = row.try_get(2).map_err(bad)?;
    let status: String = row.try_get(5).map_err(bad)?;
    let version: i64 = row.try_get(8).map_err(bad)?;
    Ok(InstanceRecord {
        definition_version: u32::try_from(definition_version).map_err(|_| {
            StoreError::Corrupt(format!(
                "instance {kind}/{id} definition version {definition_version} is out of range"
            ))
        })?,
        correlation: row.try_get(3).map_err(bad)?,
        state: row.try_get(4).map_err(bad)?,
        status: InstanceStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown instance status {status:?}")))?,
        progress: row.try_get(6).map_err(bad)?,
        data: row.try_get(7).map_err(bad)?,
        version: u64::try_from(version).map_err(|_| {
            StoreError::Corrupt(format!(
                "instance {kind}/{id} version {version} is negative"
            ))
        })?,
        last_error: row.try_get(9).map_err(bad)?,
        created_at: row.try_get(10).map_err(bad)?,
        updated_at: row.try_get(11).map_err(bad)?,
        finished_at: row.try_get(12).map_err(bad)?,
        kind,
        id,
    })
}

/// PostgreSQL `text` cannot hold NUL. Refusing it before the transaction starts gives a
/// typed error instead of a failed statement halfway through the commit.
fn refuse_nul(t: &Transition) -> Result<(), StoreError> {
    let history = t.history.iter().flat_map(|h| {
        [
            h.step.as_deref(),
            Some(h.what.as_str()),
            h.detail.as_deref(),
        ]
    });
    let texts = [Some(t.state.as_str()), t.last_error.as_deref()]
        .into_iter()
        .chain(history)
        .flatten();
    for text in texts {
        if text.contains('\0') {
            return Err(StoreError::InvalidArgument(format!(
                "instance {}/{}: state, error and history text must not contain NUL \
                 (PostgreSQL text cannot store it)",
                t.kind, t.id
            )));
        }
    }
    Ok(())
}

/// The timers one statement upserts: a name scheduled twice in one transition keeps its
/// last spec (as if each replaced the one before), since one `INSERT … ON CONFLICT DO
/// UPDATE` cannot touch a row twice.
fn last_per_name(schedule: &[TimerSpec]) -> Vec<&TimerSpec> {
    let mut out: Vec<&TimerSpec> = Vec::with_capacity(schedule.len());
    for timer in schedule {
        match out.iter_mut().find(|t| t.name == timer.name) {
            Some(slot) => *slot = timer,
            None => out.push(timer),
        }
    }
    out
}

fn committed(outcome: &CommitOutcome) -> bool {
    matches!(outcome, CommitOutcome::Committed { .. })
}

impl PostgresProcessorStore {
    /// Processor state in `store`'s schema, with [`INSTANCE_DATA_MAX_DEFAULT`] as the data
    /// limit and the system clock for the times it records.
    pub fn new(store: PostgresStore) -> Self {
        let schema = store.schema();
        let (outbox, outbox_channel) = outbox_names(schema);
        PostgresProcessorStore {
            inbox: PostgresInbox::new(&store),
            tables: Arc::new(Tables {
                instances: format!("{schema}.processor_instances"),
                timers: format!("{schema}.processor_timers"),
                history: format!("{schema}.processor_history"),
                outbox,
                outbox_channel,
            }),
            store,
            clock: Arc::new(SystemClock),
            max_data_bytes: INSTANCE_DATA_MAX_DEFAULT,
        }
    }

    /// Sets the largest instance data, in bytes (at most [`INSTANCE_DATA_MAX`]).
    pub fn with_max_data_bytes(mut self, bytes: usize) -> Self {
        self.max_data_bytes = bytes.min(INSTANCE_DATA_MAX);
        self
    }

    /// Uses `clock` for the times instances, history and outbox rows record. Lease and due
    /// checks use the `now` each call is given, never this clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The store.
    pub fn store(&self) -> &PostgresStore {
        &self.store
    }

    /// Writes the transition on `conn`, inside the caller's open transaction. Anything but
    /// `Committed` means the caller must roll back: a refusal may follow writes (the inbox
    /// mark), and nothing of a refused transition may stay.
    async fn commit_in(
        &self,
        conn: &mut PgConnection,
        now: DateTime<Utc>,
        t: &Transition,
    ) -> Result<CommitOutcome, StoreError> {
        let tables = &*self.tables;
        // First, so a concurrent delivery of the same message waits here on the
        // uncommitted mark, then finds it (Duplicate) or takes its place (rolled back).
        if let Some((handler, message)) = &t.inbox {
            if !self.inbox.mark_processed_in(conn, handler, message).await? {
                return Ok(CommitOutcome::Duplicate);
            }
        }
        // From here on this transaction holds the instance row's lock (inserted or
        // updated): every other transition of the instance waits for it, which is what
        // makes the timer and history writes below race-free.
        let version = match t.expected {
            ExpectedInstance::New => {
                if let Some(refused) = self.insert_instance(conn, now, t).await? {
                    return Ok(refused);
                }
                1
            }
            ExpectedInstance::Version(expected) => {
                if let Some(refused) = self.update_instance(conn, now, t, expected).await? {
                    return Ok(refused);
                }
                expected + 1
            }
        };
        if let Some(id) = t.fired_timer.and_then(|id| i64::try_from(id).ok()) {
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {} WHERE id = $1",
                tables.timers
            )))
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        }
        // None: cancel nothing; Some(None): every timer of the instance; Some(Some(n)):
        // those named n. Before the schedule, so a cancelled name can be scheduled anew.
        let cancel = match &t.cancel_timers {
            CancelTimers::None => None,
            CancelTimers::All => Some(None),
            CancelTimers::Named(names) if names.is_empty() => None,
            CancelTimers::Named(names) => Some(Some(names)),
        };
        if let Some(names) = cancel {
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {} WHERE kind = $1 AND instance = $2 \
                 AND ($3::text[] IS NULL OR name = ANY($3))",
                tables.timers
            )))
            .bind(&t.kind)
            .bind(&t.id)
            .bind(names)
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        }
        if !t.schedule.is_empty() {
            self.upsert_timers(conn, t).await?;
        }
        if !t.history.is_empty() {
            self.insert_history(conn, now, t).await?;
        }
        // Its NOTIFY is delivered at commit: relays wake when the rows are visible.
        insert_rows(conn, &tables.outbox, &tables.outbox_channel, now, &t.outbox).await?;
        Ok(CommitOutcome::Committed { version })
    }

    /// Creates the instance at version 1. `Some`: refused (the id or the correlation key
    /// is taken), nothing inserted.
    async fn insert_instance(
        &self,
        conn: &mut PgConnection,
        now: DateTime<Utc>,
        t: &Transition,
    ) -> Result<Option<CommitOutcome>, StoreError> {
        let table = &self.tables.instances;
        for _ in 0..CREATE_ROUNDS_MAX {
            // DO NOTHING without a conflict target covers both unique keys: the primary
            // key and the correlation index. An insert racing an uncommitted row with the
            // same key waits for it, then does nothing (it committed) or inserts (it
            // rolled back) — never a unique-violation error.
            let inserted = sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {table} (kind, id, definition_version, correlation, state, status, \
                 progress, data, version, last_error, created_at, updated_at, finished_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $10, $10, $11) \
                 ON CONFLICT DO NOTHING"
            )))
            .bind(&t.kind)
            .bind(&t.id)
            .bind(i64::from(t.definition_version))
            .bind(&t.correlation)
            .bind(&t.state)
            .bind(t.status.as_str())
            .bind(&t.progress)
            .bind(&t.data)
            .bind(t.last_error.as_deref().map(cut_text))
            .bind(now)
            .bind(t.status.is_finished().then_some(now))
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
            if inserted.rows_affected() == 1 {
                return Ok(None);
            }
            // Which key stopped it: the id first, then the correlation (as on SQLite).
            // Under READ COMMITTED these reads take a new snapshot, which holds the row
            // the insert conflicted with: it was committed before the insert gave up.
            if let Some(actual) = self.version_in(conn, &t.kind, &t.id).await? {
                return Ok(Some(CommitOutcome::Conflict {
                    actual: Some(actual),
                }));
            }
            if let Some(correlation) = &t.correlation {
                let holder: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT id FROM {table} WHERE kind = $1 AND correlation = $2"
                )))
                .bind(&t.kind)
                .bind(correlation)
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_sqlx)?;
                if let Some(id) = holder {
                    return Ok(Some(CommitOutcome::CorrelationTaken { id }));
                }
            }
            tracing::debug!(kind = %t.kind, id = %t.id, "the row a create conflicted with is gone; trying again");
        }
        Err(StoreError::Unavailable(format!(
            "creating instance {}/{}: its id or correlation key kept changing under \
             concurrent purges; try again",
            t.kind, t.id
        )))
    }

    /// Moves the instance from `expected` to `expected + 1`. `Some`: refused (another
    /// version, or no instance), nothing changed.
    async fn update_instance(
        &self,
        conn: &mut PgConnection,
        now: DateTime<Utc>,
        t: &Transition,
        expected: u64,
    ) -> Result<Option<CommitOutcome>, StoreError> {
        // A version past i64 cannot be stored, so it cannot match: a conflict.
        if let Ok(expected) = i64::try_from(expected) {
            // A racing transition from the same version waits on the row lock, then
            // re-checks `version` against the committed row and changes nothing.
            let updated = sqlx::query(AssertSqlSafe(format!(
                "UPDATE {} SET definition_version = $3, state = $4, status = $5, \
                 progress = $6, data = $7, version = version + 1, last_error = $8, \
                 updated_at = $9, finished_at = $10 \
                 WHERE kind = $1 AND id = $2 AND version = $11",
                self.tables.instances
            )))
            .bind(&t.kind)
            .bind(&t.id)
            .bind(i64::from(t.definition_version))
            .bind(&t.state)
            .bind(t.status.as_str())
            .bind(&t.progress)
            .bind(&t.data)
            .bind(t.last_error.as_deref().map(cut_text))
            .bind(now)
            .bind(t.status.is_finished().then_some(now))
            .bind(expected)
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
            debug_assert!(updated.rows_affected() <= 1);
            if updated.rows_affected() == 1 {
                return Ok(None);
            }
        }
        let actual = self.version_in(conn, &t.kind, &t.id).await?;
        Ok(Some(CommitOutcome::Conflict { actual }))
    }

    async fn version_in(
        &self,
        conn: &mut PgConnection,
        kind: &str,
        id: &str,
    ) -> Result<Option<u64>, StoreError> {
        let version: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT version FROM {} WHERE kind = $1 AND id = $2",
            self.tables.instances
        )))
        .bind(kind)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        Ok(version.map(|v| v.max(0) as u64))
    }

    /// Schedules the transition's timers in one statement; a pending timer of the same
    /// name is replaced (due time, payload and lease).
    async fn upsert_timers(
        &self,
        conn: &mut PgConnection,
        t: &Transition,
    ) -> Result<(), StoreError> {
        let timers = last_per_name(&t.schedule);
        let mut names = Vec::with_capacity(timers.len());
        let mut dues = Vec::with_capacity(timers.len());
        let mut payloads = Vec::with_capacity(timers.len());
        let mut owners: Vec<Option<&str>> = Vec::with_capacity(timers.len());
        let mut untils: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(timers.len());
        for timer in timers {
            names.push(timer.name.as_str());
            dues.push(timer.due);
            payloads.push(timer.payload.as_slice());
            owners.push(timer.leased_to.as_ref().map(|(o, _)| o.as_str()));
            untils.push(timer.leased_to.as_ref().map(|(_, u)| *u));
        }
        // WITH ORDINALITY + ORDER BY: new timers get their ids in the order given.
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (kind, instance, name, due_at, payload, leased_by, leased_until) \
             SELECT $1, $2, n, d, p, o, u \
             FROM unnest($3::text[], $4::timestamptz[], $5::bytea[], $6::text[], $7::timestamptz[]) \
             WITH ORDINALITY AS s(n, d, p, o, u, i) ORDER BY i \
             ON CONFLICT (kind, instance, name) DO UPDATE SET due_at = excluded.due_at, \
             payload = excluded.payload, leased_by = excluded.leased_by, \
             leased_until = excluded.leased_until",
            self.tables.timers
        )))
        .bind(&t.kind)
        .bind(&t.id)
        .bind(names)
        .bind(dues)
        .bind(payloads)
        .bind(owners)
        .bind(untils)
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        Ok(())
    }

    /// Appends the transition's history lines after the instance's last one. Safe without
    /// a lock of its own: the caller holds the instance row's lock, so no other writer of
    /// this instance's history runs between the `max(seq)` read and the insert.
    async fn insert_history(
        &self,
        conn: &mut PgConnection,
        now: DateTime<Utc>,
        t: &Transition,
    ) -> Result<(), StoreError> {
        let steps: Vec<Option<&str>> = t.history.iter().map(|h| h.step.as_deref()).collect();
        let whats: Vec<String> = t.history.iter().map(|h| cut_text(&h.what)).collect();
        let details: Vec<Option<String>> = t
            .history
            .iter()
            .map(|h| h.detail.as_deref().map(cut_text))
            .collect();
        let history = &self.tables.history;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {history} (kind, instance, seq, at, step, what, detail) \
             SELECT $1, $2, last.seq + u.n, $3, u.s, u.w, u.d \
             FROM (SELECT coalesce(max(seq), 0) AS seq FROM {history} \
                   WHERE kind = $1 AND instance = $2) last, \
                  unnest($4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS u(s, w, d, n)"
        )))
        .bind(&t.kind)
        .bind(&t.id)
        .bind(now)
        .bind(steps)
        .bind(whats)
        .bind(details)
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        Ok(())
    }
}

#[async_trait]
impl ProcessorStore for PostgresProcessorStore {
    async fn commit(&self, transition: Transition) -> Result<CommitOutcome, StoreError> {
        validate_transition(&transition, self.max_data_bytes)?;
        validate_enqueue(&transition.outbox, MESSAGE_PAYLOAD_MAX_DEFAULT)?;
        refuse_nul(&transition)?;
        let now = self.clock.now();
        let mut tx = self.store.pool().begin().await.map_err(map_sqlx)?;
        // An error drops `tx`, which rolls back.
        let outcome = self.commit_in(&mut tx, now, &transition).await?;
        if committed(&outcome) {
            tx.commit().await.map_err(map_sqlx)?;
        } else if let Err(e) = tx.rollback().await {
            // Nothing was committed either way: the connection is discarded, which rolls
            // back, and the refusal stands.
            tracing::debug!(error = %e, "rollback of a refused transition failed");
        }
        Ok(outcome)
    }

    async fn load(&self, kind: &str, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        validate_instance_key(kind, id)?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {INSTANCE_COLUMNS} FROM {} WHERE kind = $1 AND id = $2",
            self.tables.instances
        )))
        .bind(kind)
        .bind(id)
        .fetch_optional(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        row.as_ref().map(instance_from_row).transpose()
    }

    async fn find_by_correlation(
        &self,
        kind: &str,
        correlation: &str,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        validate_instance_key(kind, correlation)?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {INSTANCE_COLUMNS} FROM {} WHERE kind = $1 AND correlation = $2",
            self.tables.instances
        )))
        .bind(kind)
        .bind(correlation)
        .fetch_optional(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        row.as_ref().map(instance_from_row).transpose()
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
        validate_claim(kind, owner, lease, limit)?;
        if versions.is_empty() {
            return Ok(Vec::new());
        }
        let until = chrono::Duration::from_std(lease)
            .ok()
            .and_then(|lease| now.checked_add_signed(lease))
            .ok_or_else(|| {
                StoreError::InvalidArgument(format!("timer lease {lease:?} from {now} overflows"))
            })?;
        let versions: Vec<i64> = versions.iter().map(|v| i64::from(*v)).collect();
        let Tables {
            instances, timers, ..
        } = &*self.tables;
        // One statement. The CTE runs once and locks what it picks; SKIP LOCKED leaves
        // timers another claimer is leasing right now to it, and a timer whose lease
        // committed after this statement's snapshot is re-checked under FOR UPDATE (READ
        // COMMITTED re-evaluates the WHERE clause on the new row) and left out. `now` is
        // the caller's clock, not the database's: tests run on virtual time.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "WITH due AS ( \
                SELECT t.id FROM {timers} t JOIN {instances} i \
                  ON i.kind = t.kind AND i.id = t.instance \
                WHERE t.kind = $1 AND t.due_at <= $2 \
                  AND (t.leased_until IS NULL OR t.leased_until < $2) \
                  AND i.definition_version = ANY($3) \
                ORDER BY t.due_at, t.id LIMIT $4 \
                FOR UPDATE OF t SKIP LOCKED) \
             UPDATE {timers} t SET leased_by = $5, leased_until = $6 FROM due \
             WHERE t.id = due.id \
             RETURNING t.id, t.instance, t.name, t.due_at, t.payload, t.leased_until"
        )))
        .bind(kind)
        .bind(now)
        .bind(versions)
        .bind(limit as i64)
        .bind(owner)
        .bind(until)
        .fetch_all(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        debug_assert!(rows.len() <= limit);
        let bad = |e: sqlx::Error| StoreError::Corrupt(format!("unreadable timer row: {e}"));
        let mut due = rows
            .iter()
            .map(|row| {
                let id: i64 = row.try_get(0).map_err(bad)?;
                Ok(DueTimer {
                    id: id as u64,
                    kind: kind.to_string(),
                    instance: row.try_get(1).map_err(bad)?,
                    name: row.try_get(2).map_err(bad)?,
                    due: row.try_get(3).map_err(bad)?,
                    payload: row.try_get(4).map_err(bad)?,
                    leased_until: row.try_get(5).map_err(bad)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // RETURNING has no order: soonest first, as claimed.
        due.sort_by_key(|t| (t.due, t.id));
        Ok(due)
    }

    async fn extend_timer_lease(
        &self,
        id: u64,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(false);
        };
        let changed = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET leased_until = $3 WHERE id = $1 AND leased_by = $2",
            self.tables.timers
        )))
        .bind(id)
        .bind(owner)
        .bind(until)
        .execute(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        Ok(changed.rows_affected() == 1)
    }

    async fn release_timer(
        &self,
        id: u64,
        owner: &str,
        due: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(());
        };
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET leased_by = NULL, leased_until = NULL, due_at = $3 \
             WHERE id = $1 AND leased_by = $2",
            self.tables.timers
        )))
        .bind(id)
        .bind(owner)
        .bind(due)
        .execute(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        Ok(())
    }

    async fn delete_timer(&self, id: u64, owner: &str) -> Result<(), StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(());
        };
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE id = $1 AND leased_by = $2",
            self.tables.timers
        )))
        .bind(id)
        .bind(owner)
        .execute(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        Ok(())
    }

    async fn next_due(&self, kind: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        validate_instance_key(kind, "-")?;
        // A leased timer counts from its lease's end: that is when it can be claimed again.
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT min(greatest(due_at, coalesce(leased_until, due_at))) FROM {} \
             WHERE kind = $1",
            self.tables.timers
        )))
        .bind(kind)
        .fetch_one(self.store.pool())
        .await
        .map_err(map_sqlx)
    }

    async fn list(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRecord>, StoreError> {
        check_limit(filter.limit)?;
        let (after_kind, after_id) = filter.after.clone().unzip();
        // The key columns are COLLATE "C": `(kind, id)` order is byte order, as on SQLite,
        // and the primary key serves both the cursor and the order.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {INSTANCE_COLUMNS} FROM {} \
             WHERE ($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR status = $2) \
               AND ($3::text IS NULL OR (kind, id) > ($3, $4::text)) \
             ORDER BY kind, id LIMIT $5",
            self.tables.instances
        )))
        .bind(&filter.kind)
        .bind(filter.status.map(|s| s.as_str()))
        .bind(after_kind)
        .bind(after_id)
        .bind(filter.limit as i64)
        .fetch_all(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        rows.iter().map(instance_from_row).collect()
    }

    async fn count_by_status(&self) -> Result<Vec<StatusCount>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT kind, status, count(*) FROM {} GROUP BY kind, status ORDER BY kind, status",
            self.tables.instances
        )))
        .fetch_all(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        rows.into_iter()
            .map(|(kind, status, count)| {
                Ok(StatusCount {
                    kind,
                    status: InstanceStatus::parse(&status).ok_or_else(|| {
                        StoreError::Corrupt(format!("unknown instance status {status:?}"))
                    })?,
                    count: count.max(0) as u64,
                })
            })
            .collect()
    }

    async fn history(
        &self,
        kind: &str,
        id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        validate_instance_key(kind, id)?;
        check_limit(limit)?;
        let rows: Vec<(i64, DateTime<Utc>, Option<String>, String, Option<String>)> =
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT seq, at, step, what, detail FROM {} \
                 WHERE kind = $1 AND instance = $2 AND seq > $3 ORDER BY seq LIMIT $4",
                self.tables.history
            )))
            .bind(kind)
            .bind(id)
            .bind(after_seq.min(i64::MAX as u64) as i64)
            .bind(limit as i64)
            .fetch_all(self.store.pool())
            .await
            .map_err(map_sqlx)?;
        Ok(rows
            .into_iter()
            .map(|(seq, at, step, what, detail)| HistoryRecord {
                seq: seq.max(0) as u64,
                at,
                line: HistoryLine { step, what, detail },
            })
            .collect())
    }

    async fn timers(&self, kind: &str, id: &str) -> Result<Vec<TimerRecord>, StoreError> {
        validate_instance_key(kind, id)?;
        let rows: Vec<(
            i64,
            String,
            DateTime<Utc>,
            Option<String>,
            Option<DateTime<Utc>>,
        )> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT id, name, due_at, leased_by, leased_until FROM {} \
                 WHERE kind = $1 AND instance = $2 ORDER BY due_at, id",
            self.tables.timers
        )))
        .bind(kind)
        .bind(id)
        .fetch_all(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        Ok(rows
            .into_iter()
            .map(|(id, name, due, owner, until)| TimerRecord {
                id: id as u64,
                name,
                due,
                leased_to: owner.zip(until),
            })
            .collect())
    }

    async fn purge_finished(
        &self,
        kind: Option<&str>,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        check_limit(limit)?;
        let Tables {
            instances,
            timers,
            history,
            ..
        } = &*self.tables;
        let mut tx = self.store.pool().begin().await.map_err(map_sqlx)?;
        // Lock the victims first, skipping any a transition holds right now (FOR UPDATE
        // re-checks `finished_at` on rows changed since the snapshot). The deletes run as a
        // second statement, whose snapshot holds every history line committed before the
        // locks were taken; no transition of a locked instance can add more meanwhile.
        let victims: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT kind, id FROM {instances} \
             WHERE finished_at IS NOT NULL AND finished_at < $1 \
               AND ($2::text IS NULL OR kind = $2) \
             ORDER BY finished_at LIMIT $3 FOR UPDATE SKIP LOCKED"
        )))
        .bind(before)
        .bind(kind)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        if victims.is_empty() {
            tx.commit().await.map_err(map_sqlx)?;
            return Ok(0);
        }
        let (kinds, ids): (Vec<String>, Vec<String>) = victims.into_iter().unzip();
        let deleted = sqlx::query(AssertSqlSafe(format!(
            "WITH v AS (SELECT * FROM unnest($1::text[], $2::text[]) AS v(kind, id)), \
             h AS (DELETE FROM {history} h USING v WHERE h.kind = v.kind AND h.instance = v.id), \
             t AS (DELETE FROM {timers} t USING v WHERE t.kind = v.kind AND t.instance = v.id) \
             DELETE FROM {instances} i USING v WHERE i.kind = v.kind AND i.id = v.id"
        )))
        .bind(&kinds)
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)?;
        debug_assert_eq!(deleted.rows_affected(), kinds.len() as u64);
        Ok(deleted.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, payload: &[u8]) -> TimerSpec {
        TimerSpec {
            name: name.into(),
            due: Utc::now(),
            payload: payload.to_vec(),
            leased_to: None,
        }
    }

    #[test]
    fn a_name_scheduled_twice_keeps_its_last_spec_in_its_first_place() {
        let schedule = [spec("a", b"1"), spec("b", b"2"), spec("a", b"3")];
        let kept = last_per_name(&schedule);
        assert_eq!(
            kept.iter()
                .map(|t| (t.name.as_str(), t.payload.as_slice()))
                .collect::<Vec<_>>(),
            vec![("a", &b"3"[..]), ("b", &b"2"[..])]
        );
    }
}
