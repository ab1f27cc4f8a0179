//! The saga proofs, written once and run on each backend (`tests/saga.rs`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runnel::app::Shutdown;
use runnel::core::processor::{InstanceFilter, InstanceStatus};
use runnel::core::SystemClock;
use runnel::saga::{
    OperatorAction, ReplyHandled, SagaDefinition, SagaError, SagaOptions, SagaRuntime,
    StartRequest, Started, StepContext,
};
use runnel_testkit::saga::{CrashHarness, CrashRun, SagaTest, TEST_LEASE};

use super::{driver, inventory, Order, Stores, World, INVENTORY_TOPIC};
use runnel::saga::LateReplyPolicy;

const EVENTS_TOPIC: &str = "sagas.order-test.events";

fn keys(id: &str, steps: &[(&str, bool)]) -> Vec<String> {
    steps
        .iter()
        .map(|(s, undo)| format!("{id}/{s}/{}", if *undo { "undo" } else { "do" }))
        .collect()
}

fn count(types: &[String], t: &str) -> usize {
    types.iter().filter(|x| x.as_str() == t).count()
}

fn event_types(run: &CrashRun<Order>, topic: &str) -> Vec<String> {
    run.sent
        .iter()
        .filter(|m| m.topic.as_str() == topic)
        .map(|m| m.message.event_type.clone())
        .collect()
}

/// Crash before and after every commit, and between every local step and its commit, on
/// the happy path and on a path that compensates: after recovery the saga always ends the
/// same way, each step's effect happened once (same key on every run), and each lifecycle
/// event was sent once.
pub async fn resumes_after_kill_at_every_commit_boundary<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Stores>,
{
    for fail_confirm in [false, true] {
        let world: Arc<Mutex<World>> = Arc::new(Mutex::new(World::default()));
        // The stores of the run in progress: replacing them at the next run drops the
        // previous run's database (its schema, its connections).
        let stores_alive: Arc<Mutex<Option<Stores>>> = Arc::new(Mutex::new(None));
        let runs = CrashHarness::run(
            "o-1",
            || {
                let world = Arc::clone(&world);
                let alive = Arc::clone(&stores_alive);
                let stores = fresh();
                async move {
                    let stores = stores.await;
                    let w = World::default();
                    w.faults.lock().unwrap().fail_confirm = fail_confirm;
                    *world.lock().unwrap() = w.clone();
                    let test = driver(&stores, &w, 1, LateReplyPolicy::Ignore);
                    let previous = alive.lock().unwrap().replace(stores);
                    drop(previous);
                    test
                }
            },
            Order::new("o-1"),
            inventory(false),
            |run| {
                let w = world.lock().unwrap().clone();
                let effects = w.effects();
                let events = event_types(run, EVENTS_TOPIC);
                let commands = event_types(run, INVENTORY_TOPIC);
                let at = format!("crash at {:?}", run.point);
                if fail_confirm {
                    assert_eq!(
                        run.instance.record.status,
                        InstanceStatus::Compensated,
                        "{at}"
                    );
                    assert_eq!(
                        effects,
                        keys(
                            "o-1",
                            &[
                                ("charge-payment", false),
                                ("create-shipment", false),
                                ("create-shipment", true),
                                ("charge-payment", true),
                            ]
                        ),
                        "{at}"
                    );
                    assert!(
                        count(&commands, "ReleaseInventory") >= 1,
                        "{at}: {commands:?}"
                    );
                    assert_eq!(count(&events, "SagaCompensated"), 1, "{at}: {events:?}");
                } else {
                    assert_eq!(
                        run.instance.record.status,
                        InstanceStatus::Completed,
                        "{at}"
                    );
                    assert_eq!(
                        effects,
                        keys(
                            "o-1",
                            &[
                                ("charge-payment", false),
                                ("create-shipment", false),
                                ("confirm-order", false),
                            ]
                        ),
                        "{at}"
                    );
                    assert_eq!(count(&commands, "ReleaseInventory"), 0, "{at}");
                    assert_eq!(count(&events, "SagaCompleted"), 1, "{at}: {events:?}");
                    assert!(run.instance.data.shipment.is_some(), "{at}");
                }
                // Each reply settled its step once, whatever the duplicates.
                assert_eq!(run.instance.data.replies_applied, 1, "{at}");
                // A local step ran at most twice under one key (once more after a crash
                // between its side effect and its commit).
                for (key, n) in &w.ledger.lock().unwrap().effects {
                    assert!(*n <= 2, "{at}: {key} ran {n} times");
                }
            },
        )
        .await;
        // Every kind of crash point was reached more than once.
        assert!(runs > 10, "only {runs} runs");
    }
}

