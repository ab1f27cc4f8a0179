//! Connect by URL: open every store of one database and one bus from configuration, so
//! the same application code runs on the embedded default (one SQLite file, the bus in
//! it) and on PostgreSQL plus a broker.
//!
//! * [`StoreUrl`] / [`BusUrl`]: `sqlite:PATH`, `postgres://…`; `embedded`, `nats://…`,
//!   `amqp://…`, `kafka://…`, `sqs://…`. The parameters each takes are in
//!   `docs/configuration.md`.
//! * [`open_stores`] → [`Stores`]: events, snapshots, checkpoints, outbox, dead letters,
//!   blobs, dedup.
//! * [`open_bus`] → [`Bus`]: publisher, subscriber, the broker's dead-letter drain;
//!   [`open_broker`] opens a broker with no store at all.
//! * [`Settings`]: which URLs, from explicit values, the environment (`RUNNEL_STORE`,
//!   `RUNNEL_DB`, `RUNNEL_BUS`), `runnel.toml`, or the defaults.
//!
//! Each backend sits behind the cargo feature of its name (`sqlite`, `postgres`, `nats`,
//! `rabbitmq`, `kafka`, `sqs`, `redis`); a URL for one that is not built in is
//! [`ConnectError::NotBuiltIn`], naming the feature.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use runnel::connect::{open_bus, open_stores, OpenMode, Settings, SettingsInputs};
//!
//! let dir = tempfile::tempdir()?;
//! // Explicit values win over $RUNNEL_STORE / $RUNNEL_BUS and runnel.toml.
//! let settings = SettingsInputs::gather(dir.path())?
//!     .db("--db", Some(dir.path().join("app.db")))
//!     .resolve()?;
//! let stores = open_stores(&settings.store, OpenMode::CreateIfMissing).await?;
//! let bus = open_bus(&settings.bus, &stores).await?;
//! println!("store {} ({}), bus {}", settings.store, settings.store_origin, bus.url());
//! # Ok(()) }
//! ```

mod bus;
mod error;
pub mod metered;
mod settings;
mod stores;
mod url;

use std::sync::Arc;

use runnel_core::idempotency::DedupStore;

pub use bus::{open_broker, open_bus, Bus};
pub use error::ConnectError;
pub use settings::{
    read_config_file, FileConfig, Origin, Settings, SettingsInputs, CONFIG_FILE_NAME, ENV_BUS,
    ENV_DB, ENV_STORE,
};
pub use stores::{open_stores, CommitStats, OpenMode, StoreBackend, Stores};
pub use url::{redact, BusUrl, StoreUrl, Transport, BUS_DEFAULT, STORE_URL_DEFAULT};

/// Opens a dedup window by URL: `redis://…` (feature `redis`). The store's own database
/// already has one ([`Stores::dedup`]); Redis shares it across databases and expires keys
/// by itself.
pub async fn open_dedup(url: &str) -> Result<Arc<dyn DedupStore>, ConnectError> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(ConnectError::UnsupportedScheme {
            what: "dedup",
            url: redact(url),
            expected: "redis://… (or use the store's own dedup window)",
        });
    }
    open_redis(url).await
}

#[cfg(feature = "redis")]
async fn open_redis(url: &str) -> Result<Arc<dyn DedupStore>, ConnectError> {
    let store = runnel_redis::RedisDedupStore::connect(url)
        .await
        .map_err(|source| ConnectError::Store {
            backend: "Redis",
            location: redact(url),
            source,
        })?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(_url: &str) -> Result<Arc<dyn DedupStore>, ConnectError> {
    Err(ConnectError::NotBuiltIn {
        name: "Redis",
        feature: "redis",
    })
}
