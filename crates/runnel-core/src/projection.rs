//! Projections' durable state and the one-transaction-per-batch protocol the SQLite and
//! PostgreSQL backends implement: a batch of read-model writes commits together with the
//! projection's checkpoint, under the projection's lease, or not at all. See the
//! framework's `DESIGN.md`, "Projections".
//!
//! Read-model writes are backend-neutral [`Statement`]s: SQL with `$1, $2, …` placeholders
//! (both SQLite and PostgreSQL read them) and [`SqlValue`] parameters, with `{table}`
//! placeholders naming the projection's tables. Each version of a projection writes its own
//! tables (`{table}` becomes `order_summaries_v2`); the current version's tables are what
//! the plain names show, through views the backend replaces in the transaction that makes
//! a version current, so queries never see a half-built version.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::position::Position;

pub mod topic;
pub use topic::{
    rebuild_refused, validate_message_commit, validate_topic_source, MessageCommit, MessageOutcome,
    TopicSource, TOPIC_INBOX_KEEP_DEFAULT, TOPIC_INBOX_KEEP_MAX, TOPIC_MESSAGE_ID_LEN_MAX,
    TOPIC_SOURCE_NAME_LEN_MAX,
};

/// Longest projection name or table name, in bytes (`[a-z0-9_]`, starting with a letter).
pub const PROJECTION_NAME_LEN_MAX: usize = 48;
/// Most tables one projection owns.
pub const PROJECTION_TABLES_MAX: usize = 16;
/// Most partitions one projection may have.
pub const PARTITIONS_MAX: u32 = 64;
/// Most statements one batch may carry.
pub const BATCH_STATEMENTS_MAX: usize = 100_000;
/// Longest stored error text, in bytes.
pub const PROJECTION_ERROR_LEN_MAX: usize = 4096;

/// A parameter of a [`Statement`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SqlValue {
    /// SQL NULL.
    Null,
    /// A 64-bit integer.
    Int(i64),
    /// A double.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl From<i64> for SqlValue {
    fn from(v: i64) -> Self {
        SqlValue::Int(v)
    }
}
impl From<i32> for SqlValue {
    fn from(v: i32) -> Self {
        SqlValue::Int(i64::from(v))
    }
}
impl From<u32> for SqlValue {
    fn from(v: u32) -> Self {
        SqlValue::Int(i64::from(v))
    }
}
impl From<f64> for SqlValue {
    fn from(v: f64) -> Self {
        SqlValue::Real(v)
    }
}
impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        SqlValue::Text(v.to_string())
    }
}
impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        SqlValue::Text(v)
    }
}
impl From<Vec<u8>> for SqlValue {
    fn from(v: Vec<u8>) -> Self {
        SqlValue::Blob(v)
    }
}
impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(SqlValue::Null, Into::into)
    }
}

/// One read-model write: SQL with `$n` placeholders and `{table}` names, and its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    /// The SQL (`INSERT INTO {orders} (id, total) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE …`).
    pub sql: String,
    /// `$1`, `$2`, … in order.
    pub params: Vec<SqlValue>,
}

/// The SQL dialect a projection's schema is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Where a projection (one version, one partition) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProjectionStatus {
    /// Applying events.
    Running,
    /// Stopped by an operator (`runnel projections pause`).
    Paused,
    /// Stopped on an event it could not apply, until an operator retries or skips it.
    Faulted,
}

impl ProjectionStatus {
    /// The status's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionStatus::Running => "running",
            ProjectionStatus::Paused => "paused",
            ProjectionStatus::Faulted => "faulted",
        }
    }

    /// Parses a status name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            ProjectionStatus::Running,
            ProjectionStatus::Paused,
            ProjectionStatus::Faulted,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// Which version of a projection is which.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VersionRole {
    /// Being built (a rebuild): its tables are not what queries see yet.
    Building,
    /// What queries see.
    Current,
    /// Replaced by a newer version; its tables are kept until dropped.
    Retired,
}

