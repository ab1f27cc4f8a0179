//! Test support for sagas: a [`SagaTest`] driver with a virtual clock (advance time to
//! fire timers, answer the commands the saga sends, restart the process) and a
//! [`CrashHarness`] that runs a scenario crashing at every commit boundary in turn —
//! before a commit, after it, and between a local step's side effect and the commit that
//! records it — while delivering every reply twice and in reverse order, then checks the
//! user's invariants after recovery.
//!
//! The driver works on any [`ProcessorStore`] and [`OutboxStore`] pair of one database
//! (SQLite or PostgreSQL); the "bus" is the outbox itself: commands are read from it and
//! replies handed to [`SagaRuntime::handle_reply`], so tests need no broker.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnel::saga::{
    reply_to, CrashPoint, ReplyHandled, SagaData, SagaDefinition, SagaError, SagaInstance,
    SagaOptions, SagaRuntime, StartRequest, Started, DIRECTION_HEADER, STEP_HEADER,
};
use runnel_core::outbox::{OutboxMessage, OutboxStore};
use runnel_core::processor::ProcessorStore;
use runnel_core::{Message, VirtualClock};

/// The inbox name the driver marks replies under.
pub const REPLY_HANDLER: &str = "saga-test/replies";
/// The lease the driver's runtimes take (short, so restarts take work over quickly).
pub const TEST_LEASE: Duration = Duration::from_secs(5);
/// Most rounds [`SagaTest::settle`] runs before giving up.
pub const SETTLE_ROUNDS_MAX: usize = 200;

/// How a remote service answers a command in a test: `None` leaves it unanswered (a
/// service that is down); `Some((event type, data, ok))` replies.
pub type Responder =
    Arc<dyn Fn(&Message) -> Option<(String, serde_json::Value, bool)> + Send + Sync>;

/// A saga under test: its runtime on a real store, a virtual clock, and the messages it
/// sent. See the [module documentation](self).
pub struct SagaTest<D> {
    make_definition: Arc<dyn Fn() -> SagaDefinition<D> + Send + Sync>,
    store: Arc<dyn ProcessorStore>,
    outbox: Arc<dyn OutboxStore>,
    clock: Arc<VirtualClock>,
    runtime: SagaRuntime<D>,
    sent: Arc<Mutex<Vec<OutboxMessage>>>,
    restarts: u32,
}

impl<D: SagaData> SagaTest<D> {
    /// A driver for the definition `make_definition` builds (called again at each
    /// restart), on `store` and the `outbox` of the same database.
    pub fn new(
        make_definition: impl Fn() -> SagaDefinition<D> + Send + Sync + 'static,
        store: Arc<dyn ProcessorStore>,
        outbox: Arc<dyn OutboxStore>,
    ) -> Self {
        let make_definition: Arc<dyn Fn() -> SagaDefinition<D> + Send + Sync> =
            Arc::new(make_definition);
        let clock = Arc::new(VirtualClock::new());
        let runtime = runtime(&make_definition, &store, &clock, 0, None);
        SagaTest {
            make_definition,
            store,
            outbox,
            clock,
            runtime,
            sent: Arc::new(Mutex::new(Vec::new())),
            restarts: 0,
        }
    }

    /// The same driver, whose runtime crashes at the first point `crash` says yes to.
    pub fn with_crash(self, crash: impl Fn(CrashPoint) -> bool + Send + Sync + 'static) -> Self {
        let runtime = runtime(
            &self.make_definition,
            &self.store,
            &self.clock,
            self.restarts,
            Some(Arc::new(crash)),
        );
        SagaTest { runtime, ..self }
    }

    /// The runtime.
    pub fn runtime(&self) -> &SagaRuntime<D> {
        &self.runtime
    }

    /// The virtual clock.
    pub fn clock(&self) -> &VirtualClock {
        &self.clock
    }

    /// Simulates a process restart: a new runtime (new lease owner, nothing in memory) on
    /// the same store. Work the old one held is taken over once its leases lapse (advance
    /// the clock past [`TEST_LEASE`]).
    pub fn restart(&mut self) {
        self.restarts += 1;
        self.runtime = runtime(
            &self.make_definition,
            &self.store,
            &self.clock,
            self.restarts,
            None,
        );
    }

    /// Starts an instance.
    pub async fn start(&self, id: &str, data: D) -> Result<Started, SagaError> {
        self.runtime.start_with(StartRequest::new(id, data)).await
    }

