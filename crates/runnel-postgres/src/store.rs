//! [`PostgresStore`]: the event, snapshot and checkpoint stores on PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::projection::InlineProjection;
use runnel_core::store::{validate_checkpoint_name, validate_limit};
use runnel_core::{
    AppendResult, CheckpointStore, EventFilter, EventId, EventStore, ExpectedRevision, Metadata,
    NewEvent, Position, ReadDirection, ReadStream, RecordedEvent, Snapshot, SnapshotStore,
    StoreError, StoreLimits, StreamInfo, StreamName,
};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
use tokio::sync::{watch, OnceCell};
use uuid::Uuid;

use crate::batcher::{AppendSql, Appender, BatchStatsSnapshot};
use crate::error_map::map_sqlx;
use crate::migrate::migrate;
use crate::options::PostgresOptions;

/// An event store, snapshot store and checkpoint store in one PostgreSQL schema.
///
/// Cheap to clone; clones share one pool, one append batcher and one LISTEN connection.
///
/// ```no_run
/// # async fn demo() -> Result<(), runnel_core::StoreError> {
/// use runnel_core::{EventStore, ExpectedRevision, NewEvent, StreamName};
/// let store = runnel_postgres::PostgresStore::connect("postgres://postgres@127.0.0.1/app").await?;
/// let stream = StreamName::new("Order-1")?;
/// let event = NewEvent::json("OrderPlaced", &serde_json::json!({"total": 42}));
/// store.append(&stream, ExpectedRevision::NoStream, vec![event]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    schema: String,
    lock_key: i64,
    append_one_sql: String,
    channel: String,
    appender: Arc<Appender>,
    head: watch::Receiver<Position>,
    head_tx: Arc<watch::Sender<Position>>,
    /// Set once this store's LISTEN connection is up: it starts with the first wait for
    /// events, so a store that only writes keeps no listener (each notification would
    /// otherwise wake a backend and a task of this process on every append).
    listening: OnceCell<()>,
    limits: StoreLimits,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Projections applied in each append's transaction (see
    /// [`PostgresStore::add_inline_projection`]).
    inline: std::sync::RwLock<Arc<[Arc<dyn InlineProjection>]>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|p| p.into_inner());
        for t in tasks.iter() {
            t.abort();
        }
    }
}

