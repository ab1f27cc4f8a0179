//! The projection-store conformance suite: one check per behaviour promised by the
//! [`ProjectionStore`] trait (versions in their own tables behind views, registering,
//! rebuilding and switching, leases, the one-transaction batch with its checks, statement
//! parameters and values, statuses and skips, partitions, bad input), run by every backend
//! (SQLite, PostgreSQL).
//!
//! The trait has no way to read a read model (the application queries its own database),
//! so the factory hands the suite a [`ReadModel`] beside the store: a function that runs one
//! `SELECT` on the store's database and returns its rows as [`SqlValue`]s. That is how the
//! checks look at the views, the versioned tables and the outbox.
//!
//! ```ignore
//! // tests/projections.rs
//! runnel_testkit::projection_store_conformance!(async {
//!     let store = make_store().await;
//!     let read_model = ReadModel::new(move |sql| run_select(sql));
//!     (std::sync::Arc::new(store), read_model)
//! });
//! ```
//!
//! The factory returns `(Arc<S>, ReadModel)`, or an `Option` of it (`None` skips, and fails
//! under `RUNNEL_REQUIRE_SERVICES=1`). Every check needs a fresh, empty store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use runnel_core::outbox::OutboxMessage;
use runnel_core::projection::{
    Batch, BatchOutcome, Dialect, ProjectionState, ProjectionStatus, ProjectionStore,
    RebuildStarted, SqlValue, Statement, VersionRole, VersionSpec, PARTITIONS_MAX,
};
use runnel_core::{Message, Position, StoreError, TopicName};

use crate::conformance::CHECK_DEADLINE;
use crate::harness::{expect_err, Must};

mod topic;
pub use topic::*;

/// The projection most checks register.
pub const NAME: &str = "conformance";
/// The table most checks write (`{items}`: `id TEXT PRIMARY KEY, n BIGINT NOT NULL`).
pub const ITEMS: &str = "items";
/// The lease holder most checks commit as.
pub const OWNER: &str = "owner-a";
/// Another process.
pub const OTHER: &str = "owner-b";
/// The topic of the outbox messages batches send.
pub const TOPIC: &str = "projection.conformance";
/// A lease no check outlives.
pub const LEASE_LONG: Duration = Duration::from_secs(60);
/// Racing committers of one batch.
pub const RACERS: usize = 8;
/// Largest difference between a time given to the store and the one it returns (both
/// backends keep microseconds).
const TIME_SLACK_MICROS: i64 = 1;

/// Rows of a query: one `Vec` per row, one [`SqlValue`] per column.
pub type Rows = Vec<Vec<SqlValue>>;

type QueryFn = dyn Fn(String) -> BoxFuture<'static, Result<Rows, String>> + Send + Sync;

/// Runs one `SELECT` on the database a projection store writes to and returns its rows,
/// or the database's error as text (the checks assert that dropped tables and views are
/// gone by querying them).
///
/// Queries name tables as a projection's readers do: plain names are the views, the
/// versioned names (`items_v2`) are a version's tables, and `outbox_messages` is the
/// outbox. A PostgreSQL backend therefore runs them with the store's schema on its
/// `search_path`. Columns decode by their value: integers to [`SqlValue::Int`], floats to
/// [`SqlValue::Real`], text to [`SqlValue::Text`], bytes to [`SqlValue::Blob`], NULL to
/// [`SqlValue::Null`]; a backend fails the query on a column of any other type.
#[derive(Clone)]
pub struct ReadModel {
    query: Arc<QueryFn>,
}

impl std::fmt::Debug for ReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModel").finish_non_exhaustive()
    }
}

