//! The event-store conformance suite: one check per behaviour promised by the
//! [`EventStore`], [`SnapshotStore`] and [`CheckpointStore`] trait docs. A backend is done
//! when it passes all of them.
//!
//! The preferred form is the [`event_store_conformance!`](crate::event_store_conformance)
//! macro in the backend's `tests/` folder: it expands to one `#[test]` per check, each
//! named after the behaviour it proves and each run on a fresh store in its own
//! multi-threaded tokio runtime (4 worker threads):
//!
//! ```
//! // tests/conformance.rs of a backend crate (here with the in-memory store)
//! runnel_testkit::event_store_conformance!(async {
//!     std::sync::Arc::new(runnel_testkit::InMemoryStore::new())
//! });
//! # fn main() {}
//! ```
//!
//! The store factory may also return `Option<Arc<S>>`: `None` means "this backend's service
//! is not configured" — the check prints `SKIPPED` loudly and passes, unless
//! `RUNNEL_REQUIRE_SERVICES=1` is set, in which case it fails.
//!
//! Every check is also a plain `pub async fn` taking `Arc<S>`, for backends that want to
//! run one by hand, and [`run_event_store_suite`] runs them all in one test.
//!
//! Each check assumes a fresh, empty store. Every wait has a deadline; the only fixed
//! durations are the short windows in which a check asserts that *nothing* arrives (no
//! duplicate, no event that fails the filter).

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use runnel_core::chrono::{DateTime, Utc};
use runnel_core::store::{CHECKPOINT_NAME_LEN_MAX, FILTER_ENTRIES_MAX, READ_LIMIT_MAX};
use runnel_core::{
    async_trait, AppendResult, CheckpointStore, EventFilter, EventId, EventStore, EventStream,
    ExpectedRevision, Metadata, NewEvent, Position, ReadStream, RecordedEvent, Snapshot,
    SnapshotStore, StoreError, StoreLimits, StreamInfo, StreamName,
};
use serde_json::json;

pub use crate::harness::RUNTIME_WORKER_THREADS;
use crate::harness::{expect_err, within_for, Must};

/// Longest wait for one expected outcome (an event arriving, a waiter waking).
pub const EVENT_WAIT_DEADLINE: Duration = Duration::from_secs(10);
/// Longest the concurrent-writers check may take to see every event.
pub const LOAD_DEADLINE: Duration = Duration::from_secs(180);
/// Longest one whole check may run before it fails as hung.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(300);
/// How long a check watches for something that must not happen (a duplicate, an event
/// that fails the filter).
pub const QUIET_WINDOW: Duration = Duration::from_millis(300);
/// How long the no-spin check watches an idle subscription.
pub const IDLE_WINDOW: Duration = Duration::from_millis(750);
/// Most store calls an idle subscription may make during [`IDLE_WINDOW`]. A polling
/// backend makes a few; a busy loop makes thousands.
pub const IDLE_STORE_CALLS_MAX: u64 = 100;
/// Writers racing with the same expected revision.
pub const CONFLICT_WRITERS: usize = 32;
/// Concurrent writers in the exactly-once subscription check.
pub const LOAD_WRITERS: usize = 8;
/// Events each of those writers appends (one per append).
pub const LOAD_EVENTS_PER_WRITER: usize = 1000;

// ---------------------------------------------------------------------------------------
// Running the suite
// ---------------------------------------------------------------------------------------

/// Everything a backend under test implements.
pub trait SuiteStore: EventStore + SnapshotStore + CheckpointStore {}
impl<T: EventStore + SnapshotStore + CheckpointStore> SuiteStore for T {}

/// What a store factory may return: `Arc<S>`, or `Option<Arc<S>>` where `None` skips the
/// check because the backend's service is not configured.
pub trait IntoSuiteStore {
    /// The store type under test.
    type Store: SuiteStore;
    /// The store, or `None` to skip.
    fn into_suite_store(self) -> Option<Arc<Self::Store>>;
}

impl<S: SuiteStore> IntoSuiteStore for Arc<S> {
    type Store = S;
    fn into_suite_store(self) -> Option<Arc<S>> {
        Some(self)
    }
}

impl<S: SuiteStore> IntoSuiteStore for Option<Arc<S>> {
    type Store = S;
    fn into_suite_store(self) -> Option<Arc<S>> {
        self
    }
}

/// Runs every check, each on a fresh store from `make_store`, one after another. Call it
/// from a multi-threaded tokio test. Prefer
/// [`event_store_conformance!`](crate::event_store_conformance), which reports each check
/// as its own test.
///
/// ```
/// # #[tokio::main]
/// # async fn main() {
/// use std::sync::Arc;
/// runnel_testkit::conformance::run_event_store_suite(|| async {
///     Arc::new(runnel_testkit::InMemoryStore::new())
/// })
/// .await;
/// # }
/// ```
pub async fn run_event_store_suite<F, Fut>(make_store: F)
where
    F: Fn() -> Fut,
    Fut: Future,
    Fut::Output: IntoSuiteStore,
{
    crate::__event_store_checks!(__suite_run_all(
        "conformance",
        conformance,
        IntoSuiteStore::into_suite_store,
        CHECK_DEADLINE,
        make_store
    ));
}

/// The names of every check, in the order the suite runs them.
pub fn check_names() -> &'static [&'static str] {
    crate::__event_store_checks!(__suite_check_names())
}

/// One `#[test]` per conformance check, each on a fresh store.
///
/// Pass either an `async` block or an expression that can be called with no arguments
/// and returns a future (a closure or a `fn`). Either way it is evaluated once per test
/// and must produce a fresh, empty store as `Arc<S>` — or `Option<Arc<S>>`, where `None`
/// skips (see the [module docs](crate::conformance)). `S` implements `EventStore`,
/// `SnapshotStore` and `CheckpointStore`.
///
/// The backend crate needs only `runnel-testkit` as a dev-dependency: the tests build
/// their own tokio runtime.
///
/// ```
/// // tests/conformance.rs
/// mod with_an_async_block {
///     runnel_testkit::event_store_conformance!(async {
///         std::sync::Arc::new(runnel_testkit::InMemoryStore::new())
///     });
/// }
///
/// // Or with a factory function; `None` skips (loudly) when the service is not configured.
/// mod with_a_factory {
///     use std::sync::Arc;
///     use runnel_testkit::InMemoryStore;
///
///     async fn fresh_store() -> Option<Arc<InMemoryStore>> {
///         // A server-backed store would read e.g. RUNNEL_TEST_POSTGRES_URL here.
///         Some(Arc::new(InMemoryStore::new()))
///     }
///     runnel_testkit::event_store_conformance!(fresh_store);
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! event_store_conformance {
    ($($factory:tt)+) => {
        $crate::__suite_conformance!(__event_store_checks (
            conformance,
            $crate::conformance::IntoSuiteStore::into_suite_store,
            $crate::conformance::CHECK_DEADLINE
        ) $($factory)+);
    };
}

/// The list of checks, handed to `$callback` after its argument. The one place a new
/// check must be registered.
#[doc(hidden)]
#[macro_export]
macro_rules! __event_store_checks {
    ($callback:ident $args:tt) => {
        $crate::$callback! { $args;
            new_store_is_empty,
            append_to_new_stream_starts_at_revision_one,
            exact_expected_revision_appends_after_the_last_event,
            expected_any_and_stream_exists_skip_the_exact_check,
            expected_revision_mismatch_is_a_conflict_with_actual,
            reappending_same_event_ids_is_idempotent,
            partial_duplicate_ids_are_rejected_and_write_nothing,
            concurrent_conflicting_appends_exactly_one_wins,
            concurrent_appends_to_one_stream_get_consecutive_revisions,
            read_stream_forward_and_backward_with_limits,
            read_stream_without_metadata_returns_the_same_events,
            read_limits_outside_range_are_rejected,
            read_all_returns_events_after_a_position_in_order,
            read_all_filters_by_category_and_event_type,
            read_all_rejects_invalid_filters,
            read_by_type_from_timestamp,
            positions_increase_in_commit_order,
            list_streams_pages_in_name_order,
            oversized_payload_is_rejected_naming_claim_check_and_writes_nothing,
            oversized_append_is_rejected_and_writes_nothing,
            too_many_events_rejected,
            invalid_json_rejected,
            empty_append_rejected,
            invalid_events_are_rejected_and_write_nothing,
            every_bad_input_leaves_the_store_unchanged,
            metadata_round_trips,
            binary_content_type_round_trips,
            json_payload_bytes_round_trip_exactly,
            recorded_at_is_set_by_the_store,
            wait_for_events_wakes_promptly_on_append,
            wait_for_events_returns_by_its_deadline,
            subscribe_all_catches_up_then_goes_live,
            subscribe_all_resumes_from_checkpoint_without_duplicates,
            subscribe_all_with_filter_delivers_only_matching_events,
            subscribe_all_with_invalid_filter_yields_an_error,
            subscribe_stream_catches_up_then_goes_live,
            subscription_with_filter_that_matches_nothing_does_not_spin,
            subscription_sees_every_event_exactly_once_under_concurrent_writers,
            snapshot_save_load_keeps_latest,
            snapshot_at_same_revision_replaces_the_stored_one,
            snapshot_delete_removes_it,
            checkpoint_save_load_overwrite,
            checkpoint_names_are_validated,
        }
    };
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

#[track_caller]
fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap_or_else(|e| panic!("test stream name {name:?}: {e}"))
}

fn event(event_type: &str, n: usize) -> NewEvent {
    NewEvent::json(event_type, &json!({ "n": n }))
}

fn events(event_type: &str, count: usize) -> Vec<NewEvent> {
    (0..count).map(|n| event(event_type, n)).collect()
}

fn ids_of_new(events: &[NewEvent]) -> Vec<EventId> {
    events.iter().map(|e| e.id).collect()
}

fn ids(events: &[RecordedEvent]) -> Vec<EventId> {
    events.iter().map(|e| e.id).collect()
}

fn revisions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.revision).collect()
}

#[track_caller]
fn assert_positions_strictly_increase(events: &[RecordedEvent], what: &str) {
    for pair in events.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "{what}: positions must strictly increase, but {} is followed by {}",
            pair[0].position,
            pair[1].position
        );
    }
}

/// Asserts a page read "after" a position holds only later events, in position order:
/// without this a paging loop over a store that repeats an event would never end.
#[track_caller]
fn assert_page_after(page: &[RecordedEvent], after: Position, what: &str) {
    if let Some(first) = page.first() {
        assert!(
            first.position > after,
            "{what}: asked for events after {after}, got one at {}",
            first.position
        );
    }
    assert_positions_strictly_increase(page, what);
}

/// Asserts a page of `list_streams` after `after` holds only later names, in name order.
#[track_caller]
fn assert_streams_after(page: &[StreamInfo], after: Option<&StreamName>, what: &str) {
    if let (Some(first), Some(after)) = (page.first(), after) {
        assert!(
            first.stream.as_str() > after.as_str(),
            "{what}: asked for streams after {after}, got {}",
            first.stream
        );
    }
    for pair in page.windows(2) {
        assert!(
            pair[0].stream.as_str() < pair[1].stream.as_str(),
            "{what}: {} is listed before {}",
            pair[0].stream,
            pair[1].stream
        );
    }
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    within_for(EVENT_WAIT_DEADLINE, what, fut).await
}

async fn append<S: EventStore + ?Sized>(
    store: &S,
    stream: &StreamName,
    expected: ExpectedRevision,
    events: Vec<NewEvent>,
) -> AppendResult {
    store
        .append(stream, expected, events)
        .await
        .must(&format!("append to {stream} expecting {expected}"))
}

async fn read_forward<S: EventStore + ?Sized>(
    store: &S,
    stream: &StreamName,
) -> Vec<RecordedEvent> {
    store
        .read_stream(stream, ReadStream::forward(READ_LIMIT_MAX))
        .await
        .must(&format!("read_stream {stream}"))
}

/// Every event in `$all`, paging through with the largest allowed limit.
async fn read_everything<S: EventStore + ?Sized>(store: &S) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut after = Position::START;
    loop {
        let page = store
            .read_all(after, &EventFilter::all(), READ_LIMIT_MAX)
            .await
            .must("read_all");
        assert_page_after(&page, after, "read_all");
        let Some(last) = page.last() else {
            return all;
        };
        after = last.position;
        all.extend(page);
    }
}

