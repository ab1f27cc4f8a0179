//! Shared helpers: every test gets its own schema, so tests run in parallel on one database.

use std::sync::Arc;

use runnel_postgres::sqlx;
use runnel_postgres::{PostgresOptions, PostgresStore};

/// The test database URL, or `None` (the test then reports itself skipped, unless
/// `RUNNEL_REQUIRE_SERVICES=1`, in which case a missing URL fails it).
pub fn postgres_url() -> Option<String> {
    match std::env::var("RUNNEL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "RUNNEL_TEST_POSTGRES_URL is not set but RUNNEL_REQUIRE_SERVICES=1"
            );
            eprintln!("SKIPPED: RUNNEL_TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// A fresh schema name for one test.
pub fn fresh_schema() -> String {
    format!("t_{}", runnel_core::uuid::Uuid::now_v7().simple())
}

/// A store in a fresh schema.
#[allow(dead_code)]
pub async fn fresh_store() -> Option<Arc<PostgresStore>> {
    let url = postgres_url()?;
    let store = PostgresStore::connect_with(PostgresOptions::new(url).schema(fresh_schema()))
        .await
        .expect("connect to the test PostgreSQL");
    Some(Arc::new(store))
}

/// Sequential scans of `table` in the current transaction of `conn`.
#[allow(dead_code)]
pub async fn seq_scans_in_transaction(conn: &mut sqlx::PgConnection, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT pg_stat_get_xact_numscans('{table}'::regclass)"
    )))
    .fetch_one(conn)
    .await
    .expect("read the transaction's scan counter")
}

/// Waits until one of this store's appends waits for the append lock; returns its backend.
#[allow(dead_code)]
pub async fn append_waiting_on_the_lock(store: &PostgresStore) -> i32 {
    let monitor = sqlx::PgPool::connect(&postgres_url().unwrap())
        .await
        .expect("connect the monitor");
    let pattern = format!("%{}.%", store.schema());
    let found = Arc::new(std::sync::Mutex::new(None));
    runnel_testkit::harness::wait_until(
        std::time::Duration::from_secs(20),
        "an append waiting for the append lock",
        || {
            let (monitor, pattern, found) = (monitor.clone(), pattern.clone(), found.clone());
            async move {
                let pid: Option<i32> = sqlx::query_scalar(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                     AND query LIKE $1 AND datname = current_database() LIMIT 1",
                )
                .bind(pattern)
                .fetch_optional(&monitor)
                .await
                .unwrap();
                *found.lock().unwrap() = pid;
                pid.is_some()
            }
        },
    )
    .await;
    monitor.close().await;
    let pid = found.lock().unwrap().expect("found above");
    pid
}

/// Drops a test's schema when dropped: hold it beside the test's stores, so the schema
/// goes with the test's last handle.
#[allow(dead_code)]
pub struct SchemaGuard {
    url: String,
    schema: String,
}

#[allow(dead_code)]
impl SchemaGuard {
    /// A guard for `schema` in the database at `url`.
    pub fn new(url: &str, schema: &str) -> Self {
        SchemaGuard {
            url: url.to_string(),
            schema: schema.to_string(),
        }
    }
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Drop runs inside the test's runtime: drop the schema from a thread of its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE"
                )))
                .execute(&mut conn)
                .await
                .expect("drop the test schema");
            });
        });
        let _ = done.join();
    }
}

/// Every migration of this build, in order (`MIGRATIONS[i]` is version `i + 1`), for the
/// upgrade tests that build a schema as an older build left it.
#[allow(dead_code)]
pub const MIGRATIONS: [&str; 15] = [
    include_str!("../../src/migrations/0001_event_store.sql"),
    include_str!("../../src/migrations/0002_bus.sql"),
    include_str!("../../src/migrations/0003_dead_letters.sql"),
    include_str!("../../src/migrations/0004_idempotency.sql"),
    include_str!("../../src/migrations/0005_outbox.sql"),
    include_str!("../../src/migrations/0006_blobs.sql"),
    include_str!("../../src/migrations/0007_append_plans.sql"),
    include_str!("../../src/migrations/0008_append_one.sql"),
    include_str!("../../src/migrations/0009_processors.sql"),
    include_str!("../../src/migrations/0010_projections.sql"),
    include_str!("../../src/migrations/0011_projection_generations.sql"),
    include_str!("../../src/migrations/0012_projection_topics.sql"),
    include_str!("../../src/migrations/0013_bus_concurrency.sql"),
    include_str!("../../src/migrations/0014_outbox_unkeyed.sql"),
    include_str!("../../src/migrations/0015_bus_head_probe.sql"),
];

/// SQL that creates `schema` at `version`: the migrations up to it applied and recorded,
/// as a build of that version leaves it.
#[allow(dead_code)]
pub fn schema_at_version_sql(schema: &str, version: usize) -> String {
    let mut setup = format!(
        "CREATE SCHEMA {schema}; \
         CREATE TABLE {schema}.runnel_migrations (version integer PRIMARY KEY, \
            name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());"
    );
    for (i, sql) in MIGRATIONS[..version].iter().enumerate() {
        setup.push_str(&sql.replace("__SCHEMA__", schema));
        setup.push_str(&format!(
            ";\nINSERT INTO {schema}.runnel_migrations (version, name) VALUES ({}, 'm');\n",
            i + 1
        ));
    }
    setup
}
