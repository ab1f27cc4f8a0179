//! [`ProjectionStore`] on the SQLite file: versions, checkpoints and leases in the tables
//! of migration 8; a batch of read-model statements and its checkpoint are one job of the
//! writer's batch (under its own savepoint), so they commit together or not at all.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use runnel_core::async_trait;
use runnel_core::projection::InlineProjection;
use runnel_core::projection::{
    cut_error, resolve_tables, validate_identifier, validate_spec, versioned_table, Batch,
    BatchOutcome, Dialect, MessageCommit, MessageOutcome, ProjectionState, ProjectionStatus,
    ProjectionStore, RebuildStarted, SqlValue, TopicSource, VersionRole, VersionSpec,
    BATCH_STATEMENTS_MAX,
};
use runnel_core::{NewEvent, Position, RecordedEvent, StoreError, StreamName};

use crate::error_map::map_sqlite;
use crate::rows::{micros_to_time, time_to_micros};
use crate::store::{keep_all, SqliteStore};

mod topic;

/// Projection state in the store's file. Cheap to clone.
#[derive(Clone)]
pub struct SqliteProjectionStore {
    store: SqliteStore,
    wake: crate::outbox::SqliteOutbox,
}

impl std::fmt::Debug for SqliteProjectionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteProjectionStore")
            .field("path", &self.store.path())
            .finish()
    }
}

const STATE_COLUMNS: &str = "s.name, s.version, s.partition, v.partitions, v.role, s.checkpoint, \
     s.status, s.last_error, s.failed_position, s.events_applied, s.leased_by, s.leased_until, \
     s.updated_at, v.code_version";

fn state_from_row(row: &rusqlite::Row<'_>) -> Result<ProjectionState, StoreError> {
    let bad = |e: rusqlite::Error| StoreError::Corrupt(format!("unreadable projection row: {e}"));
    let role: String = row.get(4).map_err(bad)?;
    let status: String = row.get(6).map_err(bad)?;
    let failed: Option<i64> = row.get(8).map_err(bad)?;
    let owner: Option<String> = row.get(10).map_err(bad)?;
    let until: Option<i64> = row.get(11).map_err(bad)?;
    Ok(ProjectionState {
        name: row.get(0).map_err(bad)?,
        version: row.get(1).map_err(bad)?,
        code_version: row.get(13).map_err(bad)?,
        partition: row.get(2).map_err(bad)?,
        partitions: row.get(3).map_err(bad)?,
        role: VersionRole::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown version role {role:?}")))?,
        checkpoint: Position(row.get::<_, i64>(5).map_err(bad)? as u64),
        status: ProjectionStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown projection status {status:?}")))?,
        last_error: row.get(7).map_err(bad)?,
        failed_position: failed.map(|p| Position(p as u64)),
        events_applied: row.get::<_, i64>(9).map_err(bad)? as u64,
        lease: match (owner, until) {
            (Some(o), Some(u)) => Some((o, micros_to_time(u)?)),
            _ => None,
        },
        updated_at: micros_to_time(row.get(12).map_err(bad)?)?,
    })
}

