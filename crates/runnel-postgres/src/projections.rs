//! [`ProjectionStore`] on PostgreSQL: versions, checkpoints and leases in the tables of
//! migration 10, the read models (`{table}_v{version}` tables and `{table}` views) in the
//! store's schema beside them. A batch is one transaction: the UPDATE of its partition's
//! state row (which checks lease, checkpoint and status, and takes the row lock that
//! orders committers), its outbox rows, then its statements. Registering, switching and
//! dropping versions of one projection serialize on a transaction advisory lock. See the
//! crate's DESIGN.md, "Projections".

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::message::MESSAGE_PAYLOAD_MAX_DEFAULT;
use runnel_core::outbox::validate_enqueue;
use runnel_core::projection::{
    cut_error, resolve_tables, validate_identifier, validate_spec, versioned_table, Batch,
    BatchOutcome, Dialect, MessageCommit, MessageOutcome, ProjectionState, ProjectionStatus,
    ProjectionStore, RebuildStarted, SqlValue, TopicSource, VersionRole, VersionSpec,
    BATCH_STATEMENTS_MAX,
};
use runnel_core::projection::{InlineProjection, Statement};
use runnel_core::{Clock, Position, RecordedEvent, StoreError, SystemClock};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgArguments, PgRow, PgTypeInfo};
use sqlx::{
    Arguments, AssertSqlSafe, Either, Encode, Executor, PgConnection, Postgres, Row, SqlSafeStr,
    Statement as _, Type,
};

use crate::error_map::map_sqlx;
use crate::outbox::{insert_rows, outbox_names};
use crate::store::{lock_key, PostgresStore};

mod topic;

/// Projection state and read models in a [`PostgresStore`]'s schema (its tables are
/// created by the store's migrations). Cheap to clone; clones share the store's pool.
///
/// ```no_run
/// # async fn demo(store: runnel_postgres::PostgresStore) -> Result<(), runnel_core::StoreError> {
/// use runnel_core::projection::*;
/// use runnel_core::Position;
/// use runnel_postgres::PostgresProjectionStore;
///
/// let projections = PostgresProjectionStore::new(store);
/// projections
///     .register(&VersionSpec {
///         name: "order_totals".into(),
///         version: 1,
///         tables: vec!["order_totals".into()],
///         schema: vec!["CREATE TABLE {order_totals} (id text PRIMARY KEY, total bigint)".into()],
///         partitions: 1,
///     })
///     .await?;
/// let now = chrono::Utc::now();
/// let lease = std::time::Duration::from_secs(5);
/// if projections.claim("order_totals", 1, 0, "me", now, lease).await?.is_some() {
///     let outcome = projections
///         .commit_batch(
///             Batch {
///                 name: "order_totals".into(),
///                 version: 1,
///                 partition: 0,
///                 owner: "me".into(),
///                 from: Position::START,
///                 to: Position(1),
///                 events: 1,
///                 statements: vec![Statement {
///                     sql: "INSERT INTO {order_totals} (id, total) VALUES ($1, $2)".into(),
///                     params: vec!["Order-1".into(), 42.into()],
///                 }],
///                 outbox: vec![],
///             },
///             now + chrono::Duration::seconds(5),
///         )
///         .await?;
///     assert_eq!(outcome, BatchOutcome::Committed);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresProjectionStore {
    store: PostgresStore,
    names: Arc<Names>,
    clock: Arc<dyn Clock>,
}

/// The schema and the qualified names of the tables the store writes.
struct Names {
    schema: String,
    versions: String,
    state: String,
    outbox: String,
    outbox_channel: String,
}

impl Names {
    /// `"schema"."name"`: a read-model table or view. Names are `[a-z0-9_]` (checked by
    /// `validate_identifier`), so quoting only keeps SQL keywords (`order`) usable.
    fn qualified(&self, name: &str) -> String {
        debug_assert!(name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        format!("\"{}\".\"{name}\"", self.schema)
    }
}

impl std::fmt::Debug for PostgresProjectionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresProjectionStore")
            .field("schema", &self.names.schema)
            .finish_non_exhaustive()
    }
}

const STATE_COLUMNS: &str = "s.name, s.version, s.partition, v.partitions, v.role, s.checkpoint, \
     s.status, s.last_error, s.failed_position, s.events_applied, s.leased_by, s.leased_until, \
     s.updated_at, v.code_version";