/// Reads a subscription from its own task and hands the items over a bounded channel, so
/// a subscription that busy-loops without ever yielding cannot stop the check's deadlines
/// from firing.
struct Subscriber {
    items: tokio::sync::mpsc::Receiver<Result<RecordedEvent, StoreError>>,
    task: tokio::task::JoinHandle<()>,
}

/// Items a [`Subscriber`] buffers ahead of the check.
const SUBSCRIBER_BUFFER_ITEMS: usize = 1024;

impl Subscriber {
    fn new(mut sub: EventStream) -> Self {
        let (tx, items) = tokio::sync::mpsc::channel(SUBSCRIBER_BUFFER_ITEMS);
        let task = tokio::spawn(async move {
            while let Some(item) = sub.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Subscriber { items, task }
    }

    /// The next item, `None` if the subscription ended; fails the check at the deadline.
    async fn next_item_within(
        &mut self,
        deadline: Duration,
        what: &str,
    ) -> Option<Result<RecordedEvent, StoreError>> {
        within_for(deadline, what, self.items.recv()).await
    }

    async fn next_within(&mut self, deadline: Duration, what: &str) -> RecordedEvent {
        match self.next_item_within(deadline, what).await {
            Some(Ok(e)) => e,
            Some(Err(e)) => panic!("{what}: the subscription failed: {e}"),
            None => panic!("{what}: the subscription ended"),
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn next_event(sub: &mut Subscriber, what: &str) -> RecordedEvent {
    sub.next_within(EVENT_WAIT_DEADLINE, what).await
}

async fn take_events(sub: &mut Subscriber, count: usize, what: &str) -> Vec<RecordedEvent> {
    let mut got = Vec::with_capacity(count);
    for i in 0..count {
        got.push(next_event(sub, &format!("{what} (event {} of {count})", i + 1)).await);
    }
    got
}

/// Asserts the subscription yields nothing during `window`.
async fn assert_quiet_for(sub: &mut Subscriber, window: Duration, what: &str) {
    if let Ok(item) = tokio::time::timeout(window, sub.items.recv()).await {
        panic!("{what}: expected no further event, got {item:?}");
    }
}

/// Asserts the subscription yields nothing during [`QUIET_WINDOW`].
async fn assert_quiet(sub: &mut Subscriber, what: &str) {
    assert_quiet_for(sub, QUIET_WINDOW, what).await
}

/// Everything observable about a store's events, to prove a rejected call wrote nothing.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    head: Position,
    events: Vec<RecordedEvent>,
    streams: Vec<StreamInfo>,
}

async fn fingerprint<S: EventStore + ?Sized>(store: &S) -> Fingerprint {
    let head = store.head_position().await.must("head_position");
    let events = read_everything(store).await;
    let mut streams: Vec<StreamInfo> = Vec::new();
    loop {
        let after = streams.last().map(|s| &s.stream);
        let page = store
            .list_streams(None, after, 1000)
            .await
            .must("list_streams");
        assert_streams_after(&page, after, "list_streams");
        if page.is_empty() {
            break;
        }
        streams.extend(page);
    }
    Fingerprint {
        head,
        events,
        streams,
    }
}

#[track_caller]
fn assert_same(before: &Fingerprint, after: &Fingerprint, what: &str) {
    assert_eq!(before.head, after.head, "{what} moved the head position");
    assert_eq!(
        ids(&before.events),
        ids(&after.events),
        "{what} changed the stored events"
    );
    assert_eq!(before.streams, after.streams, "{what} changed the streams");
    assert!(before == after, "{what} changed the store");
}

/// Appends events until one is recorded strictly after `t`, and returns that time: a
/// precision-independent way to get a `since` that separates earlier events from later.
async fn clock_tick_after<S: EventStore + ?Sized>(store: &S, t: DateTime<Utc>) -> DateTime<Utc> {
    let tick_stream = stream("ConformanceClock-1");
    within("the store clock to pass the last recorded_at", async {
        loop {
            append(
                store,
                &tick_stream,
                ExpectedRevision::Any,
                vec![event("Ticked", 0)],
            )
            .await;
            let last = store
                .read_stream(&tick_stream, ReadStream::backward(1))
                .await
                .must("read_stream backward");
            if let Some(tick) = last.first() {
                if tick.recorded_at > t {
                    return tick.recorded_at;
                }
            }
            // Lets the store's clock advance; the loop's exit is the condition above.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Appends and optimistic concurrency
// ---------------------------------------------------------------------------------------

/// A fresh store holds nothing: head at `Position::START`, no streams, and a missing
/// stream reads as empty with no revision.
pub async fn new_store_is_empty<S: EventStore>(store: Arc<S>) {
    assert_eq!(
        store.head_position().await.must("head_position"),
        Position::START,
        "a fresh store's head must be Position::START (does the factory hand out a fresh, empty store?)"
    );
    assert!(store
        .read_all(Position::START, &EventFilter::all(), 10)
        .await
        .must("read_all")
        .is_empty());
    assert!(store
        .list_streams(None, None, 10)
        .await
        .must("list_streams")
        .is_empty());
    let missing = stream("Order-missing");
    assert_eq!(
        store
            .stream_revision(&missing)
            .await
            .must("stream_revision"),
        None
    );
    for options in [ReadStream::forward(10), ReadStream::backward(10)] {
        assert!(store
            .read_stream(&missing, options)
            .await
            .must("read_stream of a missing stream")
            .is_empty());
    }
}

/// The first append to a stream gets revisions 1..=n; the result names the last revision
/// and the last event's position.
pub async fn append_to_new_stream_starts_at_revision_one<S: EventStore>(store: Arc<S>) {
    let s = stream("Order-1");
    let batch = vec![
        event("OrderPlaced", 1),
        event("ItemAdded", 2),
        event("ItemAdded", 3),
    ];
    let batch_ids = ids_of_new(&batch);
    let r = append(&*store, &s, ExpectedRevision::NoStream, batch).await;
    assert_eq!(r.next_expected_revision, 3);
    assert_eq!(
        store.stream_revision(&s).await.must("stream_revision"),
        Some(3)
    );
    let read = read_forward(&*store, &s).await;
    assert_eq!(revisions(&read), vec![1, 2, 3]);
    assert_eq!(ids(&read), batch_ids);
    assert!(read.iter().all(|e| e.stream == s));
    assert_eq!(
        read.iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["OrderPlaced", "ItemAdded", "ItemAdded"]
    );
    assert!(
        read[0].position >= Position(1),
        "the first position is at least 1"
    );
    assert_positions_strictly_increase(&read, "one append");
    assert_eq!(
        r.position, read[2].position,
        "the result names the last event's position"
    );
}

/// `Exact(n)` appends after revision n and returns the new revision.
pub async fn exact_expected_revision_appends_after_the_last_event<S: EventStore>(store: Arc<S>) {
    let s = stream("Order-1");
    let r1 = append(&*store, &s, ExpectedRevision::NoStream, events("A", 1)).await;
    assert_eq!(r1.next_expected_revision, 1);
    let r2 = append(&*store, &s, ExpectedRevision::Exact(1), events("B", 2)).await;
    assert_eq!(r2.next_expected_revision, 3);
    assert!(r2.position > r1.position);
    let r3 = append(
        &*store,
        &s,
        ExpectedRevision::Exact(r2.next_expected_revision),
        events("C", 1),
    )
    .await;
    assert_eq!(r3.next_expected_revision, 4);
    assert!(r3.position > r2.position);
    let read = read_forward(&*store, &s).await;
    assert_eq!(revisions(&read), vec![1, 2, 3, 4]);
    assert_eq!(
        read.iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["A", "B", "B", "C"]
    );
    assert_eq!(
        store.stream_revision(&s).await.must("stream_revision"),
        Some(4)
    );
}

/// `Any` appends whatever the stream's state; `StreamExists` appends to any existing
/// stream; `from_current` round-trips.
pub async fn expected_any_and_stream_exists_skip_the_exact_check<S: EventStore>(store: Arc<S>) {
    let s = stream("Order-1");
    let r = append(&*store, &s, ExpectedRevision::Any, events("A", 1)).await;
    assert_eq!(r.next_expected_revision, 1, "Any creates a missing stream");
    let r = append(&*store, &s, ExpectedRevision::StreamExists, events("B", 1)).await;
    assert_eq!(r.next_expected_revision, 2);
    let r = append(&*store, &s, ExpectedRevision::Any, events("C", 2)).await;
    assert_eq!(r.next_expected_revision, 4);
    let current = store.stream_revision(&s).await.must("stream_revision");
    let r = append(
        &*store,
        &s,
        ExpectedRevision::from_current(current),
        events("D", 1),
    )
    .await;
    assert_eq!(r.next_expected_revision, 5);
    let other = stream("Order-2");
    let r = append(
        &*store,
        &other,
        ExpectedRevision::from_current(None),
        events("A", 1),
    )
    .await;
    assert_eq!(r.next_expected_revision, 1);
}

/// Every unmet expectation is `StoreError::Conflict` carrying the stream, the expectation
/// and the actual revision (`None` for a missing stream), and writes nothing.
pub async fn expected_revision_mismatch_is_a_conflict_with_actual<S: EventStore>(store: Arc<S>) {
    let s = stream("Order-1");
    let missing = stream("Order-2");
    append(&*store, &s, ExpectedRevision::NoStream, events("A", 2)).await;
    let before = fingerprint(&*store).await;
    let cases = [
        (&s, ExpectedRevision::Exact(1), Some(2)),
        (&s, ExpectedRevision::Exact(3), Some(2)),
        (&s, ExpectedRevision::Exact(0), Some(2)),
        (&s, ExpectedRevision::NoStream, Some(2)),
        (&missing, ExpectedRevision::StreamExists, None),
        (&missing, ExpectedRevision::Exact(0), None),
        (&missing, ExpectedRevision::Exact(1), None),
    ];
    for (name, expected, actual) in cases {
        let what = format!("append to {name} expecting {expected}");
        let err = expect_err(&what, store.append(name, expected, events("X", 1)).await);
        assert!(err.is_conflict(), "{what}: {err:?} is not a conflict");
        assert_eq!(
            err,
            StoreError::Conflict {
                stream: name.to_string(),
                expected,
                actual,
            },
            "{what}"
        );
    }
    assert_same(&before, &fingerprint(&*store).await, "conflicting appends");
}

/// Appending the same event ids again (a retry) returns the original result and writes
/// nothing — whatever expectation the retry carries, because idempotency is checked
/// before the expected revision.
pub async fn reappending_same_event_ids_is_idempotent<S: EventStore>(store: Arc<S>) {
    let s = stream("Order-1");
    let batch = events("ItemAdded", 3);
    let first = append(&*store, &s, ExpectedRevision::NoStream, batch.clone()).await;
    let later_event = event("OrderPlaced", 9);
    let later = append(
        &*store,
        &s,
        ExpectedRevision::Exact(3),
        vec![later_event.clone()],
    )
    .await;
    assert_eq!(later.next_expected_revision, 4);
    let before = fingerprint(&*store).await;

    // The retry still carries its first attempt's expectation, which that attempt's own
    // success made stale: it must not be a conflict.
    for expected in [
        ExpectedRevision::NoStream,
        ExpectedRevision::Any,
        ExpectedRevision::StreamExists,
        ExpectedRevision::Exact(0),
        ExpectedRevision::Exact(4),
    ] {
        let retry = store
            .append(&s, expected, batch.clone())
            .await
            .must(&format!("retry of the first append expecting {expected}"));
        assert_eq!(
            retry, first,
            "a retry returns the original result (expecting {expected})"
        );
    }
    let retry = store
        .append(&s, ExpectedRevision::Exact(3), vec![later_event])
        .await
        .must("retry of the second append");
    assert_eq!(retry, later);
    assert_same(&before, &fingerprint(&*store).await, "idempotent retries");
    assert_eq!(read_forward(&*store, &s).await.len(), 4);
}

/// An append whose ids are stored, but not as exactly this append (only some of them,
/// another order, another stream), is `DuplicateEventId` naming the stream that holds
/// the id, even with a wrong expected revision, and writes nothing — not even its new ids.
pub async fn partial_duplicate_ids_are_rejected_and_write_nothing<S: EventStore>(store: Arc<S>) {
    let s = stream("Order-1");
    let other = stream("Order-2");
    let a = event("ItemAdded", 1);
    let b = event("ItemAdded", 2);
    append(
        &*store,
        &s,
        ExpectedRevision::NoStream,
        vec![a.clone(), b.clone()],
    )
    .await;
    let fresh = event("ItemAdded", 3);
    let before = fingerprint(&*store).await;
    // (what, stream, expected, events, the stored ids the error may name)
    type Case<'a> = (
        &'a str,
        &'a StreamName,
        ExpectedRevision,
        Vec<NewEvent>,
        Vec<EventId>,
    );
    let cases: Vec<Case> = vec![
        (
            "a stored id followed by a new one",
            &s,
            ExpectedRevision::Any,
            vec![a.clone(), fresh.clone()],
            vec![a.id],
        ),
        (
            "a new id followed by a stored one",
            &s,
            ExpectedRevision::Any,
            vec![fresh.clone(), b.clone()],
            vec![b.id],
        ),
        (
            "stored ids in another order",
            &s,
            ExpectedRevision::Any,
            vec![b.clone(), a.clone()],
            vec![a.id, b.id],
        ),
        (
            "stored ids appended to another stream",
            &other,
            ExpectedRevision::Any,
            vec![a.clone(), b.clone()],
            vec![a.id, b.id],
        ),
        (
            "a stored id among new ones in another stream",
            &other,
            ExpectedRevision::NoStream,
            vec![fresh.clone(), a.clone()],
            vec![a.id],
        ),
        (
            "a partial duplicate with a wrong expected revision",
            &s,
            ExpectedRevision::Exact(7),
            vec![a.clone(), fresh.clone()],
            vec![a.id],
        ),
    ];
    for (what, name, expected, batch, named) in cases {
        let err = expect_err(what, store.append(name, expected, batch).await);
        match &err {
            StoreError::DuplicateEventId {
                event_id,
                existing_stream,
            } => {
                assert!(
                    named.contains(event_id),
                    "{what}: the error names {event_id}, which is not one of the stored ids {named:?}"
                );
                assert_eq!(existing_stream, s.as_str(), "{what}");
            }
            other => panic!("{what}: expected DuplicateEventId, got {other:?}"),
        }
    }
    assert_same(&before, &fingerprint(&*store).await, "partial duplicates");
    assert_eq!(
        store.stream_revision(&other).await.must("stream_revision"),
        None
    );
    // The new id was not stored by any rejected append: it appends normally now.
    let r = append(&*store, &s, ExpectedRevision::Exact(2), vec![fresh]).await;
    assert_eq!(r.next_expected_revision, 3);
}

/// Races `CONFLICT_WRITERS` appends of one event each with the same expectation; returns
/// (the winner's event id and result, the losers' errors).
async fn race_appends<S: EventStore>(
    store: &Arc<S>,
    s: &StreamName,
    expected: ExpectedRevision,
) -> (Vec<(EventId, AppendResult)>, Vec<StoreError>) {
    let barrier = Arc::new(tokio::sync::Barrier::new(CONFLICT_WRITERS));
    let tasks: Vec<_> = (0..CONFLICT_WRITERS)
        .map(|i| {
            let store = Arc::clone(store);
            let s = s.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                let e = event("Raced", i);
                let id = e.id;
                barrier.wait().await;
                (id, store.append(&s, expected, vec![e]).await)
            })
        })
        .collect();
    let outcomes = within("racing appends", futures_util::future::join_all(tasks)).await;
    let mut wins = Vec::new();
    let mut losses = Vec::new();
    for outcome in outcomes {
        match outcome.unwrap_or_else(|e| panic!("a racing writer panicked: {e}")) {
            (id, Ok(r)) => wins.push((id, r)),
            (_, Err(e)) => losses.push(e),
        }
    }
    (wins, losses)
}

/// Of many writers appending with the same expected revision at once, exactly one wins;
/// every other gets a conflict naming the winner's revision, and the stream holds exactly
/// the winner's event.
pub async fn concurrent_conflicting_appends_exactly_one_wins<S: EventStore>(store: Arc<S>) {
    let s = stream("Order-race");
    append(&*store, &s, ExpectedRevision::NoStream, events("Seeded", 1)).await;
    let (wins, losses) = race_appends(&store, &s, ExpectedRevision::Exact(1)).await;
    assert_eq!(
        wins.len(),
        1,
        "exactly one of {CONFLICT_WRITERS} writers expecting revision 1 must win; losses: {losses:?}"
    );
    let (winner, result) = wins[0];
    assert_eq!(result.next_expected_revision, 2);
    for e in &losses {
        assert_eq!(
            *e,
            StoreError::Conflict {
                stream: s.to_string(),
                expected: ExpectedRevision::Exact(1),
                actual: Some(2),
            }
        );
    }
    let read = read_forward(&*store, &s).await;
    assert_eq!(revisions(&read), vec![1, 2]);
    assert_eq!(read[1].id, winner);
    assert_eq!(
        store.stream_revision(&s).await.must("stream_revision"),
        Some(2)
    );

    // The same race on a stream that does not exist yet.
    let fresh = stream("Order-race2");
    let (wins, losses) = race_appends(&store, &fresh, ExpectedRevision::NoStream).await;
    assert_eq!(
        wins.len(),
        1,
        "exactly one of {CONFLICT_WRITERS} writers expecting no stream must win; losses: {losses:?}"
    );
    for e in &losses {
        assert_eq!(
            *e,
            StoreError::Conflict {
                stream: fresh.to_string(),
                expected: ExpectedRevision::NoStream,
                actual: Some(1),
            }
        );
    }
    let read = read_forward(&*store, &fresh).await;
    assert_eq!(ids(&read), vec![wins[0].0]);
}

/// Concurrent `Any` appends to one stream all succeed; the stream's revisions are
/// 1..=n with no gap, and each append's events sit together at consecutive revisions
/// ending at the revision its result names.
pub async fn concurrent_appends_to_one_stream_get_consecutive_revisions<S: EventStore>(
    store: Arc<S>,
) {
    const WRITERS: usize = 16;
    const APPENDS_PER_WRITER: usize = 10;
    const EVENTS_PER_APPEND: usize = 2;
    let s = stream("Order-busy");
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            let s = s.clone();
            tokio::spawn(async move {
                let mut done = Vec::new();
                for i in 0..APPENDS_PER_WRITER {
                    let batch: Vec<NewEvent> = (0..EVENTS_PER_APPEND)
                        .map(|k| event("Busy", w * 1000 + i * 10 + k))
                        .collect();
                    let batch_ids = ids_of_new(&batch);
                    let r = store
                        .append(&s, ExpectedRevision::Any, batch)
                        .await
                        .must("concurrent append with Any");
                    done.push((batch_ids, r));
                }
                done
            })
        })
        .collect();
    let results: Vec<(Vec<EventId>, AppendResult)> =
        within("concurrent appends", futures_util::future::join_all(tasks))
            .await
            .into_iter()
            .flat_map(|r| r.unwrap_or_else(|e| panic!("a writer panicked: {e}")))
            .collect();
    let total = WRITERS * APPENDS_PER_WRITER * EVENTS_PER_APPEND;
    let read = read_forward(&*store, &s).await;
    assert_eq!(revisions(&read), (1..=total as u64).collect::<Vec<_>>());
    assert_positions_strictly_increase(&read, "one stream written concurrently");
    let unique: HashSet<EventId> = ids(&read).into_iter().collect();
    assert_eq!(unique.len(), total, "every appended event is stored once");
    for (batch_ids, r) in results {
        let last = r.next_expected_revision as usize;
        let stored = ids(&read[last - EVENTS_PER_APPEND..last]);
        assert_eq!(
            stored, batch_ids,
            "an append's events sit at consecutive revisions ending at its result's revision"
        );
        assert_eq!(read[last - 1].position, r.position);
    }
}

// ---------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------

/// `read_stream` reads one stream forward or backward from a revision (inclusive), at most
/// `limit` events, and only that stream's events.
pub async fn read_stream_forward_and_backward_with_limits<S: EventStore>(store: Arc<S>) {
    let s = stream("Order-1");
    let noise = stream("Order-2");
    for i in 0..10 {
        append(
            &*store,
            &s,
            ExpectedRevision::Any,
            vec![event("Counted", i)],
        )
        .await;
        append(
            &*store,
            &noise,
            ExpectedRevision::Any,
            vec![event("Noise", i)],
        )
        .await;
    }
    let read = |options: ReadStream| {
        let store = Arc::clone(&store);
        let s = s.clone();
        async move {
            let got = store
                .read_stream(&s, options)
                .await
                .must(&format!("read_stream {options:?}"));
            assert!(
                got.iter().all(|e| e.stream == s),
                "only the stream's events"
            );
            revisions(&got)
        }
    };
    let all: Vec<u64> = (1..=10).collect();
    let all_back: Vec<u64> = (1..=10).rev().collect();
    assert_eq!(read(ReadStream::forward(100)).await, all);
    assert_eq!(read(ReadStream::forward(10)).await, all);
    assert_eq!(read(ReadStream::forward(3)).await, vec![1, 2, 3]);
    assert_eq!(read(ReadStream::forward(3).from(4)).await, vec![4, 5, 6]);
    assert_eq!(read(ReadStream::forward(100).from(8)).await, vec![8, 9, 10]);
    assert_eq!(read(ReadStream::forward(100).from(10)).await, vec![10]);
    assert_eq!(
        read(ReadStream::forward(100).from(11)).await,
        Vec::<u64>::new()
    );
    assert_eq!(read(ReadStream::forward(100).from(1)).await, all);
    assert_eq!(read(ReadStream::backward(100)).await, all_back);
    assert_eq!(read(ReadStream::backward(3)).await, vec![10, 9, 8]);
    assert_eq!(read(ReadStream::backward(3).from(5)).await, vec![5, 4, 3]);
    assert_eq!(read(ReadStream::backward(100).from(2)).await, vec![2, 1]);
    assert_eq!(read(ReadStream::backward(1).from(1)).await, vec![1]);
    assert_eq!(
        read(ReadStream::backward(2).from(50)).await,
        vec![10, 9],
        "backward from beyond the end starts at the last event"
    );
    let forward = store
        .read_stream(&s, ReadStream::forward(100))
        .await
        .must("read_stream");
    assert_positions_strictly_increase(&forward, "a stream read forward");
    let mut backward = store
        .read_stream(&s, ReadStream::backward(100))
        .await
        .must("read_stream");
    backward.reverse();
    assert_eq!(forward, backward, "both directions return the same events");
}

/// `read_stream` with [`ReadStream::without_metadata`] returns the same events, each with
/// either its metadata or none, never another event's.
pub async fn read_stream_without_metadata_returns_the_same_events<S: EventStore>(store: Arc<S>) {
    let s = stream("Order-1");
    let mut batch = events("Counted", 5);
    for (i, e) in batch.iter_mut().enumerate() {
        e.metadata.correlation_id = Some(format!("correlation-{i}"));
    }
    append(&*store, &s, ExpectedRevision::NoStream, batch).await;
    for options in [ReadStream::forward(100), ReadStream::backward(3).from(4)] {
        let full = store.read_stream(&s, options).await.must("read_stream");
        let light = store
            .read_stream(&s, options.without_metadata())
            .await
            .must("read_stream without metadata");
        assert_eq!(full.len(), light.len(), "{options:?}");
        for (f, l) in full.iter().zip(&light) {
            assert!(
                l.metadata == f.metadata || l.metadata == Metadata::default(),
                "an event's metadata, or none: {l:?}"
            );
            let mut l = l.clone();
            l.metadata = f.metadata.clone();
            assert_eq!(f, &l, "the same event apart from its metadata");
        }
    }
}

/// Every read rejects a limit of 0 or above `READ_LIMIT_MAX` with `InvalidArgument`.
pub async fn read_limits_outside_range_are_rejected<S: EventStore>(store: Arc<S>) {
    let s = stream("Order-1");
    append(&*store, &s, ExpectedRevision::NoStream, events("A", 3)).await;
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
    for limit in [0, READ_LIMIT_MAX + 1] {
        let results = [
            (
                "read_stream forward",
                store
                    .read_stream(&s, ReadStream::forward(limit))
                    .await
                    .map(|_| ()),
            ),
            (
                "read_stream backward",
                store
                    .read_stream(&s, ReadStream::backward(limit))
                    .await
                    .map(|_| ()),
            ),
            (
                "read_all",
                store
                    .read_all(Position::START, &EventFilter::all(), limit)
                    .await
                    .map(|_| ()),
            ),
            (
                "read_by_type",
                store
                    .read_by_type("A", epoch, Position::START, limit)
                    .await
                    .map(|_| ()),
            ),
        ];
        for (what, result) in results {
            let err = expect_err(&format!("{what} with limit {limit}"), result);
            assert!(
                matches!(err, StoreError::InvalidArgument(_)),
                "{what} with limit {limit}: expected InvalidArgument, got {err:?}"
            );
        }
    }
    let err = expect_err(
        "list_streams with limit 0",
        store.list_streams(None, None, 0).await,
    );
    assert!(
        matches!(err, StoreError::InvalidArgument(_)),
        "list_streams with limit 0: expected InvalidArgument, got {err:?}"
    );
}

/// `read_all` returns the events after a position (exclusive) in position order, and
/// paging by the last position seen reproduces the whole log.
pub async fn read_all_returns_events_after_a_position_in_order<S: EventStore>(store: Arc<S>) {
    let mut appended = Vec::new();
    for (i, name) in ["Order-1", "Cart-1", "Order-1", "Invoice-1", "Cart-1"]
        .iter()
        .enumerate()
    {
        let batch = events(&format!("Happened{i}"), i % 3 + 1);
        appended.extend(ids_of_new(&batch));
        append(&*store, &stream(name), ExpectedRevision::Any, batch).await;
    }
    let all = store
        .read_all(Position::START, &EventFilter::all(), 100)
        .await
        .must("read_all");
    assert_eq!(
        ids(&all),
        appended,
        "read_all returns events in append order"
    );
    assert_positions_strictly_increase(&all, "read_all");
    for k in 0..all.len() {
        let rest = store
            .read_all(all[k].position, &EventFilter::all(), 100)
            .await
            .must("read_all after a position");
        assert_eq!(
            ids(&rest),
            ids(&all[k + 1..]),
            "read_all after {}",
            all[k].position
        );
    }
    let mut paged = Vec::new();
    let mut after = Position::START;
    loop {
        let page = store
            .read_all(after, &EventFilter::all(), 3)
            .await
            .must("read_all page");
        assert!(page.len() <= 3, "read_all honours its limit");
        assert_page_after(&page, after, "read_all page");
        let Some(last) = page.last() else { break };
        after = last.position;
        paged.extend(page);
    }
    assert_eq!(ids(&paged), appended, "paging reproduces the whole log");
}

/// `read_all` filters by exact category (not prefix, not pattern) and by event type; both
/// lists are OR within, AND between, and empty lists match everything.
pub async fn read_all_filters_by_category_and_event_type<S: EventStore>(store: Arc<S>) {
    let writes = [
        ("Order-1", "OrderPlaced"),
        ("Cart-1", "ItemAdded"),
        ("Order-1", "ItemAdded"),
        ("OrderLine-1", "OrderPlaced"),
        ("Ca_t-1", "ItemAdded"),
        ("Order-2", "Shipped"),
        ("Cart-1", "CheckedOut"),
        ("Orde-1", "ItemAdded"),
    ];
    for (i, (name, ty)) in writes.iter().enumerate() {
        append(
            &*store,
            &stream(name),
            ExpectedRevision::Any,
            vec![event(ty, i)],
        )
        .await;
    }
    let all = read_everything(&*store).await;
    let by = |filter: EventFilter| {
        let store = Arc::clone(&store);
        async move {
            let got = store
                .read_all(Position::START, &filter, 100)
                .await
                .must(&format!("read_all {filter:?}"));
            assert_positions_strictly_increase(&got, "a filtered read");
            got.iter()
                .map(|e| format!("{}/{}", e.stream, e.event_type))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(by(EventFilter::all()).await.len(), writes.len());
    assert_eq!(
        by(EventFilter::categories(["Order"])).await,
        [
            "Order-1/OrderPlaced",
            "Order-1/ItemAdded",
            "Order-2/Shipped"
        ],
        "a category matches exactly, not as a prefix"
    );
    assert_eq!(
        by(EventFilter::categories(["Order", "Cart"])).await,
        [
            "Order-1/OrderPlaced",
            "Cart-1/ItemAdded",
            "Order-1/ItemAdded",
            "Order-2/Shipped",
            "Cart-1/CheckedOut"
        ]
    );
    assert_eq!(
        by(EventFilter::categories(["Ca_t"])).await,
        ["Ca_t-1/ItemAdded"],
        "'_' in a category is a literal, not a pattern"
    );
    assert_eq!(
        by(EventFilter::event_types(["ItemAdded"])).await,
        [
            "Cart-1/ItemAdded",
            "Order-1/ItemAdded",
            "Ca_t-1/ItemAdded",
            "Orde-1/ItemAdded"
        ]
    );
    assert_eq!(
        by(EventFilter::event_types(["Shipped", "CheckedOut"])).await,
        ["Order-2/Shipped", "Cart-1/CheckedOut"]
    );
    let both = EventFilter {
        categories: vec!["Order".into(), "OrderLine".into()],
        event_types: vec!["OrderPlaced".into()],
    };
    assert_eq!(
        by(both.clone()).await,
        ["Order-1/OrderPlaced", "OrderLine-1/OrderPlaced"],
        "categories AND event types"
    );
    assert!(by(EventFilter::categories(["Nothing"])).await.is_empty());
    assert!(by(EventFilter::event_types(["NeverHappened"]))
        .await
        .is_empty());

    // Paging with a filter reproduces the filtered log.
    let filter = EventFilter::event_types(["ItemAdded"]);
    let mut paged = Vec::new();
    let mut after = Position::START;
    loop {
        let page = store
            .read_all(after, &filter, 1)
            .await
            .must("read_all page");
        assert_page_after(&page, after, "filtered read_all page");
        let Some(last) = page.last() else { break };
        after = last.position;
        paged.extend(page);
    }
    let expected: Vec<&RecordedEvent> = all.iter().filter(|e| filter.matches(e)).collect();
    assert_eq!(
        ids(&paged),
        expected.iter().map(|e| e.id).collect::<Vec<_>>()
    );
}

/// `read_all` rejects a filter with an invalid category or too many entries.
pub async fn read_all_rejects_invalid_filters<S: EventStore>(store: Arc<S>) {
    append(
        &*store,
        &stream("Order-1"),
        ExpectedRevision::Any,
        events("A", 1),
    )
    .await;
    let too_many: Vec<String> = (0..=FILTER_ENTRIES_MAX).map(|i| format!("C{i}")).collect();
    let bad = [
        EventFilter::categories(["bad cat"]),
        EventFilter::categories(["1Order"]),
        EventFilter::categories(["Order-1"]),
        EventFilter::categories([""]),
        EventFilter::categories(too_many.clone()),
        EventFilter::event_types(too_many),
    ];
    for filter in bad {
        let err = expect_err(
            &format!("read_all with {filter:?}"),
            store.read_all(Position::START, &filter, 10).await,
        );
        assert!(
            matches!(
                err,
                StoreError::InvalidArgument(_) | StoreError::InvalidStreamName { .. }
            ),
            "an invalid filter is an input error, got {err:?}"
        );
    }
}

/// `read_by_type` returns the events of one type recorded at or after a time, after a
/// position, in position order, at most `limit` — and pages by position.
pub async fn read_by_type_from_timestamp<S: EventStore>(store: Arc<S>) {
    let s = stream("Order-1");
    let other = stream("Cart-1");
    append(&*store, &s, ExpectedRevision::Any, events("Shipped", 3)).await;
    append(&*store, &other, ExpectedRevision::Any, events("Placed", 2)).await;
    let early = read_everything(&*store).await;
    let t1 = early
        .iter()
        .map(|e| e.recorded_at)
        .max()
        .expect("events were appended");
    let since = clock_tick_after(&*store, t1).await;
    let mut late = Vec::new();
    for (name, ty) in [
        (&s, "Shipped"),
        (&other, "Shipped"),
        (&other, "Placed"),
        (&s, "Shipped"),
    ] {
        let e = event(ty, 0);
        if ty == "Shipped" {
            late.push(e.id);
        }
        append(&*store, name, ExpectedRevision::Any, vec![e]).await;
    }
    let got = store
        .read_by_type("Shipped", since, Position::START, 100)
        .await
        .must("read_by_type since the tick");
    assert_eq!(
        ids(&got),
        late,
        "only events of the type recorded at or after `since`"
    );
    assert!(got.iter().all(|e| e.recorded_at >= since));

    let everything_shipped: Vec<EventId> = read_everything(&*store)
        .await
        .into_iter()
        .filter(|e| e.event_type == "Shipped")
        .map(|e| e.id)
        .collect();
    assert_eq!(everything_shipped.len(), 6);
    let from_epoch = store
        .read_by_type("Shipped", DateTime::<Utc>::UNIX_EPOCH, Position::START, 100)
        .await
        .must("read_by_type from the epoch");
    assert_eq!(ids(&from_epoch), everything_shipped);
    assert_positions_strictly_increase(&from_epoch, "read_by_type");
    let exactly_at = store
        .read_by_type("Shipped", from_epoch[0].recorded_at, Position::START, 100)
        .await
        .must("read_by_type at a recorded time");
    assert_eq!(
        exactly_at.first().map(|e| e.id),
        Some(from_epoch[0].id),
        "`since` is inclusive"
    );
    let future = Utc::now() + runnel_core::chrono::Duration::days(365);
    assert!(store
        .read_by_type("Shipped", future, Position::START, 100)
        .await
        .must("read_by_type from the future")
        .is_empty());
    assert!(store
        .read_by_type(
            "NeverHappened",
            DateTime::<Utc>::UNIX_EPOCH,
            Position::START,
            100
        )
        .await
        .must("read_by_type of an unknown type")
        .is_empty());

    let mut paged = Vec::new();
    let mut after = Position::START;
    loop {
        let page = store
            .read_by_type("Shipped", DateTime::<Utc>::UNIX_EPOCH, after, 2)
            .await
            .must("read_by_type page");
        assert!(page.len() <= 2, "read_by_type honours its limit");
        assert_page_after(&page, after, "read_by_type page");
        let Some(last) = page.last() else { break };
        after = last.position;
        paged.extend(page);
    }
    assert_eq!(ids(&paged), everything_shipped, "paging by position");
}

/// Each acknowledged append lands at higher positions than every append acknowledged
/// before it; the head covers it; `read_all` returns events in that order.
pub async fn positions_increase_in_commit_order<S: EventStore>(store: Arc<S>) {
    let mut last = Position::START;
    let mut appended = Vec::new();
    let mut results = Vec::new();
    for i in 0..20 {
        let name = stream(&format!("P{}-1", ["a", "b", "c"][i % 3]));
        let batch = events("Stepped", i % 3 + 1);
        appended.extend(ids_of_new(&batch));
        let r = append(&*store, &name, ExpectedRevision::Any, batch).await;
        assert!(
            r.position > last,
            "append {i} landed at {} after an earlier append at {last}",
            r.position
        );
        let head = store.head_position().await.must("head_position");
        assert!(
            head >= r.position,
            "the head ({head}) must cover an acknowledged append ({})",
            r.position
        );
        last = r.position;
        results.push((appended.len(), r));
    }
    let all = read_everything(&*store).await;
    assert_eq!(ids(&all), appended, "$all is in commit order");
    assert_positions_strictly_increase(&all, "$all");
    for (count, r) in results {
        assert_eq!(all[count - 1].position, r.position);
    }
    let head = store.head_position().await.must("head_position");
    assert!(store
        .read_all(head, &EventFilter::all(), 10)
        .await
        .must("read_all after the head")
        .is_empty());
}

/// `list_streams` lists streams in byte order of their names, after a name (exclusive),
/// optionally one exact category, at most `limit`, with each stream's revision and last
/// position.
pub async fn list_streams_pages_in_name_order<S: EventStore>(store: Arc<S>) {
    let names = [
        "Order-b",
        "Order-B",
        "Order-10",
        "Order-9",
        "Cart-1",
        "OrderLine-1",
        "Order-a-2",
        "Order-a",
        "Ca_t-1",
        "Cart-2",
    ];
    for (i, name) in names.iter().enumerate() {
        append(
            &*store,
            &stream(name),
            ExpectedRevision::Any,
            events("Listed", i % 3 + 1),
        )
        .await;
    }
    // Another append so that one stream's first and last events differ in time and place.
    append(
        &*store,
        &stream("Order-b"),
        ExpectedRevision::Exact(1),
        events("Listed", 1),
    )
    .await;
    let mut sorted: Vec<&str> = names.to_vec();
    sorted.sort_unstable();
    let full = store
        .list_streams(None, None, 100)
        .await
        .must("list_streams");
    let listed: Vec<&str> = full.iter().map(|i| i.stream.as_str()).collect();
    assert_eq!(
        listed, sorted,
        "streams are listed in byte order of their names"
    );
    for info in &full {
        let stored = read_forward(&*store, &info.stream).await;
        assert_eq!(
            info.revision,
            stored.len() as u64,
            "{}: revision",
            info.stream
        );
        assert_eq!(
            Some(info.last_position),
            stored.last().map(|e| e.position),
            "{}: last_position",
            info.stream
        );
        assert!(info.created_at <= info.updated_at, "{}", info.stream);
    }

    let mut paged = Vec::new();
    let mut after: Option<StreamName> = None;
    loop {
        let page = store
            .list_streams(None, after.as_ref(), 3)
            .await
            .must("list_streams page");
        assert!(page.len() <= 3, "list_streams honours its limit");
        assert_streams_after(&page, after.as_ref(), "list_streams page");
        let Some(last) = page.last() else { break };
        after = Some(last.stream.clone());
        paged.extend(page);
    }
    assert_eq!(paged, full, "paging reproduces the full list");

    let unstored = stream("Order-A");
    let after_unstored = store
        .list_streams(None, Some(&unstored), 100)
        .await
        .must("list_streams after a name that is not stored");
    let expected: Vec<&str> = sorted
        .iter()
        .copied()
        .filter(|n| *n > unstored.as_str())
        .collect();
    assert_eq!(
        after_unstored
            .iter()
            .map(|i| i.stream.as_str())
            .collect::<Vec<_>>(),
        expected
    );

    let in_category = |category: &'static str, after: Option<&'static str>, limit: usize| {
        let store = Arc::clone(&store);
        async move {
            let after = after.map(stream);
            store
                .list_streams(Some(category), after.as_ref(), limit)
                .await
                .must(&format!("list_streams in {category}"))
                .into_iter()
                .map(|i| i.stream.to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        in_category("Order", None, 100).await,
        [
            "Order-10",
            "Order-9",
            "Order-B",
            "Order-a",
            "Order-a-2",
            "Order-b"
        ],
        "a category matches exactly, not as a prefix"
    );
    assert_eq!(
        in_category("Order", Some("Order-B"), 2).await,
        ["Order-a", "Order-a-2"]
    );
    assert_eq!(in_category("Ca_t", None, 100).await, ["Ca_t-1"]);
    assert_eq!(in_category("Cart", None, 100).await, ["Cart-1", "Cart-2"]);
    assert!(in_category("Nothing", None, 100).await.is_empty());
}

// ---------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------

/// An event whose payload (data plus metadata) is over the limit is `PayloadTooLarge`,
/// naming the event and the claim-check option, and nothing of its append is written. A
/// payload exactly at the limit is accepted.
pub async fn oversized_payload_is_rejected_naming_claim_check_and_writes_nothing<S: EventStore>(
    store: Arc<S>,
) {
    let limit = store.limits().max_payload_bytes;
    let s = stream("Blob-1");
    append(&*store, &s, ExpectedRevision::NoStream, events("Small", 1)).await;
    let before = fingerprint(&*store).await;
    let empty_meta_len = Metadata::default().encoded_len();

    let big = NewEvent::bytes(
        "BlobStored",
        "application/octet-stream",
        vec![0x5a; (limit + 1).saturating_sub(empty_meta_len)],
    );
    let heavy_meta = Metadata::default().with_header("padding", "p".repeat(256));
    let json_len = limit.saturating_sub(empty_meta_len + 16);
    let big_by_metadata = NewEvent::bytes(
        "BlobStored",
        "application/json",
        format!("\"{}\"", "j".repeat(json_len)).into_bytes(),
    )
    .with_metadata(heavy_meta);
    let cases = [
        ("binary data over the limit", vec![big.clone()], big.id),
        (
            "data plus metadata over the limit",
            vec![big_by_metadata.clone()],
            big_by_metadata.id,
        ),
        (
            "an oversized event after a valid one",
            vec![event("Small", 2), big.clone()],
            big.id,
        ),
    ];
    for (what, batch, culprit) in cases {
        let err = expect_err(what, store.append(&s, ExpectedRevision::Any, batch).await);
        match &err {
            StoreError::PayloadTooLarge {
                event_id,
                size_bytes,
                limit_bytes,
            } => {
                assert_eq!(*event_id, culprit, "{what}: the error names the event");
                assert_eq!(*limit_bytes, limit, "{what}");
                assert!(size_bytes > limit_bytes, "{what}: {size_bytes} bytes");
            }
            other => panic!("{what}: expected PayloadTooLarge, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains("claim-check") || message.contains("claim_check"),
            "{what}: the message must name the claim-check option: {message}"
        );
    }
    assert_same(&before, &fingerprint(&*store).await, "oversized payloads");

    let at_limit = NewEvent::bytes(
        "BlobStored",
        "application/octet-stream",
        vec![0xa5; limit.saturating_sub(empty_meta_len)],
    );
    let r = append(
        &*store,
        &s,
        ExpectedRevision::Exact(1),
        vec![at_limit.clone()],
    )
    .await;
    assert_eq!(
        r.next_expected_revision, 2,
        "a payload exactly at the limit is accepted"
    );
    let stored = read_forward(&*store, &s).await;
    assert_eq!(stored[1].data, at_limit.data);
}

/// An append whose events are each within the payload limit but together over
/// `max_append_bytes` is `InvalidArgument` and writes nothing.
pub async fn oversized_append_is_rejected_and_writes_nothing<S: EventStore>(store: Arc<S>) {
    let StoreLimits {
        max_payload_bytes,
        max_events_per_append,
        max_append_bytes,
    } = store.limits().clone();
    let s = stream("Blob-1");
    append(&*store, &s, ExpectedRevision::NoStream, events("Small", 1)).await;
    let before = fingerprint(&*store).await;
    let per_event = max_payload_bytes.saturating_sub(Metadata::default().encoded_len());
    let count = max_append_bytes / max_payload_bytes.max(1) + 1;
    if count > max_events_per_append || per_event == 0 {
        eprintln!(
            "oversized_append_is_rejected_and_writes_nothing: with these limits no append can \
             exceed max_append_bytes without exceeding another limit first; nothing to check"
        );
        return;
    }
    let batch: Vec<NewEvent> = (0..count)
        .map(|_| NewEvent::bytes("BlobStored", "application/octet-stream", vec![1; per_event]))
        .collect();
    let err = expect_err(
        "an append over max_append_bytes",
        store.append(&s, ExpectedRevision::Any, batch).await,
    );
    assert!(
        matches!(err, StoreError::InvalidArgument(_)),
        "expected InvalidArgument, got {err:?}"
    );
    assert_same(&before, &fingerprint(&*store).await, "an oversized append");
}

/// More events than `max_events_per_append` is `TooManyEvents` and writes nothing; exactly
/// the maximum is accepted.
pub async fn too_many_events_rejected<S: EventStore>(store: Arc<S>) {
    let max = store.limits().max_events_per_append;
    let s = stream("Order-1");
    append(&*store, &s, ExpectedRevision::NoStream, events("A", 1)).await;
    let before = fingerprint(&*store).await;
    let err = expect_err(
        "an append over max_events_per_append",
        store
            .append(&s, ExpectedRevision::Any, events("Many", max + 1))
            .await,
    );
    assert_eq!(
        err,
        StoreError::TooManyEvents {
            count: max + 1,
            limit: max
        }
    );
    assert_same(&before, &fingerprint(&*store).await, "too many events");
    let r = append(&*store, &s, ExpectedRevision::Exact(1), events("Many", max)).await;
    assert_eq!(r.next_expected_revision, 1 + max as u64);
}

/// A JSON content type (`application/json`, with parameters, or `+json`) with data that
/// does not parse is `InvalidEvent` naming the event, and nothing of its append is written.
pub async fn invalid_json_rejected<S: EventStore>(store: Arc<S>) {
    let s = stream("Order-1");
    append(&*store, &s, ExpectedRevision::NoStream, events("A", 1)).await;
    let before = fingerprint(&*store).await;
    let bad = [
        NewEvent::bytes("Broken", "application/json", b"{nope".to_vec()),
        NewEvent::bytes("Broken", "application/json; charset=utf-8", b"[1,".to_vec()),
        NewEvent::bytes(
            "Broken",
            "application/cloudevents+json",
            b"not json".to_vec(),
        ),
        NewEvent::bytes("Broken", "application/json", Vec::new()),
        NewEvent::bytes("Broken", "application/json", vec![0xff, 0xfe, 0x00]),
        NewEvent::bytes("Broken", "application/json", b"{} {}".to_vec()),
    ];
    for e in bad {
        let what = format!(
            "{} data {:?}",
            e.content_type,
            String::from_utf8_lossy(&e.data)
        );
        for batch in [vec![e.clone()], vec![event("Fine", 1), e.clone()]] {
            let err = expect_err(&what, store.append(&s, ExpectedRevision::Any, batch).await);
            assert!(
                matches!(err, StoreError::InvalidEvent { event_id, .. } if event_id == e.id),
                "{what}: expected InvalidEvent naming the event, got {err:?}"
            );
        }
    }
    assert_same(&before, &fingerprint(&*store).await, "invalid JSON");
}

/// An append with no events is `EmptyAppend` and does not create the stream.
pub async fn empty_append_rejected<S: EventStore>(store: Arc<S>) {
    let s = stream("Order-1");
    let missing = stream("Order-2");
    append(&*store, &s, ExpectedRevision::NoStream, events("A", 1)).await;
    let before = fingerprint(&*store).await;
    for (name, expected) in [
        (&s, ExpectedRevision::Any),
        (&s, ExpectedRevision::Exact(1)),
        (&missing, ExpectedRevision::NoStream),
        (&missing, ExpectedRevision::Any),
    ] {
        let err = expect_err(
            &format!("an empty append to {name}"),
            store.append(name, expected, Vec::new()).await,
        );
        assert_eq!(err, StoreError::EmptyAppend);
    }
    assert_same(&before, &fingerprint(&*store).await, "empty appends");
    assert_eq!(
        store
            .stream_revision(&missing)
            .await
            .must("stream_revision"),
        None
    );
}

/// Malformed envelopes (empty, too long or ill-formed event type, empty content type, one
/// id twice in an append) are `InvalidEvent` naming the event, and write nothing.
pub async fn invalid_events_are_rejected_and_write_nothing<S: EventStore>(store: Arc<S>) {
    let s = stream("Order-1");
    append(&*store, &s, ExpectedRevision::NoStream, events("A", 1)).await;
    let before = fingerprint(&*store).await;
    let mut empty_content_type = event("Fine", 1);
    empty_content_type.content_type = String::new();
    let twice = event("Twice", 1);
    let cases = [
        ("an empty event type", event("", 1)),
        ("an event type with a space", event("Order Placed", 1)),
        ("an event type over 128 bytes", event(&"T".repeat(129), 1)),
        ("a non-ASCII event type", event("Bestellt\u{e9}", 1)),
        ("an empty content type", empty_content_type),
    ];
    for (what, bad) in cases {
        let culprit = bad.id;
        let err = expect_err(
            what,
            store
                .append(&s, ExpectedRevision::Any, vec![event("Fine", 0), bad])
                .await,
        );
        assert!(
            matches!(err, StoreError::InvalidEvent { event_id, .. } if event_id == culprit),
            "{what}: expected InvalidEvent naming the event, got {err:?}"
        );
    }
    let err = expect_err(
        "one id twice in an append",
        store
            .append(
                &s,
                ExpectedRevision::Any,
                vec![twice.clone(), twice.clone()],
            )
            .await,
    );
    assert!(
        matches!(err, StoreError::InvalidEvent { event_id, .. } if event_id == twice.id),
        "one id twice: expected InvalidEvent, got {err:?}"
    );
    assert_same(&before, &fingerprint(&*store).await, "invalid events");
}

/// Every kind of rejected call — bad envelopes, limits, conflicts, duplicates, bad reads,
/// bad checkpoint names — leaves the store exactly as it was.
pub async fn every_bad_input_leaves_the_store_unchanged<S: EventStore + CheckpointStore>(
    store: Arc<S>,
) {
    let s = stream("Order-1");
    let missing = stream("Order-2");
    let stored = events("A", 2);
    append(&*store, &s, ExpectedRevision::NoStream, stored.clone()).await;
    append(
        &*store,
        &stream("Cart-1"),
        ExpectedRevision::NoStream,
        events("B", 1),
    )
    .await;
    let before = fingerprint(&*store).await;
    let limits = store.limits().clone();
    let oversized = NewEvent::bytes(
        "Big",
        "application/octet-stream",
        vec![0; limits.max_payload_bytes + 1],
    );
    let bad_appends: Vec<(&str, &StreamName, ExpectedRevision, Vec<NewEvent>)> = vec![
        ("empty", &missing, ExpectedRevision::NoStream, Vec::new()),
        (
            "too many",
            &missing,
            ExpectedRevision::NoStream,
            events("Many", limits.max_events_per_append + 1),
        ),
        (
            "oversized",
            &missing,
            ExpectedRevision::NoStream,
            vec![event("Fine", 0), oversized],
        ),
        (
            "invalid JSON",
            &missing,
            ExpectedRevision::NoStream,
            vec![NewEvent::bytes("Bad", "application/json", b"{".to_vec())],
        ),
        (
            "invalid event type",
            &missing,
            ExpectedRevision::NoStream,
            vec![event("no spaces allowed", 0)],
        ),
        (
            "conflict on an existing stream",
            &s,
            ExpectedRevision::Exact(1),
            events("C", 1),
        ),
        (
            "conflict on a missing stream",
            &missing,
            ExpectedRevision::StreamExists,
            events("C", 1),
        ),
        (
            "partial duplicate",
            &missing,
            ExpectedRevision::NoStream,
            vec![event("New", 0), stored[0].clone()],
        ),
    ];
    for (what, name, expected, batch) in bad_appends {
        expect_err(what, store.append(name, expected, batch).await);
        assert_same(&before, &fingerprint(&*store).await, what);
    }
    assert_eq!(
        store
            .stream_revision(&missing)
            .await
            .must("stream_revision"),
        None,
        "no rejected append creates its stream"
    );
    expect_err(
        "read with limit 0",
        store.read_stream(&s, ReadStream::forward(0)).await,
    );
    expect_err(
        "read_all with a bad filter",
        store
            .read_all(Position::START, &EventFilter::categories(["no good"]), 10)
            .await,
    );
    expect_err(
        "a checkpoint with a bad name",
        store.save_checkpoint("has space", Position(1)).await,
    );
    assert_same(&before, &fingerprint(&*store).await, "rejected reads");
}

// ---------------------------------------------------------------------------------------
// What goes in comes out
// ---------------------------------------------------------------------------------------

fn assert_same_envelope(got: &RecordedEvent, sent: &NewEvent, what: &str) {
    assert_eq!(got.id, sent.id, "{what}: id");
    assert_eq!(got.event_type, sent.event_type, "{what}: event_type");
    assert_eq!(
        got.schema_version, sent.schema_version,
        "{what}: schema_version"
    );
    assert_eq!(got.content_type, sent.content_type, "{what}: content_type");
    assert_eq!(got.data, sent.data, "{what}: data bytes");
    assert_eq!(got.metadata, sent.metadata, "{what}: metadata");
}

/// Reads `sent` back through every read path and subscriptions, checking the envelope.
async fn assert_round_trip<S: EventStore>(store: &Arc<S>, s: &StreamName, sent: &[NewEvent]) {
    let by_stream = read_forward(&**store, s).await;
    let all = read_everything(&**store).await;
    let mut sub =
        Subscriber::new(Arc::clone(store).subscribe_all(Position::START, EventFilter::all()));
    let subscribed = take_events(&mut sub, all.len(), "round trip subscription").await;
    let mut stream_sub = Subscriber::new(Arc::clone(store).subscribe_stream(s.clone(), 0));
    let stream_subscribed = take_events(&mut stream_sub, sent.len(), "round trip").await;
    for e in sent {
        let find = |events: &[RecordedEvent], path: &str| -> RecordedEvent {
            events
                .iter()
                .find(|r| r.id == e.id)
                .cloned()
                .unwrap_or_else(|| panic!("{path} lacks event {}", e.id))
        };
        assert_same_envelope(&find(&by_stream, "read_stream"), e, "read_stream");
        assert_same_envelope(&find(&all, "read_all"), e, "read_all");
        assert_same_envelope(&find(&subscribed, "subscribe_all"), e, "subscribe_all");
        assert_same_envelope(
            &find(&stream_subscribed, "subscribe_stream"),
            e,
            "subscribe_stream",
        );
        let by_type = store
            .read_by_type(
                &e.event_type,
                DateTime::<Utc>::UNIX_EPOCH,
                Position::START,
                100,
            )
            .await
            .must("read_by_type");
        assert_same_envelope(&find(&by_type, "read_by_type"), e, "read_by_type");
    }
}

/// Metadata (correlation, causation, user, traceparent and tracestate, free headers
/// including Unicode and empty values), schema version and id come back exactly as appended, on every read path.
pub async fn metadata_round_trips<S: EventStore>(store: Arc<S>) {
    let s = stream("Order-1");
    let mut full = Metadata::default()
        .with_correlation_id("corr-1")
        .with_causation_id("cause-2")
        .with_user_id("alice@example.com")
        .with_header("tenant", "acme")
        .with_header("r\u{e9}gion", "\u{e9}t\u{e9} \u{2713} \"quoted\"")
        .with_header("empty", "");
    full.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    full.tracestate = Some("rojo=00f067aa0ba902b7".into());
    let sent = vec![
        NewEvent::json(
            "OrderPlaced",
            &json!({"total": 42, "lines": [{"sku": "A-1"}]}),
        )
        .with_metadata(full)
        .with_schema_version(3),
        NewEvent::json("OrderNoted", &json!({})),
        NewEvent::json("OrderTraced", &json!(null))
            .with_metadata(Metadata::default().with_correlation_id("only-this")),
    ];
    append(&*store, &s, ExpectedRevision::NoStream, sent.clone()).await;
    assert_round_trip(&store, &s, &sent).await;
}

/// Non-JSON content types store arbitrary bytes (NUL, invalid UTF-8, empty) unchanged.
pub async fn binary_content_type_round_trips<S: EventStore>(store: Arc<S>) {
    let s = stream("Blob-1");
    let mut every_byte: Vec<u8> = (0..=255u8).collect();
    every_byte.extend([0, 0, 0xff, 0xfe, 0xc3]);
    let sent = vec![
        NewEvent::bytes("BlobStored", "application/octet-stream", every_byte),
        NewEvent::bytes(
            "NoteTaken",
            "text/plain; charset=utf-8",
            b"hello\0world".to_vec(),
        ),
        NewEvent::bytes("Pinged", "application/x-protobuf", Vec::new()),
        NewEvent::bytes(
            "Blobbed",
            "application/octet-stream",
            b"{\"looks\":\"like json\"}".to_vec(),
        ),
    ];
    append(&*store, &s, ExpectedRevision::NoStream, sent.clone()).await;
    assert_round_trip(&store, &s, &sent).await;
}

/// JSON payloads come back byte for byte: whitespace, key order, number spelling and
/// escapes are kept (the store must not re-encode JSON).
pub async fn json_payload_bytes_round_trip_exactly<S: EventStore>(store: Arc<S>) {
    let s = stream("Order-1");
    let sent = vec![
        NewEvent::bytes(
            "OrderPlaced",
            "application/json",
            br#"{ "z": 1,  "a": [1, 2.50, 1e3], "e": "\u00e9\n", "n": null, "z2": {"b":1,"a":2} }"#
                .to_vec(),
        ),
        NewEvent::bytes(
            "CloudEventCarried",
            "application/cloudevents+json",
            b"{\"specversion\":\"1.0\",\n\t\"id\":\"x\"}".to_vec(),
        ),
        NewEvent::bytes("Counted", "application/json", b"  7 ".to_vec()),
    ];
    append(&*store, &s, ExpectedRevision::NoStream, sent.clone()).await;
    assert_round_trip(&store, &s, &sent).await;
}

/// The store stamps `recorded_at` with its own clock at append time, the same for reads
/// by stream and `$all`.
pub async fn recorded_at_is_set_by_the_store<S: EventStore>(store: Arc<S>) {
    // Generous: a database server's clock may differ a little from the test's.
    let skew = runnel_core::chrono::Duration::minutes(10);
    let before = Utc::now();
    let s = stream("Order-1");
    append(&*store, &s, ExpectedRevision::NoStream, events("A", 2)).await;
    let after = Utc::now();
    let by_stream = read_forward(&*store, &s).await;
    let all = read_everything(&*store).await;
    for (e, same) in by_stream.iter().zip(&all) {
        assert!(
            e.recorded_at >= before - skew && e.recorded_at <= after + skew,
            "recorded_at {} is not near the append time {before}..{after}",
            e.recorded_at
        );
        assert_eq!(e.recorded_at, same.recorded_at, "every read path agrees");
    }
}

// ---------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------

/// `wait_for_events` wakes promptly on an append through this handle (long before its
/// `max_wait`), and returns at once when the head is already past `after`.
pub async fn wait_for_events_wakes_promptly_on_append<S: EventStore>(store: Arc<S>) {
    let head = store.head_position().await.must("head_position");
    let long = EVENT_WAIT_DEADLINE * 6;
    let waiter = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.wait_for_events(head, long).await })
    };
    append(
        &*store,
        &stream("Order-1"),
        ExpectedRevision::Any,
        events("A", 1),
    )
    .await;
    within("wait_for_events to wake on an append", waiter)
        .await
        .unwrap_or_else(|e| panic!("the waiter panicked: {e}"))
        .must("wait_for_events");
    within(
        "wait_for_events with the head already past `after`",
        store.wait_for_events(head, long),
    )
    .await
    .must("wait_for_events");
}

/// With nothing appended, `wait_for_events` returns by its `max_wait`.
pub async fn wait_for_events_returns_by_its_deadline<S: EventStore>(store: Arc<S>) {
    append(
        &*store,
        &stream("Order-1"),
        ExpectedRevision::Any,
        events("A", 1),
    )
    .await;
    let head = store.head_position().await.must("head_position");
    within(
        "wait_for_events with a 300 ms max_wait and no appends",
        store.wait_for_events(head, Duration::from_millis(300)),
    )
    .await
    .must("wait_for_events");
}

// ---------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------

/// `subscribe_all` delivers the stored events in order, then live ones as they are
/// appended, each once; subscribing after a position starts right after it.
pub async fn subscribe_all_catches_up_then_goes_live<S: EventStore>(store: Arc<S>) {
    let mut appended = Vec::new();
    for (i, name) in ["Order-1", "Cart-1", "Order-2"]
        .iter()
        .cycle()
        .take(10)
        .enumerate()
    {
        let e = event("Happened", i);
        appended.push(e.id);
        append(&*store, &stream(name), ExpectedRevision::Any, vec![e]).await;
    }
    let mut sub =
        Subscriber::new(Arc::clone(&store).subscribe_all(Position::START, EventFilter::all()));
    let caught_up = take_events(&mut sub, 10, "catch-up").await;
    assert_eq!(ids(&caught_up), appended);
    assert_positions_strictly_increase(&caught_up, "catch-up");

    let mut live_ids = Vec::new();
    for i in 0..3 {
        let e = event("LiveHappened", i);
        live_ids.push(e.id);
        append(&*store, &stream("Order-1"), ExpectedRevision::Any, vec![e]).await;
    }
    let batch = events("LiveBatch", 2);
    live_ids.extend(ids_of_new(&batch));
    append(
        &*store,
        &stream("Cart-9"),
        ExpectedRevision::NoStream,
        batch,
    )
    .await;
    let live = take_events(&mut sub, 5, "live events").await;
    assert_eq!(ids(&live), live_ids);
    assert!(live[0].position > caught_up[9].position);
    assert_positions_strictly_increase(&live, "live");
    assert_quiet(&mut sub, "after every event was delivered").await;

    let mut from_middle = Subscriber::new(
        Arc::clone(&store).subscribe_all(caught_up[4].position, EventFilter::all()),
    );
    let rest = take_events(&mut from_middle, 10, "subscription after a position").await;
    let mut expected = appended[5..].to_vec();
    expected.extend(&live_ids);
    assert_eq!(ids(&rest), expected);
    assert_quiet(&mut from_middle, "subscription after a position").await;
}

/// A subscriber that saves its checkpoint, stops, and resumes from the loaded checkpoint
/// sees every later event (including those appended while it was down) exactly once.
pub async fn subscribe_all_resumes_from_checkpoint_without_duplicates<
    S: EventStore + CheckpointStore,
>(
    store: Arc<S>,
) {
    const CHECKPOINT: &str = "conformance/projection:orders";
    let mut appended = Vec::new();
    for i in 0..20 {
        let e = event("Happened", i);
        appended.push(e.id);
        append(
            &*store,
            &stream(&format!("Order-{}", i % 4)),
            ExpectedRevision::Any,
            vec![e],
        )
        .await;
    }
    assert_eq!(
        store
            .load_checkpoint(CHECKPOINT)
            .await
            .must("load_checkpoint"),
        None
    );
    let resume_from = {
        let mut sub =
            Subscriber::new(Arc::clone(&store).subscribe_all(Position::START, EventFilter::all()));
        let processed = take_events(&mut sub, 7, "first run").await;
        assert_eq!(ids(&processed), appended[..7]);
        let last = processed[6].position;
        store
            .save_checkpoint(CHECKPOINT, last)
            .await
            .must("save_checkpoint");
        last
    };
    for i in 20..25 {
        let e = event("HappenedWhileDown", i);
        appended.push(e.id);
        append(&*store, &stream("Cart-1"), ExpectedRevision::Any, vec![e]).await;
    }
    let checkpoint = store
        .load_checkpoint(CHECKPOINT)
        .await
        .must("load_checkpoint")
        .expect("the checkpoint was saved");
    assert_eq!(checkpoint, resume_from);
    let mut sub = Subscriber::new(Arc::clone(&store).subscribe_all(checkpoint, EventFilter::all()));
    let resumed = take_events(&mut sub, 18, "resumed run").await;
    assert_eq!(ids(&resumed), appended[7..], "no event skipped or repeated");
    let live = event("HappenedLive", 25);
    let live_id = live.id;
    append(
        &*store,
        &stream("Cart-1"),
        ExpectedRevision::Any,
        vec![live],
    )
    .await;
    assert_eq!(next_event(&mut sub, "live after resume").await.id, live_id);
    assert_quiet(&mut sub, "resumed subscription").await;
}

/// A filtered `subscribe_all` delivers only matching events, both while catching up and
/// live.
pub async fn subscribe_all_with_filter_delivers_only_matching_events<S: EventStore>(store: Arc<S>) {
    let writes = [
        ("Order-1", "OrderPlaced"),
        ("OrderLine-1", "OrderPlaced"),
        ("Cart-1", "ItemAdded"),
        ("Order-1", "ItemAdded"),
        ("Order-2", "OrderPlaced"),
    ];
    for (i, (name, ty)) in writes.iter().enumerate() {
        append(
            &*store,
            &stream(name),
            ExpectedRevision::Any,
            vec![event(ty, i)],
        )
        .await;
    }
    let mut by_category = Subscriber::new(
        Arc::clone(&store).subscribe_all(Position::START, EventFilter::categories(["Order"])),
    );
    let mut by_type = Subscriber::new(
        Arc::clone(&store)
            .subscribe_all(Position::START, EventFilter::event_types(["OrderPlaced"])),
    );
    let label = |e: &RecordedEvent| format!("{}/{}", e.stream, e.event_type);
    let got: Vec<String> = take_events(&mut by_category, 3, "category catch-up")
        .await
        .iter()
        .map(label)
        .collect();
    assert_eq!(
        got,
        [
            "Order-1/OrderPlaced",
            "Order-1/ItemAdded",
            "Order-2/OrderPlaced"
        ]
    );
    let got: Vec<String> = take_events(&mut by_type, 3, "type catch-up")
        .await
        .iter()
        .map(label)
        .collect();
    assert_eq!(
        got,
        [
            "Order-1/OrderPlaced",
            "OrderLine-1/OrderPlaced",
            "Order-2/OrderPlaced"
        ]
    );

    for (name, ty) in [
        ("Cart-1", "OrderPlaced"),
        ("OrderLine-1", "Shipped"),
        ("Order-3", "Shipped"),
    ] {
        append(
            &*store,
            &stream(name),
            ExpectedRevision::Any,
            vec![event(ty, 0)],
        )
        .await;
    }
    assert_eq!(
        label(&next_event(&mut by_category, "live category").await),
        "Order-3/Shipped"
    );
    assert_eq!(
        label(&next_event(&mut by_type, "live type").await),
        "Cart-1/OrderPlaced"
    );
    assert_quiet(&mut by_category, "category subscription").await;
    assert_quiet(&mut by_type, "type subscription").await;
}

/// `subscribe_all` with an invalid filter yields an input error instead of events.
pub async fn subscribe_all_with_invalid_filter_yields_an_error<S: EventStore>(store: Arc<S>) {
    append(
        &*store,
        &stream("Order-1"),
        ExpectedRevision::Any,
        events("A", 1),
    )
    .await;
    let mut sub = Subscriber::new(
        Arc::clone(&store).subscribe_all(Position::START, EventFilter::categories(["not valid"])),
    );
    match sub
        .next_item_within(EVENT_WAIT_DEADLINE, "an invalid filter's error")
        .await
    {
        Some(Err(StoreError::InvalidArgument(_) | StoreError::InvalidStreamName { .. })) => {}
        other => panic!("expected an input error from an invalid filter, got {other:?}"),
    }
}

/// `subscribe_stream` delivers one stream's events after a revision in order, then live
/// ones — also for a stream that does not exist yet — and nothing from other streams.
pub async fn subscribe_stream_catches_up_then_goes_live<S: EventStore>(store: Arc<S>) {
    let s = stream("Order-1");
    let noise = stream("Order-2");
    let mut early = Subscriber::new(Arc::clone(&store).subscribe_stream(s.clone(), 0));
    for i in 0..3 {
        append(
            &*store,
            &noise,
            ExpectedRevision::Any,
            vec![event("Noise", i)],
        )
        .await;
        append(
            &*store,
            &s,
            ExpectedRevision::Any,
            vec![event("Counted", i)],
        )
        .await;
    }
    let got = take_events(&mut early, 3, "a stream that did not exist at subscription").await;
    assert_eq!(revisions(&got), vec![1, 2, 3]);
    assert!(got.iter().all(|e| e.stream == s));

    let mut from_two = Subscriber::new(Arc::clone(&store).subscribe_stream(s.clone(), 2));
    let got = next_event(&mut from_two, "subscription after revision 2").await;
    assert_eq!(got.revision, 3);

    append(
        &*store,
        &noise,
        ExpectedRevision::Any,
        vec![event("Noise", 9)],
    )
    .await;
    append(
        &*store,
        &s,
        ExpectedRevision::Exact(3),
        events("Counted", 2),
    )
    .await;
    for sub in [&mut early, &mut from_two] {
        let live = take_events(sub, 2, "live stream events").await;
        assert_eq!(revisions(&live), vec![4, 5]);
        assert!(live.iter().all(|e| e.stream == s));
    }
    assert_quiet(&mut early, "stream subscription").await;
    assert_quiet(&mut from_two, "stream subscription").await;
}

/// Wraps a store and counts the calls a subscription makes, to detect busy loops.
struct CountingStore<S> {
    inner: Arc<S>,
    calls: AtomicU64,
}

impl<S> CountingStore<S> {
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<S: EventStore> EventStore for CountingStore<S> {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &StreamName,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.count();
        self.inner.read_stream(stream, options).await
    }
    async fn read_all(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.count();
        self.inner.read_all(after, filter, limit).await
    }
    async fn read_by_type(
        &self,
        event_type: &str,
        since: DateTime<Utc>,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.count();
        self.inner
            .read_by_type(event_type, since, after, limit)
            .await
    }
    async fn stream_revision(&self, stream: &StreamName) -> Result<Option<u64>, StoreError> {
        self.count();
        self.inner.stream_revision(stream).await
    }
    async fn list_streams(
        &self,
        category: Option<&str>,
        after: Option<&StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        self.count();
        self.inner.list_streams(category, after, limit).await
    }
    async fn head_position(&self) -> Result<Position, StoreError> {
        self.count();
        self.inner.head_position().await
    }
    async fn wait_for_events(&self, after: Position, max_wait: Duration) -> Result<(), StoreError> {
        self.count();
        self.inner.wait_for_events(after, max_wait).await
    }
    fn limits(&self) -> &StoreLimits {
        self.inner.limits()
    }
}

/// A subscription whose filter matches nothing stays idle without busy-looping over the
/// store (its `wait_for_events` really waits), ignores non-matching appends, and delivers
/// a later matching event promptly. Checked on the backend's own `subscribe_all` and on
/// the core subscription over the backend's `wait_for_events`.
pub async fn subscription_with_filter_that_matches_nothing_does_not_spin<S: EventStore>(
    store: Arc<S>,
) {
    for i in 0..20 {
        append(
            &*store,
            &stream("Noise-1"),
            ExpectedRevision::Any,
            vec![event("Noised", i)],
        )
        .await;
    }
    let filter = EventFilter::categories(["Wanted"]);
    let counting = Arc::new(CountingStore {
        inner: Arc::clone(&store),
        calls: AtomicU64::new(0),
    });
    let mut core_sub = Subscriber::new(runnel_core::subscription::subscribe_all(
        Arc::clone(&counting),
        Position::START,
        filter.clone(),
    ));
    let mut own_sub = Subscriber::new(Arc::clone(&store).subscribe_all(Position::START, filter));

    tokio::join!(
        assert_quiet_for(
            &mut core_sub,
            IDLE_WINDOW,
            "nothing matches (core subscription)"
        ),
        assert_quiet_for(
            &mut own_sub,
            IDLE_WINDOW,
            "nothing matches (backend subscription)"
        ),
    );
    let calls = counting.calls.load(Ordering::Relaxed);
    assert!(
        calls <= IDLE_STORE_CALLS_MAX,
        "an idle subscription made {calls} store calls in {IDLE_WINDOW:?}: wait_for_events \
         returns without waiting, so subscriptions busy-loop"
    );

    append(
        &*store,
        &stream("Noise-1"),
        ExpectedRevision::Any,
        vec![event("Noised", 99)],
    )
    .await;
    let wanted = event("Wanted", 0);
    let wanted_id = wanted.id;
    append(
        &*store,
        &stream("Wanted-1"),
        ExpectedRevision::NoStream,
        vec![wanted],
    )
    .await;
    assert_eq!(
        next_event(&mut core_sub, "a matching event (core subscription)")
            .await
            .id,
        wanted_id
    );
    assert_eq!(
        next_event(&mut own_sub, "a matching event (backend subscription)")
            .await
            .id,
        wanted_id
    );
}

/// Checks one subscriber's view under load against the log it should have seen: no
/// duplicate, nothing missing, the same order, each stream's revisions consecutive.
fn assert_saw_exactly(got: &[RecordedEvent], log: &[RecordedEvent], who: &str) {
    assert_positions_strictly_increase(got, who);
    let mut seen = HashSet::with_capacity(got.len());
    for e in got {
        assert!(seen.insert(e.id), "{who}: event {} delivered twice", e.id);
    }
    let missing: Vec<String> = log
        .iter()
        .filter(|e| !seen.contains(&e.id))
        .map(|e| {
            format!(
                "{} at {} ({} revision {})",
                e.id, e.position, e.stream, e.revision
            )
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{who}: {} of {} events were never delivered (skipped while committing late?), first: {:?}",
        missing.len(),
        log.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        ids(got),
        ids(log),
        "{who}: delivered in another order than $all"
    );
    let mut last_revision: HashMap<&StreamName, u64> = HashMap::new();
    for e in got {
        let last = last_revision.entry(&e.stream).or_insert(0);
        assert_eq!(
            e.revision,
            *last + 1,
            "{who}: stream {} jumped from revision {} to {}",
            e.stream,
            last,
            e.revision
        );
        *last = e.revision;
    }
}

/// A subscription to `$all` from the start, read by its own task until it has passed the
/// last event it should see — known only once the writers are done. Stopping there (not
/// at a count) makes a skipped event fail at once as "missing" rather than as a timeout.
struct Collector {
    filter: EventFilter,
    /// The position of the last matching event in the finished log.
    until: tokio::sync::watch::Sender<Option<Position>>,
    task: tokio::task::JoinHandle<Vec<RecordedEvent>>,
    who: &'static str,
}

impl Collector {
    fn spawn<S: EventStore>(store: &Arc<S>, filter: EventFilter, who: &'static str) -> Self {
        let (until, until_rx) = tokio::sync::watch::channel(None);
        let sub = Subscriber::new(Arc::clone(store).subscribe_all(Position::START, filter.clone()));
        let task = tokio::spawn(collect_until(sub, until_rx, who));
        Collector {
            filter,
            until,
            task,
            who,
        }
    }

    /// Tells the collector where `log` ends; returns what it saw and the part of `log` it
    /// should have seen.
    async fn finish(self, log: &[RecordedEvent]) -> (Vec<RecordedEvent>, Vec<RecordedEvent>) {
        let Collector {
            filter,
            until,
            task,
            who,
        } = self;
        let matching: Vec<RecordedEvent> =
            log.iter().filter(|e| filter.matches(e)).cloned().collect();
        let last = matching.last().map_or(Position::START, |e| e.position);
        until.send_replace(Some(last));
        let got = within_for(LOAD_DEADLINE + EVENT_WAIT_DEADLINE, who, task)
            .await
            .unwrap_or_else(|e| panic!("{who} failed: {e}"));
        (got, matching)
    }
}

async fn collect_until(
    mut sub: Subscriber,
    mut until: tokio::sync::watch::Receiver<Option<Position>>,
    who: &str,
) -> Vec<RecordedEvent> {
    let mut got: Vec<RecordedEvent> = Vec::new();
    within_for(LOAD_DEADLINE, who, async {
        loop {
            let target = *until.borrow_and_update();
            let reached = got.last().map_or(Position::START, |e| e.position);
            if target.is_some_and(|t| reached >= t) {
                return;
            }
            tokio::select! {
                item = sub.items.recv() => match item {
                    Some(Ok(e)) => got.push(e),
                    Some(Err(e)) => panic!("{who}: the subscription failed: {e}"),
                    None => panic!("{who}: the subscription ended"),
                },
                changed = until.changed() => {
                    if changed.is_err() {
                        // The check is gone (it failed elsewhere): nothing to report.
                        return;
                    }
                }
            }
        }
    })
    .await;
    got
}

/// With `LOAD_WRITERS` writers appending `LOAD_EVENTS_PER_WRITER` events each at once,
/// catch-up subscribers (one started before the writers, one midway, one filtered) see
/// every event exactly once, in strictly increasing position order, with no gap in any
/// stream — the guarantee that late-committing writes must not break.
pub async fn subscription_sees_every_event_exactly_once_under_concurrent_writers<S: EventStore>(
    store: Arc<S>,
) {
    const SEED_EVENTS: usize = 100;
    const STREAMS_PER_WRITER: usize = 4;
    let seed = events("Seeded", SEED_EVENTS);
    let mut appended: HashSet<EventId> = ids_of_new(&seed).into_iter().collect();
    append(&*store, &stream("Seed-1"), ExpectedRevision::NoStream, seed).await;
    let total = SEED_EVENTS + LOAD_WRITERS * LOAD_EVENTS_PER_WRITER;

    let from_start = Collector::spawn(&store, EventFilter::all(), "subscriber started first");
    let writer_zero = Collector::spawn(
        &store,
        EventFilter::categories(["Load0"]),
        "subscriber filtered to writer 0",
    );
    let writers: Vec<_> = (0..LOAD_WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let streams: Vec<StreamName> = (0..STREAMS_PER_WRITER)
                    .map(|k| stream(&format!("Load{w}-{k}")))
                    .collect();
                let mut written = Vec::with_capacity(LOAD_EVENTS_PER_WRITER);
                for i in 0..LOAD_EVENTS_PER_WRITER {
                    let e = NewEvent::json("Loaded", &json!({ "writer": w, "i": i }));
                    written.push(e.id);
                    store
                        .append(
                            &streams[i % STREAMS_PER_WRITER],
                            ExpectedRevision::Any,
                            vec![e],
                        )
                        .await
                        .must("a concurrent writer's append");
                }
                written
            })
        })
        .collect();

    // Start one more subscriber while the writers are busy, so its catch-up races them.
    let midway_head = Position((SEED_EVENTS + LOAD_WRITERS * LOAD_EVENTS_PER_WRITER / 4) as u64);
    within_for(
        LOAD_DEADLINE,
        "the writers to get a quarter through",
        async {
            while store.head_position().await.must("head_position") < midway_head
                && !writers.iter().all(|w| w.is_finished())
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        },
    )
    .await;
    let midway = Collector::spawn(&store, EventFilter::all(), "subscriber started midway");

    let mut by_writer = Vec::with_capacity(LOAD_WRITERS);
    for w in writers {
        let written = within_for(LOAD_DEADLINE, "the writers", w)
            .await
            .unwrap_or_else(|e| panic!("a writer panicked: {e}"));
        appended.extend(written.iter().copied());
        by_writer.push(written);
    }
    assert_eq!(appended.len(), total);

    let log = read_everything(&*store).await;
    assert_eq!(log.len(), total, "$all holds every appended event once");
    assert!(
        log.iter().all(|e| appended.contains(&e.id)),
        "$all holds only appended events"
    );
    for collector in [from_start, midway] {
        let who = collector.who;
        let (got, should) = collector.finish(&log).await;
        assert_saw_exactly(&got, &should, who);
    }
    let (got, should) = writer_zero.finish(&log).await;
    assert_saw_exactly(&got, &should, "subscriber filtered to writer 0");
    assert_eq!(
        ids(&got),
        by_writer[0],
        "the filtered subscriber sees exactly writer 0's events, in its order"
    );
}

// ---------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------

fn snapshot(s: &StreamName, revision: u64, schema_version: u32, data: &str) -> Snapshot {
    Snapshot {
        stream: s.clone(),
        revision,
        schema_version,
        data: data.as_bytes().to_vec(),
        // Millisecond precision, so every backend can store it exactly.
        taken_at: DateTime::<Utc>::from_timestamp_millis(1_700_000_000_123 + revision as i64)
            .expect("a valid timestamp"),
    }
}

/// Snapshots round-trip exactly and per stream; saving one at a lower revision than the
/// stored one is ignored, a higher one replaces it.
pub async fn snapshot_save_load_keeps_latest<S: SnapshotStore>(store: Arc<S>) {
    let s = stream("Order-1");
    let other = stream("Order-2");
    assert_eq!(store.load_snapshot(&s).await.must("load_snapshot"), None);
    let five = snapshot(&s, 5, 2, r#"{"total": 5, "lines": ["a"]}"#);
    store
        .save_snapshot(five.clone())
        .await
        .must("save_snapshot");
    assert_eq!(
        store.load_snapshot(&s).await.must("load_snapshot"),
        Some(five.clone())
    );
    store
        .save_snapshot(snapshot(&s, 3, 2, r#"{"total": 3}"#))
        .await
        .must("save_snapshot at a lower revision");
    assert_eq!(
        store.load_snapshot(&s).await.must("load_snapshot"),
        Some(five),
        "an older snapshot does not replace a newer one"
    );
    let eight = snapshot(&s, 8, 3, r#"{"total": 8}"#);
    store
        .save_snapshot(eight.clone())
        .await
        .must("save_snapshot");
    assert_eq!(
        store.load_snapshot(&s).await.must("load_snapshot"),
        Some(eight.clone())
    );
    assert_eq!(
        store.load_snapshot(&other).await.must("load_snapshot"),
        None
    );
    let other_one = snapshot(&other, 1, 1, "{}");
    store
        .save_snapshot(other_one.clone())
        .await
        .must("save_snapshot");
    assert_eq!(
        store.load_snapshot(&other).await.must("load_snapshot"),
        Some(other_one)
    );
    assert_eq!(
        store.load_snapshot(&s).await.must("load_snapshot"),
        Some(eight)
    );
}

/// Saving a snapshot at the stored revision replaces it ("unless one at a higher revision
/// is stored"): a state schema change re-snapshots at the same revision.
pub async fn snapshot_at_same_revision_replaces_the_stored_one<S: SnapshotStore>(store: Arc<S>) {
    let s = stream("Order-1");
    store
        .save_snapshot(snapshot(&s, 4, 1, r#"{"old": true}"#))
        .await
        .must("save_snapshot");
    let replacement = snapshot(&s, 4, 2, r#"{"new": true}"#);
    store
        .save_snapshot(replacement.clone())
        .await
        .must("save_snapshot at the same revision");
    assert_eq!(
        store.load_snapshot(&s).await.must("load_snapshot"),
        Some(replacement)
    );
}

/// `delete_snapshot` removes the stream's snapshot (and only it); deleting a missing one
/// is fine; after a delete any revision may be saved again.
pub async fn snapshot_delete_removes_it<S: SnapshotStore>(store: Arc<S>) {
    let s = stream("Order-1");
    let other = stream("Order-2");
    store
        .save_snapshot(snapshot(&s, 9, 1, "{}"))
        .await
        .must("save_snapshot");
    let kept = snapshot(&other, 2, 1, "{}");
    store
        .save_snapshot(kept.clone())
        .await
        .must("save_snapshot");
    store.delete_snapshot(&s).await.must("delete_snapshot");
    assert_eq!(store.load_snapshot(&s).await.must("load_snapshot"), None);
    assert_eq!(
        store.load_snapshot(&other).await.must("load_snapshot"),
        Some(kept)
    );
    store
        .delete_snapshot(&s)
        .await
        .must("delete_snapshot again");
    store
        .delete_snapshot(&stream("Order-never"))
        .await
        .must("delete_snapshot of a stream without one");
    let lower = snapshot(&s, 2, 2, r#"{"rebuilt": true}"#);
    store
        .save_snapshot(lower.clone())
        .await
        .must("save_snapshot after delete");
    assert_eq!(
        store.load_snapshot(&s).await.must("load_snapshot"),
        Some(lower)
    );
}

// ---------------------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------------------

/// Checkpoints are stored per name and overwritten unconditionally (also backwards, for a
/// projection rebuild).
pub async fn checkpoint_save_load_overwrite<S: CheckpointStore>(store: Arc<S>) {
    let a = "projection:order-summary";
    let b = "relay/outbox";
    let longest = "c".repeat(CHECKPOINT_NAME_LEN_MAX);
    assert_eq!(store.load_checkpoint(a).await.must("load_checkpoint"), None);
    store
        .save_checkpoint(a, Position(42))
        .await
        .must("save_checkpoint");
    assert_eq!(
        store.load_checkpoint(a).await.must("load_checkpoint"),
        Some(Position(42))
    );
    assert_eq!(store.load_checkpoint(b).await.must("load_checkpoint"), None);
    store
        .save_checkpoint(a, Position(1 << 40))
        .await
        .must("save_checkpoint");
    assert_eq!(
        store.load_checkpoint(a).await.must("load_checkpoint"),
        Some(Position(1 << 40))
    );
    store
        .save_checkpoint(a, Position(7))
        .await
        .must("save_checkpoint backwards");
    assert_eq!(
        store.load_checkpoint(a).await.must("load_checkpoint"),
        Some(Position(7)),
        "a checkpoint is overwritten, even backwards"
    );
    store
        .save_checkpoint(a, Position::START)
        .await
        .must("save_checkpoint START");
    assert_eq!(
        store.load_checkpoint(a).await.must("load_checkpoint"),
        Some(Position::START)
    );
    store
        .save_checkpoint(b, Position(3))
        .await
        .must("save_checkpoint");
    store
        .save_checkpoint(&longest, Position(5))
        .await
        .must("save_checkpoint with the longest name");
    assert_eq!(
        store.load_checkpoint(a).await.must("load_checkpoint"),
        Some(Position::START)
    );
    assert_eq!(
        store.load_checkpoint(b).await.must("load_checkpoint"),
        Some(Position(3))
    );
    assert_eq!(
        store
            .load_checkpoint(&longest)
            .await
            .must("load_checkpoint"),
        Some(Position(5))
    );
}

/// Checkpoint names must be 1..=200 bytes without whitespace or control characters;
/// anything else is `InvalidArgument` on save and load, and nothing is stored.
pub async fn checkpoint_names_are_validated<S: CheckpointStore>(store: Arc<S>) {
    let too_long = "n".repeat(CHECKPOINT_NAME_LEN_MAX + 1);
    for bad in [
        "",
        "has space",
        "tab\there",
        "new\nline",
        "nul\0",
        too_long.as_str(),
    ] {
        let err = expect_err(
            &format!("save_checkpoint {bad:?}"),
            store.save_checkpoint(bad, Position(1)).await,
        );
        assert!(
            matches!(err, StoreError::InvalidArgument(_)),
            "save {bad:?}: {err:?}"
        );
        let err = expect_err(
            &format!("load_checkpoint {bad:?}"),
            store.load_checkpoint(bad).await,
        );
        assert!(
            matches!(err, StoreError::InvalidArgument(_)),
            "load {bad:?}: {err:?}"
        );
    }
    // The valid prefix of a rejected name was not stored either.
    assert_eq!(
        store.load_checkpoint("has").await.must("load_checkpoint"),
        None
    );
}
