//! Shared helpers: every test gets its own schema, so tests run in parallel on one database.

use std::sync::Arc;

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
