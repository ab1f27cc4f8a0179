//! The PostgreSQL backend: the same event, snapshot and checkpoint stores as the embedded
//! default, for applications that outgrow one machine. See `DESIGN.md` in this crate for
//! why catch-up readers never skip an event under concurrent writers.

mod batcher;
pub mod blobs;
pub mod bus;
pub mod dead_letters;
mod error_map;
pub mod idempotency;
mod migrate;
pub mod options;
pub mod outbox;
pub mod processors;
pub mod projections;
mod store;

pub use batcher::BatchStatsSnapshot;
pub use blobs::PostgresBlobs;
pub use bus::PostgresBus;
pub use dead_letters::PostgresDeadLetters;
pub use idempotency::{InboxOutcome, InboxTransaction, PostgresDedupStore, PostgresInbox};
pub use options::PostgresOptions;
pub use outbox::PostgresOutbox;
pub use processors::PostgresProcessorStore;
pub use projections::PostgresProjectionStore;
pub use store::PostgresStore;

/// The driver, re-exported so applications use the same version for their own SQL.
pub use sqlx;
