//! The fault kit on sagas and projections, on a real SQLite store: the runs inject the
//! faults they promise, repeat from the seed, and a correct saga or projection keeps its
//! invariants under them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnel::connect::{open_stores, OpenMode, StoreBackend, StoreUrl, Stores};
use runnel::consumer::HandlerError;
use runnel::core::processor::InstanceStatus;
use runnel::core::projection::Dialect;
use runnel::core::{
    ExpectedRevision, Message, NewEvent, RecordedEvent, StoreError, StreamName, TopicName,
};
use runnel::projection::{Projection, ProjectionError, TopicProjection, Writes};
use runnel::saga::{reply_to, RemoteCall, SagaDefinition, StepContext, IDEMPOTENCY_KEY_HEADER};
use runnel_testkit::faultkit::saga::SagaRun;
use runnel_testkit::faultkit::{FaultKit, FaultPlan};

const ACCOUNTS: usize = 5;
const DEPOSITS: usize = 60;
const ORDERS: usize = 12;
const SEEDS: u64 = 6;

async fn stores(dir: &tempfile::TempDir) -> Stores {
    open_stores(
        &StoreUrl::sqlite(dir.path().join("kit.db")),
        OpenMode::default(),
    )
    .await
    .unwrap()
}

/// `(account, cents, deposits)` rows of `table` (a projection's view).
async fn balances(stores: &Stores, table: &str) -> Vec<(String, i64, i64)> {
    let StoreBackend::Sqlite(store) = stores.backend() else {
        panic!("a SQLite store")
    };
    let sql = format!("SELECT account, cents, deposits FROM {table} ORDER BY account");
    store
        .read_with(move |conn| {
            let mut stmt = conn
                .prepare(&sql)
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Backend(e.to_string()))
        })
        .await
        .unwrap()
}

/// What the deposits add up to, worked out without any projection.
fn expected(deposits: &[(String, i64)]) -> Vec<(String, i64, i64)> {
    let mut sums: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (account, cents) in deposits {
        let e = sums.entry(account.clone()).or_default();
        e.0 += cents;
        e.1 += 1;
    }
    sums.into_iter().map(|(a, (c, n))| (a, c, n)).collect()
}

fn deposits() -> Vec<(String, i64)> {
    (0..DEPOSITS)
        .map(|i| (format!("acct-{}", i % ACCOUNTS), 100 + i as i64))
        .collect()
}

const UPSERT: &str = "INSERT INTO {balances} (account, cents, deposits) VALUES ($1, $2, 1) \
     ON CONFLICT (account) DO UPDATE SET cents = cents + excluded.cents, deposits = deposits + 1";
const SCHEMA: &str =
    "CREATE TABLE {balances} (account TEXT PRIMARY KEY, cents INTEGER NOT NULL, deposits INTEGER NOT NULL)";

/// Adds every deposit event to its account: not idempotent by itself, exactly-once only
/// because the runner commits the writes with the checkpoint.
struct Balances;

impl Projection for Balances {
    fn name(&self) -> &str {
        "balances"
    }
    fn tables(&self) -> Vec<String> {
        vec!["balances".into()]
    }
    fn schema(&self, _: Dialect) -> Vec<String> {
        vec![SCHEMA.into()]
    }
    fn apply(&self, event: &RecordedEvent, out: &mut Writes) -> Result<(), ProjectionError> {
        let body: serde_json::Value = serde_json::from_slice(&event.data)?;
        out.execute(
            UPSERT,
            vec![
                event.stream.to_string().into(),
                body["cents"].as_i64().unwrap_or(0).into(),
            ],
        );
        Ok(())
    }
}

/// The same from a topic: exactly-once only through the projection's inbox.
struct TopicBalances;

