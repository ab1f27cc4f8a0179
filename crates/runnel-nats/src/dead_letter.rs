//! The native dead-letter stream and how its messages reach the one `DeadLetterStore`.
//!
//! The consumer router dead-letters a message that exhausts its retries itself (its dead
//! letter layer writes to the `DeadLetterStore`). The transport adds a backstop for
//! messages that never get that far — a handler that crashes the process, or a message
//! that cannot be decoded: once JetStream has delivered one more than `max_deliveries`
//! times, the member copies it to the stream `<STREAM_PREFIX>_DLQ` (subject
//! `<prefix>_dlq.<stream>.<consumer>`, with `Runnel-Dlq-*` headers saying why) and
//! terminates it on the group's consumer. [`drain_dead_letters`] moves those copies into
//! a `DeadLetterStore`, from where `runnel dlq` lists and replays them like any other.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures_util::StreamExt;
use runnel_core::dead_letter::{DeadLetterStore, FailureRecord, NewDeadLetter};
use runnel_core::{BusError, GroupName, TopicName};

use crate::bus::{unavailable, NatsBus};
use crate::codec::{self, dead_letter_headers as dlh};
use crate::names;

/// Most dead letters one drain call moves.
pub const DRAIN_BATCH_MAX: usize = 1000;
/// The durable consumer that drains the dead-letter stream.
const DRAIN_CONSUMER: &str = "runnel-dlq-drain";
/// How long one drain waits for the dead-letter stream to answer.
const DRAIN_FETCH_EXPIRES: Duration = Duration::from_secs(1);

/// Moves up to `limit` (at most [`DRAIN_BATCH_MAX`]) messages from the native dead-letter
/// stream into `store`, each acknowledged (removed from the stream) only after the store
/// has it. Returns how many were moved. Run it periodically, or from `runnel dlq`.
///
/// ```no_run
/// # async fn demo(bus: &runnel_nats::NatsBus, store: &dyn runnel_core::dead_letter::DeadLetterStore) -> Result<(), runnel_core::BusError> {
/// let moved = runnel_nats::drain_dead_letters(bus, store, 100).await?;
/// println!("{moved} poison messages are now in the dead-letter store");
/// # Ok(()) }
/// ```
pub async fn drain_dead_letters(
    bus: &NatsBus,
    store: &dyn DeadLetterStore,
    limit: usize,
) -> Result<usize, BusError> {
    let limit = limit.clamp(1, DRAIN_BATCH_MAX);
    let inner = &bus.inner;
    inner.ensure_dead_letter_stream().await?;
    let stream_name = names::dead_letter_stream(&inner.options.stream_prefix);
    let stream = inner
        .js
        .get_stream_no_info(&stream_name)
        .await
        .map_err(|e| unavailable("the dead-letter stream", e))?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            DRAIN_CONSUMER,
            pull::Config {
                durable_name: Some(DRAIN_CONSUMER.into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| unavailable("the dead-letter drain consumer", e))?;
    let mut batch = consumer
        .fetch()
        .max_messages(limit)
        .expires(DRAIN_FETCH_EXPIRES)
        .messages()
        .await
        .map_err(|e| unavailable("fetching dead letters", e))?;
    let mut moved = 0;
    while let Some(item) = batch.next().await {
        let msg = item.map_err(|e| unavailable("fetching dead letters", e))?;
        let dead = to_dead_letter(&msg)?;
        store.put(dead).await?;
        msg.double_ack()
            .await
            .map_err(|e| unavailable("acknowledging a drained dead letter", e))?;
        moved += 1;
    }
    Ok(moved)
}

fn to_dead_letter(msg: &jetstream::Message) -> Result<NewDeadLetter, BusError> {
    let header = |name: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    let bad = |what: &str| BusError::InvalidMessage {
        id: String::new(),
        reason: format!("dead-letter copy without a valid {what} header"),
    };
    let topic = TopicName::new(header(dlh::TOPIC).ok_or_else(|| bad(dlh::TOPIC))?)?;
    let group = GroupName::new(header(dlh::GROUP).ok_or_else(|| bad(dlh::GROUP))?)?;
    let attempts: u32 = header(dlh::ATTEMPTS)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let reason = header(dlh::REASON).unwrap_or_else(|| "dead-lettered by the transport".into());
    let at = header(dlh::AT)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(chrono::Utc::now);
    let message = match codec::from_nats(msg.headers.as_ref(), &msg.payload) {
        Ok(m) => m,
        Err(e) => {
            // Not a CloudEvent: keep the bytes so nothing is lost.
            let mut m = runnel_core::Message::json("runnel.undecodable", &serde_json::Value::Null);
            m.content_type = "application/octet-stream".into();
            m.payload = msg.payload.to_vec();
            if let Some(seq) = header(dlh::STREAM_SEQUENCE) {
                m = m.with_header("runnelstreamseq", seq);
            }
            tracing::debug!(error = %e, "undecodable dead letter kept as raw bytes");
            m
        }
    };
    Ok(NewDeadLetter {
        topic,
        group,
        message,
        failures: vec![FailureRecord {
            attempt: attempts,
            at,
            error: format!("NATS transport backstop: {reason}"),
            permanent: false,
        }],
    })
}