fn state_from_row(row: &PgRow) -> Result<ProjectionState, StoreError> {
    let bad = |e: sqlx::Error| StoreError::Corrupt(format!("unreadable projection row: {e}"));
    let number = |value: i64, what: &str| {
        u32::try_from(value)
            .map_err(|_| StoreError::Corrupt(format!("projection {what} {value} is out of range")))
    };
    let role: String = row.try_get(4).map_err(bad)?;
    let status: String = row.try_get(6).map_err(bad)?;
    let failed: Option<i64> = row.try_get(8).map_err(bad)?;
    let owner: Option<String> = row.try_get(10).map_err(bad)?;
    let until: Option<DateTime<Utc>> = row.try_get(11).map_err(bad)?;
    Ok(ProjectionState {
        name: row.try_get(0).map_err(bad)?,
        version: number(row.try_get(1).map_err(bad)?, "version")?,
        partition: number(
            i64::from(row.try_get::<i32, _>(2).map_err(bad)?),
            "partition",
        )?,
        partitions: number(
            i64::from(row.try_get::<i32, _>(3).map_err(bad)?),
            "partitions",
        )?,
        role: VersionRole::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown version role {role:?}")))?,
        checkpoint: Position(row.try_get::<i64, _>(5).map_err(bad)? as u64),
        status: ProjectionStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown projection status {status:?}")))?,
        last_error: row.try_get(7).map_err(bad)?,
        failed_position: failed.map(|p| Position(p as u64)),
        events_applied: row.try_get::<i64, _>(9).map_err(bad)? as u64,
        lease: owner.zip(until),
        updated_at: row.try_get(12).map_err(bad)?,
        code_version: number(row.try_get(13).map_err(bad)?, "code version")?,
    })
}

/// The text of an error a statement of the projection's own SQL raised (`Ok`: the
/// statement failed, the batch is `StatementFailed` or the schema refused), or the store
/// error to return as such (`Err`: the connection, a timeout, a deadlock — worth a retry,
/// not a fault).
fn user_sql_error(e: sqlx::Error) -> Result<String, StoreError> {
    match map_sqlx(e) {
        StoreError::Backend(text) | StoreError::PermissionDenied(text) => Ok(text),
        other => Err(other),
    }
}

/// Error text as stored: cut to length, without NUL (which `text` cannot hold).
fn stored_error(text: &str) -> String {
    cut_error(&text.replace('\0', "\u{fffd}"))
}

/// A u32 (version, partition) as the bigint it is bound as.
fn big(v: u32) -> i64 {
    i64::from(v)
}

fn small(v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v)
        .map_err(|_| StoreError::Corrupt(format!("projection {what} {v} is out of range")))
}

// ---------------------------------------------------------------------------------------
// Statement parameters
// ---------------------------------------------------------------------------------------

/// A parameter whose type PostgreSQL infers from where it stands (OID 0 in the Parse
/// message): NULL is bound this way, so it fits a column of any type (`bigint`, `bytea`,
/// `jsonb`…), where a NULL typed as `text` would not.
fn inferred() -> PgTypeInfo {
    PgTypeInfo::with_oid(Oid(0))
}

/// The type one [`SqlValue`] is bound as: Int `int8`, Real `float8`, Text `text`, Blob
/// `bytea`, Null inferred.
fn type_of(value: &SqlValue) -> PgTypeInfo {
    match value {
        SqlValue::Null => inferred(),
        SqlValue::Int(_) => <i64 as Type<Postgres>>::type_info(),
        SqlValue::Real(_) => <f64 as Type<Postgres>>::type_info(),
        SqlValue::Text(_) => <str as Type<Postgres>>::type_info(),
        SqlValue::Blob(_) => <[u8] as Type<Postgres>>::type_info(),
    }
}

/// One [`SqlValue`] as a bind parameter, of the type [`type_of`] says.
struct Param<'a>(&'a SqlValue);

impl Type<Postgres> for Param<'_> {
    fn type_info() -> PgTypeInfo {
        inferred()
    }
}

impl Encode<'_, Postgres> for Param<'_> {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        match self.0 {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Int(v) => <i64 as Encode<Postgres>>::encode_by_ref(v, buf),
            SqlValue::Real(v) => <f64 as Encode<Postgres>>::encode_by_ref(v, buf),
            SqlValue::Text(v) => <&str as Encode<Postgres>>::encode_by_ref(&v.as_str(), buf),
            SqlValue::Blob(v) => <&[u8] as Encode<Postgres>>::encode_by_ref(&v.as_slice(), buf),
        }
    }

    fn produces(&self) -> Option<PgTypeInfo> {
        Some(type_of(self.0))
    }
}

