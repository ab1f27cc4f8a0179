//! The dead-letter-store conformance suite: one check per behaviour promised by the
//! [`DeadLetterStore`] trait docs and the dead-letter limits in `runnel-core`. A backend's
//! dead-letter store is done when it passes all of them. [`InMemoryDeadLetters`] is the
//! in-memory store for unit tests; it passes the suite too.
//!
//! Use the [`dead_letter_store_conformance!`](crate::dead_letter_store_conformance) macro
//! in the backend's `tests/` folder: it expands to one `#[test]` per check, named after the
//! behaviour it proves, each on a fresh, empty store in its own multi-threaded runtime:
//!
//! ```ignore
//! // crates/runnel-sqlite/tests/dead_letters.rs
//! runnel_testkit::dead_letter_store_conformance!(async {
//!     let store = runnel_sqlite::SqliteStore::open_temporary().expect("open");
//!     std::sync::Arc::new(runnel_sqlite::SqliteDeadLetters::new(store))
//! });
//! ```
//!
//! As with the event-store suite, the factory may return `Option<Arc<S>>`; `None` means the
//! backend's service is not configured: the check prints `SKIPPED` and passes, unless
//! `RUNNEL_REQUIRE_SERVICES=1` is set. Every check is also a plain `pub async fn`.

mod memory;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use runnel_core::chrono::{DateTime, TimeDelta, Utc};
use runnel_core::dead_letter::{
    DeadLetter, DeadLetterFilter, DeadLetterId, DeadLetterStore, FailureRecord, NewDeadLetter,
    DEAD_LETTER_LIST_LIMIT_MAX, ERROR_FILTER_LEN_MAX, ERROR_SEARCH_SEPARATOR, ERROR_TEXT_LEN_MAX,
    FAILURES_KEPT_MAX,
};
use runnel_core::{GroupName, Message, StoreError, TopicName};

pub use memory::InMemoryDeadLetters;

use crate::conformance::EVENT_WAIT_DEADLINE;
use crate::harness::{expect_err, within_for, Must};

/// Dead letters put at once by the concurrency check.
pub const CONCURRENT_PUTS: usize = 64;
/// Dead letters paged through by the paging check.
pub const PAGED_DEAD_LETTERS: usize = 25;

// ---------------------------------------------------------------------------------------
// Running the suite
// ---------------------------------------------------------------------------------------

/// What a dead-letter store factory may return: `Arc<S>`, or `Option<Arc<S>>` where `None`
/// skips the check because the backend's service is not configured.
pub trait IntoDeadLetterStore {
    /// The store type under test.
    type Store: DeadLetterStore;
    /// The store, or `None` to skip.
    fn into_dead_letter_store(self) -> Option<Arc<Self::Store>>;
}

impl<S: DeadLetterStore> IntoDeadLetterStore for Arc<S> {
    type Store = S;
    fn into_dead_letter_store(self) -> Option<Arc<S>> {
        Some(self)
    }
}

impl<S: DeadLetterStore> IntoDeadLetterStore for Option<Arc<S>> {
    type Store = S;
    fn into_dead_letter_store(self) -> Option<Arc<S>> {
        self
    }
}

/// The names of every check.
pub fn check_names() -> &'static [&'static str] {
    crate::__dead_letter_store_checks!(__suite_check_names())
}

/// One `#[test]` per dead-letter-store check, each on a fresh store.
///
/// Pass an `async` block or a callable returning a future; it must produce a fresh, empty
/// store as `Arc<S>` or `Option<Arc<S>>` (`None` skips), where `S: DeadLetterStore`.
///
/// ```ignore
/// runnel_testkit::dead_letter_store_conformance!(async {
///     std::sync::Arc::new(runnel_testkit::dead_letters::InMemoryDeadLetters::new())
/// });
/// ```
#[macro_export]
macro_rules! dead_letter_store_conformance {
    ($($factory:tt)+) => {
        $crate::__suite_conformance!(__dead_letter_store_checks (
            dead_letters,
            $crate::dead_letters::IntoDeadLetterStore::into_dead_letter_store,
            $crate::conformance::CHECK_DEADLINE
        ) $($factory)+);
    };
}