fn tables_of(
    conn: &Connection,
    name: &str,
    version: u32,
) -> Result<Option<(Vec<String>, VersionRole)>, StoreError> {
    let row: Option<(String, String)> = conn
        .prepare_cached(
            "SELECT tables, role FROM projection_versions WHERE name = ?1 AND version = ?2",
        )
        .map_err(map_sqlite)?
        .query_row(params![name, version], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(map_sqlite)?;
    match row {
        None => Ok(None),
        Some((tables, role)) => {
            let tables: Vec<String> = serde_json::from_str(&tables)
                .map_err(|e| StoreError::Corrupt(format!("projection tables: {e}")))?;
            let role = VersionRole::parse(&role)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown version role {role:?}")))?;
            Ok(Some((tables, role)))
        }
    }
}

/// Points the plain table names at `version`'s tables.
fn replace_views(conn: &Connection, tables: &[String], version: u32) -> Result<(), StoreError> {
    for t in tables {
        conn.execute_batch(&format!(
            "DROP VIEW IF EXISTS {t}; CREATE VIEW {t} AS SELECT * FROM {};",
            versioned_table(t, version)
        ))
        .map_err(|e| {
            StoreError::InvalidArgument(format!(
                "cannot make view {t} (is there a table of that name already?): {e}"
            ))
        })?;
    }
    Ok(())
}

fn bind(stmt: &mut rusqlite::Statement<'_>, params: &[SqlValue]) -> Result<(), String> {
    for (i, value) in params.iter().enumerate() {
        let name = format!("${}", i + 1);
        let Some(index) = stmt.parameter_index(&name).map_err(|e| e.to_string())? else {
            return Err(format!("the statement has no parameter {name}"));
        };
        let bound = match value {
            SqlValue::Null => stmt.raw_bind_parameter(index, rusqlite::types::Null),
            SqlValue::Int(v) => stmt.raw_bind_parameter(index, v),
            SqlValue::Real(v) => stmt.raw_bind_parameter(index, v),
            SqlValue::Text(v) => stmt.raw_bind_parameter(index, v),
            SqlValue::Blob(v) => stmt.raw_bind_parameter(index, v),
        };
        bound.map_err(|e| e.to_string())?;
    }
    if stmt.parameter_count() != params.len() {
        return Err(format!(
            "the statement has {} parameters but {} were given",
            stmt.parameter_count(),
            params.len()
        ));
    }
    Ok(())
}

fn commit_in(
    conn: &Connection,
    now: i64,
    batch: &Batch,
    until: i64,
) -> Result<BatchOutcome, StoreError> {
    let moved = conn
        .prepare_cached(
            "UPDATE projection_state SET checkpoint = ?5, events_applied = events_applied + ?6, \
             leased_until = ?7, updated_at = ?8 \
             WHERE name = ?1 AND version = ?2 AND partition = ?3 AND leased_by = ?4 \
               AND checkpoint = ?9 AND status = 'running'",
        )
        .map_err(map_sqlite)?
        .execute(params![
            batch.name,
            batch.version,
            batch.partition,
            batch.owner,
            batch.to.get() as i64,
            batch.events as i64,
            until,
            now,
            batch.from.get() as i64,
        ])
        .map_err(map_sqlite)?;
    if moved == 0 {
        return Ok(BatchOutcome::LeaseLost);
    }
    if !batch.outbox.is_empty() {
        crate::outbox::insert_rows(conn, now, &batch.outbox)?;
    }
    if batch.statements.is_empty() {
        return Ok(BatchOutcome::Committed);
    }
    let Some((tables, _)) = tables_of(conn, &batch.name, batch.version)? else {
        return Ok(BatchOutcome::LeaseLost);
    };
    for (index, statement) in batch.statements.iter().enumerate() {
        let sql = resolve_tables(&statement.sql, &tables, batch.version)?;
        let mut stmt = match conn.prepare_cached(&sql) {
            Ok(s) => s,
            Err(e) => {
                return Ok(BatchOutcome::StatementFailed {
                    index,
                    error: cut_error(&e.to_string()),
                })
            }
        };
        if let Err(error) = bind(&mut stmt, &statement.params) {
            return Ok(BatchOutcome::StatementFailed {
                index,
                error: cut_error(&error),
            });
        }
        if let Err(e) = stmt.raw_execute() {
            return Ok(BatchOutcome::StatementFailed {
                index,
                error: cut_error(&e.to_string()),
            });
        }
    }
    Ok(BatchOutcome::Committed)
}

/// The role of the newest live (not retired) generation of `name` running `code_version`.
fn newest_live(
    conn: &Connection,
    name: &str,
    code_version: u32,
) -> Result<Option<VersionRole>, StoreError> {
    let role: Option<String> = conn
        .prepare_cached(
            "SELECT role FROM projection_versions WHERE name = ?1 AND code_version = ?2 \
               AND role <> 'retired' ORDER BY version DESC LIMIT 1",
        )
        .map_err(map_sqlite)?
        .query_row(params![name, code_version], |r| r.get(0))
        .optional()
        .map_err(map_sqlite)?;
    role.map(|role| {
        VersionRole::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown version role {role:?}")))
    })
    .transpose()
}

fn register_in(conn: &Connection, now: i64, spec: &VersionSpec) -> Result<VersionRole, StoreError> {
    if let Some(role) = newest_live(conn, &spec.name, spec.version)? {
        return Ok(role);
    }
    let newest_code: Option<u32> = conn
        .prepare_cached("SELECT MAX(code_version) FROM projection_versions WHERE name = ?1")
        .map_err(map_sqlite)?
        .query_row(params![spec.name], |r| r.get(0))
        .map_err(map_sqlite)?;
    if let Some(max) = newest_code {
        if max >= spec.version {
            return Err(StoreError::InvalidArgument(format!(
                "projection {} has version {max} already; version {} is older",
                spec.name, spec.version
            )));
        }
    }
    let has_current: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM projection_versions WHERE name = ?1 AND role = 'current')",
        )
        .map_err(map_sqlite)?
        .query_row(params![spec.name], |r| r.get(0))
        .map_err(map_sqlite)?;
    let role = if has_current {
        VersionRole::Building
    } else {
        VersionRole::Current
    };
    create_generation(conn, now, spec, role)?;
    Ok(role)
}