impl ReadModel {
    /// A read model answered by `query`.
    pub fn new<F, Fut>(query: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Rows, String>> + Send + 'static,
    {
        ReadModel {
            query: Arc::new(move |sql| Box::pin(query(sql))),
        }
    }

    /// The rows of `sql`, or the database's error.
    pub async fn rows(&self, sql: &str) -> Result<Rows, String> {
        (self.query)(sql.to_string()).await
    }

    /// The rows of `sql`, whose two columns are text and an integer (`SELECT id, n …`);
    /// panics when the query fails or returns anything else.
    pub async fn pairs(&self, sql: &str) -> Vec<(String, i64)> {
        let rows = match self.rows(sql).await {
            Ok(rows) => rows,
            Err(e) => panic!("query {sql:?} failed: {e}"),
        };
        rows.into_iter()
            .map(|row| match row.as_slice() {
                [SqlValue::Text(s), SqlValue::Int(n)] => (s.clone(), *n),
                other => panic!("query {sql:?}: expected (text, integer) rows, got {other:?}"),
            })
            .collect()
    }
}

/// The store a check runs on, and the read model it checks through.
pub struct StoreUnderTest<S: ?Sized> {
    /// The store.
    pub store: Arc<S>,
    /// Queries on the store's database.
    pub read_model: ReadModel,
}

/// What a factory may return: `(Arc<S>, ReadModel)`, or an `Option` of it where `None`
/// skips.
pub trait IntoProjectionStore {
    /// The store type under test.
    type Store: ProjectionStore + ?Sized;
    /// The store and its read model, or `None` to skip.
    fn into_projection_store(self) -> Option<StoreUnderTest<Self::Store>>;
}

impl<S: ProjectionStore + ?Sized> IntoProjectionStore for (Arc<S>, ReadModel) {
    type Store = S;
    fn into_projection_store(self) -> Option<StoreUnderTest<S>> {
        Some(StoreUnderTest {
            store: self.0,
            read_model: self.1,
        })
    }
}

impl<S: ProjectionStore + ?Sized> IntoProjectionStore for Option<(Arc<S>, ReadModel)> {
    type Store = S;
    fn into_projection_store(self) -> Option<StoreUnderTest<S>> {
        self.and_then(IntoProjectionStore::into_projection_store)
    }
}

/// Runs every check, each on a fresh store from `make_store`, one after another.
pub async fn run_projection_store_suite<F, Fut>(make_store: F)
where
    F: Fn() -> Fut,
    Fut: Future,
    Fut::Output: IntoProjectionStore,
{
    crate::__projection_store_checks!(__suite_run_all(
        "projection store conformance",
        projections,
        IntoProjectionStore::into_projection_store,
        CHECK_DEADLINE,
        make_store
    ));
}

/// One `#[test]` per projection-store check, each on a fresh store.
#[macro_export]
macro_rules! projection_store_conformance {
    ($($factory:tt)+) => {
        $crate::__suite_conformance!(__projection_store_checks (
            projections,
            $crate::projections::IntoProjectionStore::into_projection_store,
            $crate::conformance::CHECK_DEADLINE
        ) $($factory)+);
    };
}

/// The list of checks, handed to `$callback`. The one place a new check is registered.
#[doc(hidden)]
#[macro_export]
macro_rules! __projection_store_checks {
    ($callback:ident $args:tt) => {
        $crate::$callback! { $args;
            the_first_version_is_current_and_its_view_shows_its_tables,
            registering_a_version_again_changes_nothing,
            a_new_version_builds_in_its_own_tables_while_the_view_shows_the_current_one,
            a_version_older_than_the_newest_is_refused,
            a_newer_version_drops_a_stale_building_one,
            a_rebuild_builds_a_new_generation_of_the_current_code_beside_it,
            a_rebuild_requested_twice_resumes_the_one_building,
            new_code_after_a_rebuild_takes_the_next_generation,
            a_rebuild_of_an_unknown_projection_is_refused,
            a_failing_schema_statement_registers_nothing,
            one_owner_holds_a_lease_until_it_lapses_or_is_released,
            a_batch_commits_its_statements_with_the_checkpoint,
            a_stale_or_foreign_batch_writes_nothing,
            racing_commits_of_one_batch_commit_once,
            a_failing_statement_rolls_the_whole_batch_back,
            parameters_bind_by_number_in_any_order_and_repeated,
            every_value_kind_round_trips,
            a_table_the_projection_does_not_own_is_refused,
            outbox_messages_commit_with_the_batch_or_not_at_all,
            no_batch_commits_while_paused_or_faulted_and_resume_clears_the_error,
            skip_moves_the_checkpoint_to_the_failed_event_and_resumes,
            switch_makes_the_built_version_current_and_the_views_follow,
            a_switch_drops_views_of_tables_the_new_version_does_not_own,
            drop_version_drops_a_retired_version_but_never_the_current_one,
            states_list_every_version_and_partition_in_order,
            partitions_are_claimed_and_committed_independently,
            bad_input_is_refused_and_changes_nothing,
            a_topic_message_commits_once_and_its_duplicate_writes_nothing,
            a_failing_topic_statement_writes_nothing_and_records_no_id,
            the_topic_inbox_keeps_only_its_newest_ids,
            a_topic_projection_is_never_rebuilt,
            topic_sources_are_recorded_once_per_name,
            a_message_for_a_retired_generation_writes_nothing,
            racing_deliveries_of_one_message_commit_once,
        }
    };
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Schema of each of `tables`: `id TEXT PRIMARY KEY, n BIGINT NOT NULL` and an index
/// named after the versioned table (index names are per database on SQLite, per schema on
/// PostgreSQL, so each version needs its own).
fn table_schema(tables: &[&str]) -> Vec<String> {
    tables
        .iter()
        .flat_map(|t| {
            [
                format!("CREATE TABLE {{{t}}} (id TEXT PRIMARY KEY, n BIGINT NOT NULL)"),
                format!("CREATE INDEX {{{t}}}_by_n ON {{{t}}} (n)"),
            ]
        })
        .collect()
}

/// Version `version` of `name` owning `tables`, each with [`table_schema`].
pub fn spec_of(name: &str, version: u32, tables: &[&str], partitions: u32) -> VersionSpec {
    VersionSpec {
        name: name.into(),
        version,
        tables: tables.iter().map(|t| t.to_string()).collect(),
        schema: table_schema(tables),
        partitions,
    }
}

/// Version `version` of [`NAME`] owning [`ITEMS`], unpartitioned.
pub fn spec(version: u32) -> VersionSpec {
    spec_of(NAME, version, &[ITEMS], 1)
}

/// `INSERT INTO {table} (id, n) VALUES ($1, $2)`.
pub fn insert_into(table: &str, id: &str, n: i64) -> Statement {
    Statement {
        sql: format!("INSERT INTO {{{table}}} (id, n) VALUES ($1, $2)"),
        params: vec![id.into(), n.into()],
    }
}

/// `INSERT INTO {items} (id, n) VALUES ($1, $2)`.
pub fn insert(id: &str, n: i64) -> Statement {
    insert_into(ITEMS, id, n)
}

fn sql(text: &str, params: Vec<SqlValue>) -> Statement {
    Statement {
        sql: text.into(),
        params,
    }
}

/// A batch of version 1, partition 0 of [`NAME`] by [`OWNER`], from `from` to `to`
/// (`to - from` events).
pub fn batch(from: u64, to: u64, statements: Vec<Statement>) -> Batch {
    Batch {
        name: NAME.into(),
        version: 1,
        partition: 0,
        owner: OWNER.into(),
        from: Position(from),
        to: Position(to),
        events: to.saturating_sub(from),
        statements,
        outbox: vec![],
    }
}

fn message(n: u64) -> OutboxMessage {
    OutboxMessage::new(
        TopicName::new(TOPIC).expect("a valid topic"),
        Message::json("Counted", &serde_json::json!({ "n": n })),
    )
}

fn in_secs(secs: i64) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::seconds(secs)
}

#[track_caller]
fn assert_close(actual: DateTime<Utc>, expected: DateTime<Utc>, what: &str) {
    let off = (actual - expected)
        .num_microseconds()
        .unwrap_or(i64::MAX)
        .abs();
    assert!(
        off <= TIME_SLACK_MICROS,
        "{what}: {actual} is not {expected}"
    );
}

async fn register<S: ProjectionStore + ?Sized>(store: &S, spec: &VersionSpec) -> VersionRole {
    store
        .register(spec)
        .await
        .must(&format!("register {} v{}", spec.name, spec.version))
}

async fn claim<S: ProjectionStore + ?Sized>(
    store: &S,
    version: u32,
    partition: u32,
    owner: &str,
) -> Option<ProjectionState> {
    store
        .claim(NAME, version, partition, owner, Utc::now(), LEASE_LONG)
        .await
        .must("claim")
}

async fn commit<S: ProjectionStore + ?Sized>(store: &S, batch: Batch) -> BatchOutcome {
    store
        .commit_batch(batch, in_secs(60))
        .await
        .must("commit_batch")
}

async fn states<S: ProjectionStore + ?Sized>(store: &S) -> Vec<ProjectionState> {
    store.states(Some(NAME)).await.must("states")
}

async fn state<S: ProjectionStore + ?Sized>(
    store: &S,
    version: u32,
    partition: u32,
) -> ProjectionState {
    states(store)
        .await
        .into_iter()
        .find(|s| s.version == version && s.partition == partition)
        .unwrap_or_else(|| panic!("no state row for version {version} partition {partition}"))
}

/// Registers version 1 of [`NAME`] and leases it to [`OWNER`].
async fn registered_and_claimed<S: ProjectionStore + ?Sized>(store: &S) -> ProjectionState {
    assert_eq!(register(store, &spec(1)).await, VersionRole::Current);
    claim(store, 1, 0, OWNER)
        .await
        .expect("nobody else holds it")
}

fn pair(id: &str, n: i64) -> (String, i64) {
    (id.to_string(), n)
}

const ITEMS_VIEW: &str = "SELECT id, n FROM items ORDER BY id";

// ---------------------------------------------------------------------------------------
// Registering versions
// ---------------------------------------------------------------------------------------

/// The first version registered is current: its tables exist, its one state row starts
/// at the beginning of `$all`, running, unleased, and the plain table name is a view that
/// shows what batches write to `{items}`.
pub async fn the_first_version_is_current_and_its_view_shows_its_tables<
    S: ProjectionStore + ?Sized,
>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    assert_eq!(register(&*store, &spec(1)).await, VersionRole::Current);
    let all = states(&*store).await;
    assert_eq!(all.len(), 1, "{all:?}");
    let s = &all[0];
    assert_eq!(
        (s.name.as_str(), s.version, s.partition, s.partitions),
        (NAME, 1, 0, 1)
    );
    assert_eq!(s.role, VersionRole::Current);
    assert_eq!(s.checkpoint, Position::START);
    assert_eq!(s.status, ProjectionStatus::Running);
    assert_eq!((&s.last_error, s.failed_position), (&None, None));
    assert_eq!(s.events_applied, 0);
    assert_eq!(s.lease, None);
    assert!(db.pairs(ITEMS_VIEW).await.is_empty());
    assert!(db.pairs("SELECT id, n FROM items_v1").await.is_empty());

