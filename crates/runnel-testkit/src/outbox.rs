//! The outbox-store conformance suite: one check per behaviour promised by the
//! [`OutboxStore`] trait (claims of key heads with their followers, leases, marks,
//! failures, parking and retry, release, status, purge), run by every backend (SQLite,
//! PostgreSQL).
//!
//! ```ignore
//! // tests/outbox_conformance.rs
//! runnel_testkit::outbox_store_conformance!(async { Some(std::sync::Arc::new(make_outbox().await)) });
//! ```
//!
//! The factory returns `Arc<S>` or `Option<Arc<S>>` (`None` skips, and fails under
//! `RUNNEL_REQUIRE_SERVICES=1`). Every check needs a fresh, empty outbox. Expiry is awaited
//! by polling with a deadline, never by sleeping in hope.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel_core::outbox::{FailureAction, OutboxMessage, OutboxRecord, OutboxStore};
use runnel_core::{Message, StoreError, TopicName};

use crate::conformance::CHECK_DEADLINE;

/// A lease no check outlives.
pub const LEASE_LONG: Duration = Duration::from_secs(60);
/// The short lease of the expiry checks.
pub const LEASE_SHORT: Duration = Duration::from_millis(300);
/// Longest a check waits for a short lease or a backoff to run out.
pub const EXPIRY_WAIT_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between two polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What a factory may return: `Arc<S>`, or `Option<Arc<S>>` where `None` skips.
pub trait IntoOutboxStore {
    /// The outbox type under test.
    type Store: OutboxStore + ?Sized;
    /// The outbox, or `None` to skip.
    fn into_outbox_store(self) -> Option<Arc<Self::Store>>;
}

impl<S: OutboxStore + ?Sized> IntoOutboxStore for Arc<S> {
    type Store = S;
    fn into_outbox_store(self) -> Option<Arc<S>> {
        Some(self)
    }
}

impl<S: OutboxStore + ?Sized> IntoOutboxStore for Option<Arc<S>> {
    type Store = S;
    fn into_outbox_store(self) -> Option<Arc<S>> {
        self
    }
}

/// Runs every check, each on a fresh outbox from `make_store`, one after another.
pub async fn run_outbox_store_suite<F, Fut>(make_store: F)
where
    F: Fn() -> Fut,
    Fut: Future,
    Fut::Output: IntoOutboxStore,
{
    crate::__outbox_store_checks!(__suite_run_all(
        "outbox conformance",
        outbox,
        IntoOutboxStore::into_outbox_store,
        CHECK_DEADLINE,
        make_store
    ));
}

/// One `#[test]` per outbox-store check, each on a fresh outbox.
#[macro_export]
macro_rules! outbox_store_conformance {
    ($($factory:tt)+) => {
        $crate::__suite_conformance!(__outbox_store_checks (
            outbox,
            $crate::outbox::IntoOutboxStore::into_outbox_store,
            $crate::conformance::CHECK_DEADLINE
        ) $($factory)+);
    };
}

/// The list of checks, handed to `$callback`. The one place a new check is registered.
#[doc(hidden)]
#[macro_export]
macro_rules! __outbox_store_checks {
    ($callback:ident $args:tt) => {
        $crate::$callback! { $args;
            claim_returns_key_heads_with_their_followers_in_order,
            a_leased_key_is_not_claimed_by_another_relay,
            a_key_continues_only_after_its_rows_are_marked,
            a_mark_with_the_next_claim_unblocks_its_keys_in_that_claim,
            an_expired_lease_is_claimed_by_another_relay,
            a_failure_waits_for_its_retry_time,
            a_parked_row_blocks_its_key_until_retried,
            release_frees_a_relays_leases,
            status_counts_pending_parked_and_topics,
            purge_deletes_only_old_published_rows,
            unkeyed_rows_are_claimed_independently,
            the_oldest_heads_are_claimed_first_with_few_or_many_keys,
            invalid_claims_are_rejected,
        }
    };
}