impl VersionRole {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionRole::Building => "building",
            VersionRole::Current => "current",
            VersionRole::Retired => "retired",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            VersionRole::Building,
            VersionRole::Current,
            VersionRole::Retired,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// One projection version's partition, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectionState {
    /// The projection's name.
    pub name: String,
    /// The version's generation: the number in its tables' names (`orders_v3`). It is the
    /// code version, unless a rebuild of the same code made a newer generation
    /// ([`ProjectionStore::rebuild`]).
    pub version: u32,
    /// The projection's version in code ([`VersionSpec::version`]) this generation runs.
    pub code_version: u32,
    /// The partition (0 when unpartitioned).
    pub partition: u32,
    /// How many partitions the version has.
    pub partitions: u32,
    /// The version's role.
    pub role: VersionRole,
    /// The last `$all` position applied ([`Position::START`]: nothing yet).
    pub checkpoint: Position,
    /// Running, paused or faulted.
    pub status: ProjectionStatus,
    /// Why it is faulted, or the last error retried.
    pub last_error: Option<String>,
    /// The position of the event it is faulted on.
    pub failed_position: Option<Position>,
    /// Events applied since the version was created.
    pub events_applied: u64,
    /// Who holds the lease, until when.
    pub lease: Option<(String, DateTime<Utc>)>,
    /// When the state last changed.
    pub updated_at: DateTime<Utc>,
}

/// A version of a projection to register: its tables and their schema.
#[derive(Clone, Debug)]
pub struct VersionSpec {
    /// The projection's name.
    pub name: String,
    /// The version in code (from 1). Its first generation is numbered the same, unless
    /// rebuilds of an older version already used that number (then the next free one).
    pub version: u32,
    /// The tables it owns (names without the version suffix).
    pub tables: Vec<String>,
    /// `CREATE TABLE {table} …` and index statements, with `{table}` placeholders.
    pub schema: Vec<String>,
    /// Partitions (1: unpartitioned).
    pub partitions: u32,
}

/// One batch: read-model writes and the new checkpoint, committed together.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The projection.
    pub name: String,
    /// The version.
    pub version: u32,
    /// The partition.
    pub partition: u32,
    /// The lease holder committing it.
    pub owner: String,
    /// The checkpoint the batch was computed from (checked, so nothing applies twice).
    pub from: Position,
    /// The new checkpoint.
    pub to: Position,
    /// How many events the batch applied (for the counters).
    pub events: u64,
    /// The read-model writes, `{table}` placeholders unresolved.
    pub statements: Vec<Statement>,
    /// Messages to send through the outbox in the same transaction (live only: a
    /// replaying handler cannot send).
    pub outbox: Vec<crate::outbox::OutboxMessage>,
}

/// What [`ProjectionStore::rebuild`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildStarted {
    /// The building generation.
    pub version: u32,
    /// The code version it runs.
    pub code_version: u32,
    /// `false`: it was building already (a rebuild resumed), nothing was created.
    pub created: bool,
}

/// What [`ProjectionStore::commit_batch`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Committed.
    Committed,
    /// The lease is not the committer's any more, or the checkpoint moved: nothing was
    /// written. Stop and claim again.
    LeaseLost,
    /// A statement failed (the handler's SQL): nothing was written.
    StatementFailed { index: usize, error: String },
}

