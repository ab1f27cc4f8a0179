//! [`ProcessorStore`] on the SQLite file: instances, timers and history in the tables of
//! migration 7, each transition one job of the writer's batch (under its own savepoint),
//! with its outbox rows and inbox mark. The single writer serialises claims, so two
//! processes on one file never lease the same timer.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use runnel_core::async_trait;
use runnel_core::processor::{
    check_limit, cut_text, validate_claim, validate_instance_key, validate_transition,
    CancelTimers, CommitOutcome, DueTimer, ExpectedInstance, HistoryLine, HistoryRecord,
    InstanceFilter, InstanceRecord, InstanceStatus, ProcessorStore, StatusCount, TimerRecord,
    Transition, INSTANCE_DATA_MAX, INSTANCE_DATA_MAX_DEFAULT,
};
use runnel_core::StoreError;

use crate::error_map::{is_unique_violation, map_sqlite};
use crate::outbox::SqliteOutbox;
use crate::rows::{micros_to_time, time_to_micros};
use crate::store::{keep_all, SqliteStore};

/// Processor state in the store's file. Cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), runnel_core::StoreError> {
/// use runnel_core::processor::*;
/// use runnel_sqlite::{SqliteProcessorStore, SqliteStore};
///
/// let store = SqliteStore::open_temporary()?;
/// let processors = SqliteProcessorStore::new(store);
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
pub struct SqliteProcessorStore {
    store: SqliteStore,
    outbox: SqliteOutbox,
    max_data_bytes: usize,
}

impl std::fmt::Debug for SqliteProcessorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteProcessorStore")
            .field("path", &self.store.path())
            .field("max_data_bytes", &self.max_data_bytes)
            .finish()
    }
}

const INSTANCE_COLUMNS: &str = "kind, id, definition_version, correlation, state, status, \
     progress, data, version, last_error, created_at, updated_at, finished_at";

fn instance_from_row(row: &rusqlite::Row<'_>) -> Result<InstanceRecord, StoreError> {
    let bad = |e: rusqlite::Error| StoreError::Corrupt(format!("unreadable instance row: {e}"));
    let status: String = row.get(5).map_err(bad)?;
    let finished: Option<i64> = row.get(12).map_err(bad)?;
    Ok(InstanceRecord {
        kind: row.get(0).map_err(bad)?,
        id: row.get(1).map_err(bad)?,
        definition_version: row.get(2).map_err(bad)?,
        correlation: row.get(3).map_err(bad)?,
        state: row.get(4).map_err(bad)?,
        status: InstanceStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown instance status {status:?}")))?,
        progress: row.get(6).map_err(bad)?,
        data: row.get(7).map_err(bad)?,
        version: row.get::<_, i64>(8).map_err(bad)? as u64,
        last_error: row.get(9).map_err(bad)?,
        created_at: micros_to_time(row.get(10).map_err(bad)?)?,
        updated_at: micros_to_time(row.get(11).map_err(bad)?)?,
        finished_at: finished.map(micros_to_time).transpose()?,
    })
}

fn load_in(conn: &Connection, kind: &str, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM processor_instances WHERE kind = ?1 AND id = ?2"
        ))
        .map_err(map_sqlite)?;
    let mut rows = stmt.query(params![kind, id]).map_err(map_sqlite)?;
    match rows.next().map_err(map_sqlite)? {
        Some(row) => Ok(Some(instance_from_row(row)?)),
        None => Ok(None),
    }
}

