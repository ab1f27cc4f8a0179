//! [`RedisDedupStore`]: the dedup window on Redis.
//!
//! One Redis key per dedup key, `{prefix}:{key}`, whose value says what state it is in:
//!
//! * `L{token}` — locked by the claimer holding `token`; expires after the lock TTL;
//! * `D{result}` — completed; the cached result, binary-safe; expires after the result TTL.
//!
//! A claim is `SET NX PX` (only one concurrent claimer can create the key). `complete` and
//! `release` are Lua scripts that compare the stored lock with the caller's token and
//! change the key in the same atomic step, so a holder whose lock expired can never
//! overwrite or delete the lock of whoever claimed the key after it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use runnel_core::idempotency::{
    ttl_millis, validate_dedup_key, validate_dedup_result, validate_dedup_ttl,
};
use runnel_core::idempotency::{DedupClaim, DedupStore};
use runnel_core::StoreError;

use crate::error_map::map_redis;
use crate::options::{RedisOptions, RECONNECT_DELAY_MAX};

/// Value tag of a held lock (followed by the holder's token).
const LOCKED: u8 = b'L';
/// Value tag of a completed key (followed by the cached result).
const COMPLETED: u8 = b'D';
/// How often a claim retries when the key vanished between its `SET NX` and its `GET`
/// (the holder released it, or it expired, in that instant). After these rounds the claim
/// reports `InProgress`, which is what it saw a moment ago.
const CLAIM_ROUNDS_MAX: usize = 4;

/// Completes a claim: if the key still holds the caller's lock, replace it with the result
/// for the result TTL. KEYS[1] = key; ARGV[1] = expected lock value (`L` .. token),
/// ARGV[2] = result value (`D` .. result), ARGV[3] = result TTL in milliseconds.
/// Returns 1 when stored, 0 when the lock is not held with this token.
const COMPLETE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Releases a claim: if the key still holds the caller's lock, delete it.
/// KEYS[1] = key; ARGV[1] = expected lock value. Returns 1 when released, 0 otherwise.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The dedup window ([`DedupStore`]) on Redis.
///
/// Cheap to clone; clones share one multiplexed connection that reconnects by itself.
/// Expiry is Redis's own (`PX`), measured by the server's clock.
#[derive(Clone)]
pub struct RedisDedupStore {
    conn: ConnectionManager,
    prefix: Arc<str>,
    complete: Arc<Script>,
    release: Arc<Script>,
}

impl RedisDedupStore {
    /// Connects to `url` with the options in its query (see [`RedisOptions::from_url`];
    /// defaults otherwise, key prefix `runnel:dedup`).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(RedisOptions::from_url(url)?).await
    }

    /// Connects with explicit options. Fails now — not at the first claim — when the URL is
    /// invalid or the server cannot be reached.
    pub async fn connect_with(options: RedisOptions) -> Result<Self, StoreError> {
        options.validate()?;
        let client = redis::Client::open(options.url.as_str()).map_err(|e| {
            StoreError::InvalidArgument(format!("invalid Redis URL {:?}: {e}", options.url))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(options.reconnect_attempts)
            .set_max_delay(RECONNECT_DELAY_MAX);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(map_redis)?;
        tracing::debug!(prefix = %options.key_prefix, "redis dedup store connected");
        Ok(RedisDedupStore {
            conn,
            prefix: options.key_prefix.into(),
            complete: Arc::new(Script::new(COMPLETE_SCRIPT)),
            release: Arc::new(Script::new(RELEASE_SCRIPT)),
        })
    }

    /// The key prefix: every key this store writes is `{prefix}:{dedup key}`.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    fn redis_key(&self, key: &str) -> String {
        format!("{}:{key}", self.prefix)
    }

    /// Runs the compare-and-change script `script` for `token`'s lock on `key`.
    async fn with_lock(
        &self,
        script: &Script,
        key: &str,
        token: &str,
        extra: &[&[u8]],
    ) -> Result<(), StoreError> {
        let mut invocation = script.key(self.redis_key(key));
        invocation.arg(tagged(LOCKED, token.as_bytes()));
        for arg in extra {
            invocation.arg(*arg);
        }
        let changed: i64 = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(map_redis)?;
        debug_assert!(changed == 0 || changed == 1);
        if changed == 1 {
            Ok(())
        } else {
            Err(StoreError::DedupLockLost {
                key: key.chars().take(64).collect(),
            })
        }
    }
}