/// Durable state of projections. Implemented by the SQLite and PostgreSQL backends.
#[async_trait]
pub trait ProjectionStore: Send + Sync + 'static {
    /// The dialect read-model statements are written in.
    fn dialect(&self) -> Dialect;

    /// Registers a code version: if no live (current or building) generation runs
    /// `spec.version`, creates one — generation `max(spec.version, newest generation + 1)` —
    /// with its tables (`{table}_v{generation}`) and state rows (one per partition), and
    /// stores the schema for later rebuilds. The first generation of a projection becomes
    /// current (its views created); a later one is building until
    /// [`switch`](Self::switch)ed, and replaces a building generation of older code.
    /// Registering a code version that has a live generation changes nothing; one older
    /// than the newest registered is refused. Returns the role of the newest live
    /// generation of `spec.version`.
    async fn register(&self, spec: &VersionSpec) -> Result<VersionRole, StoreError>;

    /// Starts a rebuild of `name`'s current code version without downtime: a new building
    /// generation with the current one's tables, schema and partitions, which the runners
    /// of that code version fill from the start of `$all` and switch to once caught up.
    /// If a generation is building already, returns it (a rebuild resumes). Unknown
    /// projections are an [`StoreError::InvalidArgument`] and change nothing.
    async fn rebuild(&self, name: &str) -> Result<RebuildStarted, StoreError>;

    /// Every state row (of `name`, or all), by name, version, partition.
    async fn states(&self, name: Option<&str>) -> Result<Vec<ProjectionState>, StoreError>;

    /// Leases partition `partition` of version `version` to `owner` until `now + lease`
    /// if nobody else holds a live lease; returns the state, or `None` if another holds it.
    async fn claim(
        &self,
        name: &str,
        version: u32,
        partition: u32,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<ProjectionState>, StoreError>;

    /// Gives the lease up (graceful stop).
    async fn release(
        &self,
        name: &str,
        version: u32,
        partition: u32,
        owner: &str,
    ) -> Result<(), StoreError>;

    /// Runs the batch's statements and moves the checkpoint from `batch.from` to
    /// `batch.to` in one transaction, checking the lease is still the owner's (and renewing
    /// it to `lease_until`).
    async fn commit_batch(
        &self,
        batch: Batch,
        lease_until: DateTime<Utc>,
    ) -> Result<BatchOutcome, StoreError>;

    /// Sets the status of every partition of a version (pause, resume, fault with the
    /// event's position and the error; `Running` clears them). Returns how many rows.
    async fn set_status(
        &self,
        name: &str,
        version: u32,
        partition: Option<u32>,
        status: ProjectionStatus,
        error: Option<(Position, String)>,
    ) -> Result<u64, StoreError>;

    /// Moves a faulted partition's checkpoint past its failed event (skip) and resumes it.
    async fn skip_failed(
        &self,
        name: &str,
        version: u32,
        partition: u32,
    ) -> Result<bool, StoreError>;

    /// Makes `version` current in one transaction: the views point at its tables, the
    /// previous current version is retired.
    async fn switch(&self, name: &str, version: u32) -> Result<(), StoreError>;

    /// Drops a retired version's tables and state.
    async fn drop_version(&self, name: &str, version: u32) -> Result<(), StoreError>;

    // ---- projections fed from a bus topic (see `topic`) ----

    /// Records that `source.name` reads a topic, not `$all` (before its first
    /// [`register`](Self::register)): [`rebuild`](Self::rebuild) refuses it from then on.
    /// Recording it again updates the topic and group. A name already registered as a
    /// projection of `$all` is an [`StoreError::InvalidArgument`] and changes nothing.
    async fn set_topic_source(&self, source: &TopicSource) -> Result<(), StoreError>;

    /// The topic sources recorded (of `name`, or all), by name.
    async fn topic_sources(&self, name: Option<&str>) -> Result<Vec<TopicSource>, StoreError>;

    /// In one transaction: records `commit.message_id` in the projection's inbox (a
    /// duplicate writes nothing: [`MessageOutcome::Duplicate`]), runs the statements on
    /// generation `commit.version`'s tables, adds the outbox messages, counts one event
    /// applied on the generation, and deletes the ids beyond the newest
    /// `commit.inbox_keep`. A failing statement, or a retired generation
    /// ([`MessageOutcome::Retired`]), writes nothing. An unknown generation is an
    /// [`StoreError::InvalidArgument`].
    async fn commit_message(&self, commit: MessageCommit) -> Result<MessageOutcome, StoreError>;
}