    claim(&*store, 1, 0, OWNER).await.expect("free");
    assert_eq!(
        commit(&*store, batch(0, 1, vec![insert("a", 1)])).await,
        BatchOutcome::Committed
    );
    assert_eq!(db.pairs(ITEMS_VIEW).await, vec![pair("a", 1)]);
    assert_eq!(
        db.pairs("SELECT id, n FROM items_v1").await,
        vec![pair("a", 1)]
    );
}

/// Registering a version that exists returns its role and touches neither its tables
/// nor its state.
pub async fn registering_a_version_again_changes_nothing<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    registered_and_claimed(&*store).await;
    commit(&*store, batch(0, 4, vec![insert("a", 1)])).await;
    let before = states(&*store).await;
    assert_eq!(register(&*store, &spec(1)).await, VersionRole::Current);
    assert_eq!(
        states(&*store).await,
        before,
        "the state rows are untouched"
    );
    assert_eq!(db.pairs(ITEMS_VIEW).await, vec![pair("a", 1)]);

    assert_eq!(register(&*store, &spec(2)).await, VersionRole::Building);
    assert_eq!(register(&*store, &spec(2)).await, VersionRole::Building);
    assert_eq!(register(&*store, &spec(1)).await, VersionRole::Current);
    assert_eq!(states(&*store).await.len(), 2);
}

/// A second version is `building`: its own tables, its own state row from the start,
/// while the view keeps showing version 1, whatever version 2 writes.
pub async fn a_new_version_builds_in_its_own_tables_while_the_view_shows_the_current_one<
    S: ProjectionStore + ?Sized,
>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    registered_and_claimed(&*store).await;
    commit(&*store, batch(0, 5, vec![insert("old", 1)])).await;
    assert_eq!(register(&*store, &spec(2)).await, VersionRole::Building);
    let v2 = state(&*store, 2, 0).await;
    assert_eq!(v2.role, VersionRole::Building);
    assert_eq!(v2.checkpoint, Position::START);
    assert_eq!(state(&*store, 1, 0).await.role, VersionRole::Current);
    assert!(db.pairs("SELECT id, n FROM items_v2").await.is_empty());

    claim(&*store, 2, 0, OWNER).await.expect("free");
    let mut b = batch(0, 3, vec![insert("new", 2)]);
    b.version = 2;
    assert_eq!(commit(&*store, b).await, BatchOutcome::Committed);
    assert_eq!(
        db.pairs("SELECT id, n FROM items_v2").await,
        vec![pair("new", 2)]
    );
    assert_eq!(
        db.pairs(ITEMS_VIEW).await,
        vec![pair("old", 1)],
        "the view shows version 1 until the switch"
    );
    assert_eq!(state(&*store, 1, 0).await.checkpoint, Position(5));
}

/// A version older than the newest registered is refused, and creates nothing.
pub async fn a_version_older_than_the_newest_is_refused<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    assert_eq!(register(&*store, &spec(2)).await, VersionRole::Current);
    let e = expect_err("register an older version", store.register(&spec(1)).await);
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    let all = states(&*store).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].version, 2);
    assert!(
        db.rows("SELECT id, n FROM items_v1").await.is_err(),
        "no tables for the refused version"
    );
    assert!(db.pairs(ITEMS_VIEW).await.is_empty());
}

/// Registering a newer version while another is building drops the building one (it never
/// served): its tables and state go, and the new one builds instead.
pub async fn a_newer_version_drops_a_stale_building_one<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    registered_and_claimed(&*store).await;
    assert_eq!(register(&*store, &spec(2)).await, VersionRole::Building);
    assert!(db.pairs("SELECT id, n FROM items_v2").await.is_empty());
    assert_eq!(register(&*store, &spec(3)).await, VersionRole::Building);
    let versions: Vec<(u32, VersionRole)> = states(&*store)
        .await
        .iter()
        .map(|s| (s.version, s.role))
        .collect();
    assert_eq!(
        versions,
        vec![(1, VersionRole::Current), (3, VersionRole::Building)]
    );
    assert!(
        db.rows("SELECT id, n FROM items_v2").await.is_err(),
        "the stale version's tables are dropped"
    );
    assert!(db.pairs("SELECT id, n FROM items_v3").await.is_empty());
    assert!(db.pairs("SELECT id, n FROM items_v1").await.is_empty());
}

/// A rebuild of the current code makes a new generation — its own tables from the stored
/// schema, its own state from the start, building — while the view keeps showing the
/// current generation; the switch makes the rebuilt one current, and registering the same
/// code again afterwards changes nothing.
pub async fn a_rebuild_builds_a_new_generation_of_the_current_code_beside_it<
    S: ProjectionStore + ?Sized,
>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    registered_and_claimed(&*store).await;
    commit(&*store, batch(0, 5, vec![insert("old", 1)])).await;
    let started = store.rebuild(NAME).await.must("rebuild");
    assert_eq!(
        started,
        RebuildStarted {
            version: 2,
            code_version: 1,
            created: true
        }
    );
    let g2 = state(&*store, 2, 0).await;
    assert_eq!(
        (g2.role, g2.code_version, g2.checkpoint, g2.status),
        (
            VersionRole::Building,
            1,
            Position::START,
            ProjectionStatus::Running
        )
    );
    assert_eq!(state(&*store, 1, 0).await.code_version, 1);
    assert!(db.pairs("SELECT id, n FROM items_v2").await.is_empty());
    assert_eq!(db.pairs(ITEMS_VIEW).await, vec![pair("old", 1)]);

    claim(&*store, 2, 0, OWNER).await.expect("free");
    let mut b = batch(0, 5, vec![insert("rebuilt", 7)]);
    b.version = 2;
    assert_eq!(commit(&*store, b).await, BatchOutcome::Committed);
    assert_eq!(db.pairs(ITEMS_VIEW).await, vec![pair("old", 1)]);
    store
        .switch(NAME, 2)
        .await
        .must("switch to the rebuilt generation");
    assert_eq!(db.pairs(ITEMS_VIEW).await, vec![pair("rebuilt", 7)]);
    assert_eq!(state(&*store, 1, 0).await.role, VersionRole::Retired);

    assert_eq!(register(&*store, &spec(1)).await, VersionRole::Current);
    let versions: Vec<(u32, u32, VersionRole)> = states(&*store)
        .await
        .iter()
        .map(|s| (s.version, s.code_version, s.role))
        .collect();
    assert_eq!(
        versions,
        vec![(1, 1, VersionRole::Retired), (2, 1, VersionRole::Current)],
        "registering the rebuilt code again creates nothing"
    );
}

