//! Limits and input checks shared by every idempotency backend — the transactional inbox
//! and the [`DedupStore`] — so SQLite, PostgreSQL and Redis accept and refuse exactly the
//! same calls — and the dedup window's trait itself.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::StoreError;

/// Longest inbox handler name, in bytes (the same bound as topic and group names).
pub const HANDLER_NAME_LEN_MAX: usize = crate::message::BUS_NAME_LEN_MAX;
/// Longest inbox message id, in bytes (the bound [`crate::Message::validate`] puts on ids).
pub const MESSAGE_ID_LEN_MAX: usize = 256;

/// Checks an inbox entry: the handler name is 1..=[`HANDLER_NAME_LEN_MAX`] bytes and the
/// message id 1..=[`MESSAGE_ID_LEN_MAX`] bytes, neither with control characters.
///
/// ```
/// use runnel_core::idempotency::validate_inbox_entry;
/// assert!(validate_inbox_entry("billing", "0192-msg").is_ok());
/// assert!(validate_inbox_entry("", "0192-msg").is_err());
/// ```
pub fn validate_inbox_entry(handler: &str, message_id: &str) -> Result<(), StoreError> {
    for (what, value, max) in [
        ("handler name", handler, HANDLER_NAME_LEN_MAX),
        ("message id", message_id, MESSAGE_ID_LEN_MAX),
    ] {
        if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
            return Err(StoreError::InvalidArgument(format!(
                "inbox {what} {:?}: must be 1..={max} bytes without control characters",
                value.chars().take(64).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// Longest dedup key, in bytes (a handler name plus a message id fit easily).
pub const DEDUP_KEY_LEN_MAX: usize = 512;
/// Largest cached dedup result, in bytes (results are meant to be small: an id, a status).
pub const DEDUP_RESULT_LEN_MAX: usize = 1024 * 1024;
/// Longest lock or result TTL a dedup store accepts: 30 days.
pub const DEDUP_TTL_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// Checks a dedup key: 1..=[`DEDUP_KEY_LEN_MAX`] bytes, no control characters.
///
/// ```
/// use runnel_core::idempotency::validate_dedup_key;
/// assert!(validate_dedup_key("billing/msg-1").is_ok());
/// assert!(validate_dedup_key("").is_err());
/// ```
pub fn validate_dedup_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > DEDUP_KEY_LEN_MAX || key.chars().any(char::is_control) {
        return Err(StoreError::InvalidArgument(format!(
            "dedup key {:?}: must be 1..={DEDUP_KEY_LEN_MAX} bytes without control characters",
            key.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

/// Checks a lock or result TTL: above zero and at most [`DEDUP_TTL_MAX`]; `what` names it
/// in the error.
pub fn validate_dedup_ttl(what: &str, ttl: Duration) -> Result<(), StoreError> {
    if ttl.is_zero() || ttl > DEDUP_TTL_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "{what} {ttl:?}: must be above zero and at most {DEDUP_TTL_MAX:?}"
        )));
    }
    Ok(())
}

/// Checks a result's size against [`DEDUP_RESULT_LEN_MAX`].
pub fn validate_dedup_result(result: &[u8]) -> Result<(), StoreError> {
    if result.len() > DEDUP_RESULT_LEN_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "dedup result of {} bytes is over the {DEDUP_RESULT_LEN_MAX}-byte limit; cache a \
             reference (an id) instead of the whole result",
            result.len()
        )));
    }
    Ok(())
}

/// A TTL in whole milliseconds, rounded up so a sub-millisecond TTL never becomes zero
/// (Redis `PX` and the SQL backends count in milliseconds or finer).
pub fn ttl_millis(ttl: Duration) -> u64 {
    let ms = ttl.as_millis() + u128::from(ttl.subsec_nanos() % 1_000_000 != 0);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// What a claim on an idempotency key found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DedupClaim {
    /// Nobody handled this key yet: the caller holds the lock (with this token) and must
    /// `complete` or `release` it.
    Acquired { token: String },
    /// Already handled within the window: here is the cached result.
    Completed { result: Vec<u8> },
    /// Someone else is handling it right now.
    InProgress,
}

/// A dedup window for handlers with external side effects (an email, a card charge):
/// lock a key, cache the result for a TTL, let concurrent duplicates wait for it.
///
/// `complete` and `release` fail with [`StoreError::DedupLockLost`] when the lock expired
/// before the handler finished; nothing is stored or released then.
///
/// ```
/// use std::time::Duration;
/// use runnel_core::idempotency::{DedupClaim, DedupStore};
/// use runnel_core::StoreError;
///
/// /// Sends the receipt for `order` at most once, whatever the redeliveries.
/// async fn send_receipt_once(dedup: &dyn DedupStore, order: &str) -> Result<(), StoreError> {
///     let key = format!("receipts/{order}");
///     match dedup.claim(&key, Duration::from_secs(30)).await? {
///         DedupClaim::Acquired { token } => {
///             let receipt_id = b"r-1".to_vec(); // send it; keep what the provider returned
///             dedup.complete(&key, &token, receipt_id, Duration::from_secs(86_400)).await
///         }
///         DedupClaim::Completed { .. } => Ok(()), // sent before
///         DedupClaim::InProgress => Ok(()),       // another consumer is sending it
///     }
/// }
/// ```
#[async_trait]
pub trait DedupStore: Send + Sync + 'static {
    /// Claims `key` for `lock_ttl` (after which a crashed holder's lock expires).
    async fn claim(&self, key: &str, lock_ttl: Duration) -> Result<DedupClaim, StoreError>;
    /// Stores the result for `ttl` and releases the lock held with `token`.
    async fn complete(
        &self,
        key: &str,
        token: &str,
        result: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StoreError>;
    /// Releases the lock without a result (the handler failed; a retry may claim again).
    async fn release(&self, key: &str, token: &str) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_checked() {
        assert!(validate_dedup_key("k").is_ok());
        assert!(validate_dedup_key(&"k".repeat(DEDUP_KEY_LEN_MAX)).is_ok());
        assert!(validate_dedup_key(&"k".repeat(DEDUP_KEY_LEN_MAX + 1)).is_err());
        assert!(validate_dedup_key("a\nb").is_err());
        assert!(validate_dedup_ttl("lock TTL", Duration::ZERO).is_err());
        assert!(validate_dedup_ttl("lock TTL", DEDUP_TTL_MAX).is_ok());
        assert!(validate_dedup_ttl("lock TTL", DEDUP_TTL_MAX + Duration::from_secs(1)).is_err());
        assert!(validate_dedup_result(&vec![0; DEDUP_RESULT_LEN_MAX + 1]).is_err());
        assert!(validate_inbox_entry("h", &"m".repeat(MESSAGE_ID_LEN_MAX)).is_ok());
        assert!(validate_inbox_entry("h", &"m".repeat(MESSAGE_ID_LEN_MAX + 1)).is_err());
        assert!(validate_inbox_entry(&"h".repeat(HANDLER_NAME_LEN_MAX + 1), "m").is_err());
        assert!(validate_inbox_entry("h", "").is_err());
    }

    #[test]
    fn ttl_millis_rounds_up() {
        assert_eq!(ttl_millis(Duration::from_micros(1)), 1);
        assert_eq!(ttl_millis(Duration::from_millis(5)), 5);
        assert_eq!(ttl_millis(Duration::from_micros(5_001)), 6);
    }
}