/// A definite failure of the last step compensates the completed steps in reverse: the
/// shipment is cancelled, then the payment refunded, then the reservation released.
pub async fn compensation_runs_in_reverse_after_a_step_fails(stores: Stores) {
    let world = World::default();
    world.faults.lock().unwrap().fail_confirm = true;
    let test = driver(&stores, &world, 1, LateReplyPolicy::Ignore);
    test.start("o-2", Order::new("o-2")).await.unwrap();
    let instance = test.settle("o-2", &inventory(false)).await.unwrap();
    assert_eq!(instance.record.status, InstanceStatus::Compensated);
    assert_eq!(
        world.effects(),
        keys(
            "o-2",
            &[
                ("charge-payment", false),
                ("create-shipment", false),
                ("create-shipment", true),
                ("charge-payment", true),
            ]
        )
    );
    let history = test
        .runtime()
        .store()
        .history(test.runtime().kind(), "o-2", 0, 100)
        .await
        .unwrap();
    let compensated: Vec<String> = history
        .iter()
        .filter(|h| h.line.what == "compensated")
        .filter_map(|h| h.line.step.clone())
        .collect();
    assert_eq!(
        compensated,
        vec!["create-shipment", "charge-payment", "reserve-inventory"],
        "reverse order: {history:#?}"
    );
    assert_eq!(
        test.sent_types(INVENTORY_TOPIC),
        vec!["ReserveInventory", "ReleaseInventory"]
    );
    assert!(test
        .sent_types(EVENTS_TOPIC)
        .contains(&"SagaCompensated".to_string()));
    assert!(instance.data.shipment.is_none() && instance.data.payment.is_none());
    assert!(
        instance
            .record
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("confirm-order"),
        "{:?}",
        instance.record.last_error
    );
}

