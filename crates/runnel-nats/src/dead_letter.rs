//! The native dead-letter stream and how its messages reach the one `DeadLetterStore`.
//!
//! The consumer router dead-letters a message that exhausts its retries itself (its dead
//! letter layer writes to the `DeadLetterStore`). The transport adds a backstop for
//! messages that never get that far — a handler that crashes the process, or a message
//! that cannot be decoded: once JetStream has delivered one more than `max_deliveries`
//! times, the member copies it to the stream `<STREAM_PREFIX>_DLQ` (subject
//! `<prefix>_dlq.<stream>.<consumer>`, with `Runnel-Dlq-*` headers saying why) and
//! terminates it on the group's consumer. The bus's [`DeadLetterDrain`] moves a group's
//! copies into a `DeadLetterStore`, from where `runnel dlq` lists and replays them like
//! any other.

use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::HeaderMap;
use async_trait::async_trait;
use runnel_core::bus::DeadLetterDrain;
use runnel_core::dead_letter::{DeadLetterStore, FailureRecord, NewDeadLetter};
use runnel_core::{BusError, GroupName, TopicName};

use crate::bus::{unavailable, NatsBus};
use crate::codec::{self, dead_letter_headers as dlh};
use crate::names;

/// Most dead letters one drain call moves.
pub const DRAIN_BATCH_MAX: usize = 1000;

#[async_trait]
impl DeadLetterDrain for NatsBus {
    /// Moves up to `max` (at most [`DRAIN_BATCH_MAX`] per call; 0 moves nothing) of the
    /// copies the members of `group` on `topic` left in the dead-letter stream into
    /// `store`; returns how many. The one stream holds every group's copies, each group
    /// on its own subject (`<prefix>_dlq.<stream>.<consumer>`), so the drain reads that
    /// subject only, oldest first, and deletes each copy from the stream only after the
    /// store has it. Other groups' copies stay for their own drain.
    async fn drain_dead_letters(
        &self,
        topic: &TopicName,
        group: &GroupName,
        store: &dyn DeadLetterStore,
        max: usize,
    ) -> Result<usize, BusError> {
        let max = max.min(DRAIN_BATCH_MAX);
        if max == 0 {
            return Ok(0);
        }
        let inner = &self.inner;
        inner.ensure_dead_letter_stream().await?;
        let stream_name = names::dead_letter_stream(&inner.options.stream_prefix);
        let stream = inner
            .js
            .get_stream_no_info(&stream_name)
            .await
            .map_err(|e| unavailable("the dead-letter stream", e))?;
        let subject = names::dead_letter_subject(
            &inner.options.subject_prefix,
            &names::stream_name(&inner.options.stream_prefix, topic),
            &names::consumer_name(group),
        );
        let mut from = 1;
        let mut moved = 0;
        while moved < max {
            let msg = match stream
                .get_first_raw_message_by_subject(&subject, from)
                .await
            {
                Ok(msg) => msg,
                Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => break,
                Err(e) => return Err(unavailable("reading dead letters", e)),
            };
            let dead = to_dead_letter(
                &msg.headers,
                &msg.payload,
                topic,
                group,
                &inner.options.envelope,
                codec::broker_facts(&stream_name, msg.sequence, topic.as_str(), None),
            )?;
            store.put(dead).await?;
            stream
                .delete_message(msg.sequence)
                .await
                .map_err(|e| unavailable("removing a drained dead letter", e))?;
            from = msg.sequence + 1;
            moved += 1;
        }
        Ok(moved)
    }
}

fn to_dead_letter(
    headers: &HeaderMap,
    payload: &bytes::Bytes,
    topic: &TopicName,
    group: &GroupName,
    envelope: &runnel_core::envelope::Envelope,
    broker: runnel_core::envelope::BrokerFacts,
) -> Result<NewDeadLetter, BusError> {
    let header = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
    let attempts: u32 = header(dlh::ATTEMPTS)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let reason = header(dlh::REASON).unwrap_or_else(|| "dead-lettered by the transport".into());
    let at = header(dlh::AT)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(chrono::Utc::now);
    let message = match codec::from_nats(Some(headers), payload, envelope, broker) {
        Ok(m) => m,
        Err(e) => {
            // Not a CloudEvent: keep the bytes so nothing is lost.
            let mut m = runnel_core::Message::json("runnel.undecodable", &serde_json::Value::Null);
            m.content_type = "application/octet-stream".into();
            m.payload = payload.to_vec();
            if let Some(seq) = header(dlh::STREAM_SEQUENCE) {
                m = m.with_header("runnelstreamseq", seq);
            }
            tracing::debug!(error = %e, "undecodable dead letter kept as raw bytes");
            m
        }
    };
    Ok(NewDeadLetter {
        topic: topic.clone(),
        group: group.clone(),
        message,
        failures: vec![FailureRecord {
            attempt: attempts,
            at,
            error: format!("NATS transport backstop: {reason}"),
            permanent: false,
        }],
    })
}