    /// Runs what is due now (local steps, timers) until nothing is left.
    pub async fn run_due(&self) -> Result<usize, SagaError> {
        self.runtime.tick().await
    }

    /// Moves the clock by `by`, then runs what became due.
    pub async fn advance(&self, by: Duration) -> Result<usize, SagaError> {
        self.clock.advance(by);
        self.runtime.tick().await
    }

    /// Reads what the saga sent since the last call (commands and lifecycle events), in
    /// order, and keeps it for [`sent`](Self::sent).
    pub async fn take_sent(&self) -> Vec<OutboxMessage> {
        let mut out = Vec::new();
        loop {
            let rows = self
                .outbox
                .claim("saga-test", Duration::from_secs(60), 500)
                .await
                .expect("read the outbox");
            if rows.is_empty() {
                break;
            }
            let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
            self.outbox
                .mark_published(&seqs)
                .await
                .expect("mark the outbox read");
            out.extend(
                rows.into_iter()
                    .map(|r| OutboxMessage::new(r.topic, r.message)),
            );
        }
        self.sent
            .lock()
            .expect("not poisoned")
            .extend(out.iter().cloned());
        out
    }

    /// Everything read from the outbox so far.
    pub fn sent(&self) -> Vec<OutboxMessage> {
        self.sent.lock().expect("not poisoned").clone()
    }

    /// The event types of everything sent so far to `topic`.
    pub fn sent_types(&self, topic: &str) -> Vec<String> {
        self.sent()
            .into_iter()
            .filter(|m| m.topic.as_str() == topic)
            .map(|m| m.message.event_type)
            .collect()
    }

    /// Replies to `command` as its service would.
    pub async fn reply(
        &self,
        command: &Message,
        event_type: &str,
        data: serde_json::Value,
        ok: bool,
    ) -> Result<ReplyHandled, SagaError> {
        let (_, reply) = reply_to(command, event_type, &data, ok).expect("a saga command");
        self.runtime.handle_reply(&reply, REPLY_HANDLER).await
    }

    /// Hands an already built reply to the saga (to deliver one message twice).
    pub async fn deliver(&self, reply: &Message) -> Result<ReplyHandled, SagaError> {
        self.runtime.handle_reply(reply, REPLY_HANDLER).await
    }

    /// The instance.
    pub async fn instance(&self, id: &str) -> SagaInstance<D> {
        self.runtime
            .load(id)
            .await
            .expect("load the instance")
            .unwrap_or_else(|| panic!("no instance {id}"))
    }

    /// Drives instance `id` until it finishes or parks: runs what is due, answers every
    /// new command with `responder` (each reply delivered twice, the round's replies in
    /// reverse order), and when nothing happens moves the clock past the lease so timers
    /// fire and lapsed work is taken over. Stops at a simulated crash (returns its error).
    pub async fn settle(
        &self,
        id: &str,
        responder: &Responder,
    ) -> Result<SagaInstance<D>, SagaError> {
        for _ in 0..SETTLE_ROUNDS_MAX {
            let ran = self.runtime.tick().await?;
            let commands: Vec<Message> = self
                .take_sent()
                .await
                .into_iter()
                .filter(|m| m.message.headers.contains_key(STEP_HEADER))
                .map(|m| m.message)
                .collect();
            let mut replies = Vec::new();
            for command in &commands {
                if let Some((event_type, data, ok)) = responder(command) {
                    let (_, reply) =
                        reply_to(command, &event_type, &data, ok).expect("a saga command");
                    replies.push(reply);
                }
            }
            for reply in replies.iter().rev() {
                self.deliver(reply).await?;
                self.deliver(reply).await?;
            }
            let instance = self.instance(id).await;
            if instance.record.status.is_finished() || instance.record.status.is_parked() {
                // Keep what the last commit sent (the lifecycle event).
                self.take_sent().await;
                return Ok(instance);
            }
            if ran == 0 && replies.is_empty() {
                self.clock.advance(TEST_LEASE + Duration::from_secs(1));
            }
        }
        panic!("instance {id} did not settle within {SETTLE_ROUNDS_MAX} rounds");
    }
}

