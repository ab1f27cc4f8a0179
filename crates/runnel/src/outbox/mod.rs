//! The transactional outbox's moving parts: the [`Relay`] that publishes outbox rows, the
//! [`EventStoreRelay`] that publishes the event store's `$all` (the event store as the
//! outbox of event-sourced writes), the [claim check](claim_check) for large payloads, and
//! the relay [metrics].
//!
//! The storage side is [`runnel_core::outbox::OutboxStore`], implemented by
//! `runnel_sqlite::SqliteOutbox` and `runnel_postgres::PostgresOutbox`; applications enqueue
//! with their `enqueue_in`, inside the transaction that writes their own rows.
//!
//! Guarantees (each has a test in `tests/outbox_*.rs`):
//! * no dual write: the outbox rows commit with the business rows or not at all;
//! * at least once: a row is marked published only after the publisher confirmed it, so a
//!   relay killed in between publishes it again, with the same message id;
//! * per-key order: a key's next row is not published before the previous one was
//!   confirmed, also with several relays on one PostgreSQL (leases on key heads);
//! * a broker outage only delays: the relay backs off with jitter and the rows wait.

pub mod claim_check;
pub mod event_store_relay;
pub mod metrics;
pub mod relay;
mod routing;

pub use claim_check::{
    ClaimCheckPublisher, ClaimCheckSubscriber, CLAIM_CHECK_HEADER, CLAIM_CHECK_SIZE_HEADER,
    CLAIM_CHECK_THRESHOLD_DEFAULT,
};
pub use event_store_relay::{EventStoreRelay, EventStoreRelayHandle, EventStoreRelayOptions};
pub use relay::{AfterPublishHook, Relay, RelayError, RelayHandle, RelayOptions, RelayReport};
pub use runnel_core::outbox::{OutboxMessage, OutboxStore, TopicRouting};
