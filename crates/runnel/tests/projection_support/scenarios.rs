//! The projection proofs, written once and run on each backend (`tests/projection.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel::app::{Shutdown, ShutdownTrigger};
use runnel::core::dead_letter::DeadLetterFilter;
use runnel::core::projection::{ProjectionStatus, VersionRole};
use runnel::core::{ExpectedRevision, NewEvent, Position, StreamName};
use runnel::projection::{
    wait_for_position, OnFailure, ProjectionRunner, RunnerOptions, WaitError,
};

use super::{Counting, Stores, NAME};

const DEADLINE: Duration = Duration::from_secs(30);

async fn append(stores: &Stores, stream: &str, event_type: &str, n: usize) -> Position {
    let events = (0..n)
        .map(|i| NewEvent::json(event_type, &serde_json::json!({ "i": i })))
        .collect();
    stores
        .events
        .append(
            &StreamName::new(stream).unwrap(),
            ExpectedRevision::Any,
            events,
        )
        .await
        .unwrap()
        .position
}

fn options(owner: &str, on_failure: OnFailure) -> RunnerOptions {
    RunnerOptions {
        batch_events: 50,
        lease: Duration::from_secs(2),
        poll: Duration::from_millis(50),
        retry: runnel::RetryPolicy::immediate(2),
        on_failure,
        owner: Some(owner.into()),
        ..RunnerOptions::default()
    }
}

fn runner(
    stores: &Stores,
    projection: Counting,
    owner: &str,
    on_failure: OnFailure,
) -> ProjectionRunner {
    ProjectionRunner::new(
        Arc::new(projection),
        Arc::clone(&stores.projections),
        Arc::clone(&stores.events),
        options(owner, on_failure),
    )
    .with_dead_letters(Arc::clone(&stores.dead_letters))
}

async fn counts(stores: &Stores) -> Vec<(String, i64)> {
    (stores.query)("SELECT stream, n FROM counts ORDER BY stream".into()).await
}

async fn total(stores: &Stores) -> (i64, i64) {
    let rows = (stores.query)("SELECT 'x', count(*) FROM applied".into()).await;
    let applied = rows.first().map_or(0, |r| r.1);
    let sum = counts(stores).await.iter().map(|r| r.1).sum();
    (applied, sum)
}

fn spawn(runner: Arc<ProjectionRunner>) -> (ShutdownTrigger, tokio::task::JoinHandle<()>) {
    let (trigger, shutdown) = ShutdownTrigger::new();
    let task = tokio::spawn(async move {
        runner
            .run(shutdown)
            .await
            .expect("the runner stops cleanly");
    });
    (trigger, task)
}

async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A new version builds beside the current one, which keeps answering queries; every
/// answer during the rebuild is the old version's complete result or the new one's, never
/// a half-built table; after the switch the old tables can be dropped.
pub async fn rebuild_switches_without_downtime(stores: Stores) {
    for s in 0..20 {
        append(&stores, &format!("Acct-{s}"), "Posted", 25).await;
    }
    let v1 = runner(&stores, Counting::new(1), "a", OnFailure::Pause);
    assert_eq!(v1.catch_up().await.unwrap(), 500);
    let old = (500, 500);
    assert_eq!(total(&stores).await, old);

    // Version 2 counts double: its complete result is (500, 1000).
    let v2 = Arc::new(runner(&stores, Counting::new(2), "b", OnFailure::Pause));
    let (stop, task) = spawn(Arc::clone(&v2));
    let mut seen_new = false;
    let deadline = Instant::now() + DEADLINE;
    let mut answers = 0;
    while !seen_new {
        let now = total(&stores).await;
        answers += 1;
        assert!(
            now == old || now == (500, 1000),
            "a half-built answer: {now:?}"
        );
        seen_new = now == (500, 1000);
        assert!(
            Instant::now() < deadline,
            "the rebuild did not switch in time"
        );
    }
    assert!(answers >= 1);
    stop.fire();
    task.await.unwrap();
    let states = stores.projections.states(Some(NAME)).await.unwrap();
    let role = |v: u32| states.iter().find(|s| s.version == v).map(|s| s.role);
    assert_eq!(role(2), Some(VersionRole::Current));
    assert_eq!(role(1), Some(VersionRole::Retired));
    assert!(
        stores.projections.drop_version(NAME, 2).await.is_err(),
        "the current one stays"
    );
    stores.projections.drop_version(NAME, 1).await.unwrap();
    assert!(stores
        .projections
        .states(Some(NAME))
        .await
        .unwrap()
        .iter()
        .all(|s| s.version == 2));
    assert_eq!(total(&stores).await, (500, 1000));
}

