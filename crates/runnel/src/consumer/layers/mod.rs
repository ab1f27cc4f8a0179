//! The router's layers: each cross-cutting concern is one tower [`Layer`](tower::Layer) over
//! services of [`HandlerContext`](super::HandlerContext) → [`Outcome`](super::Outcome),
//! readable alone and stacked in a visible order (the default order is written, with its
//! reasons, in [`ConsumerBuilder::build`](super::ConsumerBuilder::build)).
//!
//! | layer | what it does |
//! |---|---|
//! | [`TracingLayer`] | a span per delivery: topic, group, message id, type, key, attempt, correlation id, outcome |
//! | [`KeyOrderLayer`] | same ordering key one at a time, in delivery order; bounded per-key queues and back-pressure |
//! | [`MetricsLayer`] | handled / failed / retried / dead-lettered counters, handling time, in-flight |
//! | [`DeadLetterLayer`] | a final failure goes to the dead-letter store with its whole history, then is acked |
//! | [`RetryLayer`] | in-process retries with exponential backoff and full jitter, lease extension |
//! | `tower::limit::ConcurrencyLimitLayer` | at most `max_concurrency` attempts run at once |
//! | [`InboxLayer`] | the handler's writes and the processed mark commit in one transaction |
//! | [`DedupLayer`] | a dedup window (lock, cached result, wait for a concurrent holder) |
//! | [`TimeoutLayer`] | an attempt that runs too long is a retryable failure |

mod custom;
mod dead_letter;
mod dedup;
mod inbox;
mod key_order;
mod metrics;
mod retry;
mod timeout;
mod tracing;

pub use self::custom::{BoxHandlerService, CustomLayers};
pub use self::dead_letter::{DeadLetter, DeadLetterLayer, DEAD_LETTER_STORE_FAILURE_NACK_DELAY};
pub use self::dedup::{
    Dedup, DedupLayer, DEDUP_LOCK_TTL_DEFAULT, DEDUP_POLL_INTERVAL_DEFAULT,
    DEDUP_RESULT_TTL_DEFAULT, DEDUP_UNAVAILABLE_NACK_DELAY, DEDUP_WAIT_MAX_DEFAULT,
};
pub use self::inbox::{InboxLayer, InboxService, INBOX_UNAVAILABLE_NACK_DELAY};
pub use self::key_order::{KeyOrder, KeyOrderLayer, PER_KEY_QUEUE_MAX_DEFAULT};
pub use self::metrics::{
    Metrics, MetricsLayer, METRIC_ABANDONED, METRIC_DEAD_LETTERED, METRIC_DUPLICATES,
    METRIC_FAILED, METRIC_HANDLED, METRIC_HANDLING_SECONDS, METRIC_IN_FLIGHT, METRIC_LAG,
    METRIC_LEASE_EXTENSIONS, METRIC_REDELIVERED, METRIC_REPLAYS_SKIPPED, METRIC_RETRIED,
};
pub use self::retry::{Retry, RetryLayer};
pub use self::timeout::{Timeout, TimeoutLayer};
pub use self::tracing::{Tracing, TracingLayer};

use runnel_core::dead_letter::ERROR_TEXT_LEN_MAX;
use runnel_core::message::{GroupName, TopicName, BUS_NAME_LEN_MAX};

/// Longest consumer name the idempotency layers use, in bytes: the inbox stores keep
/// handler names within the bus name bound, and a dedup key must fit a name plus a
/// message id.
pub const CONSUMER_NAME_LEN_MAX: usize = BUS_NAME_LEN_MAX;

/// The name idempotency marks are kept under by default: `"{topic}/{group}"`, or — when
/// that is over [`CONSUMER_NAME_LEN_MAX`] — a stable 64-bit FNV-1a hash of it in hex (the
/// same on every process and version, so marks survive restarts).
pub fn consumer_name(topic: &TopicName, group: &GroupName) -> String {
    let name = format!("{topic}/{group}");
    if name.len() <= CONSUMER_NAME_LEN_MAX {
        return name;
    }
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = name.bytes().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    });
    format!("consumer-{hash:016x}")
}

/// `text` cut to at most [`ERROR_TEXT_LEN_MAX`] bytes, on a character boundary.
pub(crate) fn error_text(mut text: String) -> String {
    if text.len() > ERROR_TEXT_LEN_MAX {
        let mut end = ERROR_TEXT_LEN_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_consumer_names_are_hashed_within_the_bound() {
        let t = TopicName::new("orders").unwrap();
        let g = GroupName::new("billing").unwrap();
        assert_eq!(consumer_name(&t, &g), "orders/billing");
        let long_t = TopicName::new("t".repeat(BUS_NAME_LEN_MAX)).unwrap();
        let long_g = GroupName::new("g".repeat(BUS_NAME_LEN_MAX)).unwrap();
        let name = consumer_name(&long_t, &long_g);
        assert!(name.len() <= CONSUMER_NAME_LEN_MAX);
        assert_eq!(name, consumer_name(&long_t, &long_g));
        assert_ne!(name, consumer_name(&long_t, &g));
    }

    #[test]
    fn error_text_is_cut_on_a_char_boundary() {
        let long = "é".repeat(ERROR_TEXT_LEN_MAX);
        let cut = error_text(long);
        assert!(cut.len() <= ERROR_TEXT_LEN_MAX);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
