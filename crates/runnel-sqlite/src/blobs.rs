//! [`SqliteBlobs`]: claim-check blobs in the store's SQLite file (table `blobs`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::outbox::{validate_blob, BlobStore, PURGE_BATCH_MAX};
use runnel_core::StoreError;
use rusqlite::{params, OptionalExtension};

use crate::error_map::map_sqlite;
use crate::store::{keep_all, SqliteStore};

/// Large payloads stored out of line, written through the store's group-commit writer (a
/// stored blob is durable) and read from the read pool. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), runnel_core::StoreError> {
/// use runnel_core::outbox::BlobStore;
/// let blobs = runnel_sqlite::SqliteBlobs::new(runnel_sqlite::SqliteStore::open("app.db")?);
/// blobs.put_blob("invoice-7", "application/pdf", vec![0; 2 << 20]).await?;
/// assert!(blobs.get_blob("invoice-7").await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteBlobs {
    store: SqliteStore,
}

impl std::fmt::Debug for SqliteBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBlobs")
            .field("path", &self.store.path())
            .finish()
    }
}

impl SqliteBlobs {
    /// Blobs in `store`'s file.
    pub fn new(store: SqliteStore) -> Self {
        SqliteBlobs { store }
    }
}

#[async_trait]
impl BlobStore for SqliteBlobs {
    async fn put_blob(
        &self,
        id: &str,
        content_type: &str,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        validate_blob(id, data.len())?;
        let (id, content_type) = (id.to_string(), content_type.to_string());
        self.store
            .submit(0, keep_all, move |conn, ctx| {
                conn.prepare_cached(
                    "INSERT INTO blobs (blob_id, content_type, data, created_at) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (blob_id) DO NOTHING",
                )
                .map_err(map_sqlite)?
                .execute(params![id, content_type, data, ctx.now_micros])
                .map_err(map_sqlite)?;
                Ok(())
            })
            .await
    }

    async fn get_blob(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        validate_blob(id, 0)?;
        let id = id.to_string();
        self.store
            .read(move |conn| {
                conn.prepare_cached("SELECT data FROM blobs WHERE blob_id = ?1")
                    .map_err(map_sqlite)?
                    .query_row([id], |r| r.get::<_, Vec<u8>>(0))
                    .optional()
                    .map_err(map_sqlite)
            })
            .await
    }

    async fn purge_blobs(&self, before: DateTime<Utc>, limit: usize) -> Result<u64, StoreError> {
        let limit = limit.clamp(1, PURGE_BATCH_MAX) as i64;
        let before = before.timestamp_micros();
        let n = self
            .store
            .submit(0, keep_all, move |conn, _| {
                conn.prepare_cached(
                    "DELETE FROM blobs WHERE blob_id IN (SELECT blob_id FROM blobs \
                     WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)",
                )
                .map_err(map_sqlite)?
                .execute(params![before, limit])
                .map_err(map_sqlite)
            })
            .await?;
        Ok(n as u64)
    }
}
