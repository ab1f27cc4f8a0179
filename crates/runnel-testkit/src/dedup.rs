//! The dedup-store conformance suite: one check per behaviour promised by the
//! [`DedupStore`] trait, run by every backend (Redis, SQLite, PostgreSQL), plus
//! [`InMemoryDedupStore`] for unit tests of code that uses a dedup store.
//!
//! The preferred form is the [`dedup_store_conformance!`](crate::dedup_store_conformance)
//! macro in the backend's `tests/` folder: one `#[test]` per check, each on a fresh store
//! from the factory, in its own multi-threaded tokio runtime:
//!
//! ```ignore
//! runnel_testkit::dedup_store_conformance!(async {
//!     std::sync::Arc::new(runnel_testkit::dedup::InMemoryDedupStore::new())
//! });
//! ```
//!
//! As with the event-store suite, the factory may return `Option<Arc<S>>`; `None` skips
//! the check loudly (and fails it when `RUNNEL_REQUIRE_SERVICES=1`).
//!
//! Every key a check uses is unique (a fresh UUID in it), so checks may share one store.
//! Nothing sleeps in hope: expiry is awaited by polling with a deadline, and every claim
//! that found a key forgotten is checked against the time that had really passed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runnel_core::async_trait;
use runnel_core::idempotency::{
    validate_dedup_key, validate_dedup_result, validate_dedup_ttl, DEDUP_KEY_LEN_MAX,
    DEDUP_RESULT_LEN_MAX, DEDUP_TTL_MAX,
};
use runnel_core::idempotency::{DedupClaim, DedupStore};
use runnel_core::StoreError;

use crate::conformance::CHECK_DEADLINE;

/// A lock TTL no check outlives: locks taken with it never expire during a check.
pub const LOCK_TTL_LONG: Duration = Duration::from_secs(60);
/// A result TTL no check outlives.
pub const RESULT_TTL_LONG: Duration = Duration::from_secs(600);
/// The short TTL of the expiry checks. Long enough to be measured reliably, short enough
/// to keep the checks quick.
pub const TTL_SHORT: Duration = Duration::from_millis(300);
/// Slack for clock granularity when a check asserts that at least a TTL has passed
/// (backends measure expiry with their own clock: the database's, Redis's, the writer's).
pub const CLOCK_SLACK: Duration = Duration::from_millis(20);
/// Longest a check waits for a short TTL to expire.
pub const EXPIRY_WAIT_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between two polls while waiting for expiry or for a concurrent result.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Concurrent claimers racing for one key.
pub const CONCURRENT_CLAIMERS: usize = 16;

// ---------------------------------------------------------------------------------------
// Running the suite
// ---------------------------------------------------------------------------------------

/// What a store factory may return: `Arc<S>`, or `Option<Arc<S>>` where `None` skips the
/// check because the backend's service is not configured.
pub trait IntoDedupStore {
    /// The store type under test.
    type Store: DedupStore + ?Sized;
    /// The store, or `None` to skip.
    fn into_dedup_store(self) -> Option<Arc<Self::Store>>;
}

impl<S: DedupStore + ?Sized> IntoDedupStore for Arc<S> {
    type Store = S;
    fn into_dedup_store(self) -> Option<Arc<S>> {
        Some(self)
    }
}

impl<S: DedupStore + ?Sized> IntoDedupStore for Option<Arc<S>> {
    type Store = S;
    fn into_dedup_store(self) -> Option<Arc<S>> {
        self
    }
}

/// Runs every check, each on a fresh store from `make_store`, one after another. Call it
/// from a multi-threaded tokio test; prefer
/// [`dedup_store_conformance!`](crate::dedup_store_conformance), which reports each check
/// as its own test.
///
/// ```
/// # #[tokio::main]
/// # async fn main() {
/// use std::sync::Arc;
/// use runnel_testkit::dedup::{run_dedup_store_suite, InMemoryDedupStore};
/// run_dedup_store_suite(|| async { Arc::new(InMemoryDedupStore::new()) }).await;
/// # }
/// ```
pub async fn run_dedup_store_suite<F, Fut>(make_store: F)
where
    F: Fn() -> Fut,
    Fut: Future,
    Fut::Output: IntoDedupStore,
{
    crate::__dedup_store_checks!(__suite_run_all(
        "dedup conformance",
        dedup,
        IntoDedupStore::into_dedup_store,
        CHECK_DEADLINE,
        make_store
    ));
}