fn runtime<D: SagaData>(
    make: &Arc<dyn Fn() -> SagaDefinition<D> + Send + Sync>,
    store: &Arc<dyn ProcessorStore>,
    clock: &Arc<VirtualClock>,
    generation: u32,
    crash: Option<Arc<dyn Fn(CrashPoint) -> bool + Send + Sync>>,
) -> SagaRuntime<D> {
    let options = SagaOptions {
        lease: TEST_LEASE,
        owner: Some(format!("saga-test-{generation}")),
        ..SagaOptions::default()
    };
    let clock: Arc<dyn runnel_core::Clock> = clock.clone();
    match crash {
        Some(hook) => {
            SagaRuntime::with_crash_points(make(), Arc::clone(store), clock, options, move |p| {
                hook(p)
            })
        }
        None => SagaRuntime::with_options(make(), Arc::clone(store), clock, options),
    }
}

/// Whether a command runs a step forward (`do`) or compensates it (`undo`), and its step.
pub fn command_step(command: &Message) -> Option<(String, bool)> {
    let step = command.headers.get(STEP_HEADER)?.clone();
    let undo = command.headers.get(DIRECTION_HEADER).map(String::as_str) == Some("undo");
    Some((step, undo))
}

/// Runs a saga scenario once per crash point — before each commit, after each commit,
/// after each local step — restarting after the crash and driving the instance to its
/// end, then checks the invariants. Stops enumerating a kind of point once a run no
/// longer reaches it.
pub struct CrashHarness;

/// What one crash run reports to the invariant check.
#[derive(Debug)]
pub struct CrashRun<D> {
    /// Where it crashed (`None`: the run that crashes nowhere).
    pub point: Option<CrashPoint>,
    /// The instance after recovery.
    pub instance: SagaInstance<D>,
    /// Everything the saga sent, before and after the crash.
    pub sent: Vec<OutboxMessage>,
}

impl CrashHarness {
    /// `fresh` gives a driver on fresh, empty stores (and resets the test's world, e.g. a
    /// ledger of side effects); `start` starts instance `id`; `responder` answers
    /// commands; `check` asserts the invariants of each run. Returns how many runs were
    /// made.
    pub async fn run<D, Fresh, FreshFut, Check>(
        id: &str,
        fresh: Fresh,
        start: D,
        responder: Responder,
        check: Check,
    ) -> usize
    where
        D: SagaData,
        Fresh: Fn() -> FreshFut,
        FreshFut: Future<Output = SagaTest<D>>,
        Check: Fn(&CrashRun<D>),
    {
        // The run without a crash, for the baseline and to count the points.
        let test = fresh().await;
        test.start(id, start.clone()).await.expect("start");
        let instance = test.settle(id, &responder).await.expect("settle");
        let sent = test.sent();
        check(&CrashRun {
            point: None,
            instance,
            sent,
        });
        let mut runs = 1;
        type PointOf = fn(u64) -> CrashPoint;
        let kinds: [PointOf; 3] = [
            CrashPoint::BeforeCommit,
            CrashPoint::AfterCommit,
            CrashPoint::AfterStep,
        ];
        for kind in kinds {
            for n in 1.. {
                let point = kind(n);
                let crashed = Arc::new(Mutex::new(false));
                let flag = Arc::clone(&crashed);
                let mut test = fresh().await.with_crash(move |p| {
                    if p == point {
                        *flag.lock().expect("not poisoned") = true;
                        true
                    } else {
                        false
                    }
                });
                let outcome = match test.start(id, start.clone()).await {
                    Ok(_) => test.settle(id, &responder).await.map(drop),
                    Err(e) => Err(e),
                };
                let did_crash = *crashed.lock().expect("not poisoned");
                if !did_crash {
                    outcome.expect("a run that does not crash succeeds");
                    break; // this kind of point is beyond the scenario from here on
                }
                assert!(
                    matches!(outcome, Err(SagaError::Crashed(_))),
                    "crash at {point:?} surfaced as {outcome:?}"
                );
                test.restart();
                // Work the crashed process held is taken over once its lease lapses.
                test.clock().advance(TEST_LEASE + Duration::from_secs(1));
                if test.runtime().load(id).await.expect("load").is_none() {
                    // Crashed before the start committed: the caller starts again.
                    test.start(id, start.clone()).await.expect("start again");
                }
                let instance = test
                    .settle(id, &responder)
                    .await
                    .expect("settle after the crash");
                let sent = test.sent();
                check(&CrashRun {
                    point: Some(point),
                    instance,
                    sent,
                });
                runs += 1;
            }
        }
        runs
    }
}
