//! [`open_stores`]: every storage trait of one database, from its URL.

use std::sync::Arc;

use runnel_core::dead_letter::DeadLetterStore;
use runnel_core::idempotency::DedupStore;
use runnel_core::outbox::{BlobStore, OutboxStore};
use runnel_core::processor::ProcessorStore;
use runnel_core::projection::ProjectionStore;
use runnel_core::{CheckpointStore, EventStore, SnapshotStore};

use super::error::ConnectError;
use super::url::StoreUrl;

/// Whether opening may create a new, empty store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the store if it is missing (writers, and followers waiting for the first
    /// event). The default.
    #[default]
    CreateIfMissing,
    /// Refuse a missing SQLite file instead of leaving an empty one behind (readers). A
    /// PostgreSQL schema is created on first use either way.
    MustExist,
}

/// The backend a [`Stores`] runs on, for what is specific to it: the inbox (whose scope
/// is a SQLite unit of work or a PostgreSQL transaction), the embedded bus, the
/// application's own SQL.
#[derive(Clone)]
#[non_exhaustive]
pub enum StoreBackend {
    /// One SQLite file (feature `sqlite`).
    #[cfg(feature = "sqlite")]
    Sqlite(runnel_sqlite::SqliteStore),
    /// A PostgreSQL schema (feature `postgres`).
    #[cfg(feature = "postgres")]
    Postgres(runnel_postgres::PostgresStore),
    /// Built with neither backend: no store can be opened, so this is never constructed.
    #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
    #[doc(hidden)]
    NoBackend(std::convert::Infallible),
}

/// Every storage trait of one database, opened from one URL: the event store, snapshots,
/// checkpoints, the transactional outbox, dead letters, the claim-check blobs and the dedup
/// window. Cloning is cheap; every clone shares the same connections.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use runnel::connect::{open_stores, OpenMode, StoreUrl};
/// use runnel::core::{ExpectedRevision, NewEvent, StreamName};
///
/// let dir = tempfile::tempdir()?;
/// let url = StoreUrl::sqlite(dir.path().join("app.db")); // or "postgres://…"
/// let stores = open_stores(&url, OpenMode::CreateIfMissing).await?;
/// let stream = StreamName::new("Order-1")?;
/// let placed = NewEvent::json("OrderPlaced", &serde_json::json!({ "total": 42 }));
/// stores.events.append(&stream, ExpectedRevision::NoStream, vec![placed]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Stores {
    pub events: Arc<dyn EventStore>,
    pub snapshots: Arc<dyn SnapshotStore>,
    pub checkpoints: Arc<dyn CheckpointStore>,
    pub dead_letters: Arc<dyn DeadLetterStore>,
    pub blobs: Arc<dyn BlobStore>,
    /// The dedup window; in the store's database unless replaced with
    /// [`Stores::with_dedup`] (for example by Redis, [`open_dedup`](super::open_dedup)).
    pub dedup: Arc<dyn DedupStore>,
    /// The state of sagas and process managers (instances, timers, history).
    pub processors: Arc<dyn ProcessorStore>,
    /// Projections' versions, checkpoints and leases, and their read-model tables.
    pub projections: Arc<dyn ProjectionStore>,
    /// Reads of keyed state tables (stream jobs' state), beside `projections`.
    pub state_rows: Arc<dyn runnel_core::projection::StateRows>,
    backend: StoreBackend,
    url: StoreUrl,
    // Opened on first use: on PostgreSQL the outbox keeps a LISTEN connection, which a
    // process that never enqueues should not hold.
    outbox: Arc<tokio::sync::OnceCell<Arc<dyn OutboxStore>>>,
}

/// Commit counters of a store's writer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions committed (fsyncs, at full durability).
    pub commits: u64,
    /// Events in those commits.
    pub events: u64,
}

impl CommitStats {
    /// The counters accumulated since `earlier`.
    pub fn since(self, earlier: CommitStats) -> CommitStats {
        CommitStats {
            commits: self.commits.saturating_sub(earlier.commits),
            events: self.events.saturating_sub(earlier.events),
        }
    }

    /// Events per commit (0 when nothing was committed).
    pub fn events_per_commit(self) -> f64 {
        if self.commits == 0 {
            0.0
        } else {
            self.events as f64 / self.commits as f64
        }
    }
}

impl Stores {
    /// The backend, for what is specific to it.
    pub fn backend(&self) -> &StoreBackend {
        &self.backend
    }

