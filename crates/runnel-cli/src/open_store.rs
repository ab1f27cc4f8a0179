//! Opens the configured store. Every backend returns the same trait objects, so commands
//! never know which one they talk to; a new backend adds one match arm in [`open`].

use std::sync::Arc;

use anyhow::Context as _;
use runnel_core::bus::{Publisher, Subscriber};
use runnel_core::dead_letter::DeadLetterStore;
use runnel_core::{CheckpointStore, EventStore, SnapshotStore};
use runnel_postgres::{BatchStatsSnapshot, PostgresDeadLetters, PostgresOptions, PostgresStore};
use runnel_sqlite::{SqliteDeadLetters, SqliteOptions, SqliteStore, WriterStatsSnapshot};

use crate::config::StoreUrl;
use crate::exit::BadInput;

/// Whether opening may create a new, empty store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Writers (and followers waiting for the first event) create the store if missing.
    CreateIfMissing,
    /// Readers refuse a missing store instead of leaving an empty file behind.
    MustExist,
}

/// The storage traits of one opened store.
#[derive(Clone)]
pub struct Stores {
    pub events: Arc<dyn EventStore>,
    pub snapshots: Arc<dyn SnapshotStore>,
    // Projections and subscriptions with stored positions (later commands) use this.
    #[allow(dead_code)]
    pub checkpoints: Arc<dyn CheckpointStore>,
    pub dead_letters: Arc<dyn DeadLetterStore>,
    backend: Backend,
}

/// A bus as the transport traits: the embedded bus of a store, or a broker's.
#[derive(Clone)]
pub struct EmbeddedBus {
    pub publisher: Arc<dyn Publisher>,
    pub subscriber: Arc<dyn Subscriber>,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PostgresStore, String),
}

/// Commit counters of a store's writer, where the backend has one.
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

impl From<WriterStatsSnapshot> for CommitStats {
    fn from(s: WriterStatsSnapshot) -> Self {
        CommitStats {
            commits: s.commits,
            events: s.events,
        }
    }
}

impl From<BatchStatsSnapshot> for CommitStats {
    fn from(s: BatchStatsSnapshot) -> Self {
        CommitStats {
            commits: s.round_trips,
            events: s.events,
        }
    }
}

impl Stores {
    /// The writer's commit counters (`None` for backends without a single writer).
    pub fn commit_stats(&self) -> Option<CommitStats> {
        match &self.backend {
            Backend::Sqlite(store) => Some(store.writer_stats().into()),
            Backend::Postgres(store, _) => Some(store.batch_stats().into()),
        }
    }

    /// The embedded durable bus in this store (the SQLite file or the PostgreSQL schema).
    pub async fn embedded_bus(&self) -> anyhow::Result<EmbeddedBus> {
        match &self.backend {
            Backend::Sqlite(store) => {
                let bus = runnel_sqlite::bus::SqliteBus::new(store.clone(), Default::default())
                    .context("cannot start the embedded bus")?;
                let bus = Arc::new(bus);
                Ok(EmbeddedBus {
                    publisher: bus.clone(),
                    subscriber: bus,
                })
            }
            Backend::Postgres(store, _) => {
                let bus = runnel_postgres::bus::PostgresBus::new(store.clone(), Default::default())
                    .await
                    .context("cannot start the embedded bus")?;
                let bus = Arc::new(bus);
                Ok(EmbeddedBus {
                    publisher: bus.clone(),
                    subscriber: bus,
                })
            }
        }
    }

    /// Where the data lives, for messages.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Sqlite(store) => store.path().display().to_string(),
            Backend::Postgres(store, shown) => format!("{shown} (schema {})", store.schema()),
        }
    }
}

/// Opens the store `url` names.
pub async fn open(url: &StoreUrl, mode: OpenMode) -> anyhow::Result<Stores> {
    match url {
        StoreUrl::Sqlite(path) => {
            if mode == OpenMode::MustExist && !path.exists() {
                anyhow::bail!(
                    "no store at {}: nothing has been appended there yet (check --db / --store)",
                    path.display()
                );
            }
            let store = SqliteStore::open_with(path, SqliteOptions::default())
                .with_context(|| format!("cannot open the SQLite store {}", path.display()))?;
            tracing::debug!(path = %path.display(), "opened SQLite store");
            Ok(Stores {
                events: Arc::new(store.clone()),
                snapshots: Arc::new(store.clone()),
                checkpoints: Arc::new(store.clone()),
                dead_letters: Arc::new(SqliteDeadLetters::new(store.clone())),
                backend: Backend::Sqlite(store),
            })
        }
        StoreUrl::Postgres(raw) => {
            // Readers and writers alike: the schema is created on first use (migrations run
            // on connect), so there is no "missing file" to refuse.
            let options = PostgresOptions::from_url(raw).map_err(|e| BadInput(e.to_string()))?;
            let store = PostgresStore::connect_with(options)
                .await
                .with_context(|| format!("cannot open the PostgreSQL store {url}"))?;
            tracing::debug!(store = %url, schema = store.schema(), "opened PostgreSQL store");
            Ok(Stores {
                events: Arc::new(store.clone()),
                snapshots: Arc::new(store.clone()),
                checkpoints: Arc::new(store.clone()),
                dead_letters: Arc::new(PostgresDeadLetters::new(store.clone())),
                backend: Backend::Postgres(store, url.to_string()),
            })
        }
    }
}

/// Connects to a broker transport from its configuration URL.
// Built without any transport (`--no-default-features`), only the refusal remains.
#[cfg_attr(
    not(any(
        feature = "nats",
        feature = "rabbitmq",
        feature = "kafka",
        feature = "sqs"
    )),
    allow(unused_imports, unused_variables, dead_code)
)]
pub async fn broker_bus(
    transport: crate::config::Transport,
    url: &str,
) -> anyhow::Result<EmbeddedBus> {
    use crate::config::Transport;
    let shown = crate::config::BusUrl::Broker(transport, url.to_string()).to_string();
    let context = || format!("cannot connect to the {} bus {shown}", transport.name());
    fn both<B: Publisher + Subscriber>(bus: Arc<B>) -> EmbeddedBus {
        EmbeddedBus {
            publisher: bus.clone(),
            subscriber: bus,
        }
    }
    match transport {
        #[cfg(feature = "nats")]
        Transport::Nats => Ok(both(runnel_nats::connect(url).await.with_context(context)?)),
        #[cfg(feature = "rabbitmq")]
        Transport::RabbitMq => Ok(both(
            runnel_rabbitmq::connect(url).await.with_context(context)?,
        )),
        #[cfg(feature = "kafka")]
        Transport::Kafka => Ok(both(runnel_kafka::connect(url).with_context(context)?)),
        #[cfg(feature = "sqs")]
        Transport::Sqs => Ok(both(runnel_sqs::connect(url).with_context(context)?)),
        #[allow(unreachable_patterns)]
        other => Err(crate::exit::BadInput(format!(
            "this runnel was built without the {} transport; rebuild with `--features {}`",
            other.name(),
            other.feature()
        ))
        .into()),
    }
}