/// A refund that keeps failing is retried with backoff, then the instance is parked as
/// compensation-failed with the error, a `SagaCompensationFailed` event and a history
/// line; nothing is skipped on its own. An operator's retry (once the provider is back)
/// finishes the compensation; a skip passes over the step; actions on a finished
/// instance are refused and change nothing.
pub async fn failed_compensation_is_parked_and_surfaced(stores: Stores) {
    let world = World::default();
    {
        let mut f = world.faults.lock().unwrap();
        f.fail_confirm = true;
        f.refund_failures = 1000;
    }
    let test = driver(&stores, &world, 1, LateReplyPolicy::Ignore);
    for id in ["o-3", "o-4"] {
        test.start(id, Order::new(id)).await.unwrap();
        let parked = test.settle(id, &inventory(false)).await.unwrap();
        assert_eq!(parked.record.status, InstanceStatus::CompensationFailed);
        assert!(
            parked
                .record
                .last_error
                .as_deref()
                .unwrap_or("")
                .contains("payment provider unavailable"),
            "{:?}",
            parked.record.last_error
        );
        assert_eq!(parked.record.state, "compensation of charge-payment failed");
    }
    let events = test.sent_types(EVENTS_TOPIC);
    assert_eq!(count(&events, "SagaCompensationFailed"), 2, "{events:?}");
    let failed = test
        .sent()
        .into_iter()
        .find(|m| m.message.event_type == "SagaCompensationFailed")
        .unwrap();
    let body: serde_json::Value = failed.message.payload_json().unwrap();
    assert_eq!(body["step"], "charge-payment");
    assert_eq!(body["status"], "compensation-failed");
    // Three attempts (the policy), no more.
    let refunds = world
        .ledger
        .lock()
        .unwrap()
        .effects
        .contains_key("o-3/charge-payment/undo");
    assert!(!refunds, "a failed refund left no effect");
    let parked = test
        .runtime()
        .store()
        .list(&InstanceFilter {
            status: Some(InstanceStatus::CompensationFailed),
            limit: 10,
            ..InstanceFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(parked.len(), 2);

    // The provider is back: retry o-3.
    world.faults.lock().unwrap().refund_failures = 0;
    test.runtime()
        .operator("o-3", OperatorAction::Retry)
        .await
        .unwrap();
    let done = test.settle("o-3", &inventory(false)).await.unwrap();
    assert_eq!(done.record.status, InstanceStatus::Compensated);
    assert!(world
        .effects()
        .contains(&"o-3/charge-payment/undo".to_string()));
    // o-4's refund was made by hand: skip it; the reservation is still released.
    test.runtime()
        .operator("o-4", OperatorAction::Skip)
        .await
        .unwrap();
    let done = test.settle("o-4", &inventory(false)).await.unwrap();
    assert_eq!(done.record.status, InstanceStatus::Compensated);
    assert!(!world
        .effects()
        .contains(&"o-4/charge-payment/undo".to_string()));
    assert_eq!(
        count(&test.sent_types(INVENTORY_TOPIC), "ReleaseInventory"),
        2
    );

    // Wrong state: a clear error, nothing changed.
    let before = test.instance("o-4").await.record.version;
    let e = test
        .runtime()
        .operator("o-4", OperatorAction::Retry)
        .await
        .unwrap_err();
    assert!(matches!(e, SagaError::NotApplicable { .. }), "{e:?}");
    assert!(e.to_string().contains("compensated"), "{e}");
    assert_eq!(test.instance("o-4").await.record.version, before);
    let e = test
        .runtime()
        .operator("nope", OperatorAction::Retry)
        .await
        .unwrap_err();
    assert!(matches!(e, SagaError::UnknownInstance { .. }), "{e:?}");
}

/// The same reply delivered twice, and a second reply for the same step, settle the step
/// once.
pub async fn duplicate_reply_has_one_effect(stores: Stores) {
    let world = World::default();
    let test = driver(&stores, &world, 1, LateReplyPolicy::Ignore);
    test.start("o-5", Order::new("o-5")).await.unwrap();
    test.run_due().await.unwrap();
    let sent = test.take_sent().await;
    assert_eq!(sent.len(), 1);
    let command = &sent[0].message;
    assert_eq!(command.event_type, "ReserveInventory");
    assert_eq!(
        command.headers["runnel-idempotency-key"],
        "o-5/reserve-inventory/do"
    );
    let (_, reply) =
        runnel::saga::reply_to(command, "InventoryReserved", &serde_json::json!({}), true).unwrap();
    assert_eq!(test.deliver(&reply).await.unwrap(), ReplyHandled::Applied);
    let version = test.instance("o-5").await.record.version;
    assert!(matches!(
        test.deliver(&reply).await.unwrap(),
        ReplyHandled::Ignored(_)
    ));
    // A different message saying the same: the step is not awaited any more.
    assert!(matches!(
        test.reply(command, "InventoryReserved", serde_json::json!({}), true)
            .await
            .unwrap(),
        ReplyHandled::Ignored(_)
    ));
    assert_eq!(
        test.instance("o-5").await.record.version,
        version,
        "no effect"
    );
    let done = test.settle("o-5", &inventory(false)).await.unwrap();
    assert_eq!(done.record.status, InstanceStatus::Completed);
    assert_eq!(done.data.replies_applied, 1);

    // A reply naming an instance whose start has not committed (or never will): an error
    // the consumer retries (and in the end dead-letters), never a silent drop.
    let mut ghost = reply.clone();
    ghost.id = "ghost-reply".into();
    ghost
        .headers
        .insert("runnel-saga-instance".into(), "o-ghost".into());
    let e = test.deliver(&ghost).await.unwrap_err();
    assert!(matches!(e, SagaError::UnknownInstance { .. }), "{e:?}");
    assert!(e.is_transient(), "retried by the consumer");
    // Not a reply to this saga at all: a permanent error (dead-lettered at once).
    let mut foreign = reply.clone();
    foreign
        .headers
        .insert("runnel-saga".into(), "saga:other".into());
    let e = test.deliver(&foreign).await.unwrap_err();
    assert!(
        matches!(e, SagaError::NotAReply { .. }) && !e.is_transient(),
        "{e:?}"
    );
}

/// A reply that comes after its deadline fired is never applied to a later step: the
/// step was retried and settled by the retry's reply; the first attempt's reply then has
/// no effect. When the saga gave up on the step, the late success is compensated (per
/// policy) or ignored.
pub async fn late_reply_after_timeout_is_not_applied(stores: Stores) {
    let world = World::default();
    let test = driver(&stores, &world, 1, LateReplyPolicy::Ignore);
    test.start("o-6", Order::new("o-6")).await.unwrap();
    test.run_due().await.unwrap();
    let first = test.take_sent().await.remove(0).message;
    // No reply within 30 s: the deadline fires, the backoff runs, the command goes again.
    test.advance(Duration::from_secs(31)).await.unwrap();
    test.advance(Duration::from_secs(5)).await.unwrap();
    let again = test.take_sent().await;
    assert_eq!(again.len(), 1, "{again:?}");
    let second = &again[0].message;
    assert_eq!(second.event_type, "ReserveInventory");
    assert_eq!(
        second.headers["runnel-idempotency-key"], first.headers["runnel-idempotency-key"],
        "the same key on every attempt"
    );
    assert_ne!(
        second.headers["runnel-saga-token"],
        first.headers["runnel-saga-token"]
    );
    test.reply(second, "InventoryReserved", serde_json::json!({}), true)
        .await
        .unwrap();
    test.run_due().await.unwrap();
    let on = test.instance("o-6").await;
    assert_eq!(on.record.status, InstanceStatus::Completed);
    let version = on.record.version;
    let late = test
        .reply(&first, "InventoryReserved", serde_json::json!({}), true)
        .await
        .unwrap();
    assert!(matches!(late, ReplyHandled::Ignored(_)), "{late:?}");
    let after = test.instance("o-6").await;
    assert_eq!(after.record.version, version);
    assert_eq!(after.data.replies_applied, 1);

    // The saga gives up on the step (no reply to any attempt), an operator compensates;
    // the late success is then compensated by policy.
    for (policy, id) in [
        (LateReplyPolicy::Compensate, "o-7"),
        (LateReplyPolicy::Ignore, "o-8"),
    ] {
        let test = driver(&stores, &world, 1, policy);
        test.start(id, Order::new(id)).await.unwrap();
        test.run_due().await.unwrap();
        let first = test
            .take_sent()
            .await
            .into_iter()
            .find(|m| m.message.event_type == "ReserveInventory")
            .expect("the command")
            .message;
        for _ in 0..6 {
            test.advance(Duration::from_secs(31)).await.unwrap();
        }
        let parked = test.instance(id).await;
        assert_eq!(
            parked.record.status,
            InstanceStatus::NeedsAttention,
            "{}",
            parked.record.state
        );
        assert!(parked
            .record
            .last_error
            .as_deref()
            .unwrap()
            .contains("still unknown"));
        test.runtime()
            .operator(id, OperatorAction::Compensate)
            .await
            .unwrap();
        test.run_due().await.unwrap();
        assert_eq!(
            test.instance(id).await.record.status,
            InstanceStatus::Compensated
        );
        test.take_sent().await;
        let late = test
            .reply(&first, "InventoryReserved", serde_json::json!({}), true)
            .await
            .unwrap();
        let sent = test.take_sent().await;
        match policy {
            LateReplyPolicy::Compensate => {
                assert_eq!(late, ReplyHandled::CompensatedLate);
                assert_eq!(sent.len(), 1);
                assert_eq!(sent[0].message.event_type, "ReleaseInventory");
            }
            LateReplyPolicy::Ignore => {
                assert!(matches!(late, ReplyHandled::Ignored(_)));
                assert!(sent.is_empty(), "{sent:?}");
            }
        }
        assert_eq!(
            test.instance(id).await.record.status,
            InstanceStatus::Compensated
        );
    }
}

/// Timers live in the store: a deadline scheduled by one process fires in the next one
/// after a restart.
pub async fn timers_fire_after_restart(stores: Stores) {
    let world = World::default();
    let mut test = driver(&stores, &world, 1, LateReplyPolicy::Ignore);
    test.start("o-9", Order::new("o-9")).await.unwrap();
    test.run_due().await.unwrap();
    assert_eq!(test.take_sent().await.len(), 1);
    let timers = test
        .runtime()
        .store()
        .timers(test.runtime().kind(), "o-9")
        .await
        .unwrap();
    assert_eq!(
        timers.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        vec!["deadline"]
    );
    test.restart();
    assert_eq!(
        test.advance(Duration::from_secs(10)).await.unwrap(),
        0,
        "not due yet"
    );
    test.advance(Duration::from_secs(21)).await.unwrap(); // the deadline fires
    test.advance(Duration::from_secs(5)).await.unwrap(); // the backoff ends
    let resent = test.take_sent().await;
    assert_eq!(resent.len(), 1, "{resent:?}");
    assert_eq!(resent[0].message.event_type, "ReserveInventory");
    let history = test
        .runtime()
        .store()
        .history(test.runtime().kind(), "o-9", 0, 100)
        .await
        .unwrap();
    assert!(
        history.iter().any(|h| h.line.what == "deadline-fired"),
        "{history:#?}"
    );
}

/// Sixteen start messages race for one order: one instance; the others learn its id. A
/// redelivered start message creates nothing either.
pub async fn racing_start_events_create_one_instance(stores: Stores) {
    let world = World::default();
    let test = Arc::new(driver(&stores, &world, 1, LateReplyPolicy::Ignore));
    let mut racers = Vec::new();
    for i in 0..16 {
        let test = Arc::clone(&test);
        racers.push(tokio::spawn(async move {
            test.runtime()
                .start_with(
                    StartRequest::new(format!("start-{i}"), Order::new("o-10"))
                        .correlation("order-o-10"),
                )
                .await
        }));
    }
    let mut created = Vec::new();
    let mut existing = Vec::new();
    for r in racers {
        match r.await.unwrap().unwrap() {
            Started::New { id } => created.push(id),
            Started::Existing { id } => existing.push(id),
        }
    }
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(existing.len(), 15);
    assert!(existing.iter().all(|id| id == &created[0]), "{existing:?}");
    let all = test
        .runtime()
        .store()
        .list(&InstanceFilter {
            kind: Some(test.runtime().kind().to_string()),
            limit: 100,
            ..InstanceFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 1);

    let start = runnel::core::Message::json("OrderPlaced", &serde_json::json!({"order": "o-11"}));
    for attempt in 0..2 {
        let outcome = test
            .runtime()
            .start_with(
                StartRequest::new(format!("from-message-{attempt}"), Order::new("o-11"))
                    .from_message("orders/saga", &start),
            )
            .await
            .unwrap();
        match attempt {
            0 => assert!(matches!(outcome, Started::New { .. })),
            _ => assert!(matches!(outcome, Started::Existing { .. }), "{outcome:?}"),
        }
    }
}

/// Process A commits that the payment step runs and dies holding its lease; process B
/// does not touch it while the lease holds, then takes it over and finishes the saga.
pub async fn instances_of_a_killed_process_are_taken_over(stores: Stores) {
    let world = World::default();
    // A dies right after the commit that settles the reservation and leases the payment
    // step to itself (its third commit: start, reply, ...).
    let test = driver(&stores, &world, 1, LateReplyPolicy::Ignore);
    let a = test.with_crash(|p| p == runnel::saga::CrashPoint::AfterCommit(2));
    a.start("o-12", Order::new("o-12")).await.unwrap();
    a.run_due().await.unwrap();
    let command = a.take_sent().await.remove(0).message;
    let crashed = a
        .reply(&command, "InventoryReserved", serde_json::json!({}), true)
        .await;
    assert!(matches!(crashed, Err(SagaError::Crashed(_))), "{crashed:?}");
    let mut b = a;
    b.restart();
    assert_eq!(b.run_due().await.unwrap(), 0, "A's lease still holds");
    assert!(world.effects().is_empty());
    b.advance(TEST_LEASE + Duration::from_secs(1))
        .await
        .unwrap();
    let done = b.instance("o-12").await;
    assert_eq!(
        done.record.status,
        InstanceStatus::Completed,
        "{}",
        done.record.state
    );
    assert_eq!(world.effects().len(), 3);
}

/// The same on the wall clock with two live runtimes: A hangs in a step and is killed
/// (its task aborted); B takes the instance over within 10 s and finishes it.
pub async fn a_killed_runtime_is_taken_over_within_ten_seconds(stores: Stores) {
    let world = World::default();
    let hang = Arc::new(AtomicBool::new(true));
    let make = {
        let world = world.clone();
        let hang = Arc::clone(&hang);
        move || -> SagaDefinition<Order> {
            let world = world.clone();
            let hang = Arc::clone(&hang);
            SagaDefinition::builder("takeover", 1)
                .local("charge-payment", move |ctx: StepContext<Order>| {
                    let world = world.clone();
                    let hang = Arc::clone(&hang);
                    async move {
                        if hang.swap(false, Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                        world.ledger.lock().unwrap().order.push(ctx.key.clone());
                        Ok(ctx.data)
                    }
                })
                .build()
                .unwrap()
        }
    };
    let options = |owner: &str| SagaOptions {
        lease: Duration::from_secs(2),
        poll_interval: Duration::from_millis(100),
        owner: Some(owner.into()),
        ..SagaOptions::default()
    };
    let a = SagaRuntime::with_options(
        make(),
        Arc::clone(&stores.processors),
        Arc::new(SystemClock),
        options("a"),
    );
    let b = SagaRuntime::with_options(
        make(),
        Arc::clone(&stores.processors),
        Arc::new(SystemClock),
        options("b"),
    );
    let a_task = tokio::spawn({
        let a = a.clone();
        async move { a.run(Shutdown::never()).await }
    });
    a.start("t-1", Order::new("t-1")).await.unwrap();
    // A is now inside the hanging step.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hang.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "A never ran the step");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a_task.abort();
    let killed = Instant::now();
    let b_task = tokio::spawn({
        let b = b.clone();
        async move { b.run(Shutdown::never()).await }
    });
    loop {
        let instance = b.load("t-1").await.unwrap().unwrap();
        if instance.record.status == InstanceStatus::Completed {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "not taken over within 10 s: {}",
            instance.record.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b_task.abort();
    assert_eq!(world.effects(), vec!["t-1/charge-payment/do".to_string()]);
}

/// An instance started under version 1 is refused by a process that has only version 2,
/// with an error naming both; that process claims none of its timers. With an upcaster
/// from version 1, version 2 runs it (and its data is upcast).
pub async fn unknown_definition_version_is_refused(stores: Stores) {
    let world = World::default();
    let v1 = driver(&stores, &world, 1, LateReplyPolicy::Ignore);
    v1.start("o-13", Order::new("o-13")).await.unwrap();
    v1.run_due().await.unwrap();
    let command = v1.take_sent().await.remove(0).message;
    let before = v1.instance("o-13").await.record.version;

    let v2 = driver(&stores, &world, 2, LateReplyPolicy::Ignore);
    let e = v2.runtime().load("o-13").await.unwrap_err();
    assert!(
        matches!(
            e,
            SagaError::UnknownVersion {
                instance_version: 1,
                ours: 2,
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("version 1") && text.contains("version 2"),
        "{text}"
    );
    let e = v2
        .reply(&command, "InventoryReserved", serde_json::json!({}), true)
        .await
        .unwrap_err();
    assert!(matches!(e, SagaError::UnknownVersion { .. }), "{e:?}");
    v2.clock().advance(Duration::from_secs(3600));
    assert_eq!(v2.run_due().await.unwrap(), 0, "claims none of its timers");
    assert_eq!(
        v1.runtime()
            .load("o-13")
            .await
            .unwrap()
            .unwrap()
            .record
            .version,
        before
    );

    // Version 2 with an upcaster from 1 takes it.
    let w = world.clone();
    let upcasting = SagaTest::new(
        move || {
            super::order_saga_with(&w, 2, LateReplyPolicy::Ignore, |b| {
                b.upcast_from(1, |mut v| {
                    v["amount"] = serde_json::json!(v["amount"].as_u64().unwrap_or(0) * 100);
                    Ok(v)
                })
            })
        },
        Arc::clone(&stores.processors),
        Arc::clone(&stores.outbox),
    );
    let loaded = upcasting.runtime().load("o-13").await.unwrap().unwrap();
    assert_eq!(loaded.data.amount, 3000, "upcast: amounts in cents");
    upcasting
        .reply(&command, "InventoryReserved", serde_json::json!({}), true)
        .await
        .unwrap();
    let done = upcasting.settle("o-13", &inventory(false)).await.unwrap();
    assert_eq!(done.record.status, InstanceStatus::Completed);
    assert_eq!(done.record.definition_version, 2);
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Shipping {
    paid: bool,
    reminders: u32,
}

fn shipping_process() -> runnel::saga::process::ProcessDefinition<Shipping> {
    use runnel::saga::process::ProcessDefinition;
    let order_of =
        |m: &runnel::core::Message| m.payload_json().ok()?["order"].as_str().map(String::from);
    ProcessDefinition::<Shipping>::builder("shipping", 1)
        .start_on("OrderPlaced", order_of, "awaiting-payment", |step, _| {
            step.schedule(
                "reminder",
                Duration::from_secs(3600),
                serde_json::json!({"n": 1}),
            );
            Ok(())
        })
        .on_timer("awaiting-payment", "reminder", |step, payload| {
            step.data.reminders += 1;
            let n = payload["n"].as_u64().unwrap_or(0);
            step.send(
                runnel::core::TopicName::new("notifications").unwrap(),
                runnel::core::Message::json("PaymentReminder", &serde_json::json!({"n": n})),
            );
            step.schedule(
                "reminder",
                Duration::from_secs(3600),
                serde_json::json!({"n": n + 1}),
            );
            Ok(())
        })
        .on(
            "awaiting-payment",
            "PaymentReceived",
            order_of,
            |step, _| {
                step.data.paid = true;
                step.cancel("reminder");
                step.send(
                    runnel::core::TopicName::new("shipping.commands").unwrap(),
                    runnel::core::Message::json(
                        "ShipOrder",
                        &serde_json::json!({"order": step.instance()}),
                    ),
                );
                step.goto("shipping");
                Ok(())
            },
        )
        .on("shipping", "OrderShipped", order_of, |step, _| {
            step.goto("done");
            Ok(())
        })
        .final_state("done")
        .build()
        .unwrap()
}

/// A process manager: racing start events make one instance; a redelivered event has one
/// effect; durable timers fire (after a restart) until cancelled; a final state completes
/// the instance; later events for it are ignored.
pub async fn process_manager_correlates_times_and_finishes(stores: Stores) {
    use runnel::saga::process::{ProcessHandled, ProcessRuntime};
    let clock = Arc::new(runnel::core::VirtualClock::new());
    let pm = ProcessRuntime::with_clock(
        shipping_process(),
        Arc::clone(&stores.processors),
        clock.clone(),
    );
    let placed = runnel::core::Message::json("OrderPlaced", &serde_json::json!({"order": "o-20"}));
    let mut racers = Vec::new();
    for i in 0..8 {
        let pm = pm.clone();
        let mut event = placed.clone();
        event.id = format!("placed-{i}");
        racers.push(tokio::spawn(async move {
            pm.handle(&event, "orders/shipping").await
        }));
    }
    let mut started = 0;
    for r in racers {
        if let ProcessHandled::Started { .. } = r.await.unwrap().unwrap() {
            started += 1;
        }
    }
    assert_eq!(started, 1, "one instance for eight start events");
    // A restarted process fires the timer.
    let pm = ProcessRuntime::with_clock(
        shipping_process(),
        Arc::clone(&stores.processors),
        clock.clone(),
    );
    assert_eq!(pm.tick().await.unwrap(), 0);
    clock.advance(Duration::from_secs(3601));
    assert_eq!(pm.tick().await.unwrap(), 1);
    clock.advance(Duration::from_secs(3601));
    assert_eq!(pm.tick().await.unwrap(), 1);
    assert_eq!(pm.data("o-20").await.unwrap().unwrap().reminders, 2);

    let paid =
        runnel::core::Message::json("PaymentReceived", &serde_json::json!({"order": "o-20"}));
    assert!(
        matches!(pm.handle(&paid, "payments/shipping").await.unwrap(), ProcessHandled::Applied { ref state, .. } if state == "shipping")
    );
    assert!(matches!(
        pm.handle(&paid, "payments/shipping").await.unwrap(),
        ProcessHandled::Ignored(_)
    ));
    clock.advance(Duration::from_secs(7200));
    assert_eq!(pm.tick().await.unwrap(), 0, "the reminder was cancelled");
    let shipped =
        runnel::core::Message::json("OrderShipped", &serde_json::json!({"order": "o-20"}));
    pm.handle(&shipped, "shipping/shipping").await.unwrap();
    let done = pm.load("o-20").await.unwrap().unwrap();
    assert_eq!(done.status, InstanceStatus::Completed);
    assert_eq!(done.state, "done");
    assert!(matches!(
        pm.handle(&paid, "late/shipping").await.unwrap(),
        ProcessHandled::Ignored(_)
    ));
    let sent: Vec<String> = {
        let mut types = Vec::new();
        loop {
            let rows = stores
                .outbox
                .claim("t", Duration::from_secs(60), 100)
                .await
                .unwrap();
            if rows.is_empty() {
                break;
            }
            stores
                .outbox
                .mark_published(&rows.iter().map(|r| r.seq).collect::<Vec<_>>())
                .await
                .unwrap();
            types.extend(rows.into_iter().map(|r| r.message.event_type));
        }
        types
    };
    assert_eq!(
        sent,
        vec!["PaymentReminder", "PaymentReminder", "ShipOrder"]
    );
}

/// Finished instances are purged with their history once past the retention; running and
/// parked ones are kept.
pub async fn finished_instances_are_purged_after_the_retention(stores: Stores) {
    let world = World::default();
    let test = driver(&stores, &world, 1, LateReplyPolicy::Ignore);
    test.start("p-1", Order::new("p-1")).await.unwrap();
    let done = test.settle("p-1", &inventory(false)).await.unwrap();
    assert_eq!(done.record.status, InstanceStatus::Completed);
    test.start("p-2", Order::new("p-2")).await.unwrap(); // stays running (no reply)
    test.run_due().await.unwrap();
    // The driver's runtime keeps finished instances 7 days (the default).
    assert_eq!(test.runtime().purge_finished().await.unwrap(), 0);
    test.clock().advance(Duration::from_secs(8 * 24 * 3600));
    assert_eq!(test.runtime().purge_finished().await.unwrap(), 1);
    assert!(test.runtime().load("p-1").await.unwrap().is_none());
    assert!(test
        .runtime()
        .store()
        .history(test.runtime().kind(), "p-1", 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(
        test.runtime().load("p-2").await.unwrap().is_some(),
        "a running one stays"
    );
}
