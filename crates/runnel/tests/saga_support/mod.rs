//! Saga fixtures: the order saga of the proofs (a remote inventory step, local payment,
//! shipment and confirmation steps), a ledger standing for the outside world the steps
//! change, and the stores of each backend.

#![allow(dead_code)] // each test binary uses a different part

#[path = "../pg_schema/mod.rs"]
mod super_pg;

pub mod scenarios;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnel::core::outbox::OutboxStore;
use runnel::core::processor::ProcessorStore;
use runnel::core::{Message, TopicName};
use runnel::retry::RetryPolicy;
use runnel::saga::{
    LateReplyPolicy, RemoteCall, Reply, SagaBuilder, SagaDefinition, StepContext, StepError,
};
use runnel_testkit::saga::{command_step, Responder, SagaTest};

/// The order saga's data.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Order {
    pub order: String,
    pub amount: u32,
    pub reservation: Option<String>,
    pub payment: Option<String>,
    pub shipment: Option<String>,
    pub replies_applied: u32,
}

impl Order {
    pub fn new(order: &str) -> Self {
        Order {
            order: order.into(),
            amount: 30,
            ..Order::default()
        }
    }
}

/// What the outside world saw: every call of a local step or compensation by key, and
/// the effects that stuck (a second call with the same key changes nothing).
#[derive(Debug, Default)]
pub struct Ledger {
    pub calls: Vec<String>,
    pub effects: BTreeMap<String, u32>,
    /// Effects in the order they happened (first time per key).
    pub order: Vec<String>,
}

/// Switches that make the world fail.
#[derive(Debug, Default)]
pub struct Faults {
    /// `charge-payment` fails definitely (card declined).
    pub decline_card: bool,
    /// `create-shipment` fails definitely.
    pub no_carrier: bool,
    /// The refund (compensation of `charge-payment`) fails this many more times.
    pub refund_failures: u32,
    /// `create-shipment` fails with an unknown outcome this many more times.
    pub shipment_timeouts: u32,
    /// `confirm-order` fails definitely (after the shipment: everything is compensated).
    pub fail_confirm: bool,
}

/// The world the steps act on.
#[derive(Clone, Default)]
pub struct World {
    pub ledger: Arc<Mutex<Ledger>>,
    pub faults: Arc<Mutex<Faults>>,
}

impl World {
    fn apply(&self, key: &str) -> String {
        let mut l = self.ledger.lock().unwrap();
        l.calls.push(key.to_string());
        let n = l.effects.entry(key.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            l.order.push(key.to_string());
        }
        format!("ref-{key}")
    }

    /// Effects (first time per key), in order.
    pub fn effects(&self) -> Vec<String> {
        self.ledger.lock().unwrap().order.clone()
    }
}

pub const INVENTORY_TOPIC: &str = "inventory.commands";
pub const NAME: &str = "order-test";

/// The order saga: reserve inventory (remote, released on compensation) → charge payment
/// (local, refunded) → create shipment (local, cancelled) → confirm (local, no undo).
pub fn order_saga(world: &World, version: u32, late: LateReplyPolicy) -> SagaDefinition<Order> {
    order_saga_with(world, version, late, |b| b)
}