/// `sql` prefixed with a comment naming its parameters' kinds (`/* runnel:tin */`). sqlx
/// caches prepared statements by their text, and PostgreSQL fixed each parameter's type
/// when it prepared one: the same text bound once with NULL (inferred, say, `integer`)
/// and once with an Int (sent as 8-byte `int8`), or once with a Real and once with an
/// Int, would send values the statement reads as another type. One text per combination
/// of kinds gives each its own prepared statement.
fn keyed_sql(sql: &str, params: &[SqlValue]) -> String {
    if params.is_empty() {
        return sql.to_string();
    }
    let kinds: String = params
        .iter()
        .map(|p| match p {
            SqlValue::Null => 'n',
            SqlValue::Int(_) => 'i',
            SqlValue::Real(_) => 'r',
            SqlValue::Text(_) => 't',
            SqlValue::Blob(_) => 'b',
        })
        .collect();
    format!("/* runnel:{kinds} */ {sql}")
}

/// Runs `batch`'s statements on `conn`, inside its open transaction, with the schema
/// first on the `search_path`. `Some((index, error))`: that statement failed, and the
/// caller must roll back.
async fn run_statements(
    conn: &mut PgConnection,
    batch: &Batch,
    tables: &[String],
) -> Result<Option<(usize, String)>, StoreError> {
    run_statement_list(conn, &batch.statements, batch.version, tables).await
}

/// Runs `statements` against generation `version`'s `tables`; the first that fails is
/// returned with its error text (`Ok(Some)`), a connection failure is an `Err`.
async fn run_statement_list(
    conn: &mut PgConnection,
    statements: &[Statement],
    version: u32,
    tables: &[String],
) -> Result<Option<(usize, String)>, StoreError> {
    for (index, statement) in statements.iter().enumerate() {
        let sql = keyed_sql(
            &resolve_tables(&statement.sql, tables, version)?,
            &statement.params,
        );
        let types: Vec<PgTypeInfo> = statement.params.iter().map(type_of).collect();
        // Prepared first (cached: one round trip the first time this connection sees the
        // text, none after) to compare its parameters with those given: PostgreSQL would
        // answer a Bind with too few values with a protocol error, not a statement error.
        let prepared = match (&mut *conn)
            .prepare_with(AssertSqlSafe(sql.clone()).into_sql_str(), &types)
            .await
        {
            Ok(prepared) => prepared,
            Err(e) => return Ok(Some((index, user_sql_error(e)?))),
        };
        let wanted = match prepared.parameters() {
            Some(Either::Left(types)) => types.len(),
            Some(Either::Right(count)) => count,
            None => statement.params.len(),
        };
        if wanted != statement.params.len() {
            return Ok(Some((
                index,
                format!(
                    "the statement has {wanted} parameters but {} were given",
                    statement.params.len()
                ),
            )));
        }
        let mut args = PgArguments::default();
        for value in &statement.params {
            args.add(Param(value)).map_err(|e| {
                StoreError::InvalidArgument(format!("cannot bind a projection parameter: {e}"))
            })?;
        }
        if let Err(e) = sqlx::query_with(AssertSqlSafe(sql), args)
            .execute(&mut *conn)
            .await
        {
            return Ok(Some((index, user_sql_error(e)?)));
        }
    }
    Ok(None)
}

impl PostgresProjectionStore {
    /// Projection state in `store`'s schema, with the system clock for the times it
    /// records.
    pub fn new(store: PostgresStore) -> Self {
        let schema = store.schema().to_string();
        let (outbox, outbox_channel) = outbox_names(&schema);
        PostgresProjectionStore {
            names: Arc::new(Names {
                versions: format!("{schema}.projection_versions"),
                state: format!("{schema}.projection_state"),
                outbox,
                outbox_channel,
                schema,
            }),
            store,
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses `clock` for the times state rows and outbox rows record. Lease checks use the
    /// `now` each call is given, never this clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The store.
    pub fn store(&self) -> &PostgresStore {
        &self.store
    }

    /// Waits for, then holds until the transaction ends, the lock that serializes
    /// registering, switching and dropping versions of `name` (across processes).
    async fn lock(&self, conn: &mut PgConnection, name: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key(&self.names.schema, &format!("projection/{name}")))
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        Ok(())
    }

    /// Puts the schema first on the `search_path` until the transaction ends (as
    /// `commit_batch` does in its first statement), so the
    /// versioned names `{table}` resolves to (`orders_v2`) are the schema's tables — in
    /// `CREATE TABLE`, in `CREATE INDEX {orders}_by_total ON {orders}` (an index name
    /// cannot be qualified), in every statement. `pg_temp` comes next, so a temporary
    /// table cannot hide them; the session's own path follows, for the application's
    /// other tables and functions.
    async fn use_schema(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(format!("SELECT {}", set_search_path(1))))
            .bind(format!("\"{}\"", self.names.schema))
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        Ok(())
    }