/// A projection applied inside the transaction of the append that records its events, so
/// its read model never lags the events (inline mode). Registered on a store (the SQLite
/// store's `add_inline_projection`, the PostgreSQL store's); the framework adapts its
/// `Projection`s to this.
///
/// For each append, in the append's transaction, the store looks at every live generation
/// of the projection's code version (current, and building ones): one that is running and
/// has applied everything before the append (its checkpoint is at or past the last event
/// committed before the append's first) gets the statements of the appended events it [`wants`](Self::wants) and its
/// checkpoint moved to the append's last position. One that is behind (being rebuilt,
/// paused, faulted, or not registered yet) is left to its runner, which catches it up and
/// hands over to inline application once level with the head. A statement or
/// [`statements`](Self::statements) failing refuses the whole append
/// ([`StoreError::InlineProjectionFailed`]). Inline projections are unpartitioned.
pub trait InlineProjection: Send + Sync + 'static {
    /// The projection's name.
    fn name(&self) -> &str;
    /// Its version in code (the generations it applies to run this version).
    fn code_version(&self) -> u32;
    /// Whether it reads events of this category and type.
    fn wants(&self, category: &str, event_type: &str) -> bool;
    /// The statements one event makes (`$n` parameters, `{table}` names), or why it cannot
    /// be applied.
    fn statements(&self, event: &crate::RecordedEvent) -> Result<Vec<Statement>, String>;
}

/// Checks a projection or table name: 1..=[`PROJECTION_NAME_LEN_MAX`] of `[a-z0-9_]`,
/// starting with a letter (they become SQL identifiers).
pub fn validate_identifier(what: &str, name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= PROJECTION_NAME_LEN_MAX
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidArgument(format!(
            "{what} {:?}: must be 1..={PROJECTION_NAME_LEN_MAX} characters of [a-z0-9_], starting with a letter",
            name.chars().take(64).collect::<String>()
        )))
    }
}

/// Checks a version spec.
pub fn validate_spec(spec: &VersionSpec) -> Result<(), StoreError> {
    validate_identifier("projection name", &spec.name)?;
    if spec.version == 0 {
        return Err(StoreError::InvalidArgument(
            "projection versions start at 1".into(),
        ));
    }
    if spec.tables.is_empty() || spec.tables.len() > PROJECTION_TABLES_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "a projection owns 1..={PROJECTION_TABLES_MAX} tables"
        )));
    }
    for t in &spec.tables {
        validate_identifier("table name", t)?;
    }
    if spec.partitions == 0 || spec.partitions > PARTITIONS_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "partitions must be 1..={PARTITIONS_MAX}"
        )));
    }
    Ok(())
}

/// A version's physical table name: `{table}_v{version}`.
pub fn versioned_table(table: &str, version: u32) -> String {
    format!("{table}_v{version}")
}

/// `sql` with every `{table}` of `tables` replaced by the version's physical name. An
/// unknown `{name}` is an error naming it.
pub fn resolve_tables(sql: &str, tables: &[String], version: u32) -> Result<String, StoreError> {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(StoreError::InvalidArgument(format!(
                "unclosed {{ in projection SQL: {sql}"
            )));
        };
        let name = &after[..close];
        if !tables.iter().any(|t| t == name) {
            return Err(StoreError::InvalidArgument(format!(
                "projection SQL names table {{{name}}}, which the projection does not own (it owns {tables:?})"
            )));
        }
        out.push_str(&versioned_table(name, version));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The partition of `stream` among `partitions` (a stable hash: FNV-1a).
pub fn partition_of(stream: &str, partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stream.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(partitions)) as u32
}

