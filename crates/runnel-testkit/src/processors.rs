//! The processor-store conformance suite: one check per behaviour promised by the
//! [`ProcessorStore`] trait (the version check, unique correlation, the inbox mark, one
//! commit or nothing, timers that replace, cancel and fire, leases, version-filtered
//! claims, listing, purging, limits), run by every backend (SQLite, PostgreSQL).
//!
//! ```ignore
//! // tests/processors.rs
//! runnel_testkit::processor_store_conformance!(async { Some(std::sync::Arc::new(make_store().await)) });
//! ```
//!
//! The factory returns `Arc<S>` or `Option<Arc<S>>` (`None` skips, and fails under
//! `RUNNEL_REQUIRE_SERVICES=1`). Every check needs a fresh, empty store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use runnel_core::processor::{
    CancelTimers, CommitOutcome, ExpectedInstance, HistoryLine, InstanceFilter, InstanceStatus,
    ProcessorStore, TimerSpec, Transition, INSTANCE_DATA_MAX_DEFAULT,
};
use runnel_core::StoreError;

use crate::conformance::CHECK_DEADLINE;

/// The kind every check uses.
pub const KIND: &str = "saga:conformance";
/// A lease no check outlives.
const LEASE_LONG: Duration = Duration::from_secs(60);

/// What a factory may return: `Arc<S>`, or `Option<Arc<S>>` where `None` skips.
pub trait IntoProcessorStore {
    /// The store type under test.
    type Store: ProcessorStore + ?Sized;
    /// The store, or `None` to skip.
    fn into_processor_store(self) -> Option<Arc<Self::Store>>;
}

impl<S: ProcessorStore + ?Sized> IntoProcessorStore for Arc<S> {
    type Store = S;
    fn into_processor_store(self) -> Option<Arc<S>> {
        Some(self)
    }
}

impl<S: ProcessorStore + ?Sized> IntoProcessorStore for Option<Arc<S>> {
    type Store = S;
    fn into_processor_store(self) -> Option<Arc<S>> {
        self
    }
}

/// Runs every check, each on a fresh store from `make_store`, one after another.
pub async fn run_processor_store_suite<F, Fut>(make_store: F)
where
    F: Fn() -> Fut,
    Fut: Future,
    Fut::Output: IntoProcessorStore,
{
    crate::__processor_store_checks!(__suite_run_all(
        "processor store conformance",
        processors,
        IntoProcessorStore::into_processor_store,
        CHECK_DEADLINE,
        make_store
    ));
}

/// One `#[test]` per processor-store check, each on a fresh store.
#[macro_export]
macro_rules! processor_store_conformance {
    ($($factory:tt)+) => {
        $crate::__suite_conformance!(__processor_store_checks (
            processors,
            $crate::processors::IntoProcessorStore::into_processor_store,
            $crate::conformance::CHECK_DEADLINE
        ) $($factory)+);
    };
}