/// Writes the transition in the open savepoint. Returns the outcome; anything but
/// `Committed` means the caller must roll the savepoint back (nothing is kept).
fn commit_in(conn: &Connection, now: i64, t: &Transition) -> Result<CommitOutcome, StoreError> {
    if let Some((handler, message)) = &t.inbox {
        let inserted = conn
            .prepare_cached(
                "INSERT INTO inbox (handler, message_id, processed_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (handler, message_id) DO NOTHING",
            )
            .map_err(map_sqlite)?
            .execute(params![handler, message, now])
            .map_err(map_sqlite)?;
        if inserted == 0 {
            return Ok(CommitOutcome::Duplicate);
        }
    }
    let finished = t.status.is_finished().then_some(now);
    let last_error = t.last_error.as_deref().map(cut_text);
    let version = match t.expected {
        ExpectedInstance::New => {
            if let Some(existing) = load_in(conn, &t.kind, &t.id)? {
                return Ok(CommitOutcome::Conflict {
                    actual: Some(existing.version),
                });
            }
            if let Some(c) = &t.correlation {
                let holder: Option<String> = conn
                    .prepare_cached(
                        "SELECT id FROM processor_instances WHERE kind = ?1 AND correlation = ?2",
                    )
                    .map_err(map_sqlite)?
                    .query_row(params![t.kind, c], |r| r.get(0))
                    .optional()
                    .map_err(map_sqlite)?;
                if let Some(id) = holder {
                    return Ok(CommitOutcome::CorrelationTaken { id });
                }
            }
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO processor_instances (kind, id, definition_version, correlation, \
                     state, status, progress, data, version, last_error, created_at, updated_at, \
                     finished_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1, ?9, ?10, ?10, ?11)",
                )
                .map_err(map_sqlite)?
                .execute(params![
                    t.kind,
                    t.id,
                    t.definition_version,
                    t.correlation,
                    t.state,
                    t.status.as_str(),
                    t.progress,
                    t.data,
                    last_error,
                    now,
                    finished,
                ]);
            match inserted {
                Ok(_) => 1,
                Err(e) if is_unique_violation(&e) => {
                    return Ok(CommitOutcome::Conflict { actual: None });
                }
                Err(e) => return Err(map_sqlite(e)),
            }
        }
        ExpectedInstance::Version(expected) => {
            let changed = conn
                .prepare_cached(
                    "UPDATE processor_instances SET definition_version = ?3, state = ?4, \
                     status = ?5, progress = ?6, data = ?7, version = version + 1, \
                     last_error = ?8, updated_at = ?9, finished_at = ?10 \
                     WHERE kind = ?1 AND id = ?2 AND version = ?11",
                )
                .map_err(map_sqlite)?
                .execute(params![
                    t.kind,
                    t.id,
                    t.definition_version,
                    t.state,
                    t.status.as_str(),
                    t.progress,
                    t.data,
                    last_error,
                    now,
                    finished,
                    expected as i64,
                ])
                .map_err(map_sqlite)?;
            if changed == 0 {
                let actual = load_in(conn, &t.kind, &t.id)?.map(|i| i.version);
                return Ok(CommitOutcome::Conflict { actual });
            }
            expected + 1
        }
    };
    if let Some(timer) = t.fired_timer {
        conn.prepare_cached("DELETE FROM processor_timers WHERE id = ?1")
            .map_err(map_sqlite)?
            .execute(params![timer as i64])
            .map_err(map_sqlite)?;
    }
    match &t.cancel_timers {
        CancelTimers::None => {}
        CancelTimers::All => {
            conn.prepare_cached("DELETE FROM processor_timers WHERE kind = ?1 AND instance = ?2")
                .map_err(map_sqlite)?
                .execute(params![t.kind, t.id])
                .map_err(map_sqlite)?;
        }
        CancelTimers::Named(names) => {
            let mut stmt = conn
                .prepare_cached(
                    "DELETE FROM processor_timers WHERE kind = ?1 AND instance = ?2 AND name = ?3",
                )
                .map_err(map_sqlite)?;
            for name in names {
                stmt.execute(params![t.kind, t.id, name])
                    .map_err(map_sqlite)?;
            }
        }
    }
    if !t.schedule.is_empty() {
        let mut stmt = conn
            .prepare_cached(
                "INSERT INTO processor_timers (kind, instance, name, due_at, payload, leased_by, \
                 leased_until) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (kind, instance, name) DO UPDATE SET due_at = excluded.due_at, \
                 payload = excluded.payload, leased_by = excluded.leased_by, \
                 leased_until = excluded.leased_until",
            )
            .map_err(map_sqlite)?;
        for timer in &t.schedule {
            let (owner, until) = match &timer.leased_to {
                Some((owner, until)) => (Some(owner.as_str()), Some(time_to_micros(*until))),
                None => (None, None),
            };
            stmt.execute(params![
                t.kind,
                t.id,
                timer.name,
                time_to_micros(timer.due),
                timer.payload,
                owner,
                until,
            ])
            .map_err(map_sqlite)?;
        }
    }
    if !t.history.is_empty() {
        let last: i64 = conn
            .prepare_cached(
                "SELECT COALESCE(MAX(seq), 0) FROM processor_history WHERE kind = ?1 AND instance = ?2",
            )
            .map_err(map_sqlite)?
            .query_row(params![t.kind, t.id], |r| r.get(0))
            .map_err(map_sqlite)?;
        insert_history(conn, now, &t.kind, &t.id, last, &t.history)?;
    }
    if !t.outbox.is_empty() {
        crate::outbox::insert_rows(conn, now, &t.outbox)?;
    }
    Ok(CommitOutcome::Committed { version })
}