#[track_caller]
fn must<T>(what: &str, result: Result<T, StoreError>) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{what} failed: {e} ({e:?})"),
    }
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).expect("valid topic")
}

/// A message with `key` (or none) and `n` in its payload.
fn message(t: &str, key: Option<&str>, n: u64) -> OutboxMessage {
    let mut m = Message::json("Tested", &serde_json::json!({ "n": n }));
    m.key = key.map(str::to_string);
    OutboxMessage::new(topic(t), m)
}

fn n_of(r: &OutboxRecord) -> u64 {
    r.message
        .payload_json()
        .ok()
        .and_then(|v| v["n"].as_u64())
        .expect("a test payload")
}

fn seqs(rows: &[OutboxRecord]) -> Vec<u64> {
    rows.iter().map(|r| r.seq).collect()
}

async fn claim<S: OutboxStore + ?Sized>(
    store: &S,
    relay: &str,
    lease: Duration,
    limit: usize,
) -> Vec<OutboxRecord> {
    must("claim", store.claim(relay, lease, limit).await)
}

/// Claims as `relay` until something comes back, with a deadline.
async fn claim_eventually<S: OutboxStore + ?Sized>(store: &S, relay: &str) -> Vec<OutboxRecord> {
    let deadline = Instant::now() + EXPIRY_WAIT_DEADLINE;
    loop {
        let rows = claim(store, relay, LEASE_LONG, 100).await;
        if !rows.is_empty() {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "nothing became claimable within {EXPIRY_WAIT_DEADLINE:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A claim returns each key's head and the rows after it, in enqueue order, messages
/// intact.
pub async fn claim_returns_key_heads_with_their_followers_in_order<S: OutboxStore + ?Sized>(
    store: Arc<S>,
) {
    let mut batch = Vec::new();
    for n in 0..6 {
        batch.push(message(
            "orders",
            Some(if n % 2 == 0 { "a" } else { "b" }),
            n,
        ));
    }
    let sent: Vec<Message> = batch.iter().map(|m| m.message.clone()).collect();
    must("enqueue", store.enqueue(batch).await);
    let rows = claim(&*store, "r1", LEASE_LONG, 100).await;
    assert_eq!(rows.len(), 6, "every row of both keys is claimed");
    assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq), "seq order");
    let got: Vec<u64> = rows.iter().map(n_of).collect();
    assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
    for (r, m) in rows.iter().zip(&sent) {
        assert_eq!(&r.message, m, "the message round-trips");
        assert_eq!(r.topic.as_str(), "orders");
        assert_eq!(r.attempts, 0);
    }
}

/// While one relay holds a key, another relay gets the other keys only.
pub async fn a_leased_key_is_not_claimed_by_another_relay<S: OutboxStore + ?Sized>(store: Arc<S>) {
    must(
        "enqueue",
        store
            .enqueue(vec![message("t", Some("a"), 0), message("t", Some("a"), 1)])
            .await,
    );
    let first = claim(&*store, "r1", LEASE_LONG, 100).await;
    assert_eq!(first.len(), 2);
    must(
        "enqueue",
        store
            .enqueue(vec![message("t", Some("a"), 2), message("t", Some("b"), 3)])
            .await,
    );
    let second = claim(&*store, "r2", LEASE_LONG, 100).await;
    let got: Vec<u64> = second.iter().map(n_of).collect();
    assert_eq!(got, vec![3], "key a stays with r1; only key b is free");
    assert!(claim(&*store, "r1", LEASE_LONG, 100).await.is_empty());
}

/// A key's next rows become claimable once every earlier one is marked published.
pub async fn a_key_continues_only_after_its_rows_are_marked<S: OutboxStore + ?Sized>(
    store: Arc<S>,
) {
    must(
        "enqueue",
        store
            .enqueue((0..3).map(|n| message("t", Some("k"), n)).collect())
            .await,
    );
    // A limit of 1: the head alone.
    let head = claim(&*store, "r1", LEASE_LONG, 1).await;
    assert_eq!(head.iter().map(n_of).collect::<Vec<_>>(), vec![0]);
    assert!(
        claim(&*store, "r2", LEASE_LONG, 100).await.is_empty(),
        "the rest waits behind the leased head"
    );
    must("mark", store.mark_published(&seqs(&head)).await);
    must("mark twice", store.mark_published(&seqs(&head)).await);
    let rest = claim(&*store, "r2", LEASE_LONG, 100).await;
    assert_eq!(rest.iter().map(n_of).collect::<Vec<_>>(), vec![1, 2]);
    must("mark", store.mark_published(&seqs(&rest)).await);
    assert!(claim(&*store, "r3", LEASE_LONG, 100).await.is_empty());
    let status = must("status", store.status().await);
    assert_eq!(status.pending, 0);
    assert_eq!(status.published_retained, 3);
}

/// `mark_published_and_claim` marks before it claims: the claim already sees the keys its
/// marks unblocked (their next rows), and never returns a row it has just marked.
pub async fn a_mark_with_the_next_claim_unblocks_its_keys_in_that_claim<S: OutboxStore + ?Sized>(
    store: Arc<S>,
) {
    must(
        "enqueue",
        store
            .enqueue((0..4).map(|n| message("t", Some("k"), n)).collect())
            .await,
    );
    let first = claim(&*store, "r1", LEASE_LONG, 2).await;
    assert_eq!(first.iter().map(n_of).collect::<Vec<_>>(), vec![0, 1]);
    let next = must(
        "mark and claim",
        store
            .mark_published_and_claim(&seqs(&first), "r1", LEASE_LONG, 100)
            .await,
    );
    assert_eq!(
        next.iter().map(n_of).collect::<Vec<_>>(),
        vec![2, 3],
        "the key's next rows, claimed in the call that marked the rows before them"
    );
    assert!(
        claim(&*store, "r2", LEASE_LONG, 100).await.is_empty(),
        "the key's new head is leased to r1"
    );
    let last = must(
        "mark and claim",
        store
            .mark_published_and_claim(&seqs(&next), "r1", LEASE_LONG, 100)
            .await,
    );
    assert!(last.is_empty(), "nothing left once every row is marked");
    let status = must("status", store.status().await);
    assert_eq!((status.pending, status.published_retained), (0, 4));
}

/// A dead relay's lease runs out and another relay takes the key over, from its head.
pub async fn an_expired_lease_is_claimed_by_another_relay<S: OutboxStore + ?Sized>(store: Arc<S>) {
    must(
        "enqueue",
        store
            .enqueue(vec![message("t", Some("k"), 0), message("t", Some("k"), 1)])
            .await,
    );
    let started = Instant::now();
    let first = claim(&*store, "dead", LEASE_SHORT, 100).await;
    assert_eq!(first.len(), 2);
    let taken = claim_eventually(&*store, "alive").await;
    assert!(
        started.elapsed() + Duration::from_millis(20) >= LEASE_SHORT,
        "taken over after {:?}, before the {LEASE_SHORT:?} lease ran out",
        started.elapsed()
    );
    assert_eq!(taken.iter().map(n_of).collect::<Vec<_>>(), vec![0, 1]);
}

/// A failed row is not claimed before its retry time, then comes back with its attempt
/// counted and its error kept.
pub async fn a_failure_waits_for_its_retry_time<S: OutboxStore + ?Sized>(store: Arc<S>) {
    must(
        "enqueue",
        store.enqueue(vec![message("t", Some("k"), 0)]).await,
    );
    let rows = claim(&*store, "r1", LEASE_LONG, 100).await;
    let retry_at = chrono::Utc::now() + chrono::Duration::milliseconds(300);
    must(
        "record_failure",
        store
            .record_failure(
                &seqs(&rows),
                "broker down",
                FailureAction::RetryAt(retry_at),
            )
            .await,
    );
    assert!(
        claim(&*store, "r1", LEASE_LONG, 100).await.is_empty(),
        "not yet due"
    );
    let again = claim_eventually(&*store, "r2").await;
    assert!(chrono::Utc::now() >= retry_at - chrono::Duration::milliseconds(20));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[0].last_error.as_deref(), Some("broker down"));
}

