//! [`SqliteStore`]: every storage trait on one SQLite file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::projection::InlineProjection;
use runnel_core::store::{validate_checkpoint_name, validate_limit};
use runnel_core::{
    AppendResult, CheckpointStore, EventFilter, EventStore, ExpectedRevision, NewEvent, Position,
    ReadDirection, ReadStream, RecordedEvent, Snapshot, SnapshotStore, StoreError, StoreLimits,
    StreamInfo, StreamName,
};
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot, watch};

use crate::append::append_in_tx;
use crate::error_map::map_sqlite;
use crate::options::{
    Durability, SqliteOptions, BUSY_TIMEOUT_MS, READ_CONNECTIONS_MAX, WRITER_QUEUE_JOBS_MAX,
};
use crate::reader::ReadPool;
use crate::rows::{
    event_from_row, event_from_row_of, micros_to_time, time_to_micros, EVENT_COLUMNS,
    EVENT_COLUMNS_NO_METADATA,
};
use crate::schema;
use crate::writer::{
    head_position, BatchContext, FnJob, WriteJob, Writer, WriterStats, WriterStatsSnapshot,
};

/// An event store, snapshot store and checkpoint store in one SQLite file (WAL mode).
///
/// Cheap to clone; all clones share one writer thread and one read pool. The writer stops
/// when the last clone is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), runnel_core::StoreError> {
/// use runnel_core::{EventStore, ExpectedRevision, NewEvent, StreamName};
/// let store = runnel_sqlite::SqliteStore::open("runnel.db")?;
/// let stream = StreamName::new("Order-1")?;
/// let event = NewEvent::json("OrderPlaced", &serde_json::json!({"total": 42}));
/// store.append(&stream, ExpectedRevision::NoStream, vec![event]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    jobs: mpsc::Sender<Box<dyn WriteJob>>,
    readers: Arc<ReadPool>,
    head: watch::Receiver<Position>,
    limits: StoreLimits,
    stats: Arc<WriterStats>,
    /// Wake-ups for the embedded bus's consumers, shared by every bus on this store.
    bus_signals: Arc<runnel_bus_engine::BusSignals>,
    /// Delete the file when the last handle goes (stores from `open_temporary`).
    remove_on_drop: bool,
    /// Projections applied in each append's transaction (see
    /// [`SqliteStore::add_inline_projection`]). Copied into each append job.
    inline: std::sync::RwLock<InlineProjections>,
}

/// The inline projections of a store, shared with the append jobs.
pub(crate) type InlineProjections = Arc<[Arc<dyn InlineProjection>]>;

