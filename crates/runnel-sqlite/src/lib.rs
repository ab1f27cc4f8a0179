//! The embedded default backend: every Runnel store on one SQLite file in WAL mode, with a
//! group-commit writer that turns concurrent appends into shared, fsynced transactions.
//! See `DESIGN.md` in this crate for the on-disk format and the durability argument.

mod append;
pub mod blobs;
pub mod bus;
pub mod dead_letters;
mod error_map;
pub mod idempotency;
pub mod options;
pub mod outbox;
pub mod processors;
pub mod projections;
mod reader;
mod rows;
mod schema;
mod store;
mod writer;

pub use blobs::SqliteBlobs;
pub use bus::SqliteBus;
pub use dead_letters::SqliteDeadLetters;
pub use idempotency::{InboxOutcome, SqliteDedupStore, SqliteInbox};
pub use options::{Durability, SqliteOptions};
pub use outbox::SqliteOutbox;
pub use processors::SqliteProcessorStore;
pub use projections::SqliteProjectionStore;
pub use store::{save_checkpoint_in_tx, SqliteStore, UnitOfWork};
pub use writer::WriterStatsSnapshot;

/// The SQLite driver this crate uses, re-exported so units of work and benchmarks use the
/// same version.
pub use rusqlite;