/// The order saga, with `customize` applied to its builder before it is built.
pub fn order_saga_with(
    world: &World,
    version: u32,
    late: LateReplyPolicy,
    customize: impl FnOnce(SagaBuilder<Order>) -> SagaBuilder<Order>,
) -> SagaDefinition<Order> {
    let topic = TopicName::new(INVENTORY_TOPIC).unwrap();
    let reserve = RemoteCall::new(topic.clone(), |ctx: &StepContext<Order>| {
        Message::json(
            "ReserveInventory",
            &serde_json::json!({"order": ctx.data.order, "key": ctx.key}),
        )
    })
    .on_reply(
        |mut data: Order, reply: &Message| match reply.event_type.as_str() {
            "InventoryReserved" => {
                data.reservation = Some(reply.id.clone());
                data.replies_applied += 1;
                Reply::Succeeded(data)
            }
            "InventoryUnavailable" => Reply::Unknown("inventory service unavailable".into()),
            other => Reply::Failed(format!("inventory replied {other}")),
        },
    );
    let release = RemoteCall::new(topic, |ctx: &StepContext<Order>| {
        Message::json(
            "ReleaseInventory",
            &serde_json::json!({"order": ctx.data.order}),
        )
    });
    let (w1, w2, w3, w4, w5) = (
        world.clone(),
        world.clone(),
        world.clone(),
        world.clone(),
        world.clone(),
    );
    let builder = SagaDefinition::builder(NAME, version)
        .remote("reserve-inventory", reserve, Duration::from_secs(30))
        .compensate_remote(release)
        .local("charge-payment", move |mut ctx: StepContext<Order>| {
            let w = w1.clone();
            async move {
                if w.faults.lock().unwrap().decline_card {
                    return Err(StepError::failed("card declined"));
                }
                ctx.data.payment = Some(w.apply(&ctx.key));
                Ok(ctx.data)
            }
        })
        .compensate_local(move |mut ctx: StepContext<Order>| {
            let w = w2.clone();
            async move {
                {
                    let mut f = w.faults.lock().unwrap();
                    if f.refund_failures > 0 {
                        f.refund_failures -= 1;
                        return Err(StepError::unknown("payment provider unavailable"));
                    }
                }
                w.apply(&ctx.key);
                ctx.data.payment = None;
                Ok(ctx.data)
            }
        })
        .local("create-shipment", move |mut ctx: StepContext<Order>| {
            let w = w3.clone();
            async move {
                {
                    let mut f = w.faults.lock().unwrap();
                    if f.no_carrier {
                        return Err(StepError::failed("no carrier for the address"));
                    }
                    if f.shipment_timeouts > 0 {
                        f.shipment_timeouts -= 1;
                        return Err(StepError::unknown("carrier API timed out"));
                    }
                }
                ctx.data.shipment = Some(w.apply(&ctx.key));
                Ok(ctx.data)
            }
        })
        .compensate_local(move |mut ctx: StepContext<Order>| {
            let w = w4.clone();
            async move {
                w.apply(&ctx.key);
                ctx.data.shipment = None;
                Ok(ctx.data)
            }
        })
        .local("confirm-order", move |ctx: StepContext<Order>| {
            let w = w5.clone();
            async move {
                if w.faults.lock().unwrap().fail_confirm {
                    return Err(StepError::failed("the order was cancelled meanwhile"));
                }
                w.apply(&ctx.key);
                Ok(ctx.data)
            }
        })
        .forward_retry(RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(4),
        })
        .compensation_retry(RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(4),
        })
        .late_replies(late);
    customize(builder).build().expect("a valid saga")
}

/// The inventory service: reserves (or says out of stock) and releases.
pub fn inventory(out_of_stock: bool) -> Responder {
    Arc::new(move |command: &Message| {
        let (_, undo) = command_step(command)?;
        Some(if undo {
            ("InventoryReleased".into(), serde_json::json!({}), true)
        } else if out_of_stock {
            ("OutOfStock".into(), serde_json::json!({}), false)
        } else {
            ("InventoryReserved".into(), serde_json::json!({}), true)
        })
    })
}

/// A backend's stores: processor state and the outbox of the same database.
pub struct Stores {
    pub processors: Arc<dyn ProcessorStore>,
    pub outbox: Arc<dyn OutboxStore>,
    /// Keeps the database alive (a temporary file, a schema dropped at the end).
    pub guard: Box<dyn std::any::Any + Send + Sync>,
}

/// A driver for the order saga on `stores`.
pub fn driver(
    stores: &Stores,
    world: &World,
    version: u32,
    late: LateReplyPolicy,
) -> SagaTest<Order> {
    let w = world.clone();
    SagaTest::new(
        move || order_saga(&w, version, late),
        Arc::clone(&stores.processors),
        Arc::clone(&stores.outbox),
    )
}

/// SQLite stores on a fresh temporary file.
pub fn sqlite() -> Stores {
    let store = runnel::sqlite::SqliteStore::open_temporary().expect("a temporary store");
    Stores {
        processors: Arc::new(runnel::sqlite::SqliteProcessorStore::new(store.clone())),
        outbox: Arc::new(runnel::sqlite::SqliteOutbox::new(store.clone())),
        guard: Box::new(store),
    }
}

pub async fn postgres() -> Option<Stores> {
    let (store, guard) = super_pg::fresh_store("saga", 16).await?;
    let outbox = runnel::postgres::PostgresOutbox::new(store.clone())
        .await
        .expect("the outbox");
    Some(Stores {
        processors: Arc::new(runnel::postgres::PostgresProcessorStore::new(store.clone())),
        outbox: Arc::new(outbox),
        guard: Box::new((guard, store)),
    })
}
