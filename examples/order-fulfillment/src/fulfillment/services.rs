//! The inventory, payment and shipping services: consumers of their command topics that
//! answer the saga's commands with replies, idempotent by the commands' idempotency key
//! (through the application's dedup store), with failures injectable by configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use runnel::app::App;
use runnel::consumer::{HandlerContext, HandlerError};
use runnel::core::idempotency::{DedupClaim, DedupStore};
use runnel::core::{EventStore, GroupName, TopicName};
use runnel::saga::{reply_to, IDEMPOTENCY_KEY_HEADER};
use serde::{Deserialize, Serialize};

use super::payment_ledger::{self, PaymentEvent};

/// The inventory service's command topic.
pub const INVENTORY_TOPIC: &str = "inventory.commands";
/// The payment service's command topic.
pub const PAYMENTS_TOPIC: &str = "payments.commands";
/// The shipping service's command topic.
pub const SHIPPING_TOPIC: &str = "shipping.commands";

/// How long a service holds a command's key while handling it: a redelivery of a command
/// whose process was killed mid-handling waits this long before another process answers
/// it, so it stays well under the 10 s takeover.
const LOCK_TTL: Duration = Duration::from_secs(5);
/// How long a service remembers its answer to a command.
const ANSWER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Longest wait a service may be told to take per command (`slow`, `service_delay_ms`).
pub const FAULT_DELAY_MS_MAX: u64 = 600_000;

/// Failures the services inject. As JSON (`GET` / `PUT /faults`) every field is optional
/// and unknown fields are refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Failures {
    /// Products the inventory has none of.
    pub out_of_stock: BTreeSet<String>,
    /// Payments above this many cents are declined.
    pub decline_above_cents: Option<i64>,
    /// The shipping service's handler panics for shipping addresses containing this text
    /// (a crashing service: the consumer retries, then dead-letters the command).
    pub crash_shipping_for: Option<String>,
    /// Shipping addresses containing this text are refused (no carrier serves them).
    pub unshippable: Option<String>,
    /// A poison message: the shipping service refuses `CreateShipment` for addresses
    /// containing this text as a permanent error, so the command is dead-lettered at once
    /// (no retries). Clear the fault (the fix is deployed) and replay the dead letter:
    /// the shipment is created and the order confirmed.
    pub poison_address: Option<String>,
    /// A slow service: `inventory`, `payments` or `shipping` waits this many milliseconds
    /// before answering (past the saga's reply deadline, the step times out).
    pub slow: BTreeMap<String, u64>,
    /// Every service waits this many milliseconds per command (handler-bound work).
    pub service_delay_ms: u64,
}

/// A fault configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FaultsError {
    /// `slow` names a service that does not exist.
    #[error("slow names {0:?}; the services are inventory, payments and shipping")]
    UnknownService(String),
    /// A delay is over [`FAULT_DELAY_MS_MAX`].
    #[error("a delay of {0} ms is over the limit of {FAULT_DELAY_MS_MAX} ms")]
    DelayTooLong(u64),
}

impl Failures {
    /// Checks the service names and delays.
    pub fn validate(&self) -> Result<(), FaultsError> {
        for (service, ms) in &self.slow {
            if !SERVICE_GROUPS.contains(&service.as_str()) {
                return Err(FaultsError::UnknownService(service.clone()));
            }
            if *ms > FAULT_DELAY_MS_MAX {
                return Err(FaultsError::DelayTooLong(*ms));
            }
        }
        if self.service_delay_ms > FAULT_DELAY_MS_MAX {
            return Err(FaultsError::DelayTooLong(self.service_delay_ms));
        }
        Ok(())
    }

    /// How long `service` waits before answering a command.
    pub fn delay_for(&self, service: &str) -> Duration {
        let slow = self.slow.get(service).copied().unwrap_or(0);
        Duration::from_millis(self.service_delay_ms.saturating_add(slow))
    }
}

/// The failures the running services inject, shared with whoever may change them while
/// they run (`PUT /faults`). Cloning shares the same switch.
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<RwLock<Failures>>);

impl Faults {
    /// A switch set to `failures`.
    pub fn new(failures: Failures) -> Faults {
        Faults(Arc::new(RwLock::new(failures)))
    }

    /// The failures in force now.
    pub fn get(&self) -> Failures {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the failures (checked first); commands handled from now on see them.
    pub fn set(&self, failures: Failures) -> Result<(), FaultsError> {
        failures.validate()?;
        match self.0.write() {
            Ok(mut guard) => *guard = failures,
            Err(poisoned) => *poisoned.into_inner() = failures,
        }
        Ok(())
    }
}

impl From<Failures> for Faults {
    fn from(failures: Failures) -> Faults {
        Faults::new(failures)
    }
}

/// A service's answer to a command, as remembered for the command's key.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Answer {
    event_type: String,
    data: serde_json::Value,
    ok: bool,
}

