//! A PostgreSQL store in a fresh schema for one test, dropped when the guard goes; skipped
//! (`None`) when no server is configured, which fails under `RUNNEL_REQUIRE_SERVICES=1`.

#![allow(dead_code)] // each test binary uses a different part

use runnel::postgres::{PostgresOptions, PostgresStore};

/// Drops a test schema when it goes (from a thread of its own: drop runs inside the
/// test's runtime).
pub struct SchemaGuard {
    url: String,
    pub schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                use runnel::postgres::sqlx::{self, Connection};
                let Ok(mut conn) = sqlx::PgConnection::connect(&url).await else {
                    return;
                };
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE"
                )))
                .execute(&mut conn)
                .await;
            });
        });
        let _ = done.join();
    }
}

/// A store in a fresh schema `{prefix}_{uuid}` with `pool_size` connections, and the guard
/// that drops the schema; `None` when `RUNNEL_TEST_POSTGRES_URL` is not set.
pub async fn fresh_store(prefix: &str, pool_size: u32) -> Option<(PostgresStore, SchemaGuard)> {
    let url = match std::env::var("RUNNEL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "RUNNEL_TEST_POSTGRES_URL is not set but RUNNEL_REQUIRE_SERVICES=1"
            );
            eprintln!("SKIPPED: RUNNEL_TEST_POSTGRES_URL is not set");
            return None;
        }
    };
    let schema = format!("{prefix}_{}", runnel::core::uuid::Uuid::now_v7().simple());
    let store = PostgresStore::connect_with(
        PostgresOptions::new(url.clone())
            .schema(schema.clone())
            .pool_size(pool_size),
    )
    .await
    .expect("connect to the test PostgreSQL");
    Some((store, SchemaGuard { url, schema }))
}