/// FNV-1a of the schema name and `purpose`: an advisory-lock key of this store (its
/// appends, its migrations, a projection's version changes).
pub(crate) fn lock_key(schema: &str, purpose: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("runnel/{schema}/{purpose}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

impl PostgresStore {
    /// Connects with the options in `url`'s query (see [`PostgresOptions::from_url`];
    /// defaults otherwise, schema `runnel`).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(PostgresOptions::from_url(url)?).await
    }

    /// Connects, applies missing migrations, starts the append batcher and the listener.
    pub async fn connect_with(options: PostgresOptions) -> Result<Self, StoreError> {
        options.validate()?;
        let connect: PgConnectOptions = options
            .url
            .parse()
            .map_err(|e| StoreError::InvalidArgument(format!("invalid PostgreSQL URL: {e}")))?;
        let timeout_ms = options.statement_timeout.as_millis().to_string();
        let connect = connect
            .options([("statement_timeout", timeout_ms.as_str())])
            .application_name("runnel");
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size)
            // No ping before every checkout: a dead connection fails its statement, which
            // maps to `Unavailable` and is retried (appends are idempotent), and the pool
            // replaces it. The ping would cost a round trip on every append.
            .test_before_acquire(false)
            .acquire_timeout(options.connect_timeout)
            .connect_with(connect.clone())
            .await
            .map_err(map_sqlx)?;
        let schema = options.schema.clone();
        migrate(&pool, &schema, lock_key(&schema, "migrate")).await?;

        let head = head_position(&pool, &schema).await?;
        let (head_tx, head_rx) = watch::channel(head);
        let channel = format!("runnel_{schema}");

        let append_one_sql = format!(
            "SELECT idx, status, revision, pos, detail FROM {schema}.append_one(\
             $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        let appender = Appender::new(AppendSql {
            connect: connect.clone(),
            connect_timeout: options.connect_timeout,
            batch: format!(
                "SELECT idx, status, revision, pos, detail FROM {schema}.append_batch(\
                 $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            ),
            one: append_one_sql.clone(),
            lock_key: lock_key(&schema, "append"),
            channel: channel.clone(),
        });
        let batch_task = tokio::spawn(Arc::clone(&appender).run_batcher());
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pool,
                lock_key: lock_key(&schema, "append"),
                append_one_sql,
                channel,
                schema,
                appender,
                head: head_rx,
                head_tx: Arc::new(head_tx),
                listening: OnceCell::new(),
                limits: options.limits,
                tasks: std::sync::Mutex::new(vec![batch_task]),
                inline: std::sync::RwLock::new(Arc::from(Vec::new())),
            }),
        })
    }

    /// Starts the LISTEN connection if it is not up yet, then brings the head up to date
    /// (an append that committed before LISTEN took effect sent its notification to nobody).
    async fn ensure_listening(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner
            .listening
            .get_or_try_init(|| async {
                let mut listener = PgListener::connect_with(&inner.pool)
                    .await
                    .map_err(map_sqlx)?;
                listener.listen(&inner.channel).await.map_err(map_sqlx)?;
                let task = tokio::spawn(listen(listener, Arc::clone(&inner.head_tx)));
                inner
                    .tasks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(task);
                // The listener runs from here on; if this read fails, waits fall back to
                // polling until the next notification (the init must not be retried, or a
                // second listener would start).
                match head_position(&inner.pool, &inner.schema).await {
                    Ok(head) => advance_head(&inner.head_tx, head),
                    Err(e) => tracing::warn!(error = %e, "reading the head after LISTEN failed"),
                }
                Ok::<(), StoreError>(())
            })
            .await
            .map(|_| ())
    }

    /// The pool, for applications that run their own SQL beside Runnel's.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema holding Runnel's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Appends inside the caller's own transaction, so the application's rows and the events
    /// commit together or not at all. The append takes the store's append lock, which is held
    /// until the caller commits or rolls back: keep such transactions short, every other
    /// append waits for them (that wait is what keeps `$all` gap-free).
    ///
    /// A conflict or duplicate id is returned as an error and leaves the transaction usable.
    pub async fn append_in(
        &self,
        tx: &mut sqlx::PgConnection,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.inner.limits.validate_append(&events)?;
        let inline = self.inline_projections();
        // With inline projections: the append lock first, so whether this append is a
        // retry of a stored one (which projects nothing) is known for certain.
        let ids: Vec<Uuid> = events.iter().map(|e| *e.id.as_uuid()).collect();
        let retry = if inline.is_empty() {
            false
        } else {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(self.inner.lock_key)
                .execute(&mut *tx)
                .await
                .map_err(map_sqlx)?;
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE event_id = $1)",
                self.table("events")
            )))
            .bind(ids[0])
            .fetch_one(&mut *tx)
            .await
            .map_err(map_sqlx)?
        };
        let request = crate::batcher::BatchArrays::build(&mut [(stream.clone(), expected, events)]);
        let rows = request
            .query_one(
                &self.inner.append_one_sql,
                self.inner.lock_key,
                &self.inner.channel,
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        let mut results = crate::batcher::results_from_rows(rows, &[(stream.clone(), expected)]);
        let result = results
            .pop()
            .flatten()
            .unwrap_or_else(|| Err(StoreError::Corrupt("append_one returned no row".into())))?;
        if !inline.is_empty() && !retry {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {EVENT_COLUMNS} FROM {} s JOIN {} e ON e.stream_id = s.stream_id \
                 WHERE e.event_id = ANY($1) ORDER BY e.position",
                self.table("streams"),
                self.table("events"),
            )))
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_sqlx)?;
            let recorded = events_from_rows(rows)?;
            crate::projections::apply_inline(tx, &self.inner.schema, &inline, &recorded).await?;
        }
        Ok(result)
    }

    /// Registers a projection applied inside every append's transaction from now on (see
    /// [`InlineProjection`]): appends of events it wants fail, writing nothing, if it
    /// cannot apply them. Registering a projection of the same name again replaces it.
    ///
    /// With inline projections registered, each append is its own transaction (appends
    /// are no longer grouped into shared round trips): a projection's failure refuses only
    /// its own append.
    pub fn add_inline_projection(&self, projection: Arc<dyn InlineProjection>) {
        let mut inline = self.inner.inline.write().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<Arc<dyn InlineProjection>> = inline
            .iter()
            .filter(|p| p.name() != projection.name())
            .cloned()
            .collect();
        list.push(projection);
        *inline = Arc::from(list);
    }

    fn inline_projections(&self) -> Arc<[Arc<dyn InlineProjection>]> {
        Arc::clone(&self.inner.inline.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The advisory-lock key that serializes appends to this store.
    pub fn append_lock_key(&self) -> i64 {
        self.inner.lock_key
    }

    /// Counters of the append batcher (round trips = transactions = commits).
    pub fn batch_stats(&self) -> BatchStatsSnapshot {
        self.inner.appender.stats.snapshot()
    }

    /// Appends waiting for the one in flight to finish (they will share the next round
    /// trip). At most [`APPEND_QUEUE_MAX`](crate::options::APPEND_QUEUE_MAX); callers past
    /// that wait to get in.
    pub fn queued_appends(&self) -> usize {
        self.inner.appender.queued()
    }

    fn table(&self, name: &str) -> String {
        format!("{}.{name}", self.inner.schema)
    }
}

/// Follows NOTIFY on the store's channel and publishes the head. On a lost connection the
/// listener reconnects; notifications sent meanwhile are lost, so it wakes every waiter
/// (they re-read) — subscriptions also poll, so nothing depends on a notification arriving.
/// Moves the published head forward to `p` (never back), waking waiters if it moved.
fn advance_head(head: &watch::Sender<Position>, p: Position) {
    head.send_if_modified(|h| {
        let newer = p > *h;
        if newer {
            *h = p;
        }
        newer
    });
}

async fn listen(mut listener: PgListener, head: Arc<watch::Sender<Position>>) {
    loop {
        match listener.recv().await {
            Ok(n) => {
                if let Ok(p) = n.payload().parse::<u64>() {
                    advance_head(&head, Position(p));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                head.send_modify(|_| {});
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn head_position(pool: &PgPool, schema: &str) -> Result<Position, StoreError> {
    let max: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT max(position) FROM {schema}.events"
    )))
    .fetch_one(pool)
    .await
    .map_err(map_sqlx)?;
    Ok(Position(max.unwrap_or(0) as u64))
}

const EVENT_COLUMNS: &str = "e.position, e.event_id, s.name, e.revision, e.event_type, \
    e.schema_version, e.content_type, e.data, e.metadata, e.recorded_at";

/// [`EVENT_COLUMNS`] without the metadata (a typed `NULL` in its place), for reads that do
/// not want it ([`ReadStream::without_metadata`]).
const EVENT_COLUMNS_NO_METADATA: &str = "e.position, e.event_id, s.name, e.revision, \
    e.event_type, e.schema_version, e.content_type, e.data, NULL::jsonb, e.recorded_at";

/// The same columns with the stream name looked up per row by primary key: `$all` reads
/// then walk the events index in order and stop at the limit, whatever the table
/// statistics say (a join may otherwise hash every matching event and sort it).
fn event_columns_lookup(streams: &str) -> String {
    format!(
        "e.position, e.event_id, (SELECT s.name FROM {streams} s WHERE s.stream_id = e.stream_id), \
         e.revision, e.event_type, e.schema_version, e.content_type, e.data, e.metadata, e.recorded_at"
    )
}

fn event_from_row(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let corrupt = |e: sqlx::Error| StoreError::Corrupt(format!("unreadable event row: {e}"));
    let position: i64 = row.try_get(0).map_err(corrupt)?;
    let id: Uuid = row.try_get(1).map_err(corrupt)?;
    let name: String = row.try_get(2).map_err(corrupt)?;
    let revision: i64 = row.try_get(3).map_err(corrupt)?;
    let metadata: Option<serde_json::Value> = row.try_get(8).map_err(corrupt)?;
    let schema_version: i32 = row.try_get(5).map_err(corrupt)?;
    Ok(RecordedEvent {
        id: EventId(id),
        stream: StreamName::new(name)
            .map_err(|e| StoreError::Corrupt(format!("stream name at {position}: {e}")))?,
        revision: revision as u64,
        position: Position(position as u64),
        recorded_at: row.try_get(9).map_err(corrupt)?,
        event_type: row.try_get(4).map_err(corrupt)?,
        schema_version: schema_version as u32,
        content_type: row.try_get(6).map_err(corrupt)?,
        data: row.try_get(7).map_err(corrupt)?,
        metadata: match metadata {
            None => Metadata::default(),
            Some(v) => serde_json::from_value(v)
                .map_err(|e| StoreError::Corrupt(format!("metadata at {position}: {e}")))?,
        },
    })
}

fn events_from_rows(rows: Vec<PgRow>) -> Result<Vec<RecordedEvent>, StoreError> {
    rows.iter().map(event_from_row).collect()
}

fn clamp(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.inner.limits.validate_append(&events)?;
        if self.inline_projections().is_empty() {
            return self.inner.appender.append(stream, expected, events).await;
        }
        let mut tx = self.inner.pool.begin().await.map_err(map_sqlx)?;
        let result = self.append_in(&mut tx, stream, expected, events).await?;
        tx.commit().await.map_err(|e| {
            StoreError::Unavailable(format!(
                "the append's commit failed; the outcome is unknown (retrying is safe): {e}"
            ))
        })?;
        Ok(result)
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        validate_limit(options.limit)?;
        let (cmp, order, from) = match (options.direction, options.from_revision) {
            (ReadDirection::Forward, from) => (">=", "ASC", clamp(from.unwrap_or(0))),
            (ReadDirection::Backward, from) => ("<=", "DESC", clamp(from.unwrap_or(u64::MAX))),
        };
        let columns = if options.metadata {
            EVENT_COLUMNS
        } else {
            EVENT_COLUMNS_NO_METADATA
        };
        let sql = format!(
            "SELECT {columns} FROM {} s JOIN {} e ON e.stream_id = s.stream_id \
             WHERE s.name = $1 AND e.revision {cmp} $2 ORDER BY e.revision {order} LIMIT $3",
            self.table("streams"),
            self.table("events"),
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(stream.as_str())
            .bind(from)
            .bind(options.limit as i64)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(map_sqlx)?;
        events_from_rows(rows)
    }

    async fn read_all(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        validate_limit(limit)?;
        filter.validate()?;
        let mut sql = format!(
            "SELECT {} FROM {} e WHERE e.position > $1",
            event_columns_lookup(&self.table("streams")),
            self.table("events"),
        );
        // One category or type is compared with `=`, so its (category|type, position) index
        // yields rows already in position order.
        match filter.categories.len() {
            0 => {}
            1 => sql.push_str(" AND e.category = ($3::text[])[1]"),
            _ => sql.push_str(" AND e.category = ANY($3)"),
        }
        match filter.event_types.len() {
            0 => {}
            1 => sql.push_str(" AND e.event_type = ($4::text[])[1]"),
            _ => sql.push_str(" AND e.event_type = ANY($4)"),
        }
        sql.push_str(" ORDER BY e.position LIMIT $2");
        // Unused parameters are still bound so the statement shape stays simple.
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(clamp(after.get()))
            .bind(limit as i64)
            .bind(&filter.categories)
            .bind(&filter.event_types)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(map_sqlx)?;
        events_from_rows(rows)
    }

    async fn read_by_type(
        &self,
        event_type: &str,
        since: DateTime<Utc>,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        validate_limit(limit)?;
        let sql = format!(
            "SELECT {} FROM {} e \
             WHERE e.event_type = $1 AND e.recorded_at >= $2 AND e.position > $3 \
             ORDER BY e.position LIMIT $4",
            event_columns_lookup(&self.table("streams")),
            self.table("events"),
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(event_type)
            .bind(since)
            .bind(clamp(after.get()))
            .bind(limit as i64)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(map_sqlx)?;
        events_from_rows(rows)
    }

    async fn stream_revision(&self, stream: &StreamName) -> Result<Option<u64>, StoreError> {
        let rev: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT revision FROM {} WHERE name = $1",
            self.table("streams")
        )))
        .bind(stream.as_str())
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(rev.map(|r| r as u64))
    }

    async fn list_streams(
        &self,
        category: Option<&str>,
        after: Option<&StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        validate_limit(limit)?;
        if let Some(c) = category {
            runnel_core::stream_name::validate_category(c)?;
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT name, revision, last_position, created_at, updated_at FROM {} \
             WHERE ($1::text IS NULL OR category = $1) AND name > $2 AND revision > 0 \
             ORDER BY name COLLATE \"C\" LIMIT $3",
            self.table("streams")
        )))
        .bind(category)
        .bind(after.map(|s| s.as_str()).unwrap_or(""))
        .bind(limit as i64)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(map_sqlx)?;
        rows.iter()
            .map(|row| {
                let corrupt = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
                let name: String = row.try_get(0).map_err(corrupt)?;
                Ok(StreamInfo {
                    stream: StreamName::new(name)
                        .map_err(|e| StoreError::Corrupt(format!("stored stream name: {e}")))?,
                    revision: row.try_get::<i64, _>(1).map_err(corrupt)? as u64,
                    last_position: Position(row.try_get::<i64, _>(2).map_err(corrupt)? as u64),
                    created_at: row.try_get(3).map_err(corrupt)?,
                    updated_at: row.try_get(4).map_err(corrupt)?,
                })
            })
            .collect()
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        head_position(&self.inner.pool, &self.inner.schema).await
    }

    async fn wait_for_events(&self, after: Position, max_wait: Duration) -> Result<(), StoreError> {
        if let Err(e) = self.ensure_listening().await {
            tracing::warn!(error = %e, "cannot LISTEN for appends; polling instead");
        }
        let mut head = self.inner.head.clone();
        // Timing out is the polling fallback, not an error.
        let _ = tokio::time::timeout(max_wait, head.wait_for(|h| *h > after)).await;
        Ok(())
    }

    fn limits(&self) -> &StoreLimits {
        &self.inner.limits
    }
}

