//! Versioned migrations shipped in the crate and applied on open. Safe when several
//! processes start at once: they serialize on a session advisory lock.

use sqlx::PgPool;

use runnel_core::StoreError;

use crate::error_map::map_sqlx;

/// Every migration, in order. The SQL uses `__SCHEMA__` for the schema name.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "event_store",
        include_str!("migrations/0001_event_store.sql"),
    ),
    (2, "bus", include_str!("migrations/0002_bus.sql")),
    (
        3,
        "dead_letters",
        include_str!("migrations/0003_dead_letters.sql"),
    ),
    (
        4,
        "idempotency",
        include_str!("migrations/0004_idempotency.sql"),
    ),
    (5, "outbox", include_str!("migrations/0005_outbox.sql")),
    (6, "blobs", include_str!("migrations/0006_blobs.sql")),
    (
        7,
        "append_plans",
        include_str!("migrations/0007_append_plans.sql"),
    ),
    (
        8,
        "append_one",
        include_str!("migrations/0008_append_one.sql"),
    ),
    (
        9,
        "processors",
        include_str!("migrations/0009_processors.sql"),
    ),
    (
        10,
        "projections",
        include_str!("migrations/0010_projections.sql"),
    ),
    (
        11,
        "projection_generations",
        include_str!("migrations/0011_projection_generations.sql"),
    ),
    (
        12,
        "projection_topics",
        include_str!("migrations/0012_projection_topics.sql"),
    ),
    (
        13,
        "bus_concurrency",
        include_str!("migrations/0013_bus_concurrency.sql"),
    ),
    (
        14,
        "outbox_unkeyed",
        include_str!("migrations/0014_outbox_unkeyed.sql"),
    ),
    (
        15,
        "bus_head_probe",
        include_str!("migrations/0015_bus_head_probe.sql"),
    ),
];

/// The schema version this build needs.
pub const SCHEMA_VERSION: i32 = 15;

/// Applies every missing migration to `schema`.
pub(crate) async fn migrate(pool: &PgPool, schema: &str, lock_key: i64) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await.map_err(map_sqlx)?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock_key)
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    let result = apply(&mut conn, schema).await;
    // Unlock even on failure; a lost connection drops the lock anyway.
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock_key)
        .execute(&mut *conn)
        .await;
    result
}

async fn apply(conn: &mut sqlx::PgConnection, schema: &str) -> Result<(), StoreError> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; \
         CREATE TABLE IF NOT EXISTS {schema}.runnel_migrations ( \
            version integer PRIMARY KEY, name text NOT NULL, \
            applied_at timestamptz NOT NULL DEFAULT now())"
    )))
    .execute(&mut *conn)
    .await
    .map_err(map_sqlx)?;
    let current: Option<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT max(version) FROM {schema}.runnel_migrations"
    )))
    .fetch_one(&mut *conn)
    .await
    .map_err(map_sqlx)?;
    let current = current.unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "schema {schema} is at version {current}, newer than this build's {SCHEMA_VERSION}; upgrade runnel"
        )));
    }
    for (version, name, sql) in MIGRATIONS {
        if *version <= current {
            continue;
        }
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.replace("__SCHEMA__", schema)))
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {schema}.runnel_migrations (version, name) VALUES ($1, $2)"
        )))
        .bind(version)
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)?;
        tracing::info!(schema, version, name, "applied migration");
    }
    Ok(())
}