impl Drop for Inner {
    fn drop(&mut self) {
        if self.remove_on_drop {
            // Unlinking open files is fine on Unix; the writer closes its connection as
            // soon as it sees the queue closed.
            for suffix in ["", "-wal", "-shm"] {
                let mut p = self.path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// A handle to the batch transaction for [`SqliteStore::unit_of_work`].
pub struct UnitOfWork<'a> {
    conn: &'a Connection,
    ctx: &'a BatchContext,
    limits: &'a StoreLimits,
    inline: &'a InlineProjections,
}

impl UnitOfWork<'_> {
    /// The connection, inside this unit's savepoint: run the application's own SQL here.
    /// Do not issue COMMIT, ROLLBACK or RELEASE yourself.
    pub fn connection(&self) -> &Connection {
        self.conn
    }

    /// Appends events in this unit of work (committed together with everything else in it).
    pub fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        self.limits.validate_append(events)?;
        append_in_tx(
            self.conn,
            self.ctx.now_micros,
            stream,
            expected,
            events,
            self.inline,
        )
    }

    /// The commit timestamp of the batch, in microseconds since the epoch.
    pub fn now_micros(&self) -> i64 {
        self.ctx.now_micros
    }
}

fn open_connection(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
        .map_err(map_sqlite)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(map_sqlite)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "{} cannot use WAL mode (got {mode}); is it on a network file system?",
            path.display()
        )));
    }
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Relaxed => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)
        .map_err(map_sqlite)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(map_sqlite)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` with default options: full
    /// durability, default limits.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (creating if needed) the store a `sqlite:PATH?…` URL names, with the options
    /// in its query (see [`SqliteOptions::from_url`]).
    pub fn open_url(url: &str) -> Result<Self, StoreError> {
        let (path, options) = SqliteOptions::from_url(url)?;
        Self::open_with(path, options)
    }

    /// Opens a new store in a fresh file under the system's temporary directory, deleted
    /// when the last handle is dropped. For tests and throwaway runs.
    pub fn open_temporary() -> Result<Self, StoreError> {
        let path = std::env::temp_dir().join(format!(
            "runnel-{}-{}.db",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        let mut store = Self::open_with(&path, SqliteOptions::default())?;
        if let Some(inner) = Arc::get_mut(&mut store.inner) {
            inner.remove_on_drop = true;
        }
        Ok(store)
    }

    /// Opens the store with explicit options.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if options.read_connections == 0 || options.read_connections > READ_CONNECTIONS_MAX {
            return Err(StoreError::InvalidArgument(format!(
                "read_connections must be 1..={READ_CONNECTIONS_MAX}"
            )));
        }
        let mut write_conn = open_connection(&path, options.durability)?;
        schema::migrate(&mut write_conn)
            .map_err(|e| StoreError::Backend(format!("cannot prepare {}: {e}", path.display())))?;
        let head = head_position(&write_conn)?;
        let last_micros: i64 = write_conn
            .query_row(
                "SELECT coalesce(max(recorded_at), 0) FROM events",
                [],
                |r| r.get(0),
            )
            .map_err(map_sqlite)?;
        let mut readers = Vec::with_capacity(options.read_connections);
        for _ in 0..options.read_connections {
            let conn = open_connection(&path, options.durability)?;
            conn.pragma_update(None, "query_only", "ON")
                .map_err(map_sqlite)?;
            readers.push(conn);
        }

        let (jobs_tx, jobs_rx) = mpsc::channel(WRITER_QUEUE_JOBS_MAX);
        let (head_tx, head_rx) = watch::channel(head);
        let stats = Arc::new(WriterStats::default());
        let writer = Writer {
            conn: write_conn,
            jobs: jobs_rx,
            head: head_tx,
            stats: Arc::clone(&stats),
            last_micros,
            full_sync: options.durability == Durability::Full,
            synced: true,
        };
        std::thread::Builder::new()
            .name("runnel-sqlite-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        tracing::debug!(path = %path.display(), head = %head, "sqlite store opened");
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                jobs: jobs_tx,
                readers: Arc::new(ReadPool::new(readers)),
                head: head_rx,
                limits: options.limits,
                stats,
                bus_signals: Arc::default(),
                remove_on_drop: false,
                inline: std::sync::RwLock::new(Arc::from(Vec::new())),
            }),
        })
    }

    /// Registers a projection applied inside every append's transaction from now on (see
    /// [`InlineProjection`]): appends of events it wants fail, writing nothing, if it
    /// cannot apply them. Registering a projection of the same name again replaces it.
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

    pub(crate) fn inline_projections(&self) -> InlineProjections {
        Arc::clone(&self.inner.inline.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Counters of the group-commit writer (commits, and of them the fsynced ones).
    pub fn writer_stats(&self) -> WriterStatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Jobs waiting for the writer right now (appends, snapshot and checkpoint writes,
    /// units of work). At most `options::WRITER_QUEUE_JOBS_MAX`.
    pub fn writer_queue_len(&self) -> usize {
        self.inner.jobs.max_capacity() - self.inner.jobs.capacity()
    }

    /// Runs `work` atomically inside the writer's next batch transaction, under its own
    /// savepoint: everything it does (the application's own rows, appended events, ...)
    /// commits together and durably, or not at all. If `work` returns `Err`, its writes are
    /// rolled back and the error is returned; other jobs in the batch are unaffected.
    ///
    /// `work` runs on the writer thread: keep it short and do no network I/O in it.
    pub async fn unit_of_work<T, E, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&UnitOfWork<'_>) -> Result<T, E> + Send + 'static,
    {
        let limits = self.inner.limits.clone();
        let inline = self.inline_projections();
        let outcome = self
            .submit(
                0,
                |v: &Result<T, E>| v.is_ok(),
                move |conn, ctx| {
                    let uow = UnitOfWork {
                        conn,
                        ctx,
                        limits: &limits,
                        inline: &inline,
                    };
                    Ok(work(&uow))
                },
            )
            .await;
        match outcome {
            Ok(result) => result,
            Err(e) => Err(E::from(e)),
        }
    }

    pub(crate) async fn submit<T, F>(
        &self,
        events: usize,
        keep: fn(&T) -> bool,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &BatchContext) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit_job(events, keep, true, f).await
    }

    /// [`submit`](Self::submit) for a write whose loss to a power failure is harmless
    /// (it is redone): its batch is not fsynced unless another job in it needs that, and
    /// the next fsynced commit makes it durable. See [`WriteJob::needs_sync`].
    pub(crate) async fn submit_unsynced<T, F>(
        &self,
        keep: fn(&T) -> bool,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &BatchContext) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit_job(0, keep, false, f).await
    }

    async fn submit_job<T, F>(
        &self,
        events: usize,
        keep: fn(&T) -> bool,
        sync: bool,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &BatchContext) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn WriteJob> = Box::new(FnJob {
            f: Some(f),
            events,
            keep,
            sync,
            outcome: None,
            reply: Some(reply),
        });
        self.inner
            .jobs
            .send(job)
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| {
            StoreError::Backend(
                "the writer stopped before answering; the outcome is unknown".into(),
            )
        })?
    }

    pub(crate) fn bus_signals(&self) -> &Arc<runnel_bus_engine::BusSignals> {
        &self.inner.bus_signals
    }

    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.readers.with(f).await
    }

    /// Runs `f` on one of the store's reader connections, for the application's own read
    /// models kept in the same file (written in a [`SqliteStore::unit_of_work`] or through
    /// the inbox). In WAL mode it sees every committed write and never blocks the writer.
    /// Only read here: writes belong on the writer, or they would contend for the file's
    /// write lock.
    pub async fn read_with<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        match self.read(move |conn| Ok(f(conn))).await {
            Ok(result) => result,
            Err(e) => Err(E::from(e)),
        }
    }
}

pub(crate) fn keep_all<T>(_: &T) -> bool {
    true
}

fn collect_events(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut rows = stmt.query(params).map_err(map_sqlite)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(map_sqlite)? {
        out.push(event_from_row(row)?);
    }
    Ok(out)
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.inner.limits.validate_append(&events)?;
        let stream = stream.clone();
        let count = events.len();
        let inline = self.inline_projections();
        self.submit(count, keep_all, move |conn, ctx| {
            append_in_tx(conn, ctx.now_micros, &stream, expected, &events, &inline)
        })
        .await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        validate_limit(options.limit)?;
        let stream = stream.clone();
        self.read(move |conn| {
            let columns = if options.metadata {
                EVENT_COLUMNS
            } else {
                EVENT_COLUMNS_NO_METADATA
            };
            let sql = match options.direction {
                ReadDirection::Forward => format!(
                    "SELECT {columns} FROM streams s JOIN events e ON e.stream_id = s.stream_id \
                     WHERE s.name = ?1 AND e.revision >= ?2 ORDER BY e.revision ASC LIMIT ?3"
                ),
                ReadDirection::Backward => format!(
                    "SELECT {columns} FROM streams s JOIN events e ON e.stream_id = s.stream_id \
                     WHERE s.name = ?1 AND e.revision <= ?2 ORDER BY e.revision DESC LIMIT ?3"
                ),
            };
            let from = match (options.direction, options.from_revision) {
                (_, Some(r)) => r.min(i64::MAX as u64) as i64,
                (ReadDirection::Forward, None) => 0,
                (ReadDirection::Backward, None) => i64::MAX,
            };
            let mut stmt = conn.prepare_cached(&sql).map_err(map_sqlite)?;
            let mut rows = stmt
                .query(params![stream.as_str(), from, options.limit as i64])
                .map_err(map_sqlite)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(map_sqlite)? {
                out.push(event_from_row_of(row, Some(&stream))?);
            }
            Ok(out)
        })
        .await
    }

    async fn read_all(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        validate_limit(limit)?;
        filter.validate()?;
        let filter = filter.clone();
        self.read(move |conn| {
            let mut sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events e JOIN streams s ON s.stream_id = e.stream_id \
                 WHERE e.position > ?"
            );
            let mut args: Vec<rusqlite::types::Value> =
                vec![(after.get().min(i64::MAX as u64) as i64).into()];
            for (column, values) in [
                ("e.category", &filter.categories),
                ("e.event_type", &filter.event_types),
            ] {
                if !values.is_empty() {
                    let marks = vec!["?"; values.len()].join(", ");
                    // One value: its (value, position) index reads the page in position
                    // order. Several: that index would gather every later match and sort
                    // it for each page (quadratic over a catch-up); `+` keeps SQLite on the
                    // position order instead, which stops at the page's last row.
                    let column = if values.len() > 1 {
                        format!("+{column}")
                    } else {
                        column.to_string()
                    };
                    sql.push_str(&format!(" AND {column} IN ({marks})"));
                    args.extend(values.iter().map(|v| v.clone().into()));
                }
            }
            sql.push_str(" ORDER BY e.position LIMIT ?");
            args.push((limit as i64).into());
            let mut stmt = conn.prepare_cached(&sql).map_err(map_sqlite)?;
            collect_events(&mut stmt, params_from_iter(args))
        })
        .await
    }

    async fn read_by_type(
        &self,
        event_type: &str,
        since: DateTime<Utc>,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        validate_limit(limit)?;
        let event_type = event_type.to_string();
        self.read(move |conn| {
            let since = time_to_micros(since);
            let after = after.get().min(i64::MAX as u64) as i64;
            // recorded_at never decreases with position (the writer keeps it monotonic):
            // start at the first position recorded at or after `since`, then walk the
            // (event_type, position) index in position order.
            let from = first_position_since(conn, since, after)?;
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events e JOIN streams s ON s.stream_id = e.stream_id \
                 WHERE e.event_type = ?1 AND e.position > ?2 AND e.recorded_at >= ?3 \
                 ORDER BY e.position LIMIT ?4"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(map_sqlite)?;
            collect_events(&mut stmt, params![event_type, from, since, limit as i64])
        })
        .await
    }

    async fn stream_revision(&self, stream: &StreamName) -> Result<Option<u64>, StoreError> {
        let stream = stream.clone();
        self.read(move |conn| {
            conn.prepare_cached("SELECT revision FROM streams WHERE name = ?1")
                .map_err(map_sqlite)?
                .query_row([stream.as_str()], |r| r.get::<_, i64>(0))
                .optional()
                .map(|r| r.map(|v| v as u64))
                .map_err(map_sqlite)
        })
        .await
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
        let category = category.map(str::to_string);
        let after = after.map(|s| s.to_string()).unwrap_or_default();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT name, revision, last_position, created_at, updated_at FROM streams \
                     WHERE (?1 IS NULL OR category = ?1) AND name > ?2 AND revision > 0 \
                     ORDER BY name LIMIT ?3",
                )
                .map_err(map_sqlite)?;
            let mut rows = stmt
                .query(params![category, after, limit as i64])
                .map_err(map_sqlite)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(map_sqlite)? {
                let name: String = row.get(0).map_err(map_sqlite)?;
                out.push(StreamInfo {
                    stream: StreamName::new(name)
                        .map_err(|e| StoreError::Corrupt(format!("stored stream name: {e}")))?,
                    revision: row.get::<_, i64>(1).map_err(map_sqlite)? as u64,
                    last_position: Position(row.get::<_, i64>(2).map_err(map_sqlite)? as u64),
                    created_at: micros_to_time(row.get(3).map_err(map_sqlite)?)?,
                    updated_at: micros_to_time(row.get(4).map_err(map_sqlite)?)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        self.read(head_position).await
    }

    async fn wait_for_events(&self, after: Position, max_wait: Duration) -> Result<(), StoreError> {
        let mut head = self.inner.head.clone();
        // A timeout is not an error: it is the polling fallback that notices appends made
        // by other processes on the same file.
        let _ = tokio::time::timeout(max_wait, head.wait_for(|h| *h > after)).await;
        Ok(())
    }

    fn limits(&self) -> &StoreLimits {
        &self.inner.limits
    }
}

#[async_trait]
impl SnapshotStore for SqliteStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        if snapshot.data.len() > self.inner.limits.max_append_bytes {
            return Err(StoreError::InvalidArgument(format!(
                "snapshot of {} bytes is over the {}-byte limit",
                snapshot.data.len(),
                self.inner.limits.max_append_bytes
            )));
        }
        self.submit(0, keep_all, move |conn, _ctx| {
            conn.prepare_cached(
                "INSERT INTO snapshots (stream, revision, schema_version, data, taken_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (stream) DO UPDATE SET revision = excluded.revision, \
                 schema_version = excluded.schema_version, data = excluded.data, \
                 taken_at = excluded.taken_at WHERE excluded.revision >= snapshots.revision",
            )
            .map_err(map_sqlite)?
            .execute(params![
                snapshot.stream.as_str(),
                snapshot.revision as i64,
                i64::from(snapshot.schema_version),
                snapshot.data,
                time_to_micros(snapshot.taken_at),
            ])
            .map_err(map_sqlite)?;
            Ok(())
        })
        .await
    }

    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, StoreError> {
        let stream = stream.clone();
        self.read(move |conn| {
            let row = conn
                .prepare_cached(
                    "SELECT revision, schema_version, data, taken_at FROM snapshots WHERE stream = ?1",
                )
                .map_err(map_sqlite)?
                .query_row([stream.as_str()], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .optional()
                .map_err(map_sqlite)?;
            row.map(|(revision, version, data, taken_at)| {
                Ok(Snapshot {
                    stream: stream.clone(),
                    revision: revision as u64,
                    schema_version: u32::try_from(version).map_err(|_| {
                        StoreError::Corrupt(format!("snapshot schema version {version}"))
                    })?,
                    data,
                    taken_at: micros_to_time(taken_at)?,
                })
            })
            .transpose()
        })
        .await
    }

    async fn delete_snapshot(&self, stream: &StreamName) -> Result<(), StoreError> {
        let stream = stream.clone();
        self.submit(0, keep_all, move |conn, _ctx| {
            conn.prepare_cached("DELETE FROM snapshots WHERE stream = ?1")
                .map_err(map_sqlite)?
                .execute([stream.as_str()])
                .map_err(map_sqlite)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl CheckpointStore for SqliteStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>, StoreError> {
        validate_checkpoint_name(name)?;
        let name = name.to_string();
        self.read(move |conn| {
            conn.prepare_cached("SELECT position FROM checkpoints WHERE name = ?1")
                .map_err(map_sqlite)?
                .query_row([name.as_str()], |r| r.get::<_, i64>(0))
                .optional()
                .map(|p| p.map(|p| Position(p as u64)))
                .map_err(map_sqlite)
        })
        .await
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError> {
        validate_checkpoint_name(name)?;
        let name = name.to_string();
        self.submit(0, keep_all, move |conn, ctx| {
            save_checkpoint_in_tx(conn, ctx.now_micros, &name, position)
        })
        .await
    }
}

/// Stores a checkpoint inside an open transaction (also usable from a unit of work, so a
/// projection's rows and its checkpoint commit together).
pub fn save_checkpoint_in_tx(
    conn: &Connection,
    now_micros: i64,
    name: &str,
    position: Position,
) -> Result<(), StoreError> {
    validate_checkpoint_name(name)?;
    conn.prepare_cached(
        "INSERT INTO checkpoints (name, position, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
    )
    .map_err(map_sqlite)?
    .execute(params![
        name,
        position.get().min(i64::MAX as u64) as i64,
        now_micros
    ])
    .map_err(map_sqlite)?;
    Ok(())
}

/// A position `p >= after` such that every event in `(after, p]` was recorded before
/// `since` (micros) and the first event after `p`, if any, at or after it: a binary search
/// over positions, each probe one rowid seek, since `recorded_at` never decreases with
/// position. `after` itself when the next event is recorded at or after `since` (or there
/// is none).
fn first_position_since(conn: &Connection, since: i64, after: i64) -> Result<i64, StoreError> {
    let mut probe = conn
        .prepare_cached(
            "SELECT position, recorded_at FROM events WHERE position > ?1 ORDER BY position LIMIT 1",
        )
        .map_err(map_sqlite)?;
    // The first event after position `p`, if any.
    let mut next_after = |p: i64| -> Result<Option<(i64, i64)>, StoreError> {
        probe
            .query_row([p], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(map_sqlite)
    };
    let Some((_, first_at)) = next_after(after)? else {
        return Ok(after);
    };
    if first_at >= since {
        return Ok(after);
    }
    let head: i64 = conn
        .prepare_cached("SELECT max(position) FROM events")
        .map_err(map_sqlite)?
        .query_row([], |r| r.get::<_, Option<i64>>(0))
        .map_err(map_sqlite)?
        .unwrap_or(after);
    // Invariant: the first event after `lo` is recorded before `since`; the first event
    // after `hi` (if any) is recorded at or after it.
    let (mut lo, mut hi) = (after, head);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match next_after(mid)? {
            Some((_, at)) if at < since => lo = mid,
            _ => hi = mid,
        }
    }
    debug_assert!(lo >= after && lo < hi);
    // Every event up to `hi` was recorded before `since`.
    Ok(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary search agrees with a linear scan for every `since` and `after`, over
    /// positions with gaps and times with repeats.
    #[test]
    fn first_position_since_matches_a_linear_scan() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE events (position INTEGER PRIMARY KEY, recorded_at INTEGER NOT NULL)",
        )
        .unwrap();
        // Positions 1, 3, 4, 7, 8, …: gaps; times repeat in runs of three.
        let rows: Vec<(i64, i64)> = (0..60i64)
            .map(|i| {
                (
                    1 + i + i / 2 + if i % 5 == 0 { 2 } else { 0 },
                    100 + (i / 3) * 10,
                )
            })
            .scan(0i64, |last, (p, t)| {
                let p = p.max(*last + 1);
                *last = p;
                Some((p, t))
            })
            .collect();
        for (p, t) in &rows {
            conn.execute("INSERT INTO events VALUES (?1, ?2)", [p, t])
                .unwrap();
        }
        let head = rows.last().unwrap().0;
        for since in 90..=(100 + 20 * 10 + 10) {
            for after in [0, 1, 2, 5, 17, head / 2, head - 1, head, head + 3] {
                let from = first_position_since(&conn, since, after).unwrap();
                assert!(from >= after, "since {since} after {after}: {from}");
                // Nothing in (after, from] is at or after `since`.
                assert!(
                    rows.iter()
                        .filter(|(p, _)| *p > after && *p <= from)
                        .all(|(_, t)| *t < since),
                    "since {since} after {after}: skipped past a match at {from}"
                );
                // The first event after `from` (if any) is at or after `since`.
                if let Some((_, t)) = rows.iter().find(|(p, _)| *p > from) {
                    assert!(
                        *t >= since,
                        "since {since} after {after}: {from} stops short"
                    );
                }
            }
        }
    }
}