/// The list of checks, handed to `$callback` after its argument. The one place a new
/// check must be registered.
#[doc(hidden)]
#[macro_export]
macro_rules! __dead_letter_store_checks {
    ($callback:ident $args:tt) => {
        $crate::$callback! { $args;
            new_store_has_no_dead_letters,
            put_then_get_round_trips_message_and_history,
            get_of_an_unknown_id_is_none,
            ids_increase_and_are_not_reused_after_purge,
            concurrent_puts_get_distinct_ids,
            list_pages_by_id,
            list_filters_by_topic_and_group,
            list_filters_by_error_text_case_insensitively,
            list_filters_by_time_range,
            count_agrees_with_list_for_every_filter,
            mark_replayed_hides_from_pending_and_counts_replays,
            mark_replayed_of_an_unknown_id_is_an_error,
            purge_deletes_only_matching_dead_letters_older_than_the_cutoff,
            failures_beyond_the_limit_keep_the_earliest_and_the_latest,
            long_error_texts_are_truncated_to_the_limit,
            bad_input_is_rejected_with_a_typed_error_and_writes_nothing,
        }
    };
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

#[track_caller]
fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap_or_else(|e| panic!("test topic {name:?}: {e}"))
}

#[track_caller]
fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap_or_else(|e| panic!("test group {name:?}: {e}"))
}

/// A fixed point in time, so failure times are exact and comparable on every backend.
fn base_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_750_000_000, 123_456_789).unwrap_or_default()
}

fn failure(attempt: u32, error: &str) -> FailureRecord {
    FailureRecord {
        attempt,
        at: base_time() + TimeDelta::seconds(i64::from(attempt)),
        error: error.to_string(),
        permanent: false,
    }
}

fn message(n: usize) -> Message {
    Message::json("OrderPlaced", &serde_json::json!({ "order": n })).with_key(format!("Order-{n}"))
}

fn new_dead_letter(topic_name: &str, group_name: &str, errors: &[&str]) -> NewDeadLetter {
    NewDeadLetter {
        topic: topic(topic_name),
        group: group(group_name),
        message: message(0),
        failures: errors
            .iter()
            .enumerate()
            .map(|(i, e)| failure(i as u32 + 1, e))
            .collect(),
    }
}

async fn put<S: DeadLetterStore + ?Sized>(store: &S, dead_letter: NewDeadLetter) -> DeadLetterId {
    store.put(dead_letter).await.must("put")
}

async fn get<S: DeadLetterStore + ?Sized>(store: &S, id: DeadLetterId) -> DeadLetter {
    match store.get(id).await.must("get") {
        Some(d) => d,
        None => panic!("dead letter {id} was stored but get returned None"),
    }
}