/// A rebuild requested while one is building returns that one and creates nothing: an
/// interrupted rebuild resumes from its own checkpoint.
pub async fn a_rebuild_requested_twice_resumes_the_one_building<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let store = t.store;
    registered_and_claimed(&*store).await;
    let first = store.rebuild(NAME).await.must("rebuild");
    claim(&*store, first.version, 0, OWNER).await.expect("free");
    let mut b = batch(0, 3, vec![insert("a", 1)]);
    b.version = first.version;
    assert_eq!(commit(&*store, b).await, BatchOutcome::Committed);
    let again = store.rebuild(NAME).await.must("rebuild again");
    assert_eq!(
        again,
        RebuildStarted {
            version: first.version,
            code_version: 1,
            created: false
        }
    );
    assert_eq!(
        state(&*store, first.version, 0).await.checkpoint,
        Position(3)
    );
    assert_eq!(states(&*store).await.len(), 2);
}

/// New code registered after a rebuild takes the next free generation number (never one
/// a rebuild used), and drops a rebuild of the older code still building.
pub async fn new_code_after_a_rebuild_takes_the_next_generation<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    registered_and_claimed(&*store).await;
    assert_eq!(store.rebuild(NAME).await.must("rebuild").version, 2);
    assert_eq!(register(&*store, &spec(2)).await, VersionRole::Building);
    let versions: Vec<(u32, u32, VersionRole)> = states(&*store)
        .await
        .iter()
        .map(|s| (s.version, s.code_version, s.role))
        .collect();
    assert_eq!(
        versions,
        vec![(1, 1, VersionRole::Current), (3, 2, VersionRole::Building)]
    );
    assert!(
        db.rows("SELECT id, n FROM items_v2").await.is_err(),
        "the older code's rebuild is dropped"
    );
    assert!(db.pairs("SELECT id, n FROM items_v3").await.is_empty());
    assert_eq!(
        register(&*store, &spec(1)).await,
        VersionRole::Current,
        "processes still on the older code keep running its current generation"
    );
    assert_eq!(states(&*store).await.len(), 2);
}

/// A rebuild of a projection nobody registered is refused and creates nothing.
pub async fn a_rebuild_of_an_unknown_projection_is_refused<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let store = t.store;
    let e = expect_err("rebuild an unknown projection", store.rebuild(NAME).await);
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    let e = expect_err("rebuild a bad name", store.rebuild("Bad Name").await);
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    assert!(states(&*store).await.is_empty());
}

/// A schema statement that fails refuses the registration, and nothing of it stays: no
/// tables, no view, no state. Registering a good schema afterwards works.
pub async fn a_failing_schema_statement_registers_nothing<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    let mut bad = spec(1);
    bad.schema
        .push("CREATE TABLE {items} (id TEXT PRIMARY KEY)".into());
    let e = expect_err("register a failing schema", store.register(&bad).await);
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    assert!(states(&*store).await.is_empty());
    assert!(db.rows("SELECT id, n FROM items_v1").await.is_err());
    assert!(db.rows(ITEMS_VIEW).await.is_err());

    assert_eq!(register(&*store, &spec(1)).await, VersionRole::Current);
    assert!(db.pairs(ITEMS_VIEW).await.is_empty());
}

// ---------------------------------------------------------------------------------------
// Leases
// ---------------------------------------------------------------------------------------

/// A partition is leased to one owner: another gets `None` while the lease is live, the
/// holder renews it, another takes it once `now` is past its end, and a release frees it
/// at once (only the holder's release counts).
pub async fn one_owner_holds_a_lease_until_it_lapses_or_is_released<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let store = t.store;
    register(&*store, &spec(1)).await;
    let now = Utc::now();
    let lease = Duration::from_secs(10);
    let at = |secs: i64| now + chrono::Duration::seconds(secs);
    let claim_at = |owner: &'static str, secs: i64| {
        let (store, when) = (store.clone(), at(secs));
        async move {
            store
                .claim(NAME, 1, 0, owner, when, lease)
                .await
                .must("claim")
        }
    };

    let a = claim_at(OWNER, 0).await.expect("free");
    let (holder, until) = a.lease.clone().expect("leased");
    assert_eq!(holder, OWNER);
    assert_close(until, at(10), "lease end");
    assert!(claim_at(OTHER, 5).await.is_none(), "leased to a");
    let renewed = claim_at(OWNER, 1).await.expect("the holder renews");
    assert_close(
        renewed.lease.expect("leased").1,
        at(11),
        "renewed lease end",
    );
    assert!(claim_at(OTHER, 10).await.is_none(), "still a's until 11 s");

    let b = claim_at(OTHER, 12).await.expect("a's lease lapsed");
    assert_eq!(b.lease.as_ref().map(|l| l.0.as_str()), Some(OTHER));
    assert!(claim_at(OWNER, 12).await.is_none(), "now b's");

    store.release(NAME, 1, 0, OWNER).await.must("release by a");
    assert!(
        claim_at("owner-c", 12).await.is_none(),
        "only the holder's release counts"
    );
    store.release(NAME, 1, 0, OTHER).await.must("release by b");
    assert_eq!(state(&*store, 1, 0).await.lease, None);
    let c = claim_at("owner-c", 12).await.expect("released");
    assert_eq!(c.lease.map(|l| l.0), Some("owner-c".to_string()));
}

// ---------------------------------------------------------------------------------------
// Batches
// ---------------------------------------------------------------------------------------