/// Creates the next generation of `spec` (dropping a building one: it never served) with
/// its tables and state rows; returns its number.
fn create_generation(
    conn: &Connection,
    now: i64,
    spec: &VersionSpec,
    role: VersionRole,
) -> Result<u32, StoreError> {
    let stale: Vec<u32> = conn
        .prepare_cached(
            "SELECT version FROM projection_versions WHERE name = ?1 AND role = 'building'",
        )
        .map_err(map_sqlite)?
        .query_map(params![spec.name], |r| r.get(0))
        .map_err(map_sqlite)?
        .collect::<Result<_, _>>()
        .map_err(map_sqlite)?;
    let newest: Option<u32> = conn
        .prepare_cached("SELECT MAX(version) FROM projection_versions WHERE name = ?1")
        .map_err(map_sqlite)?
        .query_row(params![spec.name], |r| r.get(0))
        .map_err(map_sqlite)?;
    for v in stale {
        drop_in(conn, &spec.name, v)?;
    }
    let version = match newest {
        Some(n) => n
            .checked_add(1)
            .ok_or_else(|| {
                StoreError::InvalidArgument(format!(
                    "projection {} has no generation numbers left",
                    spec.name
                ))
            })?
            .max(spec.version),
        None => spec.version,
    };
    for sql in &spec.schema {
        let sql = resolve_tables(sql, &spec.tables, version)?;
        conn.execute_batch(&sql).map_err(|e| {
            StoreError::InvalidArgument(format!(
                "projection {} schema statement failed: {e}: {sql}",
                spec.name
            ))
        })?;
    }
    conn.prepare_cached(
        "INSERT INTO projection_versions (name, version, role, tables, partitions, created_at, switched_at, code_version, schema) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .map_err(map_sqlite)?
    .execute(params![
        spec.name,
        version,
        role.as_str(),
        serde_json::to_string(&spec.tables).expect("strings serialise"),
        spec.partitions,
        now,
        (role == VersionRole::Current).then_some(now),
        spec.version,
        serde_json::to_string(&spec.schema).expect("strings serialise"),
    ])
    .map_err(map_sqlite)?;
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO projection_state (name, version, partition, updated_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(map_sqlite)?;
    for p in 0..spec.partitions {
        insert
            .execute(params![spec.name, version, p, now])
            .map_err(map_sqlite)?;
    }
    if role == VersionRole::Current {
        replace_views(conn, &spec.tables, version)?;
    }
    Ok(version)
}

impl SqliteProjectionStore {
    /// Projection state on `store`'s file.
    pub fn new(store: SqliteStore) -> Self {
        SqliteProjectionStore {
            wake: crate::outbox::SqliteOutbox::new(store.clone()),
            store,
        }
    }

    /// The store.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }
}

#[async_trait]
impl ProjectionStore for SqliteProjectionStore {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn register(&self, spec: &VersionSpec) -> Result<VersionRole, StoreError> {
        validate_spec(spec)?;
        let spec = spec.clone();
        self.store
            .submit(0, keep_all, move |conn, ctx| {
                register_in(conn, ctx.now_micros, &spec)
            })
            .await
    }

    async fn rebuild(&self, name: &str) -> Result<RebuildStarted, StoreError> {
        validate_identifier("projection name", name)?;
        let name = name.to_string();
        self.store
            .submit(0, keep_all, move |conn, ctx| {
                if let Some(source) = topic::source_of(conn, &name)? {
                    return Err(runnel_core::projection::rebuild_refused(&source));
                }
                let building: Option<(u32, u32)> = conn
                    .prepare_cached(
                        "SELECT version, code_version FROM projection_versions \
                         WHERE name = ?1 AND role = 'building'",
                    )
                    .map_err(map_sqlite)?
                    .query_row(params![name], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(map_sqlite)?;
                if let Some((version, code_version)) = building {
                    return Ok(RebuildStarted {
                        version,
                        code_version,
                        created: false,
                    });
                }
                let current: Option<(u32, String, Option<String>, u32)> = conn
                    .prepare_cached(
                        "SELECT code_version, tables, schema, partitions FROM projection_versions \
                         WHERE name = ?1 AND role = 'current'",
                    )
                    .map_err(map_sqlite)?
                    .query_row(params![name], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })
                    .optional()
                    .map_err(map_sqlite)?;
                let Some((code_version, tables, schema, partitions)) = current else {
                    return Err(StoreError::InvalidArgument(format!(
                        "no projection named {name} is registered"
                    )));
                };
                let Some(schema) = schema else {
                    return Err(StoreError::InvalidArgument(format!(
                        "projection {name} was registered before schemas were kept: start its \
                         service once (it registers again), then rebuild"
                    )));
                };
                let spec = VersionSpec {
                    name: name.clone(),
                    version: code_version,
                    tables: serde_json::from_str(&tables)
                        .map_err(|e| StoreError::Corrupt(format!("projection tables: {e}")))?,
                    schema: serde_json::from_str(&schema)
                        .map_err(|e| StoreError::Corrupt(format!("projection schema: {e}")))?,
                    partitions,
                };
                let version =
                    create_generation(conn, ctx.now_micros, &spec, VersionRole::Building)?;
                Ok(RebuildStarted {
                    version,
                    code_version,
                    created: true,
                })
            })
            .await
    }

    async fn states(&self, name: Option<&str>) -> Result<Vec<ProjectionState>, StoreError> {
        let name = name.map(str::to_string);
        self.store
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {STATE_COLUMNS} FROM projection_state s JOIN projection_versions v \
                           ON v.name = s.name AND v.version = s.version \
                         WHERE ?1 IS NULL OR s.name = ?1 ORDER BY s.name, s.version, s.partition"
                    ))
                    .map_err(map_sqlite)?;
                let mut rows = stmt.query(params![name]).map_err(map_sqlite)?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(map_sqlite)? {
                    out.push(state_from_row(row)?);
                }
                Ok(out)
            })
            .await
    }

    async fn claim(
        &self,
        name: &str,
        version: u32,
        partition: u32,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<ProjectionState>, StoreError> {
        validate_identifier("projection name", name)?;
        let (name, owner) = (name.to_string(), owner.to_string());
        let now_micros = time_to_micros(now);
        let until = chrono::Duration::from_std(lease)
            .ok()
            .and_then(|lease| now.checked_add_signed(lease))
            .ok_or_else(|| {
                StoreError::InvalidArgument(format!(
                    "projection lease {lease:?} from {now} overflows"
                ))
            })?;
        let until = time_to_micros(until);
        self.store
            .submit(0, keep_all, move |conn, ctx| {
                let changed = conn
                    .prepare_cached(
                        "UPDATE projection_state SET leased_by = ?4, leased_until = ?5, updated_at = ?7 \
                         WHERE name = ?1 AND version = ?2 AND partition = ?3 \
                           AND (leased_by IS NULL OR leased_by = ?4 OR leased_until < ?6)",
                    )
                    .map_err(map_sqlite)?
                    .execute(params![name, version, partition, owner, until, now_micros, ctx.now_micros])
                    .map_err(map_sqlite)?;
                if changed == 0 {
                    return Ok(None);
                }
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {STATE_COLUMNS} FROM projection_state s JOIN projection_versions v \
                           ON v.name = s.name AND v.version = s.version \
                         WHERE s.name = ?1 AND s.version = ?2 AND s.partition = ?3"
                    ))
                    .map_err(map_sqlite)?;
                let mut rows = stmt.query(params![name, version, partition]).map_err(map_sqlite)?;
                match rows.next().map_err(map_sqlite)? {
                    Some(row) => Ok(Some(state_from_row(row)?)),
                    None => Ok(None),
                }
            })
            .await
    }

    async fn release(
        &self,
        name: &str,
        version: u32,
        partition: u32,
        owner: &str,
    ) -> Result<(), StoreError> {
        let (name, owner) = (name.to_string(), owner.to_string());
        self.store
            .submit(0, keep_all, move |conn, _| {
                conn.prepare_cached(
                    "UPDATE projection_state SET leased_by = NULL, leased_until = NULL \
                     WHERE name = ?1 AND version = ?2 AND partition = ?3 AND leased_by = ?4",
                )
                .map_err(map_sqlite)?
                .execute(params![name, version, partition, owner])
                .map_err(map_sqlite)?;
                Ok(())
            })
            .await
    }

    async fn commit_batch(
        &self,
        batch: Batch,
        lease_until: DateTime<Utc>,
    ) -> Result<BatchOutcome, StoreError> {
        validate_identifier("projection name", &batch.name)?;
        if batch.statements.len() > BATCH_STATEMENTS_MAX {
            return Err(StoreError::InvalidArgument(format!(
                "a batch carries {} statements; at most {BATCH_STATEMENTS_MAX}",
                batch.statements.len()
            )));
        }
        runnel_core::outbox::validate_enqueue(
            &batch.outbox,
            runnel_core::message::MESSAGE_PAYLOAD_MAX_DEFAULT,
        )?;
        let sends = !batch.outbox.is_empty();
        let until = time_to_micros(lease_until);
        let outcome = self
            .store
            .submit(
                0,
                |o: &BatchOutcome| *o == BatchOutcome::Committed,
                move |conn, ctx| commit_in(conn, ctx.now_micros, &batch, until),
            )
            .await?;
        if sends && outcome == BatchOutcome::Committed {
            self.wake.wake_relays();
        }
        Ok(outcome)
    }

    async fn set_status(
        &self,
        name: &str,
        version: u32,
        partition: Option<u32>,
        status: ProjectionStatus,
        error: Option<(Position, String)>,
    ) -> Result<u64, StoreError> {
        let name = name.to_string();
        self.store
            .submit(0, keep_all, move |conn, ctx| {
                let (failed, text) = match &error {
                    Some((p, e)) => (Some(p.get() as i64), Some(cut_error(e))),
                    None => (None, None),
                };
                let changed = conn
                    .prepare_cached(
                        "UPDATE projection_state SET status = ?4, failed_position = ?5, \
                         last_error = COALESCE(?6, CASE WHEN ?4 = 'running' THEN NULL ELSE last_error END), \
                         updated_at = ?7 \
                         WHERE name = ?1 AND version = ?2 AND (?3 IS NULL OR partition = ?3)",
                    )
                    .map_err(map_sqlite)?
                    .execute(params![name, version, partition, status.as_str(), failed, text, ctx.now_micros])
                    .map_err(map_sqlite)?;
                Ok(changed as u64)
            })
            .await
    }

    async fn skip_failed(
        &self,
        name: &str,
        version: u32,
        partition: u32,
    ) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.store
            .submit(0, keep_all, move |conn, ctx| {
                let changed = conn
                    .prepare_cached(
                        "UPDATE projection_state SET checkpoint = failed_position, status = 'running', \
                         failed_position = NULL, last_error = NULL, updated_at = ?4 \
                         WHERE name = ?1 AND version = ?2 AND partition = ?3 AND status = 'faulted' \
                           AND failed_position IS NOT NULL",
                    )
                    .map_err(map_sqlite)?
                    .execute(params![name, version, partition, ctx.now_micros])
                    .map_err(map_sqlite)?;
                Ok(changed == 1)
            })
            .await
    }

    async fn switch(&self, name: &str, version: u32) -> Result<(), StoreError> {
        validate_identifier("projection name", name)?;
        let name = name.to_string();
        self.store
            .submit(0, keep_all, move |conn, ctx| {
                let Some((tables, role)) = tables_of(conn, &name, version)? else {
                    return Err(StoreError::InvalidArgument(format!(
                        "projection {name} has no version {version}"
                    )));
                };
                if role == VersionRole::Current {
                    return Ok(());
                }
                if role == VersionRole::Retired {
                    return Err(StoreError::InvalidArgument(format!(
                        "version {version} of projection {name} is retired; rebuild with a new version"
                    )));
                }
                let previous: Option<String> = conn
                    .prepare_cached(
                        "SELECT tables FROM projection_versions WHERE name = ?1 AND role = 'current'",
                    )
                    .map_err(map_sqlite)?
                    .query_row(params![name], |r| r.get(0))
                    .optional()
                    .map_err(map_sqlite)?;
                conn.prepare_cached(
                    "UPDATE projection_versions SET role = 'retired' WHERE name = ?1 AND role = 'current'",
                )
                .map_err(map_sqlite)?
                .execute(params![name])
                .map_err(map_sqlite)?;
                conn.prepare_cached(
                    "UPDATE projection_versions SET role = 'current', switched_at = ?3 WHERE name = ?1 AND version = ?2",
                )
                .map_err(map_sqlite)?
                .execute(params![name, version, ctx.now_micros])
                .map_err(map_sqlite)?;
                replace_views(conn, &tables, version)?;
                // A table the new version does not own has no current version: its view
                // goes, or the plain name would keep showing the retired version.
                if let Some(previous) = previous {
                    let previous: Vec<String> = serde_json::from_str(&previous)
                        .map_err(|e| StoreError::Corrupt(format!("projection tables: {e}")))?;
                    for t in previous.iter().filter(|t| !tables.contains(t)) {
                        conn.execute_batch(&format!("DROP VIEW IF EXISTS {t}"))
                            .map_err(map_sqlite)?;
                    }
                }
                Ok(())
            })
            .await
    }

    async fn drop_version(&self, name: &str, version: u32) -> Result<(), StoreError> {
        validate_identifier("projection name", name)?;
        let name = name.to_string();
        self.store
            .submit(0, keep_all, move |conn, _| {
                match tables_of(conn, &name, version)? {
                    None => Err(StoreError::InvalidArgument(format!(
                        "projection {name} has no version {version}"
                    ))),
                    Some((_, VersionRole::Current)) => Err(StoreError::InvalidArgument(format!(
                        "version {version} of projection {name} is current; switch to another first"
                    ))),
                    Some(_) => drop_in(conn, &name, version),
                }
            })
            .await
    }

    async fn set_topic_source(&self, source: &TopicSource) -> Result<(), StoreError> {
        self.set_topic_source_impl(source).await
    }

    async fn topic_sources(&self, name: Option<&str>) -> Result<Vec<TopicSource>, StoreError> {
        self.topic_sources_impl(name).await
    }

    async fn commit_message(&self, commit: MessageCommit) -> Result<MessageOutcome, StoreError> {
        self.commit_message_impl(commit).await
    }
}

