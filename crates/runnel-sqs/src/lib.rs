//! Runnel transport on Amazon SNS and SQS.
//!
//! * A Runnel **topic** is an SNS FIFO topic; a consumer **group** is an SQS FIFO queue
//!   subscribed to it with raw message delivery, plus a FIFO dead-letter queue wired by a
//!   redrive policy (`maxReceiveCount`).
//! * The ordering **key** is the `MessageGroupId` (a keyless message uses its id, so
//!   keyless messages do not queue behind each other) and the message id is the
//!   `MessageDeduplicationId`: SQS FIFO gives per-key head-of-line order across every
//!   consumer of the group, and republishing after an error is deduplicated (5 minutes).
//! * Consumers long-poll (`WaitTimeSeconds`); the ack timeout is the visibility timeout,
//!   `extend` is `ChangeMessageVisibility`, `nack(None)` sets visibility 0 and
//!   `nack(Some(d))` visibility `d`; the attempt is `ApproximateReceiveCount`.
//! * Messages follow the CloudEvents HTTP binding's binary mode on SNS/SQS message
//!   attributes ([`codec`]); structured mode when SQS's 10-attribute limit is exceeded.
//!   Both modes are read, whoever wrote them; messages that are not CloudEvents are read
//!   and written through a mapped envelope (`?envelope=json-event|outbox-record|raw|mapped`,
//!   `runnel_core::envelope`), and without one reach the dead-letter queue.
//! * `StartPosition::Earliest` replays the SNS FIFO topic's message archive
//!   (`ArchivePolicy` on the topic, `ReplayPolicy` on the new group's subscription).
//! * [`SqsBus`]'s [`DeadLetterDrain`](runnel_core::bus::DeadLetterDrain) moves a group's
//!   native DLQ into a `DeadLetterStore`.
//!
//! # Configuration URL
//!
//! ```text
//! sqs://[ACCESS_KEY_ID:SECRET_ACCESS_KEY@][REGION][?endpoint=URL&session_token=…&prefix=runnel
//!       &wait=20s&max_deliveries=25&retention=7d&max_payload_bytes=184320&sdk_attempts=3
//!       &publish_shards=1]
//! ```
//!
//! Durations are written `250ms`, `30s`, `5m`, `7d`; unknown parameters are refused (see
//! [`SqsOptions::from_url`] and `docs/configuration.md`). Without credentials in the URL, `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
//! `AWS_SESSION_TOKEN` are read. Credentials are never logged (`Debug` redacts them).
//!
//! ```
//! let bus = runnel_sqs::connect("sqs://test:test@us-east-1?endpoint=http://127.0.0.1:4566&prefix=demo")?;
//! assert_eq!(bus.options().prefix, "demo");
//! # Ok::<(), runnel_core::BusError>(())
//! ```
//!
//! See the crate's `DESIGN.md` for why per-key order holds and the known gaps of moto.

pub mod bus;
pub mod codec;
pub mod config;
pub mod dead_letter;
mod error;
pub mod names;
mod subscriber;

pub use bus::{connect, SqsBus};
pub use config::{SqsOptions, StaticCredentials};