#[async_trait]
impl SnapshotStore for PostgresStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        if snapshot.data.len() > self.inner.limits.max_append_bytes {
            return Err(StoreError::InvalidArgument(format!(
                "snapshot of {} bytes is over the {}-byte limit",
                snapshot.data.len(),
                self.inner.limits.max_append_bytes
            )));
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {t} AS s (stream, revision, schema_version, data, taken_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (stream) DO UPDATE SET revision = excluded.revision, \
             schema_version = excluded.schema_version, data = excluded.data, \
             taken_at = excluded.taken_at WHERE excluded.revision >= s.revision",
            t = self.table("snapshots")
        )))
        .bind(snapshot.stream.as_str())
        .bind(clamp(snapshot.revision))
        .bind(snapshot.schema_version as i32)
        .bind(&snapshot.data)
        .bind(snapshot.taken_at)
        .execute(&self.inner.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT revision, schema_version, data, taken_at FROM {} WHERE stream = $1",
            self.table("snapshots")
        )))
        .bind(stream.as_str())
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(map_sqlx)?;
        row.map(|row| {
            let corrupt = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
            Ok(Snapshot {
                stream: stream.clone(),
                revision: row.try_get::<i64, _>(0).map_err(corrupt)? as u64,
                schema_version: row.try_get::<i32, _>(1).map_err(corrupt)? as u32,
                data: row.try_get(2).map_err(corrupt)?,
                taken_at: row.try_get(3).map_err(corrupt)?,
            })
        })
        .transpose()
    }

    async fn delete_snapshot(&self, stream: &StreamName) -> Result<(), StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {} WHERE stream = $1",
            self.table("snapshots")
        )))
        .bind(stream.as_str())
        .execute(&self.inner.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(())
    }
}

#[async_trait]
impl CheckpointStore for PostgresStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>, StoreError> {
        validate_checkpoint_name(name)?;
        let p: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT position FROM {} WHERE name = $1",
            self.table("checkpoints")
        )))
        .bind(name)
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(p.map(|p| Position(p as u64)))
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError> {
        validate_checkpoint_name(name)?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} (name, position, updated_at) VALUES ($1, $2, now()) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()",
            self.table("checkpoints")
        )))
        .bind(name)
        .bind(clamp(position.get()))
        .execute(&self.inner.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(())
    }
}