    /// The URL the stores were opened from (`Display` redacts the password).
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// The transactional outbox in this database (opened on first call; later calls
    /// return the same one).
    #[cfg_attr(
        not(any(feature = "sqlite", feature = "postgres")),
        allow(unreachable_code, unused_variables)
    )]
    pub async fn outbox(&self) -> Result<Arc<dyn OutboxStore>, ConnectError> {
        let outbox = self
            .outbox
            .get_or_try_init(|| async {
                let outbox: Arc<dyn OutboxStore> = match &self.backend {
                    #[cfg(feature = "sqlite")]
                    StoreBackend::Sqlite(store) => {
                        Arc::new(runnel_sqlite::SqliteOutbox::new(store.clone()))
                    }
                    #[cfg(feature = "postgres")]
                    StoreBackend::Postgres(store) => Arc::new(
                        runnel_postgres::PostgresOutbox::new(store.clone())
                            .await
                            .map_err(|source| ConnectError::Store {
                                backend: "PostgreSQL",
                                location: self.url.to_string(),
                                source,
                            })?,
                    ),
                    #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
                    StoreBackend::NoBackend(never) => match *never {},
                };
                Ok::<_, ConnectError>(outbox)
            })
            .await?;
        Ok(Arc::clone(outbox))
    }

    /// The outbox for a relay publishing on `bus`: [`outbox`](Self::outbox), except on
    /// SQLite with the embedded bus of this same file, whose every publish is an fsynced
    /// commit of the file: there the relay's claims commit without an fsync of their own
    /// (`SqliteOutbox::with_publisher_in_this_file`, one fsync a round fewer).
    pub async fn relay_outbox(
        &self,
        bus: &super::Bus,
    ) -> Result<Arc<dyn OutboxStore>, ConnectError> {
        #[cfg(feature = "sqlite")]
        if let (StoreBackend::Sqlite(store), Some(file)) = (&self.backend, bus.sqlite_file()) {
            if file == store.path() {
                return Ok(Arc::new(
                    runnel_sqlite::SqliteOutbox::new(store.clone()).with_publisher_in_this_file(),
                ));
            }
        }
        #[cfg(not(feature = "sqlite"))]
        let _ = bus;
        self.outbox().await
    }

    /// Replaces the dedup window (for example with Redis).
    pub fn with_dedup(mut self, dedup: Arc<dyn DedupStore>) -> Self {
        self.dedup = dedup;
        self
    }

    /// The writer's commit counters since the store was opened.
    pub fn commit_stats(&self) -> CommitStats {
        match &self.backend {
            #[cfg(feature = "sqlite")]
            StoreBackend::Sqlite(store) => {
                let s = store.writer_stats();
                CommitStats {
                    commits: s.commits,
                    events: s.events,
                }
            }
            #[cfg(feature = "postgres")]
            StoreBackend::Postgres(store) => {
                let s = store.batch_stats();
                CommitStats {
                    commits: s.round_trips,
                    events: s.events,
                }
            }
            #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
            StoreBackend::NoBackend(never) => match *never {},
        }
    }

    /// Where the data lives, for messages: the file, or the server and schema.
    pub fn location(&self) -> String {
        match &self.backend {
            #[cfg(feature = "sqlite")]
            StoreBackend::Sqlite(store) => store.path().display().to_string(),
            #[cfg(feature = "postgres")]
            StoreBackend::Postgres(store) => {
                format!("{} (schema {})", self.url, store.schema())
            }
            #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
            StoreBackend::NoBackend(never) => match *never {},
        }
    }
}

/// Opens every store of the database `url` names: `sqlite:PATH` (feature `sqlite`) or
/// `postgres://…` (feature `postgres`). On PostgreSQL the schema and its tables are created
/// on first use.
pub async fn open_stores(url: &StoreUrl, mode: OpenMode) -> Result<Stores, ConnectError> {
    match url {
        StoreUrl::Sqlite(_) => open_sqlite(url, mode),
        StoreUrl::Postgres(_) => open_postgres(url).await,
    }
}