/// `text` cut to [`PROJECTION_ERROR_LEN_MAX`] bytes on a character boundary.
pub fn cut_error(text: &str) -> String {
    if text.len() <= PROJECTION_ERROR_LEN_MAX {
        return text.to_string();
    }
    let mut end = PROJECTION_ERROR_LEN_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_placeholders_resolve_to_the_versions_tables() {
        let tables = vec!["orders".to_string(), "customers".to_string()];
        assert_eq!(
            resolve_tables("INSERT INTO {orders} SELECT * FROM {customers}", &tables, 3).unwrap(),
            "INSERT INTO orders_v3 SELECT * FROM customers_v3"
        );
        assert!(resolve_tables("SELECT * FROM {other}", &tables, 1).is_err());
        assert!(resolve_tables("SELECT {orders", &tables, 1).is_err());
    }

    #[test]
    fn names_must_be_identifiers() {
        assert!(validate_identifier("t", "order_summaries").is_ok());
        assert!(validate_identifier("t", "Order").is_err());
        assert!(validate_identifier("t", "1x").is_err());
        assert!(validate_identifier("t", "a;drop").is_err());
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        for n in [1, 2, 7, 64] {
            for s in ["Order-1", "Order-2", "Customer-9"] {
                let p = partition_of(s, n);
                assert!(p < n);
                assert_eq!(p, partition_of(s, n));
            }
        }
        assert_eq!(partition_of("x", 1), 0);
    }
}

/// One keyed state row of a stream job (`runnel::stream`): a key, its bytes, and when the
/// job next needs it (a window's close, in event-time milliseconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateRow {
    /// The row's key.
    pub key: String,
    /// Its state.
    pub value: Vec<u8>,
    /// When it is due (`None`: never by time).
    pub due: Option<i64>,
}

/// Most rows one state read returns.
pub const STATE_ROWS_MAX: usize = 10_000;

/// The schema of a keyed state table `{table}` (key, bytes, due time, indexed by due) for
/// `dialect`, written with the projection's `{table}` placeholder.
pub fn state_table_schema(dialect: Dialect, table: &str) -> Vec<String> {
    // Keys compare bytewise on both (SQLite's default; PostgreSQL's "C" collation), so
    // the due-order paging and prefix scans agree with Rust's string order.
    let (key, blob) = match dialect {
        Dialect::Sqlite => ("TEXT", "BLOB"),
        Dialect::Postgres => ("TEXT COLLATE \"C\"", "BYTEA"),
    };
    vec![
        format!("CREATE TABLE {{{table}}} (k {key} PRIMARY KEY, v {blob} NOT NULL, due BIGINT)"),
        format!("CREATE INDEX {{{table}}}_due ON {{{table}}} (due, k) WHERE due IS NOT NULL"),
    ]
}

/// Reads keyed state tables (made with [`state_table_schema`]) of a projection's
/// generation; writes go through [`ProjectionStore::commit_batch`] with the checkpoint.
/// Implemented by the SQLite and PostgreSQL projection stores.
#[async_trait]
pub trait StateRows: Send + Sync + 'static {
    /// The rows of `keys` (at most [`STATE_ROWS_MAX`]) that exist, in no order.
    async fn get_rows(
        &self,
        name: &str,
        version: u32,
        table: &str,
        keys: &[String],
    ) -> Result<Vec<StateRow>, StoreError>;

    /// Rows due at or before `before`, by (due, key), after `after` (exclusive), at most
    /// `limit` (≤ [`STATE_ROWS_MAX`]).
    async fn due_rows(
        &self,
        name: &str,
        version: u32,
        table: &str,
        before: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<StateRow>, StoreError>;

    /// Rows whose key starts with `prefix`, by key, at most `limit` (≤ [`STATE_ROWS_MAX`]).
    async fn prefix_rows(
        &self,
        name: &str,
        version: u32,
        table: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<StateRow>, StoreError>;

    /// How many rows the table holds and their bytes (keys and values).
    async fn table_size(
        &self,
        name: &str,
        version: u32,
        table: &str,
    ) -> Result<(u64, u64), StoreError>;
}

/// Checks a state read's arguments.
pub fn validate_state_read(name: &str, table: &str, limit: usize) -> Result<(), StoreError> {
    validate_identifier("projection name", name)?;
    validate_identifier("table name", table)?;
    if limit > STATE_ROWS_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "a state read asks for {limit} rows; at most {STATE_ROWS_MAX}"
        )));
    }
    Ok(())
}

/// The first key after every key starting with `prefix` (for a range scan), or `None`
/// when there is none.
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        if let Some(next) = char::from_u32(c as u32 + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}
