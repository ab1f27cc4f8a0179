//! The PostgreSQL projection store: the shared conformance suite; NULL and values bound
//! into columns of types the suite does not use; a committed batch's outbox NOTIFY; and
//! two processes sharing one schema racing claims and batches of one partition. Every
//! test runs in a fresh schema, dropped with the test's last handle.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::SchemaGuard;
use runnel_core::async_trait;
use runnel_core::outbox::OutboxStore;
use runnel_core::projection::{
    Batch, BatchOutcome, Dialect, MessageCommit, MessageOutcome, ProjectionState, ProjectionStatus,
    ProjectionStore, RebuildStarted, SqlValue, Statement, TopicSource, VersionRole, VersionSpec,
};
use runnel_core::{Message, Position, StoreError, TopicName};
use runnel_postgres::sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use runnel_postgres::sqlx::{self, AssertSqlSafe, PgPool, Row, TypeInfo, ValueRef};
use runnel_postgres::{PostgresOptions, PostgresOutbox, PostgresProjectionStore, PostgresStore};
use runnel_testkit::projections::{batch, insert, spec, ReadModel, Rows, NAME};

/// Batches the two racing owners commit between them.
const RACED_BATCHES: u64 = 200;
/// The racers' lease: short, so each takes the partition over from the other often.
const RACE_LEASE: Duration = Duration::from_millis(2);

async fn connect(url: &str, schema: &str) -> PostgresStore {
    PostgresStore::connect_with(
        PostgresOptions::new(url.to_string())
            .schema(schema.to_string())
            .pool_size(8),
    )
    .await
    .expect("connect to the test PostgreSQL")
}

/// A pool whose sessions have `schema` on their `search_path`, as an application reading
/// its projections would set it.
async fn reader_pool(url: &str, schema: &str) -> PgPool {
    let options: PgConnectOptions = url.parse().expect("a valid URL");
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.options([("search_path", schema)]))
        .await
        .expect("connect the reader")
}