/// The list of checks, handed to `$callback`. The one place a new check is registered.
#[doc(hidden)]
#[macro_export]
macro_rules! __processor_store_checks {
    ($callback:ident $args:tt) => {
        $crate::$callback! { $args;
            create_then_advance_with_the_version_check,
            a_correlation_key_makes_one_instance_per_kind,
            a_marked_message_writes_nothing_the_second_time,
            a_refused_transition_writes_nothing,
            racing_transitions_from_one_version_commit_once,
            timers_replace_cancel_and_fire,
            a_due_timer_is_leased_to_one_owner_until_the_lease_lapses,
            a_timer_leased_at_schedule_waits_for_its_lease,
            claims_skip_instances_of_other_definition_versions,
            list_pages_filters_and_counts,
            purge_deletes_finished_instances_with_their_history_and_timers,
            bad_input_is_refused_and_changes_nothing,
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

/// A transition of `id` with `expected`, status running, data `{"n": n}`.
pub fn transition(id: &str, expected: ExpectedInstance, n: u64) -> Transition {
    Transition {
        kind: KIND.into(),
        id: id.into(),
        expected,
        definition_version: 1,
        correlation: None,
        state: format!("step {n}"),
        status: InstanceStatus::Running,
        progress: format!("{{\"step\":{n}}}").into_bytes(),
        data: serde_json::to_vec(&serde_json::json!({ "n": n })).expect("json"),
        last_error: None,
        outbox: vec![],
        cancel_timers: CancelTimers::None,
        schedule: vec![],
        fired_timer: None,
        inbox: None,
        history: vec![],
    }
}

fn timer(name: &str, due: DateTime<Utc>) -> TimerSpec {
    TimerSpec {
        name: name.into(),
        due,
        payload: format!("{{\"timer\":\"{name}\"}}").into_bytes(),
        leased_to: None,
    }
}

fn line(what: &str) -> HistoryLine {
    HistoryLine {
        step: Some("reserve".into()),
        what: what.into(),
        detail: None,
    }
}

async fn commit<S: ProcessorStore + ?Sized>(store: &S, t: Transition) -> CommitOutcome {
    must("commit", store.commit(t).await)
}

async fn create<S: ProcessorStore + ?Sized>(store: &S, id: &str) {
    assert_eq!(
        commit(store, transition(id, ExpectedInstance::New, 0)).await,
        CommitOutcome::Committed { version: 1 }
    );
}

fn ago(secs: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::seconds(secs)
}

/// A transition creates the instance at version 1; the next names that version and
/// moves it to 2; a stale version or a second create is a conflict naming the actual one.
pub async fn create_then_advance_with_the_version_check<S: ProcessorStore + ?Sized>(store: Arc<S>) {
    assert!(must("load", store.load(KIND, "i-1").await).is_none());
    create(&*store, "i-1").await;
    let loaded = must("load", store.load(KIND, "i-1").await).expect("created");
    assert_eq!(loaded.version, 1);
    assert_eq!(loaded.state, "step 0");
    assert_eq!(loaded.status, InstanceStatus::Running);
    assert_eq!(loaded.definition_version, 1);
    assert!(loaded.finished_at.is_none());

    let mut next = transition("i-1", ExpectedInstance::Version(1), 1);
    next.status = InstanceStatus::Completed;
    next.last_error = Some("was slow".into());
    assert_eq!(
        commit(&*store, next).await,
        CommitOutcome::Committed { version: 2 }
    );
    let loaded = must("load", store.load(KIND, "i-1").await).expect("there");
    assert_eq!(loaded.version, 2);
    assert_eq!(loaded.progress, b"{\"step\":1}".to_vec());
    assert_eq!(loaded.status, InstanceStatus::Completed);
    assert_eq!(loaded.last_error.as_deref(), Some("was slow"));
    assert!(
        loaded.finished_at.is_some(),
        "a finished instance has its time"
    );

    assert_eq!(
        commit(&*store, transition("i-1", ExpectedInstance::Version(1), 9)).await,
        CommitOutcome::Conflict { actual: Some(2) }
    );
    assert_eq!(
        commit(&*store, transition("i-1", ExpectedInstance::New, 9)).await,
        CommitOutcome::Conflict { actual: Some(2) }
    );
    assert_eq!(
        commit(&*store, transition("nope", ExpectedInstance::Version(1), 9)).await,
        CommitOutcome::Conflict { actual: None }
    );
    let loaded = must("load", store.load(KIND, "i-1").await).expect("there");
    assert_eq!(loaded.version, 2, "conflicts change nothing");
}

/// Two creates with one correlation key make one instance: the second learns the first's
/// id. Another kind may use the same key.
pub async fn a_correlation_key_makes_one_instance_per_kind<S: ProcessorStore + ?Sized>(
    store: Arc<S>,
) {
    let mut first = transition("a", ExpectedInstance::New, 0);
    first.correlation = Some("order-7".into());
    assert_eq!(
        commit(&*store, first).await,
        CommitOutcome::Committed { version: 1 }
    );
    let mut second = transition("b", ExpectedInstance::New, 0);
    second.correlation = Some("order-7".into());
    assert_eq!(
        commit(&*store, second).await,
        CommitOutcome::CorrelationTaken { id: "a".into() }
    );
    assert!(must("load", store.load(KIND, "b").await).is_none());
    let found = must("find", store.find_by_correlation(KIND, "order-7").await).expect("found");
    assert_eq!(found.id, "a");
    assert!(must("find", store.find_by_correlation(KIND, "order-8").await).is_none());

    let mut other_kind = transition("b", ExpectedInstance::New, 0);
    other_kind.kind = "saga:other".into();
    other_kind.correlation = Some("order-7".into());
    assert_eq!(
        commit(&*store, other_kind).await,
        CommitOutcome::Committed { version: 1 }
    );
}

/// A transition carrying an inbox mark that exists already writes nothing at all.
pub async fn a_marked_message_writes_nothing_the_second_time<S: ProcessorStore + ?Sized>(
    store: Arc<S>,
) {
    create(&*store, "i").await;
    let mut t = transition("i", ExpectedInstance::Version(1), 1);
    t.inbox = Some(("saga:conformance/replies".into(), "msg-1".into()));
    t.history = vec![line("reply")];
    assert_eq!(
        commit(&*store, t.clone()).await,
        CommitOutcome::Committed { version: 2 }
    );
    let mut again = t.clone();
    again.expected = ExpectedInstance::Version(2);
    again.schedule = vec![timer("deadline", Utc::now())];
    assert_eq!(commit(&*store, again).await, CommitOutcome::Duplicate);
    assert_eq!(
        must("load", store.load(KIND, "i").await).unwrap().version,
        2
    );
    assert!(must("timers", store.timers(KIND, "i").await).is_empty());
    assert_eq!(
        must("history", store.history(KIND, "i", 0, 100).await).len(),
        1
    );
}

/// A conflicting transition's timers, history and inbox mark are not written either.
pub async fn a_refused_transition_writes_nothing<S: ProcessorStore + ?Sized>(store: Arc<S>) {
    create(&*store, "i").await;
    let mut stale = transition("i", ExpectedInstance::Version(7), 1);
    stale.schedule = vec![timer("retry", Utc::now())];
    stale.history = vec![line("lost")];
    stale.inbox = Some(("h".into(), "m-1".into()));
    assert_eq!(
        commit(&*store, stale).await,
        CommitOutcome::Conflict { actual: Some(1) }
    );
    assert!(must("timers", store.timers(KIND, "i").await).is_empty());
    assert!(must("history", store.history(KIND, "i", 0, 100).await).is_empty());
    // The mark was rolled back with the rest: the same message can still commit.
    let mut ok = transition("i", ExpectedInstance::Version(1), 1);
    ok.inbox = Some(("h".into(), "m-1".into()));
    assert_eq!(
        commit(&*store, ok).await,
        CommitOutcome::Committed { version: 2 }
    );
}

/// Many transitions from the same version race: exactly one commits, the others conflict.
pub async fn racing_transitions_from_one_version_commit_once<S: ProcessorStore + ?Sized>(
    store: Arc<S>,
) {
    create(&*store, "hot").await;
    let mut racers = Vec::new();
    for n in 0..8u64 {
        let store = store.clone();
        racers.push(tokio::spawn(async move {
            let mut t = transition("hot", ExpectedInstance::Version(1), n + 10);
            t.history = vec![line(&format!("racer {n}"))];
            store.commit(t).await
        }));
    }
    let mut won = 0;
    for r in racers {
        match r.await.expect("racer task").expect("commit") {
            CommitOutcome::Committed { version } => {
                assert_eq!(version, 2);
                won += 1;
            }
            CommitOutcome::Conflict { actual } => assert_eq!(actual, Some(2)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one racer commits");
    assert_eq!(
        must("history", store.history(KIND, "hot", 0, 100).await).len(),
        1
    );
}

/// Scheduling a timer name again replaces it; cancelling removes the named ones or all;
/// the fired timer of a transition is deleted with it; `next_due` is the soonest.
pub async fn timers_replace_cancel_and_fire<S: ProcessorStore + ?Sized>(store: Arc<S>) {
    let soon = Utc::now() + chrono::Duration::seconds(30);
    let later = Utc::now() + chrono::Duration::seconds(60);
    let mut t = transition("i", ExpectedInstance::New, 0);
    t.schedule = vec![timer("deadline", later), timer("retry", later)];
    create_with(&*store, t).await;
    assert_eq!(must("timers", store.timers(KIND, "i").await).len(), 2);

    let mut t = transition("i", ExpectedInstance::Version(1), 1);
    t.schedule = vec![timer("deadline", soon)];
    assert_eq!(
        commit(&*store, t).await,
        CommitOutcome::Committed { version: 2 }
    );
    let timers = must("timers", store.timers(KIND, "i").await);
    assert_eq!(
        timers.len(),
        2,
        "re-scheduling replaced, not added: {timers:?}"
    );
    assert_eq!(timers[0].name, "deadline");
    let next = must("next_due", store.next_due(KIND).await).expect("a timer");
    assert!(
        (next - soon).num_milliseconds().abs() < 2,
        "{next} vs {soon}"
    );

    let mut t = transition("i", ExpectedInstance::Version(2), 2);
    t.cancel_timers = CancelTimers::Named(vec!["retry".into()]);
    commit(&*store, t).await;
    let timers = must("timers", store.timers(KIND, "i").await);
    assert_eq!(timers.len(), 1);
    assert_eq!(timers[0].name, "deadline");

    // Fire it: claim once due, then commit with it as the cause.
    let mut t = transition("i", ExpectedInstance::Version(3), 3);
    t.schedule = vec![timer("deadline", ago(1))];
    commit(&*store, t).await;
    let due = must(
        "claim",
        store
            .claim_due_timers(KIND, &[1], "me", Utc::now(), LEASE_LONG, 10)
            .await,
    );
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].instance, "i");
    assert_eq!(due[0].payload, b"{\"timer\":\"deadline\"}".to_vec());
    let mut t = transition("i", ExpectedInstance::Version(4), 4);
    t.fired_timer = Some(due[0].id);
    t.schedule = vec![timer("retry", later)];
    commit(&*store, t).await;
    let timers = must("timers", store.timers(KIND, "i").await);
    assert_eq!(
        timers.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        vec!["retry"]
    );

    let mut t = transition("i", ExpectedInstance::Version(5), 5);
    t.cancel_timers = CancelTimers::All;
    t.schedule = vec![timer("after-cancel", later)];
    commit(&*store, t).await;
    let timers = must("timers", store.timers(KIND, "i").await);
    assert_eq!(timers.len(), 1, "cancel runs before schedule");
    assert_eq!(timers[0].name, "after-cancel");
}

async fn create_with<S: ProcessorStore + ?Sized>(store: &S, t: Transition) {
    assert_eq!(
        commit(store, t).await,
        CommitOutcome::Committed { version: 1 }
    );
}

/// A due timer goes to one claimer; nobody else gets it while the lease holds; only the
/// holder extends it; once it lapses another owner claims it; release hands it back.
pub async fn a_due_timer_is_leased_to_one_owner_until_the_lease_lapses<
    S: ProcessorStore + ?Sized,
>(
    store: Arc<S>,
) {
    let mut t = transition("i", ExpectedInstance::New, 0);
    t.schedule = vec![timer("retry", ago(5))];
    create_with(&*store, t).await;
    let mut f = transition("future", ExpectedInstance::New, 0);
    f.schedule = vec![timer("retry", Utc::now() + chrono::Duration::seconds(600))];
    create_with(&*store, f).await;

    let now = Utc::now();
    let a = must(
        "claim a",
        store
            .claim_due_timers(KIND, &[1], "a", now, Duration::from_secs(5), 10)
            .await,
    );
    assert_eq!(a.len(), 1, "only the due timer: {a:?}");
    let b = must(
        "claim b",
        store
            .claim_due_timers(KIND, &[1], "b", now, LEASE_LONG, 10)
            .await,
    );
    assert!(b.is_empty(), "leased to a: {b:?}");
    let id = a[0].id;
    let until = now + chrono::Duration::seconds(20);
    assert!(!must(
        "extend by b",
        store.extend_timer_lease(id, "b", until).await
    ));
    assert!(must(
        "extend by a",
        store.extend_timer_lease(id, "a", until).await
    ));

    // Later than the extended lease: b takes it over (the claim's `now` is the caller's
    // clock, so no sleeping is needed).
    let later = now + chrono::Duration::seconds(21);
    let b = must(
        "claim b later",
        store
            .claim_due_timers(KIND, &[1], "b", later, LEASE_LONG, 10)
            .await,
    );
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].id, id);
    assert!(
        !must(
            "extend by a",
            store.extend_timer_lease(id, "a", later).await
        ),
        "a lost the lease"
    );

    must("release", store.release_timer(id, "b", ago(1)).await);
    let c = must(
        "claim c",
        store
            .claim_due_timers(KIND, &[1], "c", Utc::now(), LEASE_LONG, 10)
            .await,
    );
    assert_eq!(c.len(), 1, "released timers are claimable at once");

    must("delete by a", store.delete_timer(id, "a").await);
    assert_eq!(
        must("timers", store.timers(KIND, "i").await).len(),
        1,
        "only the lease holder deletes a timer"
    );
    must("delete", store.delete_timer(id, "c").await);
    assert!(must("timers", store.timers(KIND, "i").await).is_empty());
}

/// A timer scheduled with a lease (work the committing process starts at once) is not
/// claimed by others until the lease lapses.
pub async fn a_timer_leased_at_schedule_waits_for_its_lease<S: ProcessorStore + ?Sized>(
    store: Arc<S>,
) {
    let now = Utc::now();
    let mut t = transition("i", ExpectedInstance::New, 0);
    let mut run = timer("run", now);
    run.leased_to = Some(("me".into(), now + chrono::Duration::seconds(10)));
    t.schedule = vec![run];
    create_with(&*store, t).await;
    let timers = must("timers", store.timers(KIND, "i").await);
    assert_eq!(
        timers[0].leased_to.as_ref().map(|l| l.0.as_str()),
        Some("me")
    );
    let other = must(
        "claim",
        store
            .claim_due_timers(KIND, &[1], "other", now, LEASE_LONG, 10)
            .await,
    );
    assert!(other.is_empty(), "{other:?}");
    let next = must("next_due", store.next_due(KIND).await).expect("a timer");
    assert!(
        next >= now + chrono::Duration::seconds(9),
        "due when the lease ends: {next}"
    );
    let after = must(
        "claim after the lease",
        store
            .claim_due_timers(
                KIND,
                &[1],
                "other",
                now + chrono::Duration::seconds(11),
                LEASE_LONG,
                10,
            )
            .await,
    );
    assert_eq!(after.len(), 1);
}

/// A claimer that knows only some definition versions gets only their instances' timers.
pub async fn claims_skip_instances_of_other_definition_versions<S: ProcessorStore + ?Sized>(
    store: Arc<S>,
) {
    for (id, version) in [("v1", 1), ("v2", 2)] {
        let mut t = transition(id, ExpectedInstance::New, 0);
        t.definition_version = version;
        t.schedule = vec![timer("retry", ago(1))];
        create_with(&*store, t).await;
    }
    let only_v2 = must(
        "claim",
        store
            .claim_due_timers(KIND, &[2], "new", Utc::now(), LEASE_LONG, 10)
            .await,
    );
    assert_eq!(
        only_v2
            .iter()
            .map(|t| t.instance.as_str())
            .collect::<Vec<_>>(),
        vec!["v2"]
    );
    let none = must(
        "claim",
        store
            .claim_due_timers(KIND, &[], "nobody", Utc::now(), LEASE_LONG, 10)
            .await,
    );
    assert!(none.is_empty());
    let v1 = must(
        "claim",
        store
            .claim_due_timers(KIND, &[1, 3], "old", Utc::now(), LEASE_LONG, 10)
            .await,
    );
    assert_eq!(v1.len(), 1);
    assert_eq!(v1[0].instance, "v1");
}

/// `list` pages in `(kind, id)` order with a cursor, filters by kind and status;
/// `count_by_status` counts per kind and status; history comes back in order.
pub async fn list_pages_filters_and_counts<S: ProcessorStore + ?Sized>(store: Arc<S>) {
    for n in 0..5u64 {
        let mut t = transition(&format!("i-{n}"), ExpectedInstance::New, n);
        if n % 2 == 1 {
            t.status = InstanceStatus::NeedsAttention;
        }
        t.history = vec![line("started"), line("step-ran")];
        create_with(&*store, t).await;
    }
    let mut other = transition("x", ExpectedInstance::New, 0);
    other.kind = "saga:other".into();
    create_with(&*store, other).await;

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = must(
            "list",
            store
                .list(&InstanceFilter {
                    kind: Some(KIND.into()),
                    status: None,
                    after: after.clone(),
                    limit: 2,
                })
                .await,
        );
        if page.is_empty() {
            break;
        }
        after = page.last().map(|i| (i.kind.clone(), i.id.clone()));
        seen.extend(page.into_iter().map(|i| i.id));
    }
    assert_eq!(seen, vec!["i-0", "i-1", "i-2", "i-3", "i-4"]);
    let parked = must(
        "list parked",
        store
            .list(&InstanceFilter {
                kind: None,
                status: Some(InstanceStatus::NeedsAttention),
                after: None,
                limit: 100,
            })
            .await,
    );
    assert_eq!(
        parked.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec!["i-1", "i-3"]
    );
    let counts = must("counts", store.count_by_status().await);
    let count = |kind: &str, status| {
        counts
            .iter()
            .find(|c| c.kind == kind && c.status == status)
            .map_or(0, |c| c.count)
    };
    assert_eq!(count(KIND, InstanceStatus::Running), 3);
    assert_eq!(count(KIND, InstanceStatus::NeedsAttention), 2);
    assert_eq!(count("saga:other", InstanceStatus::Running), 1);

    let history = must("history", store.history(KIND, "i-2", 0, 100).await);
    assert_eq!(
        history
            .iter()
            .map(|h| (h.seq, h.line.what.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "started"), (2, "step-ran")]
    );
    let rest = must("history after 1", store.history(KIND, "i-2", 1, 100).await);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].line.step.as_deref(), Some("reserve"));
}