/// The names of every check, in the order the suite runs them.
pub fn check_names() -> &'static [&'static str] {
    crate::__dedup_store_checks!(__suite_check_names())
}

/// One `#[test]` per dedup-store check, each on a fresh store.
///
/// Pass an `async` block or an expression callable with no arguments that returns a
/// future; it must produce the store as `Arc<S>` or `Option<Arc<S>>` (`None` skips), with
/// `S: DedupStore`. The backend crate needs only `runnel-testkit` as a dev-dependency.
///
/// ```ignore
/// // tests/dedup.rs
/// runnel_testkit::dedup_store_conformance!(async {
///     std::sync::Arc::new(runnel_testkit::dedup::InMemoryDedupStore::new())
/// });
/// ```
#[macro_export]
macro_rules! dedup_store_conformance {
    ($($factory:tt)+) => {
        $crate::__suite_conformance!(__dedup_store_checks (
            dedup,
            $crate::dedup::IntoDedupStore::into_dedup_store,
            $crate::conformance::CHECK_DEADLINE
        ) $($factory)+);
    };
}

/// The list of checks, handed to `$callback`. The one place a new check is registered.
#[doc(hidden)]
#[macro_export]
macro_rules! __dedup_store_checks {
    ($callback:ident $args:tt) => {
        $crate::$callback! { $args;
            first_claim_acquires_and_completion_caches_the_result,
            claim_while_held_is_in_progress,
            concurrent_claims_exactly_one_acquires_the_rest_see_the_result,
            release_lets_the_key_be_claimed_again,
            expired_lock_can_be_claimed_again_and_the_old_holder_is_refused,
            wrong_token_cannot_complete_or_release,
            completing_twice_is_refused_and_keeps_the_first_result,
            result_is_forgotten_after_its_ttl,
            keys_are_independent,
            empty_and_binary_results_round_trip,
            invalid_inputs_are_rejected_and_change_nothing,
        }
    };
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A key no other check (or earlier run against the same server) uses.
fn fresh_key(what: &str) -> String {
    format!("{what}/{}", runnel_core::uuid::Uuid::now_v7().simple())
}

#[track_caller]
fn must<T>(what: &str, result: Result<T, StoreError>) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{what} failed: {e} ({e:?})"),
    }
}

async fn claim<S: DedupStore + ?Sized>(store: &S, key: &str, lock_ttl: Duration) -> DedupClaim {
    must("claim", store.claim(key, lock_ttl).await)
}

async fn acquire<S: DedupStore + ?Sized>(store: &S, key: &str, lock_ttl: Duration) -> String {
    match claim(store, key, lock_ttl).await {
        DedupClaim::Acquired { token } => token,
        other => panic!("first claim of {key:?}: expected Acquired, got {other:?}"),
    }
}