/// A batch's statements and its checkpoint commit together; the counters add its events
/// and the lease is renewed to the given end.
pub async fn a_batch_commits_its_statements_with_the_checkpoint<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    registered_and_claimed(&*store).await;
    let until = in_secs(30);
    let outcome = store
        .commit_batch(batch(0, 5, vec![insert("a", 1), insert("b", 2)]), until)
        .await
        .must("commit");
    assert_eq!(outcome, BatchOutcome::Committed);
    let s = state(&*store, 1, 0).await;
    assert_eq!(s.checkpoint, Position(5));
    assert_eq!(s.events_applied, 5);
    let (holder, lease_end) = s.lease.expect("still leased");
    assert_eq!(holder, OWNER);
    assert_close(lease_end, until, "renewed lease");
    assert_eq!(db.pairs(ITEMS_VIEW).await, vec![pair("a", 1), pair("b", 2)]);

    let mut next = batch(5, 9, vec![insert("c", 3)]);
    next.events = 2;
    assert_eq!(commit(&*store, next).await, BatchOutcome::Committed);
    let s = state(&*store, 1, 0).await;
    assert_eq!((s.checkpoint, s.events_applied), (Position(9), 7));
    assert_eq!(db.pairs(ITEMS_VIEW).await.len(), 3);

    // A batch of no statements moves the checkpoint alone (events not ours).
    let mut empty = batch(9, 20, vec![]);
    empty.events = 0;
    assert_eq!(commit(&*store, empty).await, BatchOutcome::Committed);
    let s = state(&*store, 1, 0).await;
    assert_eq!((s.checkpoint, s.events_applied), (Position(20), 7));
}

/// A batch from a checkpoint that moved, by an owner without the lease, or of a version
/// that does not exist is `LeaseLost` and writes nothing: no rows, no checkpoint, no
/// counters, no lease renewal.
pub async fn a_stale_or_foreign_batch_writes_nothing<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    registered_and_claimed(&*store).await;
    assert_eq!(
        commit(&*store, batch(0, 5, vec![insert("a", 1)])).await,
        BatchOutcome::Committed
    );
    let before = state(&*store, 1, 0).await;

    let stale = batch(0, 7, vec![insert("stale", 2)]);
    assert_eq!(commit(&*store, stale).await, BatchOutcome::LeaseLost);
    let mut foreign = batch(5, 7, vec![insert("foreign", 3)]);
    foreign.owner = OTHER.into();
    assert_eq!(commit(&*store, foreign).await, BatchOutcome::LeaseLost);
    let mut unknown = batch(5, 7, vec![insert("unknown", 4)]);
    unknown.version = 9;
    assert_eq!(commit(&*store, unknown).await, BatchOutcome::LeaseLost);
    assert_eq!(db.pairs(ITEMS_VIEW).await, vec![pair("a", 1)]);
    assert_eq!(state(&*store, 1, 0).await, before, "nothing moved");

    // Once another owner took the lapsed lease over, the old holder's batch is refused.
    let later = before.lease.as_ref().expect("leased").1 + chrono::Duration::seconds(1);
    store
        .claim(NAME, 1, 0, OTHER, later, LEASE_LONG)
        .await
        .must("claim after the lease")
        .expect("the lease lapsed");
    assert_eq!(
        commit(&*store, batch(5, 7, vec![insert("late", 5)])).await,
        BatchOutcome::LeaseLost
    );
    let mut taken_over = batch(5, 7, vec![insert("b", 6)]);
    taken_over.owner = OTHER.into();
    assert_eq!(commit(&*store, taken_over).await, BatchOutcome::Committed);
    assert_eq!(db.pairs(ITEMS_VIEW).await, vec![pair("a", 1), pair("b", 6)]);
}

/// The same batch committed by many tasks at once commits once; the others are
/// `LeaseLost` (the checkpoint moved under them).
pub async fn racing_commits_of_one_batch_commit_once<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    registered_and_claimed(&*store).await;
    let mut racers = Vec::new();
    for n in 0..RACERS {
        let store = store.clone();
        racers.push(tokio::spawn(async move {
            store
                .commit_batch(batch(0, 3, vec![insert(&format!("r{n}"), 1)]), in_secs(60))
                .await
        }));
    }
    let mut won = 0;
    for racer in racers {
        match racer.await.expect("racer task").must("commit") {
            BatchOutcome::Committed => won += 1,
            BatchOutcome::LeaseLost => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one racer commits");
    assert_eq!(db.pairs(ITEMS_VIEW).await.len(), 1);
    let s = state(&*store, 1, 0).await;
    assert_eq!((s.checkpoint, s.events_applied), (Position(3), 3));
}

/// A failing statement — a unique violation, a syntax error, a NOT NULL violation, too
/// few parameters — is `StatementFailed` with its index, and the whole batch is rolled
/// back: the statements before it, the checkpoint, the counters, the lease renewal. The
/// store goes on committing afterwards.
pub async fn a_failing_statement_rolls_the_whole_batch_back<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    registered_and_claimed(&*store).await;
    let before = state(&*store, 1, 0).await;
    let failing: [(Vec<Statement>, usize); 4] = [
        (vec![insert("a", 1), insert("a", 2)], 1),
        (
            vec![sql("INSERT INTO {items} VALUES (", vec![]), insert("b", 1)],
            0,
        ),
        (
            vec![
                insert("c", 1),
                insert("d", 2),
                sql(
                    "INSERT INTO {items} (id, n) VALUES ($1, NULL)",
                    vec!["e".into()],
                ),
            ],
            2,
        ),
        (
            vec![
                insert("f", 1),
                sql(
                    "INSERT INTO {items} (id, n) VALUES ($1, $2)",
                    vec!["g".into()],
                ),
            ],
            1,
        ),
    ];
    for (statements, at) in failing {
        let what = format!("{statements:?}");
        let outcome = store
            .commit_batch(batch(0, 5, statements), in_secs(120))
            .await
            .must("commit");
        match outcome {
            BatchOutcome::StatementFailed { index, error } => {
                assert_eq!(index, at, "{what}: {error}");
                assert!(!error.is_empty());
            }
            other => panic!("{what}: expected StatementFailed at {at}, got {other:?}"),
        }
        assert!(db.pairs(ITEMS_VIEW).await.is_empty(), "{what}: rolled back");
        assert_eq!(
            state(&*store, 1, 0).await,
            before,
            "{what}: checkpoint, counters and lease unchanged"
        );
    }
    assert_eq!(
        commit(&*store, batch(0, 5, vec![insert("a", 1)])).await,
        BatchOutcome::Committed
    );
    assert_eq!(db.pairs(ITEMS_VIEW).await, vec![pair("a", 1)]);
}

/// `$n` binds the n-th parameter wherever it stands: out of order, repeated, in a
/// sub-select and in expressions.
pub async fn parameters_bind_by_number_in_any_order_and_repeated<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    registered_and_claimed(&*store).await;
    let once = "INSERT INTO {items} (id, n) SELECT $1, $2 \
                WHERE NOT EXISTS (SELECT 1 FROM {items} WHERE id = $1)";
    let statements = vec![
        sql(
            "INSERT INTO {items} (id, n) VALUES ($2, $1)",
            vec![5.into(), "x".into()],
        ),
        sql(once, vec!["y".into(), 6.into()]),
        sql(once, vec!["x".into(), 99.into()]),
        sql(
            "UPDATE {items} SET n = $1 * 10 + n WHERE id = $2 AND $1 > 0",
            vec![1.into(), "y".into()],
        ),
    ];
    assert_eq!(
        commit(&*store, batch(0, 4, statements)).await,
        BatchOutcome::Committed
    );
    assert_eq!(
        db.pairs(ITEMS_VIEW).await,
        vec![pair("x", 5), pair("y", 16)]
    );
}

