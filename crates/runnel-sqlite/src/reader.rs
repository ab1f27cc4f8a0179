//! Read connections. Reads run on their own connections (WAL lets them proceed while the
//! writer commits) on tokio's blocking pool, so they never wait behind the writer.

use std::sync::{Arc, Mutex};

use runnel_core::StoreError;
use rusqlite::Connection;
use tokio::sync::Semaphore;

pub(crate) struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    pub fn new(conns: Vec<Connection>) -> Self {
        let n = conns.len();
        ReadPool {
            idle: Mutex::new(conns),
            permits: Arc::new(Semaphore::new(n)),
        }
    }

    /// Runs `f` on an idle read connection.
    pub async fn with<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = pool
                .idle
                .lock()
                .map_err(|_| StoreError::Backend("read pool lock poisoned".into()))?
                .pop()
                .ok_or_else(|| StoreError::Backend("read pool is empty despite a permit".into()))?;
            let result = f(&conn);
            if let Ok(mut idle) = pool.idle.lock() {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}