impl Answer {
    fn ok(event_type: &str, data: serde_json::Value) -> Self {
        Answer {
            event_type: event_type.into(),
            data,
            ok: true,
        }
    }

    fn failed(event_type: &str, data: serde_json::Value) -> Self {
        Answer {
            event_type: event_type.into(),
            data,
            ok: false,
        }
    }
}

type Decide =
    Arc<dyn Fn(&str, &serde_json::Value, &Failures) -> Result<Answer, HandlerError> + Send + Sync>;

/// Where a service records what it did (the payment service's ledger), if anywhere.
type Ledger = Option<Arc<dyn EventStore>>;

/// The services' consumer groups (also their names as publishers of replies).
pub const SERVICE_GROUPS: [&str; 3] = ["inventory", "payments", "shipping"];

/// One service's command handler, as [`wire`] registers it: `group` is one of
/// [`SERVICE_GROUPS`]; it answers through `dedup` and, for payments, records in `events`
/// (the ledger). `None` for an unknown group. Tests run it on its own, for example under
/// `runnel_testkit::faultkit`.
pub fn service_handler(
    group: &str,
    dedup: Arc<dyn DedupStore>,
    events: Arc<dyn EventStore>,
    faults: impl Into<Faults>,
) -> Option<impl runnel::consumer::Handler + Clone> {
    let faults = faults.into();
    let service: &'static str = SERVICE_GROUPS.into_iter().find(|g| *g == group)?;
    let (decide, ledger): (Decide, Ledger) = match group {
        "inventory" => (Arc::new(inventory), None),
        "payments" => (Arc::new(payments), Some(events)),
        "shipping" => (Arc::new(shipping), None),
        _ => return None,
    };
    Some(move |ctx: HandlerContext| {
        let dedup = Arc::clone(&dedup);
        let failures = faults.get();
        let decide = Arc::clone(&decide);
        let ledger = ledger.clone();
        async move {
            // The service's work (or its slowness): before the answer is decided, so a
            // slow answer is also a late reply.
            let delay = failures.delay_for(service);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            answer(&*dedup, &failures, &*decide, ledger.as_deref(), ctx).await
        }
    })
}

/// Registers the three services on `app`. The payment service records its charges and
/// refunds in the [ledger](super::payment_ledger). `concurrency`: handlers each service
/// consumer runs at once (`None`: the consumer default).
pub fn wire(
    app: &mut App,
    faults: &Faults,
    only: &[&str],
    concurrency: Option<usize>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let topics = [INVENTORY_TOPIC, PAYMENTS_TOPIC, SHIPPING_TOPIC];
    for (topic, group) in topics.into_iter().zip(SERVICE_GROUPS) {
        if !only.contains(&group) {
            continue;
        }
        let handler = service_handler(
            group,
            Arc::clone(&app.stores().dedup),
            Arc::clone(&app.stores().events),
            faults.clone(),
        )
        .expect("a known service");
        app.consumer(
            TopicName::new(topic)?,
            GroupName::new(group)?,
            move |consumer| {
                let consumer = consumer
                    .subscribe_options(super::from_earliest())
                    .keep_lease_alive();
                let consumer = match concurrency {
                    Some(n) => consumer.max_concurrency(n),
                    None => consumer,
                };
                consumer.handler(handler.clone())
            },
        );
    }
    Ok(())
}