#[cfg(feature = "sqlite")]
fn open_sqlite(url: &StoreUrl, mode: OpenMode) -> Result<Stores, ConnectError> {
    use runnel_sqlite::{SqliteBlobs, SqliteDeadLetters, SqliteDedupStore, SqliteStore};
    let (path, options) = sqlite_options(url)?;
    if mode == OpenMode::MustExist && !path.exists() {
        return Err(ConnectError::NoSuchStore {
            location: path.display().to_string(),
        });
    }
    let store = SqliteStore::open_with(&path, options).map_err(|source| ConnectError::Store {
        backend: "SQLite",
        location: path.display().to_string(),
        source,
    })?;
    tracing::debug!(path = %path.display(), "opened the SQLite store");
    Ok(Stores {
        events: Arc::new(super::metered::MeteredEventStore {
            inner: Arc::new(store.clone()),
        }),
        snapshots: Arc::new(store.clone()),
        checkpoints: Arc::new(store.clone()),
        dead_letters: Arc::new(SqliteDeadLetters::new(store.clone())),
        blobs: Arc::new(SqliteBlobs::new(store.clone())),
        dedup: Arc::new(SqliteDedupStore::new(store.clone())),
        processors: Arc::new(runnel_sqlite::SqliteProcessorStore::new(store.clone())),
        projections: Arc::new(runnel_sqlite::SqliteProjectionStore::new(store.clone())),
        state_rows: Arc::new(runnel_sqlite::SqliteProjectionStore::new(store.clone())),
        backend: StoreBackend::Sqlite(store),
        url: url.clone(),
        outbox: Arc::default(),
    })
}

/// The file and the options a SQLite URL names (`sqlite:PATH?durability=…`).
#[cfg(feature = "sqlite")]
fn sqlite_options(
    url: &StoreUrl,
) -> Result<(std::path::PathBuf, runnel_sqlite::SqliteOptions), ConnectError> {
    Ok(runnel_sqlite::SqliteOptions::from_url(url.as_secret_str())?)
}

#[cfg(not(feature = "sqlite"))]
fn open_sqlite(_url: &StoreUrl, _mode: OpenMode) -> Result<Stores, ConnectError> {
    Err(ConnectError::NotBuiltIn {
        name: "SQLite",
        feature: "sqlite",
    })
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &StoreUrl) -> Result<Stores, ConnectError> {
    use runnel_postgres::{
        PostgresBlobs, PostgresDeadLetters, PostgresDedupStore, PostgresOptions, PostgresStore,
    };
    let failed = |source| ConnectError::Store {
        backend: "PostgreSQL",
        location: url.to_string(),
        source,
    };
    let options = PostgresOptions::from_url(url.as_secret_str()).map_err(failed)?;
    let store = PostgresStore::connect_with(options).await.map_err(failed)?;
    tracing::debug!(store = %url, schema = store.schema(), "opened the PostgreSQL store");
    Ok(Stores {
        events: Arc::new(super::metered::MeteredEventStore {
            inner: Arc::new(store.clone()),
        }),
        snapshots: Arc::new(store.clone()),
        checkpoints: Arc::new(store.clone()),
        dead_letters: Arc::new(PostgresDeadLetters::new(store.clone())),
        blobs: Arc::new(PostgresBlobs::new(store.clone())),
        dedup: Arc::new(PostgresDedupStore::new(&store)),
        processors: Arc::new(runnel_postgres::PostgresProcessorStore::new(store.clone())),
        projections: Arc::new(runnel_postgres::PostgresProjectionStore::new(store.clone())),
        state_rows: Arc::new(runnel_postgres::PostgresProjectionStore::new(store.clone())),
        backend: StoreBackend::Postgres(store),
        url: url.clone(),
        outbox: Arc::default(),
    })
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_url: &StoreUrl) -> Result<Stores, ConnectError> {
    Err(ConnectError::NotBuiltIn {
        name: "PostgreSQL",
        feature: "postgres",
    })
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_url_parameters_are_read_and_unknown_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let ok = StoreUrl::parse(&format!("sqlite:{}?durability=relaxed", path.display())).unwrap();
        let stores = open_stores(&ok, OpenMode::CreateIfMissing).await.unwrap();
        assert_eq!(stores.location(), path.display().to_string());

        let bad = StoreUrl::parse(&format!("sqlite:{}?durabilty=full", path.display())).unwrap();
        let err = open_stores(&bad, OpenMode::CreateIfMissing)
            .await
            .err()
            .unwrap();
        assert!(err.is_bad_input());
        let message = err.to_string();
        assert!(
            message.contains("durabilty") && message.contains("durability"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_reader_does_not_create_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.db");
        let err = open_stores(&StoreUrl::sqlite(&path), OpenMode::MustExist)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ConnectError::NoSuchStore { .. }), "{err}");
        assert!(!path.exists());
    }
}
