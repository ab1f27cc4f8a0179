//! Fixing where a new group starts.
//!
//! A group created with [`StartPosition::Latest`](runnel_core::bus::StartPosition) must
//! see every message published after `subscribe` returns — also those published before
//! the group's first rebalance completes. Kafka's `auto.offset.reset=latest` would
//! resolve "latest" only when the partition is first fetched (too late), and it relies on
//! `ListOffsets(latest)`, which some Kafka-protocol brokers (tansu 0.6) answer wrongly.
//! So before joining, partitions without a committed offset get one: the partition's high
//! watermark, read from a fetch response (librdkafka caches it per partition).

use std::collections::HashSet;
use std::ffi::CString;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use runnel_core::BusError;

use super::state::PriorDeliveries;
use crate::config::KafkaOptions;
use crate::error::bus_error;

/// Longest time fixing the start offsets may take.
pub const START_FIX_TIMEOUT: Duration = Duration::from_secs(20);
/// Poll interval while waiting for the first fetch responses.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Commits the current end of every partition of `topic` that has no committed offset in
/// `kafka_group`. A group that already has members (which fixed the start themselves)
/// refuses such a commit; that is fine.
pub fn fix_latest_start(
    options: &KafkaOptions,
    kafka_group: &str,
    topic: &str,
) -> Result<(), BusError> {
    let deadline = Instant::now() + START_FIX_TIMEOUT;
    let mut config = options.consumer_config(kafka_group);
    config.set("enable.partition.eof", "true");
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| bus_error("create the consumer", &e))?;
    // A topic created a moment ago may not be in every broker's metadata yet.
    let partitions: Vec<i32> = loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), remaining(deadline))
            .map_err(|e| bus_error(&format!("read the partitions of {topic}"), &e))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if !partitions.is_empty() {
            break partitions;
        }
        if Instant::now() >= deadline {
            return Err(BusError::Unavailable(format!(
                "topic {topic} has no partitions in the broker metadata"
            )));
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    let mut all = TopicPartitionList::new();
    for &p in &partitions {
        all.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(all, remaining(deadline))
        .map_err(|e| bus_error(&format!("read the committed offsets of {kafka_group}"), &e))?;
    let missing: Vec<i32> = committed
        .elements()
        .iter()
        .filter(|e| !matches!(e.offset(), Offset::Offset(_)))
        .map(|e| e.partition())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }

    let ends = high_watermarks(&consumer, topic, &missing, deadline)?;
    let mut tpl = TopicPartitionList::with_capacity(ends.len());
    for (p, end) in ends {
        let mut e = tpl.add_partition(topic, p);
        e.set_offset(Offset::Offset(end))
            .map_err(|e| bus_error("set the start offset", &e))?;
        e.set_metadata(
            PriorDeliveries {
                delivered_end: end,
                attempts: Default::default(),
            }
            .render(),
        );
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => Ok(()),
        Err(KafkaError::ConsumerCommit(
            RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::RebalanceInProgress,
        )) => {
            tracing::debug!(
                group = kafka_group,
                "the group is active: its members fixed the start"
            );
            Ok(())
        }
        Err(e) => Err(bus_error(
            &format!("commit the start offsets of {kafka_group}"),
            &e,
        )),
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The high watermark of each partition, from the first fetch response of each.
fn high_watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    deadline: Instant,
) -> Result<Vec<(i32, i64)>, BusError> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| bus_error("assign", &e))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| bus_error(&format!("assign {topic}"), &e))?;
    let mut answered = HashSet::new();
    while answered.len() < partitions.len() {
        if Instant::now() >= deadline {
            return Err(BusError::Unavailable(format!(
                "no fetch response for every partition of {topic} within {START_FIX_TIMEOUT:?}"
            )));
        }
        match consumer.poll(POLL_INTERVAL) {
            Some(Ok(m)) => {
                answered.insert(rdkafka::Message::partition(&m));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                answered.insert(p);
            }
            Some(Err(e)) => tracing::debug!(error = %e, "fetching while fixing the start"),
            None => {}
        }
    }
    let mut ends = Vec::with_capacity(partitions.len());
    for &p in partitions {
        let end = cached_high_watermark(consumer, topic, p).ok_or_else(|| {
            BusError::Unavailable(format!("no high watermark known for {topic}/{p}"))
        })?;
        ends.push((p, end));
    }
    let _ = consumer.unassign();
    Ok(ends)
}

/// librdkafka's cached high watermark of a partition (updated by every fetch response;
/// no broker request). The Rust wrapper does not expose it, hence the FFI call.
fn cached_high_watermark<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives; `topic` is a valid
    // NUL-terminated string for the call's duration; `low` and `high` are valid
    // out-pointers to initialised locals. The call only reads librdkafka's cache.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}
