//! The dedup-store conformance suite from runnel-testkit against a real Redis
//! (`RUNNEL_TEST_REDIS_URL`, e.g. `redis://127.0.0.1:6379`), each test under its own random
//! key prefix; plus the key layout and connection failures.

use std::sync::Arc;
use std::time::Duration;

use runnel_core::idempotency::{DedupClaim, DedupStore};
use runnel_core::StoreError;
use runnel_redis::{RedisDedupStore, RedisOptions};

/// The test server's URL, or `None` (the test then says it is skipped, unless
/// `RUNNEL_REQUIRE_SERVICES=1`, in which case a missing URL fails it).
fn redis_url() -> Option<String> {
    match std::env::var("RUNNEL_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "RUNNEL_TEST_REDIS_URL is not set but RUNNEL_REQUIRE_SERVICES=1"
            );
            eprintln!("SKIPPED: RUNNEL_TEST_REDIS_URL is not set");
            None
        }
    }
}

/// A prefix no other test (or earlier run) uses.
fn fresh_prefix() -> String {
    format!("runnel-test:{}", runnel_core::uuid::Uuid::now_v7().simple())
}

async fn fresh_store() -> Option<Arc<RedisDedupStore>> {
    let url = redis_url()?;
    let store = RedisDedupStore::connect_with(RedisOptions::new(url).key_prefix(fresh_prefix()))
        .await
        .expect("connect to the test Redis");
    Some(Arc::new(store))
}

runnel_testkit::dedup_store_conformance!(fresh_store);

/// A plain connection for looking at the keys the store wrote.
async fn raw_connection(url: &str) -> runnel_redis::redis::aio::MultiplexedConnection {
    runnel_redis::redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn keys_are_prefixed_tagged_and_expire_with_their_ttl() {
    let Some(url) = redis_url() else { return };
    let prefix = fresh_prefix();
    let store = RedisDedupStore::connect_with(RedisOptions::new(&url).key_prefix(&prefix))
        .await
        .unwrap();
    assert_eq!(store.key_prefix(), prefix);
    let mut raw = raw_connection(&url).await;
    let redis_key = format!("{prefix}:email/order-1");

    let DedupClaim::Acquired { token } = store
        .claim("email/order-1", Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("first claim acquires")
    };
    let value: Vec<u8> = runnel_redis::redis::cmd("GET")
        .arg(&redis_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(value, [b"L".as_slice(), token.as_bytes()].concat());
    let pttl: i64 = runnel_redis::redis::cmd("PTTL")
        .arg(&redis_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(0 < pttl && pttl <= 30_000, "lock TTL {pttl} ms");

    store
        .complete(
            "email/order-1",
            &token,
            b"sent".to_vec(),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    let value: Vec<u8> = runnel_redis::redis::cmd("GET")
        .arg(&redis_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(value, b"Dsent".to_vec());
    let pttl: i64 = runnel_redis::redis::cmd("PTTL")
        .arg(&redis_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(30_000 < pttl && pttl <= 3_600_000, "result TTL {pttl} ms");
}

#[tokio::test]
async fn foreign_value_under_the_prefix_is_a_clear_error() {
    let Some(url) = redis_url() else { return };
    let prefix = fresh_prefix();
    let store = RedisDedupStore::connect_with(RedisOptions::new(&url).key_prefix(&prefix))
        .await
        .unwrap();
    let mut raw = raw_connection(&url).await;
    let _: () = runnel_redis::redis::cmd("SET")
        .arg(format!("{prefix}:taken"))
        .arg("not a dedup value")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut raw)
        .await
        .unwrap();
    let err = store
        .claim("taken", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Backend(m) if m.contains("key prefix")),
        "{err:?}"
    );
}

#[tokio::test]
async fn invalid_url_is_an_invalid_argument() {
    let err = RedisDedupStore::connect("not-a-url").await.err().unwrap();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");
    let err =
        RedisDedupStore::connect_with(RedisOptions::new("redis://127.0.0.1:6379").key_prefix(""))
            .await
            .err()
            .unwrap();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let err = RedisDedupStore::connect_with(
        RedisOptions::new("redis://127.0.0.1:1")
            .connect_timeout(Duration::from_secs(2))
            .reconnect_attempts(0),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_transient());
}