/// A poison event is retried, then pauses the projection (faulted, with the event and the
/// error) and nothing after it is applied; an operator's retry applies it once fixed, a
/// skip moves past it. With parking, it becomes a dead letter naming the projection and
/// the projection goes on. Never skipped silently.
pub async fn failing_event_pauses_or_parks_never_skips(stores: Stores) {
    append(&stores, "Acct-1", "Posted", 3).await;
    let poison = append(&stores, "Acct-1", "Garbled", 1).await;
    append(&stores, "Acct-2", "Posted", 2).await;

    let projection = Counting::new(1);
    projection.poison.lock().unwrap().push("Garbled".into());
    let poison_list = Arc::clone(&projection.poison);
    let paused = runner(&stores, projection, "a", OnFailure::Pause);
    paused.catch_up().await.unwrap();
    let state = &stores.projections.states(Some(NAME)).await.unwrap()[0];
    assert_eq!(state.status, ProjectionStatus::Faulted);
    assert_eq!(state.failed_position, Some(poison));
    assert!(state
        .last_error
        .as_deref()
        .unwrap()
        .contains("cannot apply Garbled"));
    assert_eq!(
        total(&stores).await,
        (3, 3),
        "the events before it, nothing after"
    );
    // Fixed: retry applies it and what follows.
    poison_list.lock().unwrap().clear();
    stores
        .projections
        .set_status(NAME, 1, None, ProjectionStatus::Running, None)
        .await
        .unwrap();
    paused.catch_up().await.unwrap();
    assert_eq!(total(&stores).await, (6, 6));

    // Skip: a second poison event, faulted, then skipped by an operator.
    append(&stores, "Acct-3", "Garbled", 1).await;
    append(&stores, "Acct-3", "Posted", 1).await;
    poison_list.lock().unwrap().push("Garbled".into());
    paused.catch_up().await.unwrap();
    assert_eq!(
        stores.projections.states(Some(NAME)).await.unwrap()[0].status,
        ProjectionStatus::Faulted
    );
    assert!(stores.projections.skip_failed(NAME, 1, 0).await.unwrap());
    paused.catch_up().await.unwrap();
    assert_eq!(total(&stores).await, (7, 7), "the skipped event only");
    assert!(
        !stores.projections.skip_failed(NAME, 1, 0).await.unwrap(),
        "not faulted now"
    );

    // Park: a dead letter naming the projection, and the projection goes on.
    let parking = Counting::new(1);
    parking.poison.lock().unwrap().push("Garbled".into());
    let parked = runner(&stores, parking, "a", OnFailure::Park);
    let bad = append(&stores, "Acct-4", "Garbled", 1).await;
    append(&stores, "Acct-4", "Posted", 1).await;
    parked.catch_up().await.unwrap();
    assert_eq!(
        stores.projections.states(Some(NAME)).await.unwrap()[0].status,
        ProjectionStatus::Running
    );
    assert_eq!(total(&stores).await, (8, 8));
    let letters = stores
        .dead_letters
        .list(&DeadLetterFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].group.as_str(), NAME);
    assert_eq!(
        letters[0].message.headers["runnel-position"],
        bad.get().to_string()
    );
}