/// `tag` followed by `body`: the stored form of a lock or a result.
fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(1 + body.len());
    value.push(tag);
    value.extend_from_slice(body);
    value
}

#[async_trait]
impl DedupStore for RedisDedupStore {
    async fn claim(&self, key: &str, lock_ttl: Duration) -> Result<DedupClaim, StoreError> {
        validate_dedup_key(key)?;
        validate_dedup_ttl("lock TTL", lock_ttl)?;
        let redis_key = self.redis_key(key);
        let token = runnel_core::uuid::Uuid::new_v4().simple().to_string();
        let lock = tagged(LOCKED, token.as_bytes());
        let mut conn = self.conn.clone();
        for _ in 0..CLAIM_ROUNDS_MAX {
            let set: Value = redis::cmd("SET")
                .arg(&redis_key)
                .arg(&lock)
                .arg("NX")
                .arg("PX")
                .arg(ttl_millis(lock_ttl))
                .query_async(&mut conn)
                .await
                .map_err(map_redis)?;
            match set {
                Value::Okay => return Ok(DedupClaim::Acquired { token }),
                Value::Nil => {}
                other => {
                    return Err(StoreError::Backend(format!(
                        "Redis answered SET NX with {other:?}"
                    )))
                }
            }
            // Someone holds or completed the key: read which.
            let current: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&redis_key)
                .query_async(&mut conn)
                .await
                .map_err(map_redis)?;
            match current.as_deref() {
                // Gone since the SET looked (released or expired): claim again.
                None => continue,
                Some([COMPLETED, result @ ..]) => {
                    return Ok(DedupClaim::Completed {
                        result: result.to_vec(),
                    })
                }
                Some([LOCKED, ..]) => return Ok(DedupClaim::InProgress),
                Some(_) => {
                    return Err(StoreError::Backend(format!(
                        "Redis key {redis_key:?} holds a value this store did not write; \
                         give the dedup store a key prefix of its own"
                    )))
                }
            }
        }
        Ok(DedupClaim::InProgress)
    }

    async fn complete(
        &self,
        key: &str,
        token: &str,
        result: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        validate_dedup_key(key)?;
        validate_dedup_ttl("result TTL", ttl)?;
        validate_dedup_result(&result)?;
        let value = tagged(COMPLETED, &result);
        let ttl_ms = ttl_millis(ttl).to_string();
        self.with_lock(&self.complete, key, token, &[&value, ttl_ms.as_bytes()])
            .await
    }

    async fn release(&self, key: &str, token: &str) -> Result<(), StoreError> {
        validate_dedup_key(key)?;
        self.with_lock(&self.release, key, token, &[]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_tagged() {
        assert_eq!(tagged(LOCKED, b"t1"), b"Lt1".to_vec());
        assert_eq!(tagged(COMPLETED, b""), b"D".to_vec());
    }

    /// Here rather than in `tests/` because it needs the store's own connection id.
    #[tokio::test]
    async fn a_killed_connection_is_replaced_and_claims_resume() {
        let url = match std::env::var("RUNNEL_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                assert!(
                    std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                    "RUNNEL_TEST_REDIS_URL is not set but RUNNEL_REQUIRE_SERVICES=1"
                );
                eprintln!("SKIPPED: RUNNEL_TEST_REDIS_URL is not set");
                return;
            }
        };
        let prefix = format!("runnel-test:{}", runnel_core::uuid::Uuid::now_v7().simple());
        let store = RedisDedupStore::connect_with(RedisOptions::new(&url).key_prefix(prefix))
            .await
            .unwrap();
        let DedupClaim::Acquired { token } =
            store.claim("k", Duration::from_secs(60)).await.unwrap()
        else {
            panic!("first claim acquires")
        };
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut store.conn.clone())
            .await
            .unwrap();
        let mut killer = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut killer)
            .await
            .unwrap();
        assert_eq!(killed, 1);

        // The first command after the kill may fail (as Unavailable: safe to retry); the
        // manager reconnects and the state in Redis is untouched.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let claim = loop {
            match store.claim("k", Duration::from_secs(60)).await {
                Ok(claim) => break claim,
                Err(e) => {
                    assert!(e.is_transient(), "a lost connection is Unavailable: {e:?}");
                    assert!(
                        std::time::Instant::now() < deadline,
                        "never reconnected: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert_eq!(
            claim,
            DedupClaim::InProgress,
            "the lock survived the reconnect"
        );
        store
            .complete("k", &token, b"ok".to_vec(), Duration::from_secs(60))
            .await
            .unwrap();
    }
}
