//! [`PostgresBlobs`]: claim-check blobs in the store's schema (table `blobs`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::outbox::{validate_blob, BlobStore, PURGE_BATCH_MAX};
use runnel_core::StoreError;
use sqlx::AssertSqlSafe;

use crate::error_map::map_sqlx;
use crate::store::PostgresStore;

/// Large payloads stored out of line. Cheap to clone.
///
/// ```no_run
/// # async fn demo(store: runnel_postgres::PostgresStore) -> Result<(), runnel_core::StoreError> {
/// use runnel_core::outbox::BlobStore;
/// let blobs = runnel_postgres::PostgresBlobs::new(store);
/// blobs.put_blob("invoice-7", "application/pdf", vec![0; 2 << 20]).await?;
/// assert!(blobs.get_blob("invoice-7").await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresBlobs {
    store: PostgresStore,
    table: String,
}

impl std::fmt::Debug for PostgresBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBlobs")
            .field("table", &self.table)
            .finish()
    }
}

impl PostgresBlobs {
    /// Blobs in `store`'s schema.
    pub fn new(store: PostgresStore) -> Self {
        let table = format!("{}.blobs", store.schema());
        PostgresBlobs { store, table }
    }
}

#[async_trait]
impl BlobStore for PostgresBlobs {
    async fn put_blob(
        &self,
        id: &str,
        content_type: &str,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        validate_blob(id, data.len())?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (blob_id, content_type, data, created_at) VALUES ($1, $2, $3, now()) \
             ON CONFLICT (blob_id) DO NOTHING",
            self.table
        )))
        .bind(id)
        .bind(content_type)
        .bind(data)
        .execute(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        Ok(())
    }

    async fn get_blob(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        validate_blob(id, 0)?;
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT data FROM {} WHERE blob_id = $1",
            self.table
        )))
        .bind(id)
        .fetch_optional(self.store.pool())
        .await
        .map_err(map_sqlx)
    }

    async fn purge_blobs(&self, before: DateTime<Utc>, limit: usize) -> Result<u64, StoreError> {
        let limit = limit.clamp(1, PURGE_BATCH_MAX) as i64;
        let t = &self.table;
        let r = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {t} WHERE blob_id IN (SELECT blob_id FROM {t} WHERE created_at < $1 \
             ORDER BY created_at LIMIT $2)"
        )))
        .bind(before)
        .bind(limit)
        .execute(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        Ok(r.rows_affected())
    }
}