/// A statement that fails at commit (a handler bug breaking a key) faults the projection
/// on its event; the events before it in the batch commit, with nothing of it.
pub async fn a_failing_statement_faults_on_its_event(stores: Stores) {
    append(&stores, "Acct-1", "Posted", 4).await;
    let bad = append(&stores, "Acct-1", "Doubled", 1).await;
    append(&stores, "Acct-1", "Posted", 2).await;
    runner(&stores, Counting::new(1), "a", OnFailure::Pause)
        .catch_up()
        .await
        .unwrap();
    let state = &stores.projections.states(Some(NAME)).await.unwrap()[0];
    assert_eq!(state.status, ProjectionStatus::Faulted);
    assert_eq!(state.failed_position, Some(bad));
    assert!(
        state
            .last_error
            .as_deref()
            .unwrap()
            .contains("statement failed"),
        "{:?}",
        state.last_error
    );
    assert_eq!(
        total(&stores).await,
        (4, 4),
        "the four before it, nothing of it"
    );
}

/// Two runners race for one projection: one applies it; when its task is killed, the
/// other takes over once the lease lapses (2 s here, well within 10 s) and no event is
/// applied twice (a second application would break `applied`'s primary key and fault).
pub async fn projection_lease_moves_to_another_process_on_kill(stores: Stores) {
    for s in 0..10 {
        append(&stores, &format!("Acct-{s}"), "Posted", 30).await;
    }
    let a = Arc::new(runner(&stores, Counting::new(1), "a", OnFailure::Pause));
    let b = Arc::new(runner(&stores, Counting::new(1), "b", OnFailure::Pause));
    let (_stop_a, task_a) = spawn(Arc::clone(&a));
    until("a holds the lease", || async {
        stores
            .projections
            .states(Some(NAME))
            .await
            .unwrap()
            .first()
            .and_then(|s| s.lease.clone())
            .is_some_and(|l| l.0 == "a")
    })
    .await;
    let (stop_b, task_b) = spawn(Arc::clone(&b));
    until("a applied everything", || async {
        total(&stores).await == (300, 300)
    })
    .await;
    task_a.abort(); // killed: no release, the lease stays until it lapses
    let killed = Instant::now();
    for s in 0..10 {
        append(&stores, &format!("Acct-{s}"), "Posted", 10).await;
    }
    until("b took over", || async {
        total(&stores).await == (400, 400)
    })
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "took {:?}",
        killed.elapsed()
    );
    let state = &stores.projections.states(Some(NAME)).await.unwrap()[0];
    assert_eq!(state.lease.as_ref().map(|l| l.0.as_str()), Some("b"));
    assert_eq!(
        state.status,
        ProjectionStatus::Running,
        "nothing applied twice"
    );
    stop_b.fire();
    task_b.await.unwrap();
}

/// A command's position: the query waits until the projection has applied it, then sees
/// its write; a stopped projection or a timeout ends the wait with a typed error.
pub async fn query_waits_for_its_command_position(stores: Stores) {
    let r = Arc::new(runner(&stores, Counting::new(1), "a", OnFailure::Pause));
    r.register().await.unwrap();
    let (stop, task) = spawn(Arc::clone(&r));
    for i in 0..20 {
        let position = append(&stores, "Acct-7", "Posted", 1).await;
        wait_for_position(&*stores.projections, NAME, position, DEADLINE)
            .await
            .unwrap();
        assert_eq!(
            counts(&stores).await,
            vec![("Acct-7".to_string(), i + 1)],
            "read your write"
        );
    }
    stop.fire();
    task.await.unwrap();
    let position = append(&stores, "Acct-7", "Posted", 1).await;
    let e = wait_for_position(
        &*stores.projections,
        NAME,
        position,
        Duration::from_millis(100),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, WaitError::Timeout { .. }), "{e:?}");
    assert!(e.to_string().contains("within"), "{e}");
    stores
        .projections
        .set_status(NAME, 1, None, ProjectionStatus::Paused, None)
        .await
        .unwrap();
    let e = wait_for_position(&*stores.projections, NAME, position, DEADLINE)
        .await
        .unwrap_err();
    assert!(matches!(e, WaitError::Stopped { .. }), "{e:?}");
    let e = wait_for_position(
        &*stores.projections,
        "nope",
        position,
        Duration::from_millis(100),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, WaitError::Unknown(_)), "{e:?}");
}

