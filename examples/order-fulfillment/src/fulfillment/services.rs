//! The inventory, payment and shipping services: consumers of their command topics that
//! answer the saga's commands with replies, idempotent by the commands' idempotency key
//! (through the application's dedup store), with failures injectable by configuration.

use std::collections::BTreeSet;
use std::sync::Arc;
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

/// Failures the services inject.
#[derive(Clone, Debug, Default)]
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
    failures: Failures,
) -> Option<impl runnel::consumer::Handler + Clone> {
    let (decide, ledger): (Decide, Ledger) = match group {
        "inventory" => (Arc::new(inventory), None),
        "payments" => (Arc::new(payments), Some(events)),
        "shipping" => (Arc::new(shipping), None),
        _ => return None,
    };
    Some(move |ctx: HandlerContext| {
        let dedup = Arc::clone(&dedup);
        let failures = failures.clone();
        let decide = Arc::clone(&decide);
        let ledger = ledger.clone();
        async move { answer(&*dedup, &failures, &*decide, ledger.as_deref(), ctx).await }
    })
}

/// Registers the three services on `app`. The payment service records its charges and
/// refunds in the [ledger](super::payment_ledger).
pub fn wire(
    app: &mut App,
    failures: Failures,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let topics = [INVENTORY_TOPIC, PAYMENTS_TOPIC, SHIPPING_TOPIC];
    for (topic, group) in topics.into_iter().zip(SERVICE_GROUPS) {
        let handler = service_handler(
            group,
            Arc::clone(&app.stores().dedup),
            Arc::clone(&app.stores().events),
            failures.clone(),
        )
        .expect("a known service");
        app.consumer(
            TopicName::new(topic)?,
            GroupName::new(group)?,
            move |consumer| {
                consumer
                    .subscribe_options(super::from_earliest())
                    .keep_lease_alive()
                    .handler(handler.clone())
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
    let (topic, reply) = reply_to(command, &answer.event_type, &answer.data, answer.ok)
        .map_err(HandlerError::permanent)?;
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