    /// The tables and role of a version.
    /// Creates the next generation of `spec` in the caller's transaction (dropping a
    /// building one: it never served) with its tables and state rows; returns its number.
    async fn create_generation(
        &self,
        tx: &mut PgConnection,
        spec: &VersionSpec,
        role: VersionRole,
    ) -> Result<u32, StoreError> {
        let names = &*self.names;
        let now = self.clock.now();
        let stale: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT version FROM {} WHERE name = $1 AND role = 'building'",
            names.versions
        )))
        .bind(&spec.name)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        let newest: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT max(version) FROM {} WHERE name = $1",
            names.versions
        )))
        .bind(&spec.name)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        for version in stale {
            self.drop_in(tx, &spec.name, small(version, "version")?)
                .await?;
        }
        let version = match newest {
            Some(n) => small(n, "version")?
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
        self.use_schema(tx).await?;
        for sql in &spec.schema {
            let sql = resolve_tables(sql, &spec.tables, version)?;
            sqlx::raw_sql(AssertSqlSafe(sql.clone()))
                .execute(&mut *tx)
                .await
                .map_err(|e| match user_sql_error(e) {
                    Ok(text) => StoreError::InvalidArgument(format!(
                        "projection {} schema statement failed: {text}: {sql}",
                        spec.name
                    )),
                    Err(e) => e,
                })?;
        }
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (name, version, role, tables, partitions, created_at, switched_at, \
               code_version, schema) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            names.versions
        )))
        .bind(&spec.name)
        .bind(big(version))
        .bind(role.as_str())
        .bind(&spec.tables)
        .bind(spec.partitions as i32)
        .bind(now)
        .bind((role == VersionRole::Current).then_some(now))
        .bind(big(spec.version))
        .bind(&spec.schema)
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (name, version, partition, updated_at) \
             SELECT $1, $2, p, $3 FROM generate_series(0, $4 - 1) AS p",
            names.state
        )))
        .bind(&spec.name)
        .bind(big(version))
        .bind(now)
        .bind(spec.partitions as i32)
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        if role == VersionRole::Current {
            self.replace_views(tx, &spec.tables, version).await?;
        }
        Ok(version)
    }

    async fn version_in(
        &self,
        conn: &mut PgConnection,
        name: &str,
        version: u32,
    ) -> Result<Option<(Vec<String>, VersionRole)>, StoreError> {
        let row: Option<(Vec<String>, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT tables, role FROM {} WHERE name = $1 AND version = $2",
            self.names.versions
        )))
        .bind(name)
        .bind(big(version))
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        row.map(|(tables, role)| {
            let role = VersionRole::parse(&role)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown version role {role:?}")))?;
            Ok((tables, role))
        })
        .transpose()
    }

    /// Points the plain table names at `version`'s tables. A view's columns cannot change
    /// with `CREATE OR REPLACE`, and versions may differ in columns: drop, then create, in
    /// the caller's transaction (readers see the old view or the new one, never none).
    async fn replace_views(
        &self,
        conn: &mut PgConnection,
        tables: &[String],
        version: u32,
    ) -> Result<(), StoreError> {
        for t in tables {
            let view = self.names.qualified(t);
            let table = self.names.qualified(&versioned_table(t, version));
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP VIEW IF EXISTS {view}; CREATE VIEW {view} AS SELECT * FROM {table}"
            )))
            .execute(&mut *conn)
            .await
            .map_err(|e| match user_sql_error(e) {
                Ok(text) => StoreError::InvalidArgument(format!(
                    "cannot make view {t} (is there a table of that name already?): {text}"
                )),
                Err(e) => e,
            })?;
        }
        Ok(())
    }

    /// Deletes a version's state rows and version row, then drops its tables. State rows
    /// first: their row locks wait for a batch of the version in flight, which would
    /// otherwise hold its tables against the DROP while the DROP's lock on them blocks it
    /// (a deadlock).
    async fn drop_in(
        &self,
        conn: &mut PgConnection,
        name: &str,
        version: u32,
    ) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE name = $1 AND version = $2",
            self.names.state
        )))
        .bind(name)
        .bind(big(version))
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        let tables: Option<Vec<String>> = sqlx::query_scalar(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE name = $1 AND version = $2 RETURNING tables",
            self.names.versions
        )))
        .bind(name)
        .bind(big(version))
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        if let Some(tables) = tables.filter(|t| !t.is_empty()) {
            // One statement: tables of the version referencing each other go together.
            let list: Vec<String> = tables
                .iter()
                .map(|t| self.names.qualified(&versioned_table(t, version)))
                .collect();
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS {}",
                list.join(", ")
            )))
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        }
        Ok(())
    }
}

/// Sets the `search_path` until the transaction ends to the quoted schema in `$n`, then
/// `pg_temp`, then the session's own path. `{n}` is the parameter's number.
fn set_search_path(n: usize) -> String {
    format!(
        "set_config('search_path', concat_ws(', ', ${n}::text, 'pg_temp', \
         nullif(current_setting('search_path'), '')), true)"
    )
}