fn drop_in(conn: &Connection, name: &str, version: u32) -> Result<(), StoreError> {
    if let Some((tables, _)) = tables_of(conn, name, version)? {
        for t in tables {
            conn.execute_batch(&format!(
                "DROP TABLE IF EXISTS {}",
                versioned_table(&t, version)
            ))
            .map_err(map_sqlite)?;
        }
    }
    for sql in [
        "DELETE FROM projection_state WHERE name = ?1 AND version = ?2",
        "DELETE FROM projection_versions WHERE name = ?1 AND version = ?2",
    ] {
        conn.prepare_cached(sql)
            .map_err(map_sqlite)?
            .execute(params![name, version])
            .map_err(map_sqlite)?;
    }
    Ok(())
}

/// Applies the inline projections to an append, inside its transaction: every live,
/// running, unpartitioned generation of each projection's code version that has applied
/// everything before the append gets its statements and its checkpoint moved to the
/// append's last position (see [`InlineProjection`]).
pub(crate) fn apply_inline(
    conn: &Connection,
    now: i64,
    inline: &[Arc<dyn InlineProjection>],
    stream: &StreamName,
    first_revision: u64,
    last_position: i64,
    events: &[NewEvent],
) -> Result<(), StoreError> {
    let first_position = last_position - events.len() as i64 + 1;
    let category = stream.category();
    for projection in inline {
        let generations: Vec<(u32, String)> = conn
            .prepare_cached(
                "SELECT s.version, v.tables FROM projection_versions v \
                 JOIN projection_state s ON s.name = v.name AND s.version = v.version \
                 WHERE v.name = ?1 AND v.code_version = ?2 AND v.role <> 'retired' \
                   AND v.partitions = 1 AND s.status = 'running' AND s.checkpoint = ?3",
            )
            .map_err(map_sqlite)?
            .query_map(
                params![
                    projection.name(),
                    projection.code_version(),
                    first_position - 1
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(map_sqlite)?
            .collect::<Result<_, _>>()
            .map_err(map_sqlite)?;
        if generations.is_empty() {
            continue;
        }
        // The statements of each wanted event, derived once for every generation.
        let mut statements: Vec<(usize, Vec<runnel_core::projection::Statement>)> = Vec::new();
        for (i, event) in events.iter().enumerate() {
            if !projection.wants(category, &event.event_type) {
                continue;
            }
            let recorded = RecordedEvent {
                id: event.id,
                stream: stream.clone(),
                revision: first_revision + i as u64,
                position: Position((first_position + i as i64) as u64),
                recorded_at: micros_to_time(now)?,
                event_type: event.event_type.clone(),
                schema_version: event.schema_version,
                content_type: event.content_type.clone(),
                data: event.data.clone(),
                metadata: event.metadata.clone(),
            };
            let made = projection
                .statements(&recorded)
                .map_err(|reason| inline_failed(projection.name(), event, cut_error(&reason)))?;
            statements.push((i, made));
        }
        for (version, tables) in generations {
            let tables: Vec<String> = serde_json::from_str(&tables)
                .map_err(|e| StoreError::Corrupt(format!("projection tables: {e}")))?;
            for (i, made) in &statements {
                for statement in made {
                    let sql = resolve_tables(&statement.sql, &tables, version).map_err(|e| {
                        inline_failed(projection.name(), &events[*i], e.to_string())
                    })?;
                    let fail = |error: String| inline_failed(projection.name(), &events[*i], error);
                    let mut stmt = conn
                        .prepare_cached(&sql)
                        .map_err(|e| fail(cut_error(&e.to_string())))?;
                    bind(&mut stmt, &statement.params).map_err(|e| fail(cut_error(&e)))?;
                    stmt.raw_execute()
                        .map_err(|e| fail(cut_error(&e.to_string())))?;
                }
            }
            conn.prepare_cached(
                "UPDATE projection_state SET checkpoint = ?3, \
                 events_applied = events_applied + ?4, updated_at = ?5 \
                 WHERE name = ?1 AND version = ?2 AND partition = 0",
            )
            .map_err(map_sqlite)?
            .execute(params![
                projection.name(),
                version,
                last_position,
                statements.len() as i64,
                now
            ])
            .map_err(map_sqlite)?;
        }
    }
    Ok(())
}

fn inline_failed(projection: &str, event: &NewEvent, reason: String) -> StoreError {
    StoreError::InlineProjectionFailed(Box::new(runnel_core::InlineFailure {
        projection: projection.to_string(),
        event_id: event.id,
        event_type: event.event_type.clone(),
        reason,
    }))
}

fn state_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<runnel_core::projection::StateRow> {
    Ok(runnel_core::projection::StateRow {
        key: row.get(0)?,
        value: row.get(1)?,
        due: row.get(2)?,
    })
}

#[async_trait]
impl runnel_core::projection::StateRows for SqliteProjectionStore {
    async fn get_rows(
        &self,
        name: &str,
        version: u32,
        table: &str,
        keys: &[String],
    ) -> Result<Vec<runnel_core::projection::StateRow>, StoreError> {
        runnel_core::projection::validate_state_read(name, table, keys.len())?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let table = runnel_core::projection::versioned_table(table, version);
        let keys = keys.to_vec();
        self.store
            .read_with(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!("SELECT k, v, due FROM \"{table}\" WHERE k = ?1"))
                    .map_err(map_sqlite)?;
                let mut out = Vec::new();
                for k in &keys {
                    if let Some(row) = stmt
                        .query_row([k], state_row)
                        .optional()
                        .map_err(map_sqlite)?
                    {
                        out.push(row);
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn due_rows(
        &self,
        name: &str,
        version: u32,
        table: &str,
        before: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<runnel_core::projection::StateRow>, StoreError> {
        runnel_core::projection::validate_state_read(name, table, limit)?;
        let table = runnel_core::projection::versioned_table(table, version);
        let (after_due, after_key) = after.unwrap_or((i64::MIN, String::new()));
        self.store
            .read_with(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT k, v, due FROM \"{table}\" WHERE due IS NOT NULL AND due <= ?1 \
                           AND (due > ?2 OR (due = ?2 AND k > ?3)) ORDER BY due, k LIMIT ?4"
                    ))
                    .map_err(map_sqlite)?;
                let rows = stmt
                    .query_map(
                        params![before, after_due, after_key, limit as i64],
                        state_row,
                    )
                    .map_err(map_sqlite)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(map_sqlite)
            })
            .await
    }

    async fn prefix_rows(
        &self,
        name: &str,
        version: u32,
        table: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<runnel_core::projection::StateRow>, StoreError> {
        runnel_core::projection::validate_state_read(name, table, limit)?;
        let table = runnel_core::projection::versioned_table(table, version);
        let from = prefix.to_string();
        let to = runnel_core::projection::prefix_end(prefix);
        self.store
            .read_with(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT k, v, due FROM \"{table}\" WHERE k >= ?1 AND (?2 IS NULL OR k < ?2) \
                         ORDER BY k LIMIT ?3"
                    ))
                    .map_err(map_sqlite)?;
                let rows = stmt
                    .query_map(params![from, to, limit as i64], state_row)
                    .map_err(map_sqlite)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(map_sqlite)
            })
            .await
    }

    async fn table_size(
        &self,
        name: &str,
        version: u32,
        table: &str,
    ) -> Result<(u64, u64), StoreError> {
        runnel_core::projection::validate_state_read(name, table, 0)?;
        let table = runnel_core::projection::versioned_table(table, version);
        self.store
            .read_with(move |conn| {
                conn.query_row(
                    &format!(
                        "SELECT count(*), coalesce(sum(length(k) + length(v)), 0) FROM \"{table}\""
                    ),
                    [],
                    |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
                )
                .map_err(map_sqlite)
            })
            .await
    }
}