/// Answers one command: the remembered answer for its key, or a new one (recorded in
/// `ledger`, if the service keeps one, before it is remembered).
async fn answer(
    dedup: &dyn DedupStore,
    failures: &Failures,
    decide: &(dyn Fn(&str, &serde_json::Value, &Failures) -> Result<Answer, HandlerError>
          + Send
          + Sync),
    ledger: Option<&dyn EventStore>,
    ctx: HandlerContext,
) -> Result<(), HandlerError> {
    let command = ctx.message();
    let key = command
        .headers
        .get(IDEMPOTENCY_KEY_HEADER)
        .cloned()
        .unwrap_or_else(|| command.id.clone());
    let answer = match dedup
        .claim(&key, LOCK_TTL)
        .await
        .map_err(HandlerError::retryable)?
    {
        DedupClaim::Completed { result } => {
            serde_json::from_slice(&result).map_err(HandlerError::permanent)?
        }
        DedupClaim::InProgress => {
            return Err(HandlerError::redeliver(
                format!("command {key} is being handled by another consumer"),
                Some(Duration::from_millis(200)),
            ))
        }
        DedupClaim::Acquired { token } => {
            let body: serde_json::Value = ctx.json()?;
            let answer = match decide(&command.event_type, &body, failures) {
                Ok(answer) => answer,
                Err(e) => {
                    let _ = dedup.release(&key, &token).await;
                    return Err(e);
                }
            };
            if let (Some(events), Some(entry)) =
                (ledger, PaymentEvent::of_answer(&answer.event_type, &body))
            {
                if let Err(e) = payment_ledger::record(events, &key, &entry).await {
                    let _ = dedup.release(&key, &token).await;
                    return Err(e);
                }
            }
            let bytes = serde_json::to_vec(&answer).map_err(HandlerError::permanent)?;
            dedup
                .complete(&key, &token, bytes, ANSWER_TTL)
                .await
                .map_err(HandlerError::retryable)?;
            answer
        }
    };
    // Every answer names its order (the fulfillment progress projection keys on it).
    let mut data = answer.data;
    if let (Some(fields), Ok(body)) = (data.as_object_mut(), ctx.json::<serde_json::Value>()) {
        if let Some(order_id) = body.get("order_id") {
            fields.insert("order_id".into(), order_id.clone());
        }
    }
    let (topic, reply) =
        reply_to(command, &answer.event_type, &data, answer.ok).map_err(HandlerError::permanent)?;
    ctx.publish(&topic, vec![reply]).await
}

fn text(body: &serde_json::Value, name: &str) -> String {
    body[name].as_str().unwrap_or_default().to_string()
}

fn id_for(prefix: &str, body: &serde_json::Value) -> String {
    format!("{prefix}-{}", text(body, "order_id"))
}

fn inventory(
    command: &str,
    body: &serde_json::Value,
    failures: &Failures,
) -> Result<Answer, HandlerError> {
    match command {
        "ReserveInventory" => {
            let missing = body["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|line| line["product_id"].as_str())
                .find(|p| failures.out_of_stock.contains(*p));
            Ok(match missing {
                Some(product) => {
                    Answer::failed("OutOfStock", serde_json::json!({"product_id": product}))
                }
                None => Answer::ok(
                    "InventoryReserved",
                    serde_json::json!({"reservation_id": id_for("res", body)}),
                ),
            })
        }
        "ReleaseInventory" => Ok(Answer::ok("InventoryReleased", serde_json::json!({}))),
        other => Err(HandlerError::permanent(format!(
            "inventory has no command {other}"
        ))),
    }
}

fn payments(
    command: &str,
    body: &serde_json::Value,
    failures: &Failures,
) -> Result<Answer, HandlerError> {
    match command {
        "ChargePayment" => {
            let total = body["total_cents"].as_i64().unwrap_or(0);
            Ok(match failures.decline_above_cents {
                Some(limit) if total > limit => Answer::failed(
                    "PaymentDeclined",
                    serde_json::json!({"reason": format!("{total} cents is over the card's limit")}),
                ),
                _ => Answer::ok(
                    "PaymentCharged",
                    serde_json::json!({"payment_id": id_for("pay", body)}),
                ),
            })
        }
        "RefundPayment" => Ok(Answer::ok("PaymentRefunded", serde_json::json!({}))),
        other => Err(HandlerError::permanent(format!(
            "payments has no command {other}"
        ))),
    }
}

fn shipping(
    command: &str,
    body: &serde_json::Value,
    failures: &Failures,
) -> Result<Answer, HandlerError> {
    let address = text(body, "shipping_address");
    match command {
        "CreateShipment" => {
            if let Some(crash) = &failures.crash_shipping_for {
                if address.contains(crash.as_str()) {
                    panic!("the shipping service crashed on {address:?}");
                }
            }
            if let Some(poison) = &failures.poison_address {
                if address.contains(poison.as_str()) {
                    return Err(HandlerError::permanent(format!(
                        "poison message: the shipping service cannot handle the address {address:?}"
                    )));
                }
            }
            Ok(match &failures.unshippable {
                Some(bad) if address.contains(bad.as_str()) => Answer::failed(
                    "ShipmentRejected",
                    serde_json::json!({"reason": format!("no carrier serves {address:?}")}),
                ),
                _ => Answer::ok(
                    "ShipmentCreated",
                    serde_json::json!({"tracking_number": id_for("trk", body)}),
                ),
            })
        }
        "CancelShipment" => Ok(Answer::ok("ShipmentCancelled", serde_json::json!({}))),
        other => Err(HandlerError::permanent(format!(
            "shipping has no command {other}"
        ))),
    }
}