/// The current version's handler sends (through the outbox, with its batch); a version
/// being rebuilt is replaying and cannot: `send` refuses with a clear error and nothing
/// is sent.
pub async fn replaying_handler_cannot_send_messages(stores: Stores) {
    append(&stores, "Acct-1", "Posted", 5).await;
    let mut live = Counting::new(1);
    live.send_each = true;
    let live_sends = Arc::clone(&live.sends);
    runner(&stores, live, "a", OnFailure::Pause)
        .catch_up()
        .await
        .unwrap();
    assert_eq!(live_sends.lock().unwrap().len(), 5);
    assert!(live_sends.lock().unwrap().iter().all(Result::is_ok));
    assert_eq!((stores.outbox_rows)().await, 5);

    let mut rebuild = Counting::new(2);
    rebuild.send_each = true;
    let replay_sends = Arc::clone(&rebuild.sends);
    runner(&stores, rebuild, "b", OnFailure::Pause)
        .catch_up()
        .await
        .unwrap();
    let sends = replay_sends.lock().unwrap().clone();
    assert_eq!(sends.len(), 5);
    for s in &sends {
        let e = s.as_ref().unwrap_err();
        assert!(e.contains("replaying") && e.contains("cannot send"), "{e}");
    }
    assert_eq!(
        (stores.outbox_rows)().await,
        5,
        "nothing sent while replaying"
    );
}

/// A partitioned projection: each partition has its own checkpoint and lease; every
/// stream's events are counted in order.
pub async fn partitions_apply_every_stream_in_order(stores: Stores) {
    for s in 0..12 {
        append(&stores, &format!("Acct-{s}"), "Posted", 10).await;
    }
    let mut p = Counting::new(1);
    p.partitions = 4;
    let r = runner(&stores, p, "a", OnFailure::Pause);
    assert_eq!(r.catch_up().await.unwrap(), 120);
    let states = stores.projections.states(Some(NAME)).await.unwrap();
    assert_eq!(states.len(), 4);
    assert!(states.iter().all(|s| s.events_applied > 0), "{states:?}");
    assert_eq!(total(&stores).await, (120, 120));
    assert!(counts(&stores).await.iter().all(|(_, n)| *n == 10));
    let _ = Shutdown::never();
}