/// NULL, integers, reals, text and bytes round-trip through statement parameters, into
/// columns of each type; one statement's SQL may be run with different kinds of values
/// (NULL, or an integer into a real column) in one batch.
pub async fn every_value_kind_round_trips<S: ProjectionStore + ?Sized>(t: StoreUnderTest<S>) {
    let (store, db) = (t.store, t.read_model);
    let bytes = match store.dialect() {
        Dialect::Sqlite => "BLOB",
        Dialect::Postgres => "BYTEA",
    };
    let spec = VersionSpec {
        name: NAME.into(),
        version: 1,
        tables: vec!["vals".into()],
        schema: vec![format!(
            "CREATE TABLE {{vals}} (id TEXT PRIMARY KEY, i BIGINT, r DOUBLE PRECISION, \
             t TEXT, b {bytes})"
        )],
        partitions: 1,
    };
    register(&*store, &spec).await;
    claim(&*store, 1, 0, OWNER).await.expect("free");
    let text = "é ' \" \\ \n ✓ {x}";
    let insert = "INSERT INTO {vals} (id, i, r, t, b) VALUES ($1, $2, $3, $4, $5)";
    let statements = vec![
        sql(
            insert,
            vec![
                "nulls".into(),
                SqlValue::Null,
                SqlValue::Null,
                SqlValue::Null,
                SqlValue::Null,
            ],
        ),
        sql(
            insert,
            vec![
                "values".into(),
                SqlValue::Int(i64::MAX),
                SqlValue::Real(2.5),
                SqlValue::Text(text.into()),
                SqlValue::Blob(vec![0, 255, 1, 0]),
            ],
        ),
        sql(
            insert,
            vec![
                "mixed".into(),
                SqlValue::Int(i64::MIN),
                SqlValue::Int(3),
                SqlValue::Text(String::new()),
                SqlValue::Blob(vec![]),
            ],
        ),
        sql(
            insert,
            vec![
                "more".into(),
                SqlValue::Int(-7),
                SqlValue::Real(-1.0e300),
                SqlValue::Null,
                SqlValue::Blob(vec![7]),
            ],
        ),
        // NULL where its type comes from an expression, not a column.
        sql(
            "UPDATE {vals} SET i = COALESCE($2, i), t = $3 WHERE id = $1",
            vec!["more".into(), SqlValue::Null, "set".into()],
        ),
    ];
    let mut b = batch(0, 5, statements);
    b.events = 5;
    assert_eq!(commit(&*store, b).await, BatchOutcome::Committed);
    let rows = db
        .rows("SELECT id, i, r, t, b FROM vals ORDER BY id")
        .await
        .expect("query the values");
    let expected = vec![
        vec![
            SqlValue::Text("mixed".into()),
            SqlValue::Int(i64::MIN),
            SqlValue::Real(3.0),
            SqlValue::Text(String::new()),
            SqlValue::Blob(vec![]),
        ],
        vec![
            SqlValue::Text("more".into()),
            SqlValue::Int(-7),
            SqlValue::Real(-1.0e300),
            SqlValue::Text("set".into()),
            SqlValue::Blob(vec![7]),
        ],
        vec![
            SqlValue::Text("nulls".into()),
            SqlValue::Null,
            SqlValue::Null,
            SqlValue::Null,
            SqlValue::Null,
        ],
        vec![
            SqlValue::Text("values".into()),
            SqlValue::Int(i64::MAX),
            SqlValue::Real(2.5),
            SqlValue::Text(text.into()),
            SqlValue::Blob(vec![0, 255, 1, 0]),
        ],
    ];
    assert_eq!(rows, expected);
}

/// A statement naming a `{table}` the projection does not own (or an unclosed `{`) is
/// refused as invalid, and nothing of the batch is written.
pub async fn a_table_the_projection_does_not_own_is_refused<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    registered_and_claimed(&*store).await;
    let before = state(&*store, 1, 0).await;
    for bad in [
        "INSERT INTO {others} (id, n) VALUES ($1, $2)",
        "INSERT INTO {items (id, n) VALUES ($1, $2)",
    ] {
        let statements = vec![insert("a", 1), sql(bad, vec!["b".into(), 2.into()])];
        let e = expect_err(
            bad,
            store
                .commit_batch(batch(0, 2, statements), in_secs(60))
                .await,
        );
        assert!(matches!(e, StoreError::InvalidArgument(_)), "{bad}: {e:?}");
        assert!(db.pairs(ITEMS_VIEW).await.is_empty(), "{bad}: rolled back");
        assert_eq!(state(&*store, 1, 0).await, before, "{bad}: nothing moved");
    }
}

/// Outbox messages of a batch are written with it, and not at all when the batch is lost
/// or a statement fails.
pub async fn outbox_messages_commit_with_the_batch_or_not_at_all<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    registered_and_claimed(&*store).await;
    let outbox = "SELECT topic, count(*) FROM outbox_messages GROUP BY topic";
    let mut sends = batch(0, 2, vec![insert("a", 1)]);
    sends.outbox = vec![message(1), message(2)];
    assert_eq!(commit(&*store, sends).await, BatchOutcome::Committed);
    assert_eq!(db.pairs(outbox).await, vec![pair(TOPIC, 2)]);

    let mut lost = batch(0, 4, vec![insert("b", 1)]);
    lost.outbox = vec![message(3)];
    assert_eq!(commit(&*store, lost).await, BatchOutcome::LeaseLost);
    let mut failed = batch(2, 4, vec![insert("a", 1)]);
    failed.outbox = vec![message(4)];
    assert!(matches!(
        commit(&*store, failed).await,
        BatchOutcome::StatementFailed { index: 0, .. }
    ));
    assert_eq!(
        db.pairs(outbox).await,
        vec![pair(TOPIC, 2)],
        "refused batches send nothing"
    );
}

// ---------------------------------------------------------------------------------------
// Status, skip
// ---------------------------------------------------------------------------------------

/// Pausing or faulting stops batches (`LeaseLost`, nothing written) although the lease is
/// held; a fault records the event's position and the error; resuming clears both.
/// `set_status` counts the rows it changed: every partition, or the one named.
pub async fn no_batch_commits_while_paused_or_faulted_and_resume_clears_the_error<
    S: ProjectionStore + ?Sized,