fn insert_history(
    conn: &Connection,
    now: i64,
    kind: &str,
    id: &str,
    after: i64,
    lines: &[HistoryLine],
) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO processor_history (kind, instance, seq, at, step, what, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(map_sqlite)?;
    for (i, line) in lines.iter().enumerate() {
        stmt.execute(params![
            kind,
            id,
            after + 1 + i as i64,
            now,
            line.step,
            cut_text(&line.what),
            line.detail.as_deref().map(cut_text),
        ])
        .map_err(map_sqlite)?;
    }
    Ok(())
}

fn committed(outcome: &CommitOutcome) -> bool {
    matches!(outcome, CommitOutcome::Committed { .. })
}

impl SqliteProcessorStore {
    /// Processor state on `store`'s file, with [`INSTANCE_DATA_MAX_DEFAULT`] as the data
    /// limit.
    pub fn new(store: SqliteStore) -> Self {
        SqliteProcessorStore {
            outbox: SqliteOutbox::new(store.clone()),
            store,
            max_data_bytes: INSTANCE_DATA_MAX_DEFAULT,
        }
    }

    /// Sets the largest instance data, in bytes (at most [`INSTANCE_DATA_MAX`]).
    pub fn with_max_data_bytes(mut self, bytes: usize) -> Self {
        self.max_data_bytes = bytes.min(INSTANCE_DATA_MAX);
        self
    }

    /// The store.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }
}

#[async_trait]
impl ProcessorStore for SqliteProcessorStore {
    async fn commit(&self, transition: Transition) -> Result<CommitOutcome, StoreError> {
        validate_transition(&transition, self.max_data_bytes)?;
        runnel_core::outbox::validate_enqueue(
            &transition.outbox,
            runnel_core::message::MESSAGE_PAYLOAD_MAX_DEFAULT,
        )?;
        let sends = !transition.outbox.is_empty();
        let outcome = self
            .store
            .submit(0, committed, move |conn, ctx| {
                commit_in(conn, ctx.now_micros, &transition)
            })
            .await?;
        if sends && matches!(outcome, CommitOutcome::Committed { .. }) {
            self.outbox.wake_relays();
        }
        Ok(outcome)
    }

    async fn load(&self, kind: &str, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        validate_instance_key(kind, id)?;
        let (kind, id) = (kind.to_string(), id.to_string());
        self.store.read(move |conn| load_in(conn, &kind, &id)).await
    }