fn value(row: &PgRow, i: usize) -> Result<SqlValue, String> {
    let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
    if raw.is_null() {
        return Ok(SqlValue::Null);
    }
    let type_name = raw.type_info().name().to_string();
    let e = |e: sqlx::Error| e.to_string();
    Ok(match type_name.as_str() {
        "INT2" => SqlValue::Int(i64::from(row.try_get::<i16, _>(i).map_err(e)?)),
        "INT4" => SqlValue::Int(i64::from(row.try_get::<i32, _>(i).map_err(e)?)),
        "INT8" => SqlValue::Int(row.try_get(i).map_err(e)?),
        "FLOAT4" => SqlValue::Real(f64::from(row.try_get::<f32, _>(i).map_err(e)?)),
        "FLOAT8" => SqlValue::Real(row.try_get(i).map_err(e)?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" => SqlValue::Text(row.try_get(i).map_err(e)?),
        "BYTEA" => SqlValue::Blob(row.try_get(i).map_err(e)?),
        other => {
            return Err(format!(
                "column {i} is of type {other}, not a SqlValue kind"
            ))
        }
    })
}

/// The rows of `sql` on `pool`, each column as a [`SqlValue`].
async fn select(pool: PgPool, sql: String) -> Result<Rows, String> {
    let rows = sqlx::query(AssertSqlSafe(sql))
        .fetch_all(&pool)
        .await
        .map_err(|e| e.to_string())?;
    rows.iter()
        .map(|row| (0..row.len()).map(|i| value(row, i)).collect())
        .collect()
}

/// A projection store in a fresh schema that drops the schema when the last handle goes.
struct SchemaProjections {
    projections: PostgresProjectionStore,
    // Declared last: dropped after the store.
    _schema: SchemaGuard,
}

async fn schema_projections() -> Option<(Arc<SchemaProjections>, ReadModel)> {
    let url = common::postgres_url()?;
    let schema = common::fresh_schema();
    let guard = SchemaGuard::new(&url, &schema);
    let store = connect(&url, &schema).await;
    let reader = reader_pool(&url, &schema).await;
    let read_model = ReadModel::new(move |sql| select(reader.clone(), sql));
    Some((
        Arc::new(SchemaProjections {
            projections: PostgresProjectionStore::new(store),
            _schema: guard,
        }),
        read_model,
    ))
}

#[async_trait]
impl ProjectionStore for SchemaProjections {
    fn dialect(&self) -> Dialect {
        self.projections.dialect()
    }
    async fn register(&self, spec: &VersionSpec) -> Result<VersionRole, StoreError> {
        self.projections.register(spec).await
    }
    async fn rebuild(&self, name: &str) -> Result<RebuildStarted, StoreError> {
        self.projections.rebuild(name).await
    }
    async fn states(&self, name: Option<&str>) -> Result<Vec<ProjectionState>, StoreError> {
        self.projections.states(name).await
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
        self.projections
            .claim(name, version, partition, owner, now, lease)
            .await
    }
    async fn release(
        &self,
        name: &str,
        version: u32,
        partition: u32,
        owner: &str,
    ) -> Result<(), StoreError> {
        self.projections
            .release(name, version, partition, owner)
            .await
    }
    async fn commit_batch(
        &self,
        batch: Batch,
        lease_until: DateTime<Utc>,
    ) -> Result<BatchOutcome, StoreError> {
        self.projections.commit_batch(batch, lease_until).await
    }
    async fn set_status(
        &self,
        name: &str,
        version: u32,
        partition: Option<u32>,
        status: ProjectionStatus,
        error: Option<(Position, String)>,
    ) -> Result<u64, StoreError> {
        self.projections
            .set_status(name, version, partition, status, error)
            .await
    }
    async fn skip_failed(
        &self,
        name: &str,
        version: u32,
        partition: u32,
    ) -> Result<bool, StoreError> {
        self.projections.skip_failed(name, version, partition).await
    }
    async fn switch(&self, name: &str, version: u32) -> Result<(), StoreError> {
        self.projections.switch(name, version).await
    }
    async fn drop_version(&self, name: &str, version: u32) -> Result<(), StoreError> {
        self.projections.drop_version(name, version).await
    }
    async fn set_topic_source(&self, source: &TopicSource) -> Result<(), StoreError> {
        self.projections.set_topic_source(source).await
    }
    async fn topic_sources(&self, name: Option<&str>) -> Result<Vec<TopicSource>, StoreError> {
        self.projections.topic_sources(name).await
    }
    async fn commit_message(&self, commit: MessageCommit) -> Result<MessageOutcome, StoreError> {
        self.projections.commit_message(commit).await
    }
}

runnel_testkit::projection_store_conformance!(schema_projections);

/// Claims partition 0 of version 1 for the suite's owner.
async fn claimed(store: &impl ProjectionStore) {
    store
        .claim(
            NAME,
            1,
            0,
            runnel_testkit::projections::OWNER,
            Utc::now(),
            Duration::from_secs(60),
        )
        .await
        .expect("claim")
        .expect("free");
}

/// `id`, `small`, `amount` and `doc->>'a'` as text, and `at` of a row of the `typed` table.
type TypedRow = (
    String,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_and_values_bind_into_columns_of_any_type() {
    let Some((t, _)) = schema_projections().await else {
        return;
    };
    let spec = VersionSpec {
        name: NAME.into(),
        version: 1,
        tables: vec!["typed".into()],
        schema: vec!["CREATE TABLE {typed} (id text PRIMARY KEY, small integer, \
                      amount numeric, doc jsonb, ref uuid, at timestamptz)"
            .into()],
        partitions: 1,
    };
    t.register(&spec).await.expect("register");
    claimed(&*t).await;
    let sql = "INSERT INTO {typed} (id, small, amount, doc, ref, at) \
               VALUES ($1, $2, $3, $4::jsonb, $5::uuid, $6::timestamptz)";
    let statement = |params: Vec<SqlValue>| Statement {
        sql: sql.into(),
        params,
    };
    let nulls = statement(vec![
        "nulls".into(),
        SqlValue::Null,
        SqlValue::Null,
        SqlValue::Null,
        SqlValue::Null,
        SqlValue::Null,
    ]);
    // The same text with values after NULLs: `small` was inferred `integer` for the NULL;
    // an Int is sent as `int8`, which must not reach that prepared statement.
    let values = statement(vec![
        "values".into(),
        SqlValue::Int(7),
        SqlValue::Real(2.5),
        SqlValue::Text("{\"a\": 1}".into()),
        SqlValue::Text("0190b5a4-7c3e-7000-8000-000000000001".into()),
        SqlValue::Text("2026-01-02T03:04:05Z".into()),
    ]);
    let outcome = t
        .commit_batch(
            batch(0, 2, vec![nulls.clone(), values, nulls.clone()]),
            Utc::now() + chrono::Duration::seconds(60),
        )
        .await
        .expect("commit");
    assert!(
        matches!(outcome, BatchOutcome::StatementFailed { index: 2, .. }),
        "the repeated id fails, after the others ran: {outcome:?}"
    );
    let mut again = nulls;
    again.params[0] = "nulls-2".into();
    let outcome = t
        .commit_batch(
            batch(0, 2, vec![again.clone()]),
            Utc::now() + chrono::Duration::seconds(60),
        )
        .await
        .expect("commit");
    assert_eq!(outcome, BatchOutcome::Committed);
    let store = t.projections.store();
    let rows: Vec<TypedRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT id, small, amount::text, doc->>'a', at FROM {}.typed ORDER BY id",
        store.schema()
    )))
    .fetch_all(store.pool())
    .await
    .expect("read the rows");
    assert_eq!(rows, vec![("nulls-2".to_string(), None, None, None, None)]);

    let values = statement(vec![
        "values".into(),
        SqlValue::Int(7),
        SqlValue::Int(3),
        SqlValue::Text("{\"a\": 1}".into()),
        SqlValue::Text("0190b5a4-7c3e-7000-8000-000000000001".into()),
        SqlValue::Text("2026-01-02T03:04:05Z".into()),
    ]);
    let outcome = t
        .commit_batch(
            batch(2, 3, vec![values]),
            Utc::now() + chrono::Duration::seconds(60),
        )
        .await
        .expect("commit");
    assert_eq!(outcome, BatchOutcome::Committed);
    let row: TypedRow = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT id, small, amount::text, doc->>'a', at FROM {}.typed WHERE id = 'values'",
        store.schema()
    )))
    .fetch_one(store.pool())
    .await
    .expect("read the row");
    assert_eq!(row.1, Some(7));
    assert_eq!(row.2.as_deref(), Some("3"));
    assert_eq!(row.3.as_deref(), Some("1"));
    assert_eq!(
        row.4.map(|t| t.to_rfc3339()),
        Some("2026-01-02T03:04:05+00:00".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_batch_wakes_waiting_relays() {
    let Some((t, _)) = schema_projections().await else {
        return;
    };
    t.register(&spec(1)).await.expect("register");
    claimed(&*t).await;
    let relay = PostgresOutbox::new(t.projections.store().clone())
        .await
        .expect("outbox");
    let waiter = tokio::spawn(async move {
        let started = std::time::Instant::now();
        relay
            .wait_for_messages(Duration::from_secs(30))
            .await
            .expect("wait");
        started.elapsed()
    });
    // The relay listens from `new` on, so this NOTIFY reaches it whether or not it has
    // begun waiting; without it the waiter would sleep its whole 30 s.
    let mut sends = batch(0, 1, vec![insert("a", 1)]);
    sends.outbox = vec![runnel_core::outbox::OutboxMessage::new(
        TopicName::new("projection.news").expect("a valid topic"),
        Message::json("Counted", &serde_json::json!({"n": 1})),
    )];
    assert_eq!(
        t.commit_batch(sends, Utc::now() + chrono::Duration::seconds(60))
            .await
            .expect("commit"),
        BatchOutcome::Committed
    );
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken well before the 30 s poll")
        .expect("join");
    assert!(
        waited < Duration::from_secs(10),
        "woken by NOTIFY, not the poll"
    );
}

/// Two processes on one fresh schema: two stores, each with its own pool.
struct SharedSchema {
    processes: [PostgresProjectionStore; 2],
    _schema: SchemaGuard,
}

async fn shared_schema() -> Option<SharedSchema> {
    let url = common::postgres_url()?;
    let schema = common::fresh_schema();
    let guard = SchemaGuard::new(&url, &schema);
    let first = PostgresProjectionStore::new(connect(&url, &schema).await);
    let second = PostgresProjectionStore::new(connect(&url, &schema).await);
    Some(SharedSchema {
        processes: [first, second],
        _schema: guard,
    })
}

/// What one racing owner saw: the ranges it committed and the checkpoints its claims
/// returned, in order.
struct Raced {
    committed: Vec<(u64, u64)>,
    claimed_at: Vec<u64>,
    lost: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_owners_across_processes_commit_each_range_exactly_once() {
    let Some(shared) = shared_schema().await else {
        return;
    };
    assert_eq!(
        shared.processes[0]
            .register(&spec(1))
            .await
            .expect("register"),
        VersionRole::Current
    );
    // The watcher and the two racers start together.
    let start = Arc::new(tokio::sync::Barrier::new(3));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (process, start, done) = (shared.processes[0].clone(), start.clone(), done.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            start.wait().await;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let states = process.states(Some(NAME)).await.expect("states");
                seen.push(states[0].checkpoint.get());
            }
            seen
        })
    };
    let mut racers = Vec::new();
    for (p, process) in shared.processes.iter().enumerate() {
        let (process, start) = (process.clone(), start.clone());
        racers.push(tokio::spawn(async move {
            let owner = format!("process-{p}");
            let mut raced = Raced {
                committed: Vec::new(),
                claimed_at: Vec::new(),
                lost: 0,
            };
            start.wait().await;
            loop {
                let claim = process
                    .claim(NAME, 1, 0, &owner, Utc::now(), RACE_LEASE)
                    .await
                    .expect("claim");
                let Some(state) = claim else {
                    tokio::task::yield_now().await;
                    continue;
                };
                let from = state.checkpoint.get();
                raced.claimed_at.push(from);
                if from >= RACED_BATCHES {
                    return raced;
                }
                // The row's id is the range: committing a range twice would fail on the
                // primary key (StatementFailed), which the match below refuses.
                let mut b = batch(from, from + 1, vec![insert(&format!("range-{from}"), 1)]);
                b.owner = owner.clone();
                let lease_until = Utc::now() + chrono::Duration::from_std(RACE_LEASE).unwrap();
                match process.commit_batch(b, lease_until).await.expect("commit") {
                    BatchOutcome::Committed => raced.committed.push((from, from + 1)),
                    BatchOutcome::LeaseLost => raced.lost += 1,
                    other => panic!("{owner}: batch from {from}: {other:?}"),
                }
            }
        }));
    }
    let mut all = Vec::new();
    for racer in racers {
        let raced = racer.await.expect("racer task");
        assert!(
            raced.claimed_at.windows(2).all(|w| w[0] <= w[1]),
            "a claim saw the checkpoint go back: {:?}",
            raced.claimed_at
        );
        eprintln!(
            "racer committed {} batches, lost {}",
            raced.committed.len(),
            raced.lost
        );
        all.extend(raced.committed);
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let watched = watcher.await.expect("watcher task");
    assert!(
        watched.windows(2).all(|w| w[0] <= w[1]),
        "the checkpoint went back"
    );

    all.sort_unstable();
    let expected: Vec<(u64, u64)> = (0..RACED_BATCHES).map(|n| (n, n + 1)).collect();
    assert_eq!(all, expected, "every range committed exactly once");
    let state = &shared.processes[1]
        .states(Some(NAME))
        .await
        .expect("states")[0];
    assert_eq!(state.checkpoint, Position(RACED_BATCHES));
    assert_eq!(state.events_applied, RACED_BATCHES);
    let store = shared.processes[0].store();
    let ids: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT id FROM {}.items",
        store.schema()
    )))
    .fetch_all(store.pool())
    .await
    .expect("read the rows");
    let ids: BTreeSet<String> = ids.into_iter().collect();
    assert_eq!(ids.len() as u64, RACED_BATCHES);
}