#[track_caller]
fn assert_lock_lost(what: &str, result: Result<(), StoreError>) {
    match result {
        Err(StoreError::DedupLockLost { .. }) => {}
        other => panic!("{what}: expected DedupLockLost, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>) {
    match result {
        Err(StoreError::InvalidArgument(_)) => {}
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

/// Claims `key` until it is acquired (its lock or result expired), polling with a
/// deadline; returns the new token and when it was acquired.
async fn claim_until_acquired<S: DedupStore + ?Sized>(store: &S, key: &str) -> (String, Instant) {
    let deadline = Instant::now() + EXPIRY_WAIT_DEADLINE;
    loop {
        if let DedupClaim::Acquired { token } = claim(store, key, LOCK_TTL_LONG).await {
            return (token, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "{key:?} was still held or cached {EXPIRY_WAIT_DEADLINE:?} after a {TTL_SHORT:?} TTL"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

/// A first claim acquires the lock; after `complete`, every later claim gets the cached
/// result (what a duplicate delivery sees).
pub async fn first_claim_acquires_and_completion_caches_the_result<S: DedupStore + ?Sized>(
    store: Arc<S>,
) {
    let key = fresh_key("first-claim");
    let token = acquire(&*store, &key, LOCK_TTL_LONG).await;
    assert!(!token.is_empty(), "the token identifies the holder");
    must(
        "complete",
        store
            .complete(&key, &token, b"receipt-42".to_vec(), RESULT_TTL_LONG)
            .await,
    );
    for attempt in 1..=3 {
        assert_eq!(
            claim(&*store, &key, LOCK_TTL_LONG).await,
            DedupClaim::Completed {
                result: b"receipt-42".to_vec()
            },
            "duplicate claim {attempt} returns the cached result"
        );
    }
}

/// While the lock is held, other claims see `InProgress` and do not take it over.
pub async fn claim_while_held_is_in_progress<S: DedupStore + ?Sized>(store: Arc<S>) {
    let key = fresh_key("held");
    let token = acquire(&*store, &key, LOCK_TTL_LONG).await;
    for _ in 0..3 {
        assert_eq!(
            claim(&*store, &key, LOCK_TTL_LONG).await,
            DedupClaim::InProgress
        );
    }
    // The original holder still holds it: its completion is accepted.
    must(
        "complete by the holder",
        store
            .complete(&key, &token, b"done".to_vec(), RESULT_TTL_LONG)
            .await,
    );
}

/// Of many concurrent claims on one key exactly one acquires; the others see
/// `InProgress` and, once the holder completes, its result.
pub async fn concurrent_claims_exactly_one_acquires_the_rest_see_the_result<
    S: DedupStore + ?Sized,
>(
    store: Arc<S>,
) {
    let key = Arc::new(fresh_key("race"));
    let start = Arc::new(tokio::sync::Barrier::new(CONCURRENT_CLAIMERS));
    let mut racers = Vec::with_capacity(CONCURRENT_CLAIMERS);
    for _ in 0..CONCURRENT_CLAIMERS {
        let (store, key, start) = (Arc::clone(&store), Arc::clone(&key), Arc::clone(&start));
        racers.push(tokio::spawn(async move {
            start.wait().await;
            claim(&*store, &key, LOCK_TTL_LONG).await
        }));
    }
    let mut tokens = Vec::new();
    let mut in_progress = 0;
    for racer in racers {
        match racer.await.expect("a claimer panicked") {
            DedupClaim::Acquired { token } => tokens.push(token),
            DedupClaim::InProgress => in_progress += 1,
            DedupClaim::Completed { result } => {
                panic!("nobody completed yet, but a claim found result {result:?}")
            }
        }
    }
    assert_eq!(tokens.len(), 1, "exactly one concurrent claim acquires");
    assert_eq!(in_progress, CONCURRENT_CLAIMERS - 1);

    // The losers wait for the winner's result, as a duplicate delivery would.
    let mut waiters = Vec::with_capacity(CONCURRENT_CLAIMERS - 1);
    for _ in 1..CONCURRENT_CLAIMERS {
        let (store, key) = (Arc::clone(&store), Arc::clone(&key));
        waiters.push(tokio::spawn(async move {
            let deadline = Instant::now() + EXPIRY_WAIT_DEADLINE;
            loop {
                match claim(&*store, &key, LOCK_TTL_LONG).await {
                    DedupClaim::Completed { result } => return result,
                    DedupClaim::InProgress => {}
                    DedupClaim::Acquired { token } => {
                        panic!("a waiter acquired a held key (token {token})")
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "no result after the holder completed"
                );
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }));
    }
    must(
        "complete by the winner",
        store
            .complete(&key, &tokens[0], b"winner".to_vec(), RESULT_TTL_LONG)
            .await,
    );
    for waiter in waiters {
        assert_eq!(waiter.await.expect("a waiter panicked"), b"winner".to_vec());
    }
}

/// `release` (the handler failed) frees the key: the next claim acquires it with a new
/// token, and the released token can no longer complete.
pub async fn release_lets_the_key_be_claimed_again<S: DedupStore + ?Sized>(store: Arc<S>) {
    let key = fresh_key("release");
    let first = acquire(&*store, &key, LOCK_TTL_LONG).await;
    must("release", store.release(&key, &first).await);
    let second = acquire(&*store, &key, LOCK_TTL_LONG).await;
    assert_ne!(first, second, "every claim gets its own token");
    assert_lock_lost(
        "complete with the released token",
        store
            .complete(&key, &first, b"stale".to_vec(), RESULT_TTL_LONG)
            .await,
    );
    must(
        "complete by the new holder",
        store
            .complete(&key, &second, b"fresh".to_vec(), RESULT_TTL_LONG)
            .await,
    );
    assert_eq!(
        claim(&*store, &key, LOCK_TTL_LONG).await,
        DedupClaim::Completed {
            result: b"fresh".to_vec()
        }
    );
}

/// A crashed holder's lock expires after its TTL (not before); then another claim
/// acquires it, and the old holder can neither complete nor release.
pub async fn expired_lock_can_be_claimed_again_and_the_old_holder_is_refused<
    S: DedupStore + ?Sized,
>(
    store: Arc<S>,
) {
    let key = fresh_key("crashed-holder");
    let claimed_at = Instant::now();
    let crashed = acquire(&*store, &key, TTL_SHORT).await;
    let (taker, acquired_at) = claim_until_acquired(&*store, &key).await;
    assert!(
        acquired_at.duration_since(claimed_at) + CLOCK_SLACK >= TTL_SHORT,
        "the lock was taken over after {:?}, before its {TTL_SHORT:?} TTL",
        acquired_at.duration_since(claimed_at)
    );
    assert_ne!(crashed, taker);
    assert_lock_lost(
        "complete by the expired holder",
        store
            .complete(&key, &crashed, b"late".to_vec(), RESULT_TTL_LONG)
            .await,
    );
    assert_lock_lost(
        "release by the expired holder",
        store.release(&key, &crashed).await,
    );
    assert_eq!(
        claim(&*store, &key, LOCK_TTL_LONG).await,
        DedupClaim::InProgress,
        "the new holder's lock survives the old holder's attempts"
    );
    must(
        "complete by the new holder",
        store
            .complete(&key, &taker, b"taken-over".to_vec(), RESULT_TTL_LONG)
            .await,
    );
}

/// Only the token holder can complete or release.
pub async fn wrong_token_cannot_complete_or_release<S: DedupStore + ?Sized>(store: Arc<S>) {
    let key = fresh_key("wrong-token");
    let token = acquire(&*store, &key, LOCK_TTL_LONG).await;
    let wrong = format!("{token}x");
    assert_lock_lost(
        "complete with a wrong token",
        store
            .complete(&key, &wrong, b"forged".to_vec(), RESULT_TTL_LONG)
            .await,
    );
    assert_lock_lost(
        "release with a wrong token",
        store.release(&key, &wrong).await,
    );
    assert_lock_lost(
        "complete of a never-claimed key",
        store
            .complete(&fresh_key("never"), &token, b"x".to_vec(), RESULT_TTL_LONG)
            .await,
    );
    assert_eq!(
        claim(&*store, &key, LOCK_TTL_LONG).await,
        DedupClaim::InProgress,
        "the lock is still held"
    );
    must(
        "complete by the holder",
        store
            .complete(&key, &token, b"real".to_vec(), RESULT_TTL_LONG)
            .await,
    );
    assert_eq!(
        claim(&*store, &key, LOCK_TTL_LONG).await,
        DedupClaim::Completed {
            result: b"real".to_vec()
        }
    );
}

/// A completed key's token is spent: completing or releasing again is refused and the
/// first result stays.
pub async fn completing_twice_is_refused_and_keeps_the_first_result<S: DedupStore + ?Sized>(
    store: Arc<S>,
) {
    let key = fresh_key("twice");
    let token = acquire(&*store, &key, LOCK_TTL_LONG).await;
    must(
        "first complete",
        store
            .complete(&key, &token, b"first".to_vec(), RESULT_TTL_LONG)
            .await,
    );
    assert_lock_lost(
        "second complete",
        store
            .complete(&key, &token, b"second".to_vec(), RESULT_TTL_LONG)
            .await,
    );
    assert_lock_lost("release after complete", store.release(&key, &token).await);
    assert_eq!(
        claim(&*store, &key, LOCK_TTL_LONG).await,
        DedupClaim::Completed {
            result: b"first".to_vec()
        }
    );
}

/// A cached result lasts its TTL (not less) and is then forgotten: the key can be claimed
/// again.
pub async fn result_is_forgotten_after_its_ttl<S: DedupStore + ?Sized>(store: Arc<S>) {
    let key = fresh_key("ttl");
    let token = acquire(&*store, &key, LOCK_TTL_LONG).await;
    let completed_at = Instant::now();
    must(
        "complete",
        store
            .complete(&key, &token, b"short-lived".to_vec(), TTL_SHORT)
            .await,
    );
    let (_, forgotten_at) = claim_until_acquired(&*store, &key).await;
    assert!(
        forgotten_at.duration_since(completed_at) + CLOCK_SLACK >= TTL_SHORT,
        "the result was forgotten after {:?}, before its {TTL_SHORT:?} TTL",
        forgotten_at.duration_since(completed_at)
    );
}

/// Keys do not affect each other.
pub async fn keys_are_independent<S: DedupStore + ?Sized>(store: Arc<S>) {
    let (a, b) = (fresh_key("a"), fresh_key("b"));
    let token_a = acquire(&*store, &a, LOCK_TTL_LONG).await;
    let token_b = acquire(&*store, &b, LOCK_TTL_LONG).await;
    assert_lock_lost(
        "a's token on b",
        store
            .complete(&b, &token_a, b"a".to_vec(), RESULT_TTL_LONG)
            .await,
    );
    must(
        "complete a",
        store
            .complete(&a, &token_a, b"a".to_vec(), RESULT_TTL_LONG)
            .await,
    );
    assert_eq!(
        claim(&*store, &b, LOCK_TTL_LONG).await,
        DedupClaim::InProgress
    );
    must("release b", store.release(&b, &token_b).await);
    assert_eq!(
        claim(&*store, &a, LOCK_TTL_LONG).await,
        DedupClaim::Completed {
            result: b"a".to_vec()
        }
    );
}

/// An empty result and arbitrary bytes (every byte value, NULs included) come back
/// exactly; keys may hold any printable Unicode.
pub async fn empty_and_binary_results_round_trip<S: DedupStore + ?Sized>(store: Arc<S>) {
    let binary: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    for (what, result) in [("empty", Vec::new()), ("binary", binary)] {
        let key = fresh_key(&format!("bytes-{what}-ключ-🔑 with spaces:and:colons"));
        let token = acquire(&*store, &key, LOCK_TTL_LONG).await;
        must(
            "complete",
            store
                .complete(&key, &token, result.clone(), RESULT_TTL_LONG)
                .await,
        );
        assert_eq!(
            claim(&*store, &key, LOCK_TTL_LONG).await,
            DedupClaim::Completed { result },
            "{what} result"
        );
    }
}

/// Bad keys, TTLs and results get `InvalidArgument` and change nothing.
pub async fn invalid_inputs_are_rejected_and_change_nothing<S: DedupStore + ?Sized>(store: Arc<S>) {
    let too_long = "k".repeat(DEDUP_KEY_LEN_MAX + 1);
    for bad in ["", "with\nnewline", too_long.as_str()] {
        assert_invalid(
            "claim with a bad key",
            store.claim(bad, LOCK_TTL_LONG).await,
        );
        assert_invalid(
            "complete with a bad key",
            store.complete(bad, "t", Vec::new(), RESULT_TTL_LONG).await,
        );
        assert_invalid("release with a bad key", store.release(bad, "t").await);
    }
    let key = fresh_key("invalid");
    assert_invalid("zero lock TTL", store.claim(&key, Duration::ZERO).await);
    assert_invalid(
        "lock TTL over the maximum",
        store
            .claim(&key, DEDUP_TTL_MAX + Duration::from_secs(1))
            .await,
    );
    // None of the refused claims took the key.
    let token = acquire(&*store, &key, LOCK_TTL_LONG).await;
    assert_invalid(
        "zero result TTL",
        store
            .complete(&key, &token, b"x".to_vec(), Duration::ZERO)
            .await,
    );
    assert_invalid(
        "oversized result",
        store
            .complete(
                &key,
                &token,
                vec![0; DEDUP_RESULT_LEN_MAX + 1],
                RESULT_TTL_LONG,
            )
            .await,
    );
    // The refused completions neither stored a result nor released the lock.
    assert_eq!(
        claim(&*store, &key, LOCK_TTL_LONG).await,
        DedupClaim::InProgress
    );
    must(
        "complete after the refusals",
        store
            .complete(&key, &token, b"ok".to_vec(), RESULT_TTL_LONG)
            .await,
    );
}

// ---------------------------------------------------------------------------------------
// In-memory store
// ---------------------------------------------------------------------------------------

/// A [`DedupStore`] in process memory, for unit tests of code that uses one (a consumer
/// router's idempotency layer). Passes the conformance suite; keeps nothing across
/// restarts and shares nothing across processes.
#[derive(Default)]
pub struct InMemoryDedupStore {
    entries: Mutex<HashMap<String, Entry>>,
}

enum State {
    Locked { token: String },
    Completed { result: Vec<u8> },
}

struct Entry {
    state: State,
    expires_at: Instant,
}

impl InMemoryDedupStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves the map consistent (every update is one
        // insert or remove), so a poisoned lock is still safe to use.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the live lock on `key` held with `token`, or says it is not held.
    fn take_lock(
        entries: &mut HashMap<String, Entry>,
        key: &str,
        token: &str,
    ) -> Result<(), StoreError> {
        let held = matches!(
            entries.get(key),
            Some(Entry { state: State::Locked { token: t }, expires_at })
                if t == token && *expires_at > Instant::now()
        );
        if !held {
            return Err(StoreError::DedupLockLost {
                key: key.chars().take(64).collect(),
            });
        }
        entries.remove(key);
        Ok(())
    }
}

#[async_trait]
impl DedupStore for InMemoryDedupStore {
    async fn claim(&self, key: &str, lock_ttl: Duration) -> Result<DedupClaim, StoreError> {
        validate_dedup_key(key)?;
        validate_dedup_ttl("lock TTL", lock_ttl)?;
        let now = Instant::now();
        let mut entries = self.entries();
        match entries.get(key) {
            Some(Entry {
                state: State::Completed { result },
                expires_at,
            }) if *expires_at > now => {
                return Ok(DedupClaim::Completed {
                    result: result.clone(),
                })
            }
            Some(Entry {
                state: State::Locked { .. },
                expires_at,
            }) if *expires_at > now => return Ok(DedupClaim::InProgress),
            _ => {}
        }
        let token = runnel_core::uuid::Uuid::new_v4().simple().to_string();
        entries.insert(
            key.to_owned(),
            Entry {
                state: State::Locked {
                    token: token.clone(),
                },
                expires_at: now + lock_ttl,
            },
        );
        Ok(DedupClaim::Acquired { token })
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
        let mut entries = self.entries();
        Self::take_lock(&mut entries, key, token)?;
        entries.insert(
            key.to_owned(),
            Entry {
                state: State::Completed { result },
                expires_at: Instant::now() + ttl,
            },
        );
        Ok(())
    }

    async fn release(&self, key: &str, token: &str) -> Result<(), StoreError> {
        validate_dedup_key(key)?;
        Self::take_lock(&mut self.entries(), key, token)
    }
}

#[cfg(test)]
mod tests {
    crate::dedup_store_conformance!(async {
        std::sync::Arc::new(super::InMemoryDedupStore::new())
    });

    #[test]
    fn every_check_is_registered_once() {
        let names = super::check_names();
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert!(names.len() >= 10);
    }
}
