//! The embedded durable bus engine: everything the SQLite and PostgreSQL buses share —
//! [`BusOptions`], the publish checks and the message envelope, per-topic wake-up
//! [`BusSignals`], the consumer loop (claim in batches bounded by `max_in_flight`, renew a
//! lease that waited before handing it out, sleep until a wake-up, the next visible row or
//! the polling interval), the acknowledger, the [`GroupBacklog`] and the retention
//! sweeper — written once over a small [`BusBackend`] trait. Each storage crate keeps
//! only its tables, its SQL and an implementation of that trait. See this crate's
//! DESIGN.md for what the engine owns and the invariants the backends must keep.

mod acknowledger;
mod backend;
mod backlog;
mod book;
mod consumer;
mod engine;
mod envelope;
mod options;
mod signals;
mod time;

pub use backend::{BusBackend, Claim, ClaimRequest, ClaimedRow, Lease, Settle, Settled};
pub use backlog::GroupBacklog;
pub use engine::BusEngine;
pub use envelope::{decode_message, encode_publish, EncodedMessage};
pub use options::{
    BusOptions, CLAIM_BATCH_MAX, ERROR_BACKOFF, PAYLOAD_BYTES_LIMIT, POLL_INTERVAL_DEFAULT,
    POLL_INTERVAL_MAX, POLL_INTERVAL_MIN, PUBLISH_BYTES_MAX_DEFAULT, RETENTION_DEFAULT,
    RETENTION_MAX, SWEEP_BATCH_MAX, SWEEP_INTERVAL,
};
pub use signals::BusSignals;
pub use time::{after, before, until};