>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    register(&*store, &spec_of(NAME, 1, &[ITEMS], 2)).await;
    claim(&*store, 1, 0, OWNER).await.expect("free");

    let paused = store
        .set_status(NAME, 1, None, ProjectionStatus::Paused, None)
        .await
        .must("pause");
    assert_eq!(paused, 2, "every partition");
    assert!(states(&*store)
        .await
        .iter()
        .all(|s| s.status == ProjectionStatus::Paused));
    assert_eq!(
        commit(&*store, batch(0, 3, vec![insert("a", 1)])).await,
        BatchOutcome::LeaseLost
    );

    let faulted = store
        .set_status(
            NAME,
            1,
            Some(0),
            ProjectionStatus::Faulted,
            Some((Position(7), "boom".into())),
        )
        .await
        .must("fault");
    assert_eq!(faulted, 1);
    let s = state(&*store, 1, 0).await;
    assert_eq!(s.status, ProjectionStatus::Faulted);
    assert_eq!(s.failed_position, Some(Position(7)));
    assert_eq!(s.last_error.as_deref(), Some("boom"));
    assert_eq!(state(&*store, 1, 1).await.status, ProjectionStatus::Paused);
    assert_eq!(
        commit(&*store, batch(0, 3, vec![insert("a", 1)])).await,
        BatchOutcome::LeaseLost
    );
    assert!(db.pairs(ITEMS_VIEW).await.is_empty());
    assert_eq!(state(&*store, 1, 0).await.checkpoint, Position::START);

    let resumed = store
        .set_status(NAME, 1, None, ProjectionStatus::Running, None)
        .await
        .must("resume");
    assert_eq!(resumed, 2);
    for s in states(&*store).await {
        assert_eq!(s.status, ProjectionStatus::Running);
        assert_eq!((&s.last_error, s.failed_position), (&None, None), "{s:?}");
    }
    assert_eq!(
        commit(&*store, batch(0, 3, vec![insert("a", 1)])).await,
        BatchOutcome::Committed
    );
    assert_eq!(
        store
            .set_status(NAME, 9, None, ProjectionStatus::Paused, None)
            .await
            .must("pause an unknown version"),
        0
    );
}

/// Skipping a faulted partition moves its checkpoint to the failed event (so the next
/// batch starts after it) and resumes it; a partition that is not faulted is not skipped.
pub async fn skip_moves_the_checkpoint_to_the_failed_event_and_resumes<
    S: ProjectionStore + ?Sized,
>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    registered_and_claimed(&*store).await;
    assert!(!store.skip_failed(NAME, 1, 0).await.must("skip running"));
    commit(&*store, batch(0, 3, vec![insert("a", 1)])).await;
    store
        .set_status(
            NAME,
            1,
            Some(0),
            ProjectionStatus::Faulted,
            Some((Position(5), "bad event".into())),
        )
        .await
        .must("fault");
    assert!(store.skip_failed(NAME, 1, 0).await.must("skip"));
    let s = state(&*store, 1, 0).await;
    assert_eq!(s.checkpoint, Position(5));
    assert_eq!(s.status, ProjectionStatus::Running);
    assert_eq!((&s.last_error, s.failed_position), (&None, None));
    assert_eq!(s.events_applied, 3, "a skipped event is not applied");
    assert!(!store.skip_failed(NAME, 1, 0).await.must("skip again"));
    assert!(!store.skip_failed(NAME, 9, 0).await.must("skip unknown"));
    assert_eq!(
        commit(&*store, batch(5, 6, vec![insert("b", 2)])).await,
        BatchOutcome::Committed
    );
    assert_eq!(db.pairs(ITEMS_VIEW).await, vec![pair("a", 1), pair("b", 2)]);
}

// ---------------------------------------------------------------------------------------
// Switching and dropping versions
// ---------------------------------------------------------------------------------------

/// Switching makes the building version current and retires the current one; the views
/// show the new version's rows, the retired tables stay. Switching the current version
/// again does nothing; a retired or unknown version cannot be switched to.
pub async fn switch_makes_the_built_version_current_and_the_views_follow<
    S: ProjectionStore + ?Sized,
>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    registered_and_claimed(&*store).await;
    commit(&*store, batch(0, 4, vec![insert("old", 1)])).await;
    register(&*store, &spec(2)).await;
    claim(&*store, 2, 0, OWNER).await.expect("free");
    let mut b = batch(0, 4, vec![insert("new", 2)]);
    b.version = 2;
    commit(&*store, b).await;
    assert_eq!(db.pairs(ITEMS_VIEW).await, vec![pair("old", 1)]);

    store.switch(NAME, 2).await.must("switch");
    let roles: Vec<(u32, VersionRole)> = states(&*store)
        .await
        .iter()
        .map(|s| (s.version, s.role))
        .collect();
    assert_eq!(
        roles,
        vec![(1, VersionRole::Retired), (2, VersionRole::Current)]
    );
    assert_eq!(db.pairs(ITEMS_VIEW).await, vec![pair("new", 2)]);
    assert_eq!(
        db.pairs("SELECT id, n FROM items_v1").await,
        vec![pair("old", 1)],
        "retired tables stay until dropped"
    );

    store
        .switch(NAME, 2)
        .await
        .must("switch to the current version");
    assert_eq!(state(&*store, 2, 0).await.role, VersionRole::Current);
    let e = expect_err("switch to a retired version", store.switch(NAME, 1).await);
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    let e = expect_err("switch to an unknown version", store.switch(NAME, 7).await);
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    assert_eq!(db.pairs(ITEMS_VIEW).await, vec![pair("new", 2)]);
    assert_eq!(register(&*store, &spec(3)).await, VersionRole::Building);
}

/// A table the new version does not own loses its view at the switch (the plain names
/// show the current version only), so the retired version can be dropped.
pub async fn a_switch_drops_views_of_tables_the_new_version_does_not_own<
    S: ProjectionStore + ?Sized,
>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    register(&*store, &spec_of(NAME, 1, &[ITEMS, "extras"], 1)).await;
    assert!(db.pairs("SELECT id, n FROM extras").await.is_empty());
    register(&*store, &spec_of(NAME, 2, &[ITEMS], 1)).await;
    store.switch(NAME, 2).await.must("switch");
    assert!(
        db.rows("SELECT id, n FROM extras").await.is_err(),
        "no view of a table the current version does not own"
    );
    assert!(db.pairs(ITEMS_VIEW).await.is_empty());
    store.drop_version(NAME, 1).await.must("drop version 1");
    assert!(db.rows("SELECT id, n FROM extras_v1").await.is_err());
    assert!(db.pairs(ITEMS_VIEW).await.is_empty());
}

/// Dropping a retired version drops its tables and state rows; the current version is
/// never dropped, and an unknown version is an error.
pub async fn drop_version_drops_a_retired_version_but_never_the_current_one<
    S: ProjectionStore + ?Sized,