#[async_trait]
impl ProjectionStore for PostgresProjectionStore {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn register(&self, spec: &VersionSpec) -> Result<VersionRole, StoreError> {
        validate_spec(spec)?;
        let names = &*self.names;
        let mut tx = self.store.pool().begin().await.map_err(map_sqlx)?;
        self.lock(&mut tx, &spec.name).await?;
        let live: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT role FROM {} WHERE name = $1 AND code_version = $2 AND role <> 'retired' \
             ORDER BY version DESC LIMIT 1",
            names.versions
        )))
        .bind(&spec.name)
        .bind(big(spec.version))
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        if let Some(role) = live {
            tx.commit().await.map_err(map_sqlx)?;
            return VersionRole::parse(&role)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown version role {role:?}")));
        }
        let (newest, has_current): (Option<i64>, Option<bool>) =
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT max(code_version), bool_or(role = 'current') FROM {} WHERE name = $1",
                names.versions
            )))
            .bind(&spec.name)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        if let Some(newest) = newest.filter(|v| *v >= big(spec.version)) {
            return Err(StoreError::InvalidArgument(format!(
                "projection {} has version {newest} already; version {} is older",
                spec.name, spec.version
            )));
        }
        let role = if has_current == Some(true) {
            VersionRole::Building
        } else {
            VersionRole::Current
        };
        self.create_generation(&mut tx, spec, role).await?;
        tx.commit().await.map_err(map_sqlx)?;
        Ok(role)
    }

    async fn rebuild(&self, name: &str) -> Result<RebuildStarted, StoreError> {
        validate_identifier("projection name", name)?;
        let names = &*self.names;
        let mut tx = self.store.pool().begin().await.map_err(map_sqlx)?;
        self.lock(&mut tx, name).await?;
        if let Some(source) = self.source_in(&mut tx, name).await? {
            return Err(runnel_core::projection::rebuild_refused(&source));
        }
        let building: Option<(i64, Option<i64>)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT version, code_version FROM {} WHERE name = $1 AND role = 'building'",
            names.versions
        )))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        if let Some((version, code_version)) = building {
            tx.commit().await.map_err(map_sqlx)?;
            return Ok(RebuildStarted {
                version: small(version, "version")?,
                code_version: small(code_version.unwrap_or(version), "code version")?,
                created: false,
            });
        }
        type Current = (Option<i64>, i64, Vec<String>, Option<Vec<String>>, i32);
        let current: Option<Current> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT code_version, version, tables, schema, partitions FROM {} \
             WHERE name = $1 AND role = 'current'",
            names.versions
        )))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        let Some((code_version, version, tables, schema, partitions)) = current else {
            return Err(StoreError::InvalidArgument(format!(
                "no projection named {name} is registered"
            )));
        };
        let Some(schema) = schema else {
            return Err(StoreError::InvalidArgument(format!(
                "projection {name} was registered before schemas were kept: start its service \
                 once (it registers again), then rebuild"
            )));
        };
        let code_version = small(code_version.unwrap_or(version), "code version")?;
        let spec = VersionSpec {
            name: name.to_string(),
            version: code_version,
            tables,
            schema,
            partitions: u32::try_from(partitions).map_err(|_| {
                StoreError::Corrupt(format!("projection partitions {partitions} out of range"))
            })?,
        };
        let version = self
            .create_generation(&mut tx, &spec, VersionRole::Building)
            .await?;
        tx.commit().await.map_err(map_sqlx)?;
        Ok(RebuildStarted {
            version,
            code_version,
            created: true,
        })
    }

    async fn states(&self, name: Option<&str>) -> Result<Vec<ProjectionState>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {STATE_COLUMNS} FROM {} s JOIN {} v ON v.name = s.name AND v.version = s.version \
             WHERE $1::text IS NULL OR s.name = $1 ORDER BY s.name, s.version, s.partition",
            self.names.state, self.names.versions
        )))
        .bind(name)
        .fetch_all(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        rows.iter().map(state_from_row).collect()
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
        let until = chrono::Duration::from_std(lease)
            .ok()
            .and_then(|lease| now.checked_add_signed(lease))
            .ok_or_else(|| {
                StoreError::InvalidArgument(format!(
                    "projection lease {lease:?} from {now} overflows"
                ))
            })?;
        // Two claimers at once: the second waits on the row lock, then READ COMMITTED
        // re-checks the lease condition on the first's committed row and leaves it.
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} s SET leased_by = $4, leased_until = $5, updated_at = $7 \
             FROM {} v \
             WHERE s.name = $1 AND s.version = $2 AND s.partition = $3 \
               AND v.name = s.name AND v.version = s.version \
               AND (s.leased_by IS NULL OR s.leased_by = $4 OR s.leased_until < $6) \
             RETURNING {STATE_COLUMNS}",
            self.names.state, self.names.versions
        )))
        .bind(name)
        .bind(big(version))
        .bind(big(partition))
        .bind(owner)
        .bind(until)
        .bind(now)
        .bind(self.clock.now())
        .fetch_optional(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        row.as_ref().map(state_from_row).transpose()
    }

    async fn release(
        &self,
        name: &str,
        version: u32,
        partition: u32,
        owner: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET leased_by = NULL, leased_until = NULL \
             WHERE name = $1 AND version = $2 AND partition = $3 AND leased_by = $4",
            self.names.state
        )))
        .bind(name)
        .bind(big(version))
        .bind(big(partition))
        .bind(owner)
        .execute(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        Ok(())
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
        validate_enqueue(&batch.outbox, MESSAGE_PAYLOAD_MAX_DEFAULT)?;
        let now = self.clock.now();
        let names = &*self.names;
        let mut tx = self.store.pool().begin().await.map_err(map_sqlx)?;
        // First, and one round trip: the checks and the checkpoint in one UPDATE, whose
        // row lock makes a racing committer of this partition wait, then re-check against
        // the moved checkpoint and find nothing (LeaseLost); and the search_path for the
        // statements. Any error below drops `tx`, which rolls back.
        let tables: Option<Vec<String>> = sqlx::query_scalar(AssertSqlSafe(format!(
            "WITH moved AS ( \
                UPDATE {state} s SET checkpoint = $5, events_applied = s.events_applied + $6, \
                       leased_until = $7, updated_at = $8 \
                FROM {versions} v \
                WHERE s.name = $1 AND s.version = $2 AND s.partition = $3 AND s.leased_by = $4 \
                  AND s.checkpoint = $9 AND s.status = 'running' \
                  AND v.name = s.name AND v.version = s.version \
                RETURNING v.tables) \
             SELECT tables, {search_path} FROM moved",
            state = names.state,
            versions = names.versions,
            search_path = set_search_path(10),
        )))
        .bind(&batch.name)
        .bind(big(batch.version))
        .bind(big(batch.partition))
        .bind(&batch.owner)
        .bind(batch.to.get() as i64)
        .bind(batch.events.min(i64::MAX as u64) as i64)
        .bind(lease_until)
        .bind(now)
        .bind(batch.from.get() as i64)
        .bind(format!("\"{}\"", names.schema))
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        let Some(tables) = tables else {
            if let Err(e) = tx.rollback().await {
                tracing::debug!(error = %e, "rollback of a lost batch failed");
            }
            return Ok(BatchOutcome::LeaseLost);
        };
        // Its NOTIFY is delivered at commit: relays wake when the rows are visible.
        insert_rows(
            &mut tx,
            &names.outbox,
            &names.outbox_channel,
            now,
            &batch.outbox,
        )
        .await?;
        if let Some((index, error)) = run_statements(&mut tx, &batch, &tables).await? {
            // Nothing was committed either way: a failed rollback discards the connection.
            if let Err(e) = tx.rollback().await {
                tracing::debug!(error = %e, "rollback of a failed batch failed");
            }
            return Ok(BatchOutcome::StatementFailed {
                index,
                error: cut_error(&error),
            });
        }
        tx.commit().await.map_err(map_sqlx)?;
        Ok(BatchOutcome::Committed)
    }

    async fn set_status(
        &self,
        name: &str,
        version: u32,
        partition: Option<u32>,
        status: ProjectionStatus,
        error: Option<(Position, String)>,
    ) -> Result<u64, StoreError> {
        let (failed, text) = match &error {
            Some((p, e)) => (Some(p.get() as i64), Some(stored_error(e))),
            None => (None, None),
        };
        let changed = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET status = $4, failed_position = $5, \
             last_error = COALESCE($6, CASE WHEN $4 = 'running' THEN NULL ELSE last_error END), \
             updated_at = $7 \
             WHERE name = $1 AND version = $2 AND ($3::bigint IS NULL OR partition = $3)",
            self.names.state
        )))
        .bind(name)
        .bind(big(version))
        .bind(partition.map(big))
        .bind(status.as_str())
        .bind(failed)
        .bind(text)
        .bind(self.clock.now())
        .execute(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        Ok(changed.rows_affected())
    }

    async fn skip_failed(
        &self,
        name: &str,
        version: u32,
        partition: u32,
    ) -> Result<bool, StoreError> {
        let changed = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET checkpoint = failed_position, status = 'running', \
             failed_position = NULL, last_error = NULL, updated_at = $4 \
             WHERE name = $1 AND version = $2 AND partition = $3 AND status = 'faulted' \
               AND failed_position IS NOT NULL",
            self.names.state
        )))
        .bind(name)
        .bind(big(version))
        .bind(big(partition))
        .bind(self.clock.now())
        .execute(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        Ok(changed.rows_affected() == 1)
    }

    async fn switch(&self, name: &str, version: u32) -> Result<(), StoreError> {
        validate_identifier("projection name", name)?;
        let names = &*self.names;
        let mut tx = self.store.pool().begin().await.map_err(map_sqlx)?;
        self.lock(&mut tx, name).await?;
        let tables = match self.version_in(&mut tx, name, version).await? {
            None => {
                return Err(StoreError::InvalidArgument(format!(
                    "projection {name} has no version {version}"
                )))
            }
            Some((_, VersionRole::Current)) => {
                tx.commit().await.map_err(map_sqlx)?;
                return Ok(());
            }
            Some((_, VersionRole::Retired)) => {
                return Err(StoreError::InvalidArgument(format!(
                    "version {version} of projection {name} is retired; rebuild with a new version"
                )))
            }
            Some((tables, VersionRole::Building)) => tables,
        };
        let previous: Option<Vec<String>> = sqlx::query_scalar(AssertSqlSafe(format!(
            "UPDATE {} SET role = 'retired' WHERE name = $1 AND role = 'current' RETURNING tables",
            names.versions
        )))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET role = 'current', switched_at = $3 WHERE name = $1 AND version = $2",
            names.versions
        )))
        .bind(name)
        .bind(big(version))
        .bind(self.clock.now())
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        self.replace_views(&mut tx, &tables, version).await?;
        // A table the new version does not own has no current version: its view goes, or
        // the plain name would keep showing the retired version (and hold its table
        // against the drop).
        for t in previous.iter().flatten().filter(|t| !tables.contains(t)) {
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP VIEW IF EXISTS {}",
                names.qualified(t)
            )))
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        }
        tx.commit().await.map_err(map_sqlx)?;
        Ok(())
    }

    async fn drop_version(&self, name: &str, version: u32) -> Result<(), StoreError> {
        validate_identifier("projection name", name)?;
        let mut tx = self.store.pool().begin().await.map_err(map_sqlx)?;
        self.lock(&mut tx, name).await?;
        match self.version_in(&mut tx, name, version).await? {
            None => Err(StoreError::InvalidArgument(format!(
                "projection {name} has no version {version}"
            ))),
            Some((_, VersionRole::Current)) => Err(StoreError::InvalidArgument(format!(
                "version {version} of projection {name} is current; switch to another first"
            ))),
            Some(_) => {
                self.drop_in(&mut tx, name, version).await?;
                tx.commit().await.map_err(map_sqlx)?;
                Ok(())
            }
        }
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

/// Applies the inline projections to the events an append just inserted (`events`, in
/// position order), in the append's transaction `conn`: every live, running,
/// unpartitioned generation of each projection's code version that has applied
/// everything before them gets their statements and its checkpoint moved to the last one
/// (see [`InlineProjection`]). The transaction's search path is restored afterwards.
pub(crate) async fn apply_inline(
    conn: &mut PgConnection,
    schema: &str,
    inline: &[Arc<dyn InlineProjection>],
    events: &[RecordedEvent],
) -> Result<(), StoreError> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(());
    };
    // The last event committed before these (positions may have gaps: a rolled-back
    // append's numbers are not reused). The caller holds the append lock, so it is final.
    let before: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT coalesce(max(position), 0) FROM {schema}.events WHERE position < $1"
    )))
    .bind(first.position.get() as i64)
    .fetch_one(&mut *conn)
    .await
    .map_err(map_sqlx)?;
    let mut saved_path: Option<String> = None;
    for projection in inline {
        let generations: Vec<(i64, Vec<String>)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT s.version, v.tables FROM {schema}.projection_versions v \
             JOIN {schema}.projection_state s ON s.name = v.name AND s.version = v.version \
             WHERE v.name = $1 AND v.code_version = $2 AND v.role <> 'retired' \
               AND v.partitions = 1 AND s.status = 'running' \
               AND s.checkpoint >= $3 AND s.checkpoint < $4 \
             FOR UPDATE OF s"
        )))
        .bind(projection.name())
        .bind(big(projection.code_version()))
        .bind(before)
        .bind(first.position.get() as i64)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        if generations.is_empty() {
            continue;
        }
        let mut made: Vec<(&RecordedEvent, Vec<Statement>)> = Vec::new();
        for event in events {
            if !projection.wants(event.stream.category(), &event.event_type) {
                continue;
            }
            let statements = projection
                .statements(event)
                .map_err(|reason| inline_failed(projection.name(), event, cut_error(&reason)))?;
            made.push((event, statements));
        }
        if saved_path.is_none() && !made.is_empty() {
            // The statements name the projection's tables unqualified: the store's schema
            // goes first on the path, and the caller's path comes back afterwards.
            let saved: String = sqlx::query_scalar("SELECT current_setting('search_path')")
                .fetch_one(&mut *conn)
                .await
                .map_err(map_sqlx)?;
            sqlx::query(AssertSqlSafe(format!("SELECT {}", set_search_path(1))))
                .bind(format!("\"{schema}\""))
                .execute(&mut *conn)
                .await
                .map_err(map_sqlx)?;
            saved_path = Some(saved);
        }
        for (version, tables) in generations {
            let version = small(version, "version")?;
            for (event, statements) in &made {
                if let Some((_, error)) =
                    run_statement_list(conn, statements, version, &tables).await?
                {
                    return Err(inline_failed(projection.name(), event, cut_error(&error)));
                }
            }
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE {schema}.projection_state SET checkpoint = $3, \
                 events_applied = events_applied + $4, updated_at = now() \
                 WHERE name = $1 AND version = $2 AND partition = 0"
            )))
            .bind(projection.name())
            .bind(big(version))
            .bind(last.position.get() as i64)
            .bind(made.len() as i64)
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        }
    }
    if let Some(saved) = saved_path {
        sqlx::query("SELECT set_config('search_path', $1, true)")
            .bind(saved)
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
    }
    Ok(())
}