/// Every dead letter matching `filter`, paging with the largest allowed limit.
async fn list_all<S: DeadLetterStore + ?Sized>(
    store: &S,
    filter: &DeadLetterFilter,
) -> Vec<DeadLetter> {
    let mut all: Vec<DeadLetter> = Vec::new();
    loop {
        let page = store
            .list(filter, all.last().map(|d| d.id), DEAD_LETTER_LIST_LIMIT_MAX)
            .await
            .must("list");
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

async fn ids_matching<S: DeadLetterStore + ?Sized>(
    store: &S,
    filter: &DeadLetterFilter,
) -> Vec<DeadLetterId> {
    list_all(store, filter).await.iter().map(|d| d.id).collect()
}

fn everything() -> DeadLetterFilter {
    DeadLetterFilter {
        include_replayed: true,
        ..Default::default()
    }
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    within_for(EVENT_WAIT_DEADLINE, what, fut).await
}

/// Puts dead letters on topic `tick` until one is stamped strictly after `t`, and returns
/// it: a precision-independent way to get two dead letters whose times differ.
async fn put_until_after<S: DeadLetterStore + ?Sized>(store: &S, t: DateTime<Utc>) -> DeadLetter {
    within("the store clock to pass the last dead_lettered_at", async {
        loop {
            let id = put(store, new_dead_letter("tick", "g", &["tick"])).await;
            let d = get(store, id).await;
            if d.dead_lettered_at > t {
                return d;
            }
            // Lets the store's clock advance; the loop's exit is the condition above.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

/// A fresh store holds nothing: counts are zero, lists are empty.
pub async fn new_store_has_no_dead_letters<S: DeadLetterStore>(store: Arc<S>) {
    assert_eq!(
        store
            .count(&DeadLetterFilter::pending())
            .await
            .must("count"),
        0
    );
    assert_eq!(store.count(&everything()).await.must("count"), 0);
    assert!(store
        .list(&everything(), None, 10)
        .await
        .must("list")
        .is_empty());
}

/// What goes in comes out: topic, group, the whole message (payload bytes exactly,
/// headers, key, CloudEvents attributes), every failure in order, the first and last
/// failure times, a store-set `dead_lettered_at`, no replay yet.
pub async fn put_then_get_round_trips_message_and_history<S: DeadLetterStore>(store: Arc<S>) {
    let before = Utc::now() - TimeDelta::minutes(5);
    let mut msg = Message::json("PaymentCharged", &serde_json::json!({"amount": 42}))
        .with_key("Order-7")
        .with_subject("Order-7")
        .with_header("tenant", "acme")
        .with_header("x-retry-reason", "ÜNICODE ✓");
    msg.correlation_id = Some("corr-1".into());
    msg.causation_id = Some("cause-1".into());
    msg.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    // Whitespace and key order that a JSON re-encoding would change.
    msg.payload = br#"{ "b": 1,   "a": [1, 2] }"#.to_vec();
    let mut binary = Message::json("Blob", &serde_json::json!(null));
    binary.content_type = "application/octet-stream".into();
    binary.payload = (0u8..=255).collect();

    let failures = vec![
        FailureRecord {
            attempt: 1,
            at: base_time(),
            error: "timeout calling payments".into(),
            permanent: false,
        },
        FailureRecord {
            attempt: 2,
            at: base_time() + TimeDelta::milliseconds(1500),
            error: "card declined\nsecond line".into(),
            permanent: true,
        },
    ];
    let new = NewDeadLetter {
        topic: topic("payments.v1"),
        group: group("billing_service"),
        message: msg.clone(),
        failures: failures.clone(),
    };
    let id = put(&*store, new).await;
    let got = get(&*store, id).await;
    assert_eq!(got.id, id);
    assert_eq!(got.topic, topic("payments.v1"));
    assert_eq!(got.group, group("billing_service"));
    assert_eq!(got.message, msg, "the message must round-trip exactly");
    assert_eq!(
        got.message.payload, msg.payload,
        "payload bytes must be kept exactly"
    );
    assert_eq!(got.failures, failures, "every failure, in order");
    assert_eq!(got.first_failed_at, failures[0].at);
    assert_eq!(got.last_failed_at, failures[1].at);
    assert!(
        got.dead_lettered_at > before && got.dead_lettered_at < Utc::now() + TimeDelta::minutes(5),
        "dead_lettered_at is set by the store to about now, got {}",
        got.dead_lettered_at
    );
    assert_eq!(got.replay_count, 0);
    assert_eq!(got.last_replayed_at, None);

    let bin_id = put(
        &*store,
        NewDeadLetter {
            message: binary.clone(),
            ..new_dead_letter("blobs", "g", &["bad bytes"])
        },
    )
    .await;
    assert_eq!(
        get(&*store, bin_id).await.message,
        binary,
        "binary payloads round-trip"
    );

    let listed = store.list(&everything(), None, 10).await.must("list");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], got, "list returns the same record as get");
}

/// `get` of an id never stored is `None`, not an error.
pub async fn get_of_an_unknown_id_is_none<S: DeadLetterStore>(store: Arc<S>) {
    assert_eq!(store.get(DeadLetterId(1)).await.must("get"), None);
    let id = put(&*store, new_dead_letter("t", "g", &["x"])).await;
    assert_eq!(store.get(DeadLetterId(id.0 + 1000)).await.must("get"), None);
    assert_eq!(store.get(DeadLetterId(u64::MAX)).await.must("get"), None);
}

/// Ids grow with every put, and an id freed by a purge is never handed out again (people
/// type ids into `runnel dlq replay`; a reused id could replay the wrong message).
pub async fn ids_increase_and_are_not_reused_after_purge<S: DeadLetterStore>(store: Arc<S>) {
    let a = put(&*store, new_dead_letter("t", "g", &["x"])).await;
    let b = put(&*store, new_dead_letter("t", "g", &["x"])).await;
    assert!(b > a, "ids must increase: {a} then {b}");
    let purged = store
        .purge(&everything(), Utc::now() + TimeDelta::days(1))
        .await
        .must("purge");
    assert_eq!(purged, 2);
    let c = put(&*store, new_dead_letter("t", "g", &["x"])).await;
    assert!(c > b, "an id after a purge must be new: {b} then {c}");
}

/// Concurrent puts all succeed, each with its own id, and all are stored.
pub async fn concurrent_puts_get_distinct_ids<S: DeadLetterStore>(store: Arc<S>) {
    let tasks: Vec<_> = (0..CONCURRENT_PUTS)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut d = new_dead_letter("t", "g", &["x"]);
                d.message = message(n);
                store.put(d).await
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for t in tasks {
        let id = t.await.expect("put task").must("concurrent put");
        assert!(ids.insert(id), "id {id} was handed out twice");
    }
    assert_eq!(
        store.count(&everything()).await.must("count"),
        CONCURRENT_PUTS as u64
    );
    let stored: BTreeSet<_> = ids_matching(&*store, &everything())
        .await
        .into_iter()
        .collect();
    assert_eq!(stored, ids);
}

/// `list` returns dead letters in id order, at most `limit`, strictly after `after`, so
/// paging with the last id seen visits each exactly once.
pub async fn list_pages_by_id<S: DeadLetterStore>(store: Arc<S>) {
    let mut ids = Vec::new();
    for n in 0..PAGED_DEAD_LETTERS {
        let mut d = new_dead_letter("t", "g", &["x"]);
        d.message = message(n);
        ids.push(put(&*store, d).await);
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list(&everything(), after, 10).await.must("list page");
        assert!(page.len() <= 10, "a page may hold at most the limit");
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page.iter().map(|d| d.id));
    }
    assert_eq!(seen, ids, "paging must visit every id once, in order");
    let first_three = store.list(&everything(), None, 3).await.must("list");
    assert_eq!(
        first_three.iter().map(|d| d.id).collect::<Vec<_>>(),
        ids[..3]
    );
    let after_last = store
        .list(&everything(), ids.last().copied(), 10)
        .await
        .must("list");
    assert!(after_last.is_empty());
}

/// Topic and group filters match exactly, alone and together.
pub async fn list_filters_by_topic_and_group<S: DeadLetterStore>(store: Arc<S>) {
    let mut by_pair: BTreeMap<(&str, &str), DeadLetterId> = BTreeMap::new();
    for (t, g) in [
        ("orders", "billing"),
        ("orders", "shipping"),
        ("payments", "billing"),
    ] {
        by_pair.insert((t, g), put(&*store, new_dead_letter(t, g, &["x"])).await);
    }
    let check = |t: Option<&str>, g: Option<&str>| DeadLetterFilter {
        topic: t.map(topic),
        group: g.map(group),
        ..Default::default()
    };
    let expect = |pred: &dyn Fn(&str, &str) -> bool| -> Vec<DeadLetterId> {
        by_pair
            .iter()
            .filter(|((t, g), _)| pred(t, g))
            .map(|(_, id)| *id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    assert_eq!(
        ids_matching(&*store, &check(Some("orders"), None)).await,
        expect(&|t, _| t == "orders")
    );
    assert_eq!(
        ids_matching(&*store, &check(None, Some("billing"))).await,
        expect(&|_, g| g == "billing")
    );
    assert_eq!(
        ids_matching(&*store, &check(Some("orders"), Some("billing"))).await,
        expect(&|t, g| t == "orders" && g == "billing")
    );
    assert!(
        ids_matching(&*store, &check(Some("order"), None))
            .await
            .is_empty(),
        "no prefix match"
    );
    assert!(ids_matching(&*store, &check(Some("nothing"), None))
        .await
        .is_empty());
}

/// The error filter matches any failure's text (not only the last), as a case-insensitive
/// substring, Unicode included; an empty text matches everything.
pub async fn list_filters_by_error_text_case_insensitively<S: DeadLetterStore>(store: Arc<S>) {
    let refused = put(
        &*store,
        new_dead_letter(
            "t",
            "g",
            &["Connection REFUSED by inventory", "timeout after 5s"],
        ),
    )
    .await;
    let declined = put(
        &*store,
        new_dead_letter("t", "g", &["Card declined: ÉCHEC du paiement"]),
    )
    .await;
    let other = put(&*store, new_dead_letter("t", "g", &["100% wrong_value"])).await;
    let by_error = |text: &str| DeadLetterFilter {
        error_contains: Some(text.to_string()),
        ..Default::default()
    };
    assert_eq!(
        ids_matching(&*store, &by_error("connection refused")).await,
        vec![refused]
    );
    assert_eq!(
        ids_matching(&*store, &by_error("TIMEOUT")).await,
        vec![refused],
        "earlier failures count too"
    );
    assert_eq!(
        ids_matching(&*store, &by_error("échec")).await,
        vec![declined],
        "Unicode case folding"
    );
    assert_eq!(
        ids_matching(&*store, &by_error("declined: é")).await,
        vec![declined]
    );
    // LIKE wildcards are plain characters here.
    assert_eq!(ids_matching(&*store, &by_error("100%")).await, vec![other]);
    assert_eq!(
        ids_matching(&*store, &by_error("_value")).await,
        vec![other]
    );
    assert!(ids_matching(&*store, &by_error("%")).await.len() == 1);
    assert!(ids_matching(&*store, &by_error("not there"))
        .await
        .is_empty());
    assert_eq!(
        ids_matching(&*store, &by_error("")).await,
        vec![refused, declined, other],
        "an empty error filter matches everything"
    );
}

/// `since` is inclusive and `until` exclusive, on `dead_lettered_at`.
pub async fn list_filters_by_time_range<S: DeadLetterStore>(store: Arc<S>) {
    let early_id = put(&*store, new_dead_letter("early", "g", &["x"])).await;
    let early = get(&*store, early_id).await;
    let late = put_until_after(&*store, early.dead_lettered_at).await;
    assert!(late.dead_lettered_at > early.dead_lettered_at);
    let in_range = |since: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>| DeadLetterFilter {
        since,
        until,
        ..Default::default()
    };
    let since_late = ids_matching(&*store, &in_range(Some(late.dead_lettered_at), None)).await;
    assert!(since_late.contains(&late.id), "since is inclusive");
    assert!(!since_late.contains(&early.id));
    let until_late = ids_matching(&*store, &in_range(None, Some(late.dead_lettered_at))).await;
    assert!(until_late.contains(&early.id));
    assert!(!until_late.contains(&late.id), "until is exclusive");
    let between = ids_matching(
        &*store,
        &in_range(Some(early.dead_lettered_at), Some(late.dead_lettered_at)),
    )
    .await;
    assert!(between.contains(&early.id) && !between.contains(&late.id));
    let future = Utc::now() + TimeDelta::days(1);
    assert!(ids_matching(&*store, &in_range(Some(future), None))
        .await
        .is_empty());
    assert!(
        ids_matching(
            &*store,
            &in_range(Some(future), Some(early.dead_lettered_at))
        )
        .await
        .is_empty(),
        "an empty range matches nothing"
    );
}

/// `count` agrees with `list` for every kind of filter.
pub async fn count_agrees_with_list_for_every_filter<S: DeadLetterStore>(store: Arc<S>) {
    for (t, g, e) in [
        ("orders", "billing", "timeout"),
        ("orders", "billing", "declined"),
        ("orders", "shipping", "Timeout"),
        ("payments", "billing", "crash"),
    ] {
        put(&*store, new_dead_letter(t, g, &[e])).await;
    }
    let replayed = put(&*store, new_dead_letter("orders", "billing", &["timeout"])).await;
    store
        .mark_replayed(replayed, Utc::now())
        .await
        .must("mark_replayed");
    let filters = [
        DeadLetterFilter::pending(),
        everything(),
        DeadLetterFilter {
            topic: Some(topic("orders")),
            ..Default::default()
        },
        DeadLetterFilter {
            topic: Some(topic("orders")),
            include_replayed: true,
            ..Default::default()
        },
        DeadLetterFilter {
            group: Some(group("billing")),
            error_contains: Some("TIME".into()),
            ..Default::default()
        },
        DeadLetterFilter {
            since: Some(Utc::now() + TimeDelta::days(1)),
            ..Default::default()
        },
    ];
    for filter in filters {
        let listed = list_all(&*store, &filter).await;
        assert!(
            listed.iter().all(|d| filter.matches(d)),
            "list returned a non-match for {filter:?}"
        );
        let count = store.count(&filter).await.must("count");
        assert_eq!(count, listed.len() as u64, "count vs list for {filter:?}");
    }
    assert_eq!(
        store
            .count(&DeadLetterFilter::pending())
            .await
            .must("count"),
        4
    );
    assert_eq!(store.count(&everything()).await.must("count"), 5);
}

/// A replayed dead letter leaves the default (pending) view but is kept, with its replay
/// count and time (to the microsecond), for `include_replayed`.
pub async fn mark_replayed_hides_from_pending_and_counts_replays<S: DeadLetterStore>(
    store: Arc<S>,
) {
    let a = put(&*store, new_dead_letter("t", "g", &["x"])).await;
    let b = put(&*store, new_dead_letter("t", "g", &["x"])).await;
    // Microsecond precision: what every store keeps of a timestamp column.
    let first = DateTime::from_timestamp(1_750_003_600, 123_456_000).unwrap_or_default();
    let second = first + TimeDelta::minutes(5);
    store.mark_replayed(a, first).await.must("mark_replayed");
    let got = get(&*store, a).await;
    assert_eq!(got.replay_count, 1);
    assert_eq!(got.last_replayed_at, Some(first));
    assert!(!got.is_pending());
    assert_eq!(
        ids_matching(&*store, &DeadLetterFilter::pending()).await,
        vec![b]
    );
    assert_eq!(ids_matching(&*store, &everything()).await, vec![a, b]);
    store
        .mark_replayed(a, second)
        .await
        .must("mark_replayed again");
    let got = get(&*store, a).await;
    assert_eq!(got.replay_count, 2);
    assert_eq!(got.last_replayed_at, Some(second));
    assert_eq!(
        get(&*store, b).await.replay_count,
        0,
        "other dead letters are untouched"
    );
}

/// Marking an id that does not exist is a typed error and changes nothing.
pub async fn mark_replayed_of_an_unknown_id_is_an_error<S: DeadLetterStore>(store: Arc<S>) {
    let a = put(&*store, new_dead_letter("t", "g", &["x"])).await;
    let e = expect_err(
        "mark_replayed of an unknown id",
        store
            .mark_replayed(DeadLetterId(a.0 + 1000), Utc::now())
            .await,
    );
    assert!(matches!(e, StoreError::InvalidArgument(_)), "got {e:?}");
    assert_eq!(get(&*store, a).await.replay_count, 0);
}

/// `purge` deletes exactly the dead letters that match the filter and were dead-lettered
/// before the cutoff, and says how many.
pub async fn purge_deletes_only_matching_dead_letters_older_than_the_cutoff<S: DeadLetterStore>(
    store: Arc<S>,
) {
    let old_orders = put(&*store, new_dead_letter("orders", "g", &["x"])).await;
    let old_payments = put(&*store, new_dead_letter("payments", "g", &["x"])).await;
    let old_replayed = put(&*store, new_dead_letter("orders", "g", &["x"])).await;
    store
        .mark_replayed(old_replayed, Utc::now())
        .await
        .must("mark_replayed");
    let cutoff_letter =
        put_until_after(&*store, get(&*store, old_replayed).await.dead_lettered_at).await;
    let cutoff = cutoff_letter.dead_lettered_at;
    let young = put(&*store, new_dead_letter("orders", "g", &["x"])).await;

    // Pending orders older than the cutoff: only old_orders (not the replayed one, not
    // payments, not those at or after the cutoff).
    let orders = DeadLetterFilter {
        topic: Some(topic("orders")),
        ..Default::default()
    };
    assert_eq!(store.purge(&orders, cutoff).await.must("purge"), 1);
    assert_eq!(store.get(old_orders).await.must("get"), None);
    for kept in [old_payments, old_replayed, cutoff_letter.id, young] {
        assert!(
            store.get(kept).await.must("get").is_some(),
            "{kept} must be kept"
        );
    }
    // Again: nothing left to purge.
    assert_eq!(store.purge(&orders, cutoff).await.must("purge"), 0);
    // Everything older than the cutoff, replayed included.
    let before_cutoff = ids_matching(
        &*store,
        &DeadLetterFilter {
            until: Some(cutoff),
            include_replayed: true,
            ..Default::default()
        },
    )
    .await;
    let purged = store.purge(&everything(), cutoff).await.must("purge");
    assert_eq!(purged, before_cutoff.len() as u64);
    assert_eq!(store.get(old_payments).await.must("get"), None);
    assert_eq!(store.get(old_replayed).await.must("get"), None);
    assert!(
        store.get(cutoff_letter.id).await.must("get").is_some(),
        "older_than is exclusive"
    );
    assert!(store.get(young).await.must("get").is_some());
}

/// A message that failed more often than `FAILURES_KEPT_MAX` keeps the earliest failure and
/// the latest ones, in order; first/last failure times span the whole history.
pub async fn failures_beyond_the_limit_keep_the_earliest_and_the_latest<S: DeadLetterStore>(
    store: Arc<S>,
) {
    let total = FAILURES_KEPT_MAX as u32 + 37;
    let failures: Vec<_> = (1..=total)
        .map(|a| failure(a, &format!("error {a}")))
        .collect();
    let id = put(
        &*store,
        NewDeadLetter {
            failures: failures.clone(),
            ..new_dead_letter("t", "g", &["unused"])
        },
    )
    .await;
    let got = get(&*store, id).await;
    assert_eq!(got.failures.len(), FAILURES_KEPT_MAX);
    assert_eq!(got.failures[0], failures[0], "the earliest failure is kept");
    assert_eq!(
        got.failures.last(),
        failures.last(),
        "the latest failure is kept"
    );
    assert_eq!(
        got.failures[1..],
        failures[failures.len() - (FAILURES_KEPT_MAX - 1)..],
        "the most recent failures follow the earliest, in order"
    );
    assert_eq!(got.first_failed_at, failures[0].at);
    assert_eq!(got.last_failed_at, failures[failures.len() - 1].at);
}

/// Error texts longer than `ERROR_TEXT_LEN_MAX` bytes are cut (on a character boundary),
/// keeping their beginning; shorter ones are kept exactly.
pub async fn long_error_texts_are_truncated_to_the_limit<S: DeadLetterStore>(store: Arc<S>) {
    let long = format!("panic: {}", "ü".repeat(ERROR_TEXT_LEN_MAX));
    let exact = "x".repeat(ERROR_TEXT_LEN_MAX);
    let id = put(&*store, new_dead_letter("t", "g", &[&long, &exact])).await;
    let got = get(&*store, id).await;
    let cut = &got.failures[0].error;
    assert!(
        cut.len() <= ERROR_TEXT_LEN_MAX,
        "cut to {} bytes",
        cut.len()
    );
    assert!(
        cut.len() > ERROR_TEXT_LEN_MAX / 2,
        "most of the text is kept"
    );
    assert!(cut.starts_with("panic: üü"));
    assert_eq!(
        got.failures[1].error, exact,
        "a text at the limit is kept whole"
    );
    // The stored text is what the error filter searches.
    let filter = DeadLetterFilter {
        error_contains: Some("PANIC: Ü".into()),
        ..Default::default()
    };
    assert_eq!(ids_matching(&*store, &filter).await, vec![id]);
}

/// Bad input — list limits outside 1..=10,000, a dead letter without failures or without
/// a message id, an error filter that is too long or holds the search separator — is a
/// typed error and changes nothing.
pub async fn bad_input_is_rejected_with_a_typed_error_and_writes_nothing<S: DeadLetterStore>(
    store: Arc<S>,
) {
    let kept = put(&*store, new_dead_letter("t", "g", &["x"])).await;
    let before = list_all(&*store, &everything()).await;

    for limit in [0, DEAD_LETTER_LIST_LIMIT_MAX + 1, usize::MAX] {
        let e = expect_err(
            &format!("list limit {limit}"),
            store.list(&everything(), None, limit).await,
        );
        assert!(
            matches!(e, StoreError::InvalidArgument(_)),
            "limit {limit}: {e:?}"
        );
    }
    assert_eq!(
        store
            .list(&everything(), None, DEAD_LETTER_LIST_LIMIT_MAX)
            .await
            .must("list at the limit")
            .len(),
        1
    );

    let e = expect_err(
        "put without failures",
        store.put(new_dead_letter("t", "g", &[])).await,
    );
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    let mut no_id = new_dead_letter("t", "g", &["x"]);
    no_id.message.id = String::new();
    let e = expect_err("put without a message id", store.put(no_id).await);
    assert!(matches!(e, StoreError::InvalidMessage { .. }), "{e:?}");

    let bad_filters = [
        DeadLetterFilter {
            error_contains: Some("e".repeat(ERROR_FILTER_LEN_MAX + 1)),
            ..everything()
        },
        DeadLetterFilter {
            error_contains: Some(format!("a{ERROR_SEARCH_SEPARATOR}b")),
            ..everything()
        },
    ];
    for filter in bad_filters {
        let e = expect_err(
            "list with a bad filter",
            store.list(&filter, None, 10).await,
        );
        assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
        let e = expect_err("count with a bad filter", store.count(&filter).await);
        assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
        let e = expect_err(
            "purge with a bad filter",
            store.purge(&filter, Utc::now() + TimeDelta::days(1)).await,
        );
        assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    }

    let after = list_all(&*store, &everything()).await;
    assert_eq!(
        before, after,
        "rejected calls must leave the store unchanged"
    );
    assert_eq!(after[0].id, kept);
}