/// A parked row blocks its key (order) but not other keys, until `retry_parked`.
pub async fn a_parked_row_blocks_its_key_until_retried<S: OutboxStore + ?Sized>(store: Arc<S>) {
    must(
        "enqueue",
        store
            .enqueue(vec![
                message("bad", Some("k"), 0),
                message("t", Some("k"), 1),
                message("t", Some("other"), 2),
            ])
            .await,
    );
    let head = claim(&*store, "r1", LEASE_LONG, 1).await;
    assert_eq!(head.iter().map(n_of).collect::<Vec<_>>(), vec![0]);
    must(
        "park",
        store
            .record_failure(&seqs(&head), "rejected", FailureAction::Park)
            .await,
    );
    let rows = claim(&*store, "r1", LEASE_LONG, 100).await;
    assert_eq!(
        rows.iter().map(n_of).collect::<Vec<_>>(),
        vec![2],
        "key k waits behind its parked head; key other goes on"
    );
    let status = must("status", store.status().await);
    assert_eq!(status.parked, 1);
    assert_eq!(
        must(
            "retry other topic",
            store.retry_parked(Some(&topic("t"))).await
        ),
        0
    );
    assert_eq!(
        must("retry", store.retry_parked(Some(&topic("bad"))).await),
        1
    );
    let rows = claim(&*store, "r2", LEASE_LONG, 100).await;
    assert_eq!(rows.iter().map(n_of).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(rows[0].attempts, 0, "a retry starts counting afresh");
}

/// Releasing a relay's leases makes its keys claimable at once.
pub async fn release_frees_a_relays_leases<S: OutboxStore + ?Sized>(store: Arc<S>) {
    must(
        "enqueue",
        store
            .enqueue(vec![message("t", Some("k"), 0), message("t", None, 1)])
            .await,
    );
    assert_eq!(claim(&*store, "r1", LEASE_LONG, 100).await.len(), 2);
    assert!(claim(&*store, "r2", LEASE_LONG, 100).await.is_empty());
    assert_eq!(must("release", store.release("r1").await), 2);
    assert_eq!(claim(&*store, "r2", LEASE_LONG, 100).await.len(), 2);
}

/// Status counts pending and parked rows per topic and knows the oldest pending row.
pub async fn status_counts_pending_parked_and_topics<S: OutboxStore + ?Sized>(store: Arc<S>) {
    let empty = must("status", store.status().await);
    assert_eq!(empty.pending, 0);
    assert!(empty.oldest_pending.is_none());
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    must(
        "enqueue",
        store
            .enqueue(vec![
                message("alpha", Some("a"), 0),
                message("alpha", Some("b"), 1),
                message("beta", None, 2),
            ])
            .await,
    );
    let rows = claim(&*store, "r1", LEASE_LONG, 100).await;
    let beta: Vec<u64> = rows
        .iter()
        .filter(|r| r.topic.as_str() == "beta")
        .map(|r| r.seq)
        .collect();
    must(
        "park",
        store.record_failure(&beta, "x", FailureAction::Park).await,
    );
    let status = must("status", store.status().await);
    assert_eq!(status.pending, 3);
    assert_eq!(status.parked, 1);
    let oldest = status.oldest_pending.expect("an oldest pending row");
    assert!(oldest >= before && oldest <= chrono::Utc::now() + chrono::Duration::seconds(5));
    let topics: Vec<(&str, u64, u64)> = status
        .topics
        .iter()
        .map(|t| (t.topic.as_str(), t.pending, t.parked))
        .collect();
    assert_eq!(topics, vec![("alpha", 2, 0), ("beta", 1, 1)]);
}

/// Purge deletes published rows older than the cutoff, never pending ones.
pub async fn purge_deletes_only_old_published_rows<S: OutboxStore + ?Sized>(store: Arc<S>) {
    must(
        "enqueue",
        store
            .enqueue(vec![message("t", Some("a"), 0), message("t", Some("b"), 1)])
            .await,
    );
    let rows = claim(&*store, "r1", LEASE_LONG, 100).await;
    must("mark", store.mark_published(&[rows[0].seq]).await);
    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(
        must("purge past", store.purge_published(past, 100).await),
        0
    );
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    assert_eq!(must("purge", store.purge_published(future, 100).await), 1);
    let status = must("status", store.status().await);
    assert_eq!(status.pending, 1, "the pending row stays");
    assert_eq!(status.published_retained, 0);
}

/// Rows without a key are each their own head.
pub async fn unkeyed_rows_are_claimed_independently<S: OutboxStore + ?Sized>(store: Arc<S>) {
    must(
        "enqueue",
        store
            .enqueue((0..4).map(|n| message("t", None, n)).collect())
            .await,
    );
    let a = claim(&*store, "r1", LEASE_LONG, 2).await;
    let b = claim(&*store, "r2", LEASE_LONG, 2).await;
    assert_eq!(a.iter().map(n_of).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(b.iter().map(n_of).collect::<Vec<_>>(), vec![2, 3]);
}

/// A claim takes the oldest claimable heads first (keyed and unkeyed alike), whether the
/// pending keys are more than the limit or not.
pub async fn the_oldest_heads_are_claimed_first_with_few_or_many_keys<S: OutboxStore + ?Sized>(
    store: Arc<S>,
) {
    let keys = [
        Some("a"),
        None,
        Some("b"),
        Some("c"),
        Some("a"),
        None,
        Some("b"),
    ];
    must(
        "enqueue",
        store
            .enqueue(
                keys.iter()
                    .enumerate()
                    .map(|(n, k)| message("t", *k, n as u64))
                    .collect(),
            )
            .await,
    );
    let ns = |rows: Vec<OutboxRecord>| rows.iter().map(n_of).collect::<Vec<_>>();
    // Three keys, a limit of two: more keys than heads wanted.
    let r1 = claim(&*store, "r1", LEASE_LONG, 2).await;
    assert_eq!(ns(r1.clone()), vec![0, 1]);
    // Three keys, a limit of three: the heads of b and c (a is leased), then unkeyed.
    assert_eq!(ns(claim(&*store, "r2", LEASE_LONG, 3).await), vec![2, 3, 5]);
    assert!(claim(&*store, "r3", LEASE_LONG, 100).await.is_empty());
    must("mark", store.mark_published(&seqs(&r1)).await);
    assert_eq!(
        ns(claim(&*store, "r3", LEASE_LONG, 100).await),
        vec![4],
        "a's next row is its head once its first is marked"
    );
}

/// Bad claim arguments are typed errors and lease nothing.
pub async fn invalid_claims_are_rejected<S: OutboxStore + ?Sized>(store: Arc<S>) {
    must("enqueue", store.enqueue(vec![message("t", None, 0)]).await);
    for (relay, lease, limit) in [
        ("", LEASE_LONG, 10),
        ("r", Duration::from_millis(1), 10),
        ("r", LEASE_LONG, 0),
        ("r", LEASE_LONG, runnel_core::outbox::CLAIM_LIMIT_MAX + 1),
    ] {
        match store.claim(relay, lease, limit).await {
            Err(StoreError::InvalidArgument(_)) => {}
            other => panic!(
                "claim({relay:?}, {lease:?}, {limit}): expected InvalidArgument, got {other:?}"
            ),
        }
    }
    let mut big = Message::json("Tested", &serde_json::json!({}));
    big.payload = vec![0; runnel_core::message::MESSAGE_PAYLOAD_MAX_DEFAULT + 1];
    assert!(
        store
            .enqueue(vec![OutboxMessage::new(topic("t"), big)])
            .await
            .is_err(),
        "an oversized payload is refused (claim check)"
    );
    assert_eq!(claim(&*store, "r", LEASE_LONG, 10).await.len(), 1);
}