fn inline_failed(projection: &str, event: &RecordedEvent, reason: String) -> StoreError {
    StoreError::InlineProjectionFailed(Box::new(runnel_core::InlineFailure {
        projection: projection.to_string(),
        event_id: event.id,
        event_type: event.event_type.clone(),
        reason,
    }))
}

fn state_row(row: &PgRow) -> Result<runnel_core::projection::StateRow, StoreError> {
    Ok(runnel_core::projection::StateRow {
        key: row.try_get(0).map_err(map_sqlx)?,
        value: row.try_get(1).map_err(map_sqlx)?,
        due: row.try_get(2).map_err(map_sqlx)?,
    })
}

#[async_trait]
impl runnel_core::projection::StateRows for PostgresProjectionStore {
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
        let table = self.names.qualified(&versioned_table(table, version));
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT k, v, due FROM {table} WHERE k = ANY($1)"
        )))
        .bind(keys)
        .fetch_all(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        rows.iter().map(state_row).collect()
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
        let table = self.names.qualified(&versioned_table(table, version));
        let (after_due, after_key) = after.unwrap_or((i64::MIN, String::new()));
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT k, v, due FROM {table} WHERE due IS NOT NULL AND due <= $1 \
               AND (due, k) > ($2, $3) ORDER BY due, k LIMIT $4"
        )))
        .bind(before)
        .bind(after_due)
        .bind(after_key)
        .bind(limit as i64)
        .fetch_all(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        rows.iter().map(state_row).collect()
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
        let table = self.names.qualified(&versioned_table(table, version));
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT k, v, due FROM {table} WHERE k >= $1 AND ($2::text IS NULL OR k < $2) \
             ORDER BY k LIMIT $3"
        )))
        .bind(prefix)
        .bind(runnel_core::projection::prefix_end(prefix))
        .bind(limit as i64)
        .fetch_all(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        rows.iter().map(state_row).collect()
    }

    async fn table_size(
        &self,
        name: &str,
        version: u32,
        table: &str,
    ) -> Result<(u64, u64), StoreError> {
        runnel_core::projection::validate_state_read(name, table, 0)?;
        let table = self.names.qualified(&versioned_table(table, version));
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT count(*)::bigint, coalesce(sum(octet_length(k) + octet_length(v)), 0)::bigint FROM {table}"
        )))
        .fetch_one(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        let rows: i64 = row.try_get(0).map_err(map_sqlx)?;
        let bytes: i64 = row.try_get(1).map_err(map_sqlx)?;
        Ok((rows as u64, bytes as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_cached_per_combination_of_parameter_kinds() {
        let sql = "INSERT INTO t_v1 (id, n) VALUES ($1, $2)";
        let ints = keyed_sql(sql, &["a".into(), SqlValue::Int(1)]);
        let nulls = keyed_sql(sql, &["a".into(), SqlValue::Null]);
        let reals = keyed_sql(sql, &["a".into(), SqlValue::Real(1.0)]);
        assert_ne!(ints, nulls);
        assert_ne!(ints, reals);
        assert_eq!(ints, keyed_sql(sql, &["b".into(), SqlValue::Int(2)]));
        assert!(ints.ends_with(sql));
        assert_eq!(keyed_sql(sql, &[]), sql);
    }
}