/// `purge_finished` deletes finished instances older than the cutoff, with their history
/// and timers, and leaves running and parked ones.
pub async fn purge_deletes_finished_instances_with_their_history_and_timers<
    S: ProcessorStore + ?Sized,
>(
    store: Arc<S>,
) {
    for (id, status) in [
        ("done", InstanceStatus::Completed),
        ("undone", InstanceStatus::Compensated),
        ("running", InstanceStatus::Running),
        ("parked", InstanceStatus::CompensationFailed),
    ] {
        let mut t = transition(id, ExpectedInstance::New, 0);
        t.status = status;
        t.history = vec![line("x")];
        t.schedule = vec![timer("t", Utc::now() + chrono::Duration::seconds(60))];
        create_with(&*store, t).await;
    }
    let none = must(
        "purge before",
        store.purge_finished(None, ago(3600), 100).await,
    );
    assert_eq!(none, 0, "nothing finished an hour ago");
    let purged = must(
        "purge",
        store
            .purge_finished(Some(KIND), Utc::now() + chrono::Duration::seconds(5), 100)
            .await,
    );
    assert_eq!(purged, 2);
    for gone in ["done", "undone"] {
        assert!(must("load", store.load(KIND, gone).await).is_none());
        assert!(must("history", store.history(KIND, gone, 0, 10).await).is_empty());
        assert!(must("timers", store.timers(KIND, gone).await).is_empty());
    }
    for kept in ["running", "parked"] {
        assert!(must("load", store.load(KIND, kept).await).is_some());
    }
}

/// Oversized data, empty names and out-of-range limits are refused before anything is
/// written.
pub async fn bad_input_is_refused_and_changes_nothing<S: ProcessorStore + ?Sized>(store: Arc<S>) {
    let mut big = transition("big", ExpectedInstance::New, 0);
    big.data = vec![b' '; INSTANCE_DATA_MAX_DEFAULT + 1];
    let e = store.commit(big).await.expect_err("too big");
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    assert!(must("load", store.load(KIND, "big").await).is_none());

    let empty = transition("", ExpectedInstance::New, 0);
    assert!(matches!(
        store.commit(empty).await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(store.load(KIND, "").await.is_err());
    assert!(store
        .claim_due_timers(KIND, &[1], "", Utc::now(), LEASE_LONG, 1)
        .await
        .is_err());
    assert!(store
        .claim_due_timers(KIND, &[1], "me", Utc::now(), LEASE_LONG, 0)
        .await
        .is_err());
    assert!(store
        .list(&InstanceFilter {
            limit: 0,
            ..Default::default()
        })
        .await
        .is_err());
    assert!(store.history(KIND, "x", 0, 0).await.is_err());
}