    async fn find_by_correlation(
        &self,
        kind: &str,
        correlation: &str,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        validate_instance_key(kind, correlation)?;
        let (kind, correlation) = (kind.to_string(), correlation.to_string());
        self.store
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {INSTANCE_COLUMNS} FROM processor_instances \
                         WHERE kind = ?1 AND correlation = ?2"
                    ))
                    .map_err(map_sqlite)?;
                let mut rows = stmt.query(params![kind, correlation]).map_err(map_sqlite)?;
                match rows.next().map_err(map_sqlite)? {
                    Some(row) => Ok(Some(instance_from_row(row)?)),
                    None => Ok(None),
                }
            })
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
        validate_claim(kind, owner, lease, limit)?;
        if versions.is_empty() {
            return Ok(Vec::new());
        }
        let kind = kind.to_string();
        let owner = owner.to_string();
        let versions = serde_json::to_string(versions).expect("integers serialise");
        let now_micros = time_to_micros(now);
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let until_micros = time_to_micros(until);
        self.store
            .submit(0, keep_all, move |conn, _| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT t.id, t.instance, t.name, t.due_at, t.payload \
                         FROM processor_timers t JOIN processor_instances i \
                           ON i.kind = t.kind AND i.id = t.instance \
                         WHERE t.kind = ?1 AND t.due_at <= ?2 \
                           AND (t.leased_until IS NULL OR t.leased_until < ?2) \
                           AND i.definition_version IN (SELECT value FROM json_each(?3)) \
                         ORDER BY t.due_at, t.id LIMIT ?4",
                    )
                    .map_err(map_sqlite)?;
                let mut rows = stmt
                    .query(params![kind, now_micros, versions, limit as i64])
                    .map_err(map_sqlite)?;
                let mut due = Vec::new();
                while let Some(row) = rows.next().map_err(map_sqlite)? {
                    let bad = |e: rusqlite::Error| {
                        StoreError::Corrupt(format!("unreadable timer row: {e}"))
                    };
                    let id: i64 = row.get(0).map_err(bad)?;
                    due.push(DueTimer {
                        id: id as u64,
                        kind: kind.clone(),
                        instance: row.get(1).map_err(bad)?,
                        name: row.get(2).map_err(bad)?,
                        due: micros_to_time(row.get(3).map_err(bad)?)?,
                        payload: row.get(4).map_err(bad)?,
                        leased_until: until,
                    });
                }
                drop(rows);
                let mut lease = conn
                    .prepare_cached(
                        "UPDATE processor_timers SET leased_by = ?2, leased_until = ?3 WHERE id = ?1",
                    )
                    .map_err(map_sqlite)?;
                for t in &due {
                    lease
                        .execute(params![t.id as i64, owner, until_micros])
                        .map_err(map_sqlite)?;
                }
                Ok(due)
            })
            .await
    }

    async fn extend_timer_lease(
        &self,
        id: u64,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let owner = owner.to_string();
        let until = time_to_micros(until);
        self.store
            .submit(0, keep_all, move |conn, _| {
                let changed = conn
                    .prepare_cached(
                        "UPDATE processor_timers SET leased_until = ?3 \
                         WHERE id = ?1 AND leased_by = ?2",
                    )
                    .map_err(map_sqlite)?
                    .execute(params![id as i64, owner, until])
                    .map_err(map_sqlite)?;
                Ok(changed == 1)
            })
            .await
    }

    async fn release_timer(
        &self,
        id: u64,
        owner: &str,
        due: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let owner = owner.to_string();
        let due = time_to_micros(due);
        self.store
            .submit(0, keep_all, move |conn, _| {
                conn.prepare_cached(
                    "UPDATE processor_timers SET leased_by = NULL, leased_until = NULL, \
                     due_at = ?3 WHERE id = ?1 AND leased_by = ?2",
                )
                .map_err(map_sqlite)?
                .execute(params![id as i64, owner, due])
                .map_err(map_sqlite)?;
                Ok(())
            })
            .await
    }

    async fn delete_timer(&self, id: u64, owner: &str) -> Result<(), StoreError> {
        let owner = owner.to_string();
        self.store
            .submit(0, keep_all, move |conn, _| {
                conn.prepare_cached(
                    "DELETE FROM processor_timers WHERE id = ?1 AND leased_by = ?2",
                )
                .map_err(map_sqlite)?
                .execute(params![id as i64, owner])
                .map_err(map_sqlite)?;
                Ok(())
            })
            .await
    }

    async fn next_due(&self, kind: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        validate_instance_key(kind, "-")?;
        let kind = kind.to_string();
        self.store
            .read(move |conn| {
                // A leased timer counts from its lease's end: that is when it can be
                // claimed again.
                let next: Option<i64> = conn
                    .prepare_cached(
                        "SELECT MIN(MAX(due_at, COALESCE(leased_until, 0))) \
                         FROM processor_timers WHERE kind = ?1",
                    )
                    .map_err(map_sqlite)?
                    .query_row(params![kind], |r| r.get(0))
                    .map_err(map_sqlite)?;
                next.map(micros_to_time).transpose()
            })
            .await
    }

    async fn list(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRecord>, StoreError> {
        check_limit(filter.limit)?;
        let filter = filter.clone();
        self.store
            .read(move |conn| {
                let (after_kind, after_id) = filter.after.clone().unzip();
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {INSTANCE_COLUMNS} FROM processor_instances \
                         WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR status = ?2) \
                           AND (?3 IS NULL OR (kind, id) > (?3, ?4)) \
                         ORDER BY kind, id LIMIT ?5"
                    ))
                    .map_err(map_sqlite)?;
                let mut rows = stmt
                    .query(params![
                        filter.kind,
                        filter.status.map(|s| s.as_str()),
                        after_kind,
                        after_id,
                        filter.limit as i64,
                    ])
                    .map_err(map_sqlite)?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(map_sqlite)? {
                    out.push(instance_from_row(row)?);
                }
                Ok(out)
            })
            .await
    }

    async fn count_by_status(&self) -> Result<Vec<StatusCount>, StoreError> {
        self.store
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT kind, status, COUNT(*) FROM processor_instances \
                         GROUP BY kind, status ORDER BY kind, status",
                    )
                    .map_err(map_sqlite)?;
                let mut rows = stmt.query([]).map_err(map_sqlite)?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(map_sqlite)? {
                    let status: String = row.get(1).map_err(map_sqlite)?;
                    out.push(StatusCount {
                        kind: row.get(0).map_err(map_sqlite)?,
                        status: InstanceStatus::parse(&status).ok_or_else(|| {
                            StoreError::Corrupt(format!("unknown instance status {status:?}"))
                        })?,
                        count: row.get::<_, i64>(2).map_err(map_sqlite)? as u64,
                    });
                }
                Ok(out)
            })
            .await
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
        let (kind, id) = (kind.to_string(), id.to_string());
        self.store
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT seq, at, step, what, detail FROM processor_history \
                         WHERE kind = ?1 AND instance = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
                    )
                    .map_err(map_sqlite)?;
                let mut rows = stmt
                    .query(params![kind, id, after_seq as i64, limit as i64])
                    .map_err(map_sqlite)?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(map_sqlite)? {
                    out.push(HistoryRecord {
                        seq: row.get::<_, i64>(0).map_err(map_sqlite)? as u64,
                        at: micros_to_time(row.get(1).map_err(map_sqlite)?)?,
                        line: HistoryLine {
                            step: row.get(2).map_err(map_sqlite)?,
                            what: row.get(3).map_err(map_sqlite)?,
                            detail: row.get(4).map_err(map_sqlite)?,
                        },
                    });
                }
                Ok(out)
            })
            .await
    }

    async fn timers(&self, kind: &str, id: &str) -> Result<Vec<TimerRecord>, StoreError> {
        validate_instance_key(kind, id)?;
        let (kind, id) = (kind.to_string(), id.to_string());
        self.store
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT id, name, due_at, leased_by, leased_until FROM processor_timers \
                         WHERE kind = ?1 AND instance = ?2 ORDER BY due_at, id",
                    )
                    .map_err(map_sqlite)?;
                let mut rows = stmt.query(params![kind, id]).map_err(map_sqlite)?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(map_sqlite)? {
                    let owner: Option<String> = row.get(3).map_err(map_sqlite)?;
                    let until: Option<i64> = row.get(4).map_err(map_sqlite)?;
                    let leased_to = match (owner, until) {
                        (Some(o), Some(u)) => Some((o, micros_to_time(u)?)),
                        _ => None,
                    };
                    out.push(TimerRecord {
                        id: row.get::<_, i64>(0).map_err(map_sqlite)? as u64,
                        name: row.get(1).map_err(map_sqlite)?,
                        due: micros_to_time(row.get(2).map_err(map_sqlite)?)?,
                        leased_to,
                    });
                }
                Ok(out)
            })
            .await
    }

    async fn purge_finished(
        &self,
        kind: Option<&str>,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        check_limit(limit)?;
        let kind = kind.map(str::to_string);
        let before = time_to_micros(before);
        self.store
            .submit(0, keep_all, move |conn, _| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT kind, id FROM processor_instances \
                         WHERE finished_at IS NOT NULL AND finished_at < ?1 \
                           AND (?2 IS NULL OR kind = ?2) ORDER BY finished_at LIMIT ?3",
                    )
                    .map_err(map_sqlite)?;
                let victims: Vec<(String, String)> = stmt
                    .query_map(params![before, kind, limit as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .map_err(map_sqlite)?
                    .collect::<Result<_, _>>()
                    .map_err(map_sqlite)?;
                for (k, id) in &victims {
                    for sql in [
                        "DELETE FROM processor_history WHERE kind = ?1 AND instance = ?2",
                        "DELETE FROM processor_timers WHERE kind = ?1 AND instance = ?2",
                        "DELETE FROM processor_instances WHERE kind = ?1 AND id = ?2",
                    ] {
                        conn.prepare_cached(sql)
                            .map_err(map_sqlite)?
                            .execute(params![k, id])
                            .map_err(map_sqlite)?;
                    }
                }
                Ok(victims.len() as u64)
            })
            .await
    }
}
