//! What Runnel's broker subscribers (NATS JetStream, RabbitMQ, Kafka, SQS) share: the
//! per-key head-of-line [`book`] and the scaffolding of the task that drives it.
//!
//! Each broker subscriber is split the same way:
//! * its **state**: a [`KeyBook`] (which key is at its head, what is held behind it,
//!   what is out, delayed or awaiting a redelivery, when the ack timeout of a delivery
//!   the application took runs out) plus whatever only that broker needs (Kafka's commit
//!   positions, NATS's recently acked sequences, SQS's lease times) — pure, unit-tested;
//! * its **driver**: the task doing the broker I/O (fetching, settling, keeping leases
//!   alive) and feeding the state, behind a [`Shared`] lock, handing deliveries to the
//!   application through a [`handout_stream`].
//!
//! See `DESIGN.md` beside this crate for the book's rules and invariants.

pub mod book;
pub mod driver;
pub mod shared;
pub mod stream;

pub use book::{BookSettings, EntryId, Handed, KeyBook, Lost, Phase, Redelivery};
pub use driver::{check_extension, sleep_until};
pub use shared::Shared;
pub use stream::{handout_stream, Handout, TakesHandouts};