impl TopicProjection for TopicBalances {
    fn name(&self) -> &str {
        "topic_balances"
    }
    fn tables(&self) -> Vec<String> {
        vec!["balances".into()]
    }
    fn schema(&self, _: Dialect) -> Vec<String> {
        vec![SCHEMA.into()]
    }
    fn topic(&self) -> TopicName {
        TopicName::new("accounts.deposits").unwrap()
    }
    fn apply(&self, message: &Message, out: &mut Writes) -> Result<(), ProjectionError> {
        let body: serde_json::Value = serde_json::from_slice(&message.payload)?;
        out.execute(
            UPSERT,
            vec![
                body["account"].as_str().unwrap_or_default().into(),
                body["cents"].as_i64().unwrap_or(0).into(),
            ],
        );
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_of_all_survives_crashes_around_its_commits() {
    let deposits = deposits();
    let mut crashed = 0;
    for seed in 0..SEEDS {
        let dir = tempfile::tempdir().unwrap();
        let stores = stores(&dir).await;
        for (account, cents) in &deposits {
            stores
                .events
                .append(
                    &StreamName::new(account.as_str()).unwrap(),
                    ExpectedRevision::Any,
                    vec![NewEvent::json(
                        "Deposited",
                        &serde_json::json!({ "cents": cents }),
                    )],
                )
                .await
                .unwrap();
        }
        let plan = FaultPlan {
            crash_before_commit: 0.25,
            crash_after_effect: 0.25,
            ..FaultPlan::default()
        };
        let plan = FaultPlan { seed, ..plan };
        let report = FaultKit::new(plan)
            .run_projection(
                Arc::new(Balances),
                Arc::clone(&stores.projections),
                Arc::clone(&stores.events),
            )
            .await
            .unwrap();
        crashed += report.crashes_before_commit + report.crashes_after_commit;
        assert_eq!(
            report.runners,
            1 + report.crashes_before_commit + report.crashes_after_commit,
            "{report}"
        );
        // Each event committed once, whatever crashed around the commits.
        assert_eq!(report.events_committed, DEPOSITS as u64, "{report}");
        assert_eq!(
            balances(&stores, "balances").await,
            expected(&deposits),
            "{report}"
        );
    }
    assert!(
        crashed > SEEDS as u32,
        "the runs crashed the runner ({crashed} crashes)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_crash_run_repeats_from_its_seed() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let stores = stores(&dir).await;
        for (account, cents) in deposits() {
            stores
                .events
                .append(
                    &StreamName::new(account).unwrap(),
                    ExpectedRevision::Any,
                    vec![NewEvent::json(
                        "Deposited",
                        &serde_json::json!({ "cents": cents }),
                    )],
                )
                .await
                .unwrap();
        }
        let report = FaultKit::new(FaultPlan::chaotic(42))
            .run_projection(
                Arc::new(Balances),
                Arc::clone(&stores.projections),
                Arc::clone(&stores.events),
            )
            .await
            .unwrap();
        runs.push((
            report.crashes_before_commit,
            report.crashes_after_commit,
            report.batches_committed,
        ));
    }
    assert_eq!(runs[0], runs[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_projection_applies_each_message_once_under_delivery_faults() {
    let deposits = deposits();
    let messages: Vec<Message> = deposits
        .iter()
        .enumerate()
        .map(|(i, (account, cents))| {
            Message::json(
                "Deposited",
                &serde_json::json!({ "account": account, "cents": cents }),
            )
            .with_id(format!("deposit-{i}"))
            .with_key(account.clone())
        })
        .collect();
    for seed in 0..SEEDS {
        let dir = tempfile::tempdir().unwrap();
        let stores = stores(&dir).await;
        let report = FaultKit::new(FaultPlan::chaotic(seed))
            .run_topic_projection(
                Arc::new(TopicBalances),
                Arc::clone(&stores.projections),
                messages.clone(),
            )
            .await
            .unwrap();
        assert!(report.failed.is_empty(), "{report}");
        assert!(report.deliveries > DEPOSITS, "{report}");
        // Every extra delivery was recognised by the inbox, and nothing counted twice.
        assert_eq!(
            report.detected_duplicates,
            report.deliveries - DEPOSITS,
            "{report}"
        );
        assert_eq!(
            balances(&stores, "balances").await,
            expected(&deposits),
            "{report}"
        );
    }
}

// ---- a saga: reserve → charge → ship, compensating in reverse ----

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Checkout {
    order: usize,
}

fn command(event_type: &str, ctx: &StepContext<Checkout>) -> Message {
    Message::json(event_type, &serde_json::json!({ "order": ctx.data.order }))
        .with_key(format!("order-{}", ctx.data.order))
}

fn checkout() -> SagaDefinition<Checkout> {
    let topic = |t: &str| TopicName::new(t).unwrap();
    let deadline = Duration::from_secs(10);
    SagaDefinition::builder("checkout", 1)
        .remote(
            "reserve",
            RemoteCall::new(topic("stock.commands"), |c: &StepContext<Checkout>| {
                command("Reserve", c)
            }),
            deadline,
        )
        .compensate_remote(RemoteCall::new(
            topic("stock.commands"),
            |c: &StepContext<Checkout>| command("Release", c),
        ))
        .remote(
            "charge",
            RemoteCall::new(topic("pay.commands"), |c: &StepContext<Checkout>| {
                command("Charge", c)
            }),
            deadline,
        )
        .compensate_remote(RemoteCall::new(
            topic("pay.commands"),
            |c: &StepContext<Checkout>| command("Refund", c),
        ))
        .remote(
            "ship",
            RemoteCall::new(topic("ship.commands"), |c: &StepContext<Checkout>| {
                command("Ship", c)
            }),
            deadline,
        )
        .build()
        .unwrap()
}

/// The services: effects (a reservation, a charge, a refund) once per idempotency key, the
/// same answer each time; every third order cannot be shipped.
#[derive(Clone, Default)]
struct World {
    answers: Arc<Mutex<HashMap<String, (String, bool)>>>,
    effects: Arc<Mutex<Vec<(usize, String)>>>,
}

impl World {
    fn answer(&self, command: &Message) -> Vec<Message> {
        let key = command.headers[IDEMPOTENCY_KEY_HEADER].clone();
        let order = command.payload_json().unwrap()["order"].as_u64().unwrap() as usize;
        let (event_type, ok) = self
            .answers
            .lock()
            .unwrap()
            .entry(key)
            .or_insert_with(|| {
                let answer = match command.event_type.as_str() {
                    "Ship" if order % 3 == 0 => ("ShipmentRejected", false),
                    "Reserve" => ("Reserved", true),
                    "Release" => ("Released", true),
                    "Charge" => ("Charged", true),
                    "Refund" => ("Refunded", true),
                    _ => ("Shipped", true),
                };
                self.effects
                    .lock()
                    .unwrap()
                    .push((order, command.event_type.clone()));
                (answer.0.to_string(), answer.1)
            })
            .clone();
        let (_, reply) = reply_to(command, &event_type, &serde_json::json!({}), ok).unwrap();
        vec![reply]
    }
}

async fn run_checkout(
    seed: u64,
) -> (
    runnel_testkit::faultkit::saga::SagaFaultReport<Checkout>,
    World,
) {
    let dir = tempfile::tempdir().unwrap();
    let stores = stores(&dir).await;
    let world = World::default();
    let service = {
        let world = world.clone();
        move |_topic: TopicName, command: Message| {
            let world = world.clone();
            async move { Ok::<_, HandlerError>(world.answer(&command)) }
        }
    };
    let mut run = SagaRun::new(
        checkout,
        Arc::clone(&stores.processors),
        stores.outbox().await.unwrap(),
    )
    .idle_advance(Duration::from_secs(11));
    for order in 0..ORDERS {
        run = run.start(format!("order-{order}"), Checkout { order });
    }
    let report = FaultKit::new(FaultPlan::chaotic(seed))
        .run_saga(run, service)
        .await
        .unwrap();
    (report, world)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_keeps_its_invariants_under_reply_faults_and_crashes() {
    let (mut crashes, mut duplicates, mut after_effect) = (0, 0, 0);
    for seed in 0..SEEDS {
        let (report, world) = run_checkout(seed).await;
        crashes += report.crashes.len();
        duplicates += report.duplicates + report.command_duplicates;
        after_effect += report.redeliveries_after_effect;
        assert!(report.unsettled.is_empty(), "{report}");
        assert!(report.failed.is_empty(), "{report}: {:?}", report.failed);
        let effects = world.effects.lock().unwrap().clone();
        for instance in &report.instances {
            let order = instance.data.order;
            let mine: Vec<&str> = effects
                .iter()
                .filter(|(o, _)| *o == order)
                .map(|(_, e)| e.as_str())
                .collect();
            if order % 3 == 0 {
                assert_eq!(
                    instance.record.status,
                    InstanceStatus::Compensated,
                    "{report}"
                );
                // Compensated in reverse, each effect once.
                assert_eq!(
                    mine,
                    ["Reserve", "Charge", "Ship", "Refund", "Release"],
                    "order {order}: {report}"
                );
            } else {
                assert_eq!(
                    instance.record.status,
                    InstanceStatus::Completed,
                    "{report}"
                );
                assert_eq!(
                    mine,
                    ["Reserve", "Charge", "Ship"],
                    "order {order}: {report}"
                );
            }
        }
    }
    assert!(
        crashes > 0 && duplicates > 0 && after_effect > 0,
        "the runs injected every fault"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_fault_run_repeats_from_its_seed() {
    let (a, _) = run_checkout(3).await;
    let (b, _) = run_checkout(3).await;
    let shape = |r: &runnel_testkit::faultkit::saga::SagaFaultReport<Checkout>| {
        (
            r.crashes.clone(),
            r.deliveries
                .iter()
                .map(|d| (d.index, d.kind))
                .collect::<Vec<_>>(),
            r.commands
                .iter()
                .map(|c| c.message.event_type.clone())
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(shape(&a), shape(&b));
}