>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    registered_and_claimed(&*store).await;
    commit(&*store, batch(0, 2, vec![insert("old", 1)])).await;
    register(&*store, &spec(2)).await;
    claim(&*store, 2, 0, OWNER).await.expect("free");
    let mut b = batch(0, 2, vec![insert("new", 2)]);
    b.version = 2;
    commit(&*store, b).await;
    store.switch(NAME, 2).await.must("switch");

    let e = expect_err(
        "drop the current version",
        store.drop_version(NAME, 2).await,
    );
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    assert_eq!(
        db.pairs("SELECT id, n FROM items_v2").await,
        vec![pair("new", 2)]
    );

    store
        .drop_version(NAME, 1)
        .await
        .must("drop the retired version");
    assert!(db.rows("SELECT id, n FROM items_v1").await.is_err());
    let left: Vec<u32> = states(&*store).await.iter().map(|s| s.version).collect();
    assert_eq!(left, vec![2]);
    assert_eq!(db.pairs(ITEMS_VIEW).await, vec![pair("new", 2)]);
    let e = expect_err("drop it again", store.drop_version(NAME, 1).await);
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    let e = expect_err(
        "register the dropped version",
        store.register(&spec(1)).await,
    );
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
}

// ---------------------------------------------------------------------------------------
// States, partitions
// ---------------------------------------------------------------------------------------

/// `states` lists every projection's versions and partitions by name, version and
/// partition, with their roles, partition counts and applied-event counters; a name
/// filters.
pub async fn states_list_every_version_and_partition_in_order<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let store = t.store;
    register(&*store, &spec_of("beta", 1, &["beta_items"], 2)).await;
    register(&*store, &spec_of("alpha", 1, &["alpha_items"], 1)).await;
    register(&*store, &spec_of("alpha", 2, &["alpha_items"], 1)).await;
    store
        .claim("alpha", 1, 0, OWNER, Utc::now(), LEASE_LONG)
        .await
        .must("claim")
        .expect("free");
    let mut b = batch(0, 10, vec![insert_into("alpha_items", "a", 1)]);
    b.name = "alpha".into();
    b.events = 4;
    assert_eq!(commit(&*store, b).await, BatchOutcome::Committed);

    let all = store.states(None).await.must("states");
    let seen: Vec<(&str, u32, u32, u32, VersionRole, u64, u64)> = all
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.version,
                s.partition,
                s.partitions,
                s.role,
                s.checkpoint.get(),
                s.events_applied,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("alpha", 1, 0, 1, VersionRole::Current, 10, 4),
            ("alpha", 2, 0, 1, VersionRole::Building, 0, 0),
            ("beta", 1, 0, 2, VersionRole::Current, 0, 0),
            ("beta", 1, 1, 2, VersionRole::Current, 0, 0),
        ]
    );
    let beta = store.states(Some("beta")).await.must("states of beta");
    assert_eq!(beta.len(), 2);
    assert!(beta.iter().all(|s| s.name == "beta"));
    assert!(store
        .states(Some("gamma"))
        .await
        .must("states of gamma")
        .is_empty());
}

/// A version of 3 partitions has 3 state rows, each leased, committed and counted on its
/// own.
pub async fn partitions_are_claimed_and_committed_independently<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    register(&*store, &spec_of(NAME, 1, &[ITEMS], 3)).await;
    let rows = states(&*store).await;
    assert_eq!(
        rows.iter()
            .map(|s| (s.partition, s.partitions))
            .collect::<Vec<_>>(),
        vec![(0, 3), (1, 3), (2, 3)]
    );
    let owners = [OWNER, OTHER, "owner-c"];
    for (p, owner) in owners.iter().enumerate() {
        claim(&*store, 1, p as u32, owner)
            .await
            .unwrap_or_else(|| panic!("partition {p} is free"));
    }
    assert!(claim(&*store, 1, 0, OTHER).await.is_none());

    let on = |partition: u32, from: u64, to: u64, owner: &str, id: &str| {
        let mut b = batch(from, to, vec![insert(id, i64::from(partition))]);
        b.partition = partition;
        b.owner = owner.into();
        b
    };
    assert_eq!(
        commit(&*store, on(0, 0, 4, OWNER, "p0")).await,
        BatchOutcome::Committed
    );
    assert_eq!(
        commit(&*store, on(1, 0, 9, OTHER, "p1")).await,
        BatchOutcome::Committed
    );
    assert_eq!(
        commit(&*store, on(2, 0, 2, OWNER, "p2-by-a")).await,
        BatchOutcome::LeaseLost,
        "a holds partition 0, not 2"
    );
    assert_eq!(
        commit(&*store, on(2, 0, 2, "owner-c", "p2")).await,
        BatchOutcome::Committed
    );
    let seen: Vec<(u32, u64, u64, String)> = states(&*store)
        .await
        .into_iter()
        .map(|s| {
            (
                s.partition,
                s.checkpoint.get(),
                s.events_applied,
                s.lease.map(|l| l.0).unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (0, 4, 4, OWNER.to_string()),
            (1, 9, 9, OTHER.to_string()),
            (2, 2, 2, "owner-c".to_string()),
        ]
    );
    assert_eq!(
        db.pairs(ITEMS_VIEW).await,
        vec![pair("p0", 0), pair("p1", 1), pair("p2", 2)]
    );
}

/// Bad names, versions, partition counts and leases are refused as invalid before
/// anything is written.
pub async fn bad_input_is_refused_and_changes_nothing<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let store = t.store;
    let mut bad_specs = Vec::new();
    for name in ["Orders", "1st", "a;drop", ""] {
        bad_specs.push(spec_of(name, 1, &[ITEMS], 1));
    }
    bad_specs.push(spec(0));
    bad_specs.push(spec_of(NAME, 1, &[ITEMS], 0));
    bad_specs.push(spec_of(NAME, 1, &[ITEMS], PARTITIONS_MAX + 1));
    bad_specs.push(spec_of(NAME, 1, &["Items"], 1));
    bad_specs.push(spec_of(NAME, 1, &[], 1));
    for spec in bad_specs {
        let what = format!(
            "register {:?} v{} {:?}",
            spec.name, spec.version, spec.tables
        );
        let e = expect_err(&what, store.register(&spec).await);
        assert!(matches!(e, StoreError::InvalidArgument(_)), "{what}: {e:?}");
    }
    assert!(store.states(None).await.must("states").is_empty());

    register(&*store, &spec(1)).await;
    let e = expect_err(
        "a lease past the end of time",
        store
            .claim(NAME, 1, 0, OWNER, Utc::now(), Duration::MAX)
            .await,
    );
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    assert_eq!(state(&*store, 1, 0).await.lease, None);
    let e = expect_err(
        "claim a bad name",
        store
            .claim("Bad", 1, 0, OWNER, Utc::now(), LEASE_LONG)
            .await,
    );
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    let mut bad = batch(0, 1, vec![]);
    bad.name = "Bad".into();
    let e = expect_err(
        "commit a bad name",
        store.commit_batch(bad, in_secs(60)).await,
    );
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    let e = expect_err("switch a bad name", store.switch("Bad", 1).await);
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    let e = expect_err(
        "drop an unknown projection",
        store.drop_version("nothing", 1).await,
    );
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
}