/// An inline projection commits with the append: its rows are there when the append
/// returns, with no runner running; an event it cannot apply (the handler refuses it, or
/// a statement fails) refuses the append, which writes nothing; a retried append applies
/// nothing twice; an inline handler cannot send; while paused or rebuilding, the runner
/// catches the generation up and inline application takes over once it is level.
pub async fn inline_projection_commits_with_the_append(stores: Stores) {
    let dialect = stores.projections.dialect();
    // History from before the projection existed: its runner catches up on it.
    append(&stores, "Acct-old", "Posted", 10).await;
    let counting = Counting {
        send_each: true,
        inline: true,
        ..Counting::new(1)
    };
    let poison = Arc::clone(&counting.poison);
    let sends = Arc::clone(&counting.sends);
    let counting = Arc::new(counting);
    (stores.add_inline)(runnel::projection::inline_projection(
        counting.clone(),
        dialect,
    ));
    let make_runner = |projection: Arc<Counting>| {
        ProjectionRunner::new(
            projection,
            Arc::clone(&stores.projections),
            Arc::clone(&stores.events),
            options("catch-up", OnFailure::Pause),
        )
    };
    // Before its runner registered it, appends go through and project nothing.
    append(&stores, "Acct-old", "Posted", 2).await;
    assert_eq!(make_runner(counting.clone()).catch_up().await.unwrap(), 12);
    assert_eq!(total(&stores).await, (12, 12));
    assert!(
        sends.lock().unwrap().iter().all(|s| s.is_err()),
        "an inline projection's runner refuses sends too"
    );
    sends.lock().unwrap().clear();

    // Applied in the append's own commit: visible as soon as it returns.
    let p = append(&stores, "Acct-1", "Posted", 3).await;
    assert_eq!(total(&stores).await, (15, 15));
    let state = &stores.projections.states(Some(NAME)).await.unwrap()[0];
    assert_eq!(state.checkpoint, p, "the checkpoint moved with the append");
    assert_eq!(state.events_applied, 15);
    let sent = sends.lock().unwrap().clone();
    assert_eq!(sent.len(), 3);
    assert!(
        sent.iter()
            .all(|s| s.as_ref().is_err_and(|e| e.contains("inline"))),
        "{sent:?}"
    );
    assert_eq!(
        (stores.outbox_rows)().await,
        0,
        "an inline handler sends nothing"
    );

    // Other categories move the checkpoint too (the next append still applies inline).
    let other = stores
        .events
        .append(
            &StreamName::new("Other-1").unwrap(),
            ExpectedRevision::Any,
            vec![NewEvent::json("Posted", &serde_json::json!({}))],
        )
        .await
        .unwrap()
        .position;
    assert_eq!(
        stores.projections.states(Some(NAME)).await.unwrap()[0].checkpoint,
        other
    );

    // The handler refuses an event: the append is refused and writes nothing.
    poison.lock().unwrap().push("Poison".into());
    let head = stores.events.head_position().await.unwrap();
    let refused = stores
        .events
        .append(
            &StreamName::new("Acct-1").unwrap(),
            ExpectedRevision::Any,
            vec![
                NewEvent::json("Posted", &serde_json::json!({})),
                NewEvent::json("Poison", &serde_json::json!({})),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, runnel::core::StoreError::InlineProjectionFailed(f)
            if f.projection == NAME && f.event_type == "Poison"),
        "{refused:?}"
    );
    // A statement fails ("Doubled" breaks the `applied` key): refused as well.
    let refused = stores
        .events
        .append(
            &StreamName::new("Acct-1").unwrap(),
            ExpectedRevision::Any,
            vec![NewEvent::json("Doubled", &serde_json::json!({}))],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            runnel::core::StoreError::InlineProjectionFailed { .. }
        ),
        "{refused:?}"
    );
    assert_eq!(stores.events.head_position().await.unwrap(), head);
    assert_eq!(total(&stores).await, (15, 15));
    poison.lock().unwrap().clear();

    // A retried append (same event ids) is accepted and applies nothing again.
    let events = vec![
        NewEvent::json("Posted", &serde_json::json!({"a": 1})),
        NewEvent::json("Posted", &serde_json::json!({"a": 2})),
    ];
    let acct2 = StreamName::new("Acct-2").unwrap();
    let first = stores
        .events
        .append(&acct2, ExpectedRevision::Any, events.clone())
        .await
        .unwrap();
    let again = stores
        .events
        .append(&acct2, ExpectedRevision::Any, events)
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(total(&stores).await, (17, 17));

    // Paused: appends go through unprojected; resumed, the runner catches up and inline
    // application takes over again.
    stores
        .projections
        .set_status(NAME, 1, None, ProjectionStatus::Paused, None)
        .await
        .unwrap();
    append(&stores, "Acct-3", "Posted", 4).await;
    assert_eq!(total(&stores).await, (17, 17), "paused: not applied");
    stores
        .projections
        .set_status(NAME, 1, None, ProjectionStatus::Running, None)
        .await
        .unwrap();
    append(&stores, "Acct-3", "Posted", 1).await;
    assert_eq!(total(&stores).await, (17, 17), "behind: left to the runner");
    assert_eq!(make_runner(counting.clone()).catch_up().await.unwrap(), 5);
    append(&stores, "Acct-3", "Posted", 1).await;
    assert_eq!(total(&stores).await, (23, 23), "level again: inline");

    // A rebuild: the new generation is filled by the runner, then applied inline.
    let rebuild = stores.projections.rebuild(NAME).await.unwrap();
    append(&stores, "Acct-4", "Posted", 2).await;
    assert_eq!(
        total(&stores).await,
        (25, 25),
        "the current generation stays inline"
    );
    make_runner(counting.clone()).catch_up().await.unwrap();
    let states = stores.projections.states(Some(NAME)).await.unwrap();
    let current = states
        .iter()
        .find(|s| s.role == VersionRole::Current)
        .unwrap();
    assert_eq!(
        current.version, rebuild.version,
        "the rebuilt generation is current"
    );
    assert_eq!(total(&stores).await, (25, 25));
    append(&stores, "Acct-4", "Posted", 1).await;
    assert_eq!(
        total(&stores).await,
        (26, 26),
        "the rebuilt generation is inline"
    );
}
