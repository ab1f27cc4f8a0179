//! The fulfillment saga's definition and data.

use std::time::Duration;

use runnel::core::{Message, TopicName};
use runnel::saga::{DefinitionError, RemoteCall, Reply, SagaDefinition, StepContext, StepError};
use runnel::CommandBus;
use serde::{Deserialize, Serialize};

use super::services::{INVENTORY_TOPIC, PAYMENTS_TOPIC, SHIPPING_TOPIC};
use crate::order::{Order, OrderCommand, OrderError, OrderLine, OrderStatus};

/// The saga's name (instances are `saga:order-fulfillment`).
pub const FULFILLMENT_SAGA: &str = "order-fulfillment";

/// What the saga carries from step to step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fulfillment {
    pub order_id: String,
    pub customer_id: String,
    pub items: Vec<OrderLine>,
    pub total_cents: i64,
    pub shipping_address: String,
    /// Set by the inventory service's reply.
    pub reservation_id: Option<String>,
    /// Set by the payment service's reply.
    pub payment_id: Option<String>,
    /// Set by the shipping service's reply.
    pub tracking_number: Option<String>,
}

impl Fulfillment {
    /// The fulfillment of a placed order.
    pub fn new(
        order_id: &str,
        customer_id: String,
        items: Vec<OrderLine>,
        shipping_address: String,
    ) -> Self {
        let total_cents = items
            .iter()
            .try_fold(0i64, |sum, line| sum.checked_add(line.total_cents()?))
            .unwrap_or(i64::MAX);
        Fulfillment {
            order_id: order_id.to_string(),
            customer_id,
            items,
            total_cents,
            shipping_address,
            ..Fulfillment::default()
        }
    }
}

fn command(event_type: &str, ctx: &StepContext<Fulfillment>) -> Message {
    let d = &ctx.data;
    let mut m = Message::json(
        event_type,
        &serde_json::json!({
            "order_id": d.order_id,
            "customer_id": d.customer_id,
            "items": d.items,
            "total_cents": d.total_cents,
            "shipping_address": d.shipping_address,
            "reservation_id": d.reservation_id,
            "payment_id": d.payment_id,
            "tracking_number": d.tracking_number,
        }),
    );
    m.source = "urn:runnel:order-fulfillment".into();
    m.key = Some(format!("Order-{}", d.order_id));
    m
}

fn field(reply: &Message, name: &str) -> Option<String> {
    reply
        .payload_json()
        .ok()?
        .get(name)?
        .as_str()
        .map(String::from)
}

/// The saga: reserve inventory → charge payment → create shipment → confirm the order.
/// `commands` runs the last, local step; `reply_deadline` bounds each service's answer.
pub fn fulfillment_saga(
    commands: CommandBus,
    reply_deadline: Duration,
) -> Result<SagaDefinition<Fulfillment>, DefinitionError> {
    let topic = |t: &str| TopicName::new(t).expect("a valid topic");
    let reserve = RemoteCall::new(topic(INVENTORY_TOPIC), |ctx: &StepContext<Fulfillment>| {
        command("ReserveInventory", ctx)
    })
    .on_reply(
        |mut data: Fulfillment, reply: &Message| match reply.event_type.as_str() {
            "InventoryReserved" => {
                data.reservation_id = field(reply, "reservation_id");
                Reply::Succeeded(data)
            }
            "OutOfStock" => Reply::Failed(format!(
                "out of stock: {}",
                field(reply, "product_id").unwrap_or_default()
            )),
            other => Reply::Unknown(format!("inventory replied {other}")),
        },
    );
    let release = RemoteCall::new(topic(INVENTORY_TOPIC), |ctx: &StepContext<Fulfillment>| {
        command("ReleaseInventory", ctx)
    });
    let charge = RemoteCall::new(topic(PAYMENTS_TOPIC), |ctx: &StepContext<Fulfillment>| {
        command("ChargePayment", ctx)
    })
    .on_reply(
        |mut data: Fulfillment, reply: &Message| match reply.event_type.as_str() {
            "PaymentCharged" => {
                data.payment_id = field(reply, "payment_id");
                Reply::Succeeded(data)
            }
            "PaymentDeclined" => Reply::Failed(format!(
                "card declined: {}",
                field(reply, "reason").unwrap_or_default()
            )),
            other => Reply::Unknown(format!("payments replied {other}")),
        },
    );
    let refund = RemoteCall::new(topic(PAYMENTS_TOPIC), |ctx: &StepContext<Fulfillment>| {
        command("RefundPayment", ctx)
    });
    let ship = RemoteCall::new(topic(SHIPPING_TOPIC), |ctx: &StepContext<Fulfillment>| {
        command("CreateShipment", ctx)
    })
    .on_reply(
        |mut data: Fulfillment, reply: &Message| match reply.event_type.as_str() {
            "ShipmentCreated" => {
                data.tracking_number = field(reply, "tracking_number");
                Reply::Succeeded(data)
            }
            "ShipmentRejected" => Reply::Failed(format!(
                "no shipment: {}",
                field(reply, "reason").unwrap_or_default()
            )),
            other => Reply::Unknown(format!("shipping replied {other}")),
        },
    );
    let cancel_shipment =
        RemoteCall::new(topic(SHIPPING_TOPIC), |ctx: &StepContext<Fulfillment>| {
            command("CancelShipment", ctx)
        });
    SagaDefinition::builder(FULFILLMENT_SAGA, 1)
        .remote("reserve-inventory", reserve, reply_deadline)
        .compensate_remote(release)
        .remote("charge-payment", charge, reply_deadline)
        .compensate_remote(refund)
        .remote("create-shipment", ship, reply_deadline)
        .compensate_remote(cancel_shipment)
        .local("confirm-order", move |ctx: StepContext<Fulfillment>| {
            let commands = commands.clone();
            async move { confirm(&commands, ctx).await }
        })
        .build()
}

/// Confirms the order. Idempotent: an order already confirmed (or further along) counts as
/// confirmed; a cancelled one is a definite failure (the saga compensates).
async fn confirm(
    commands: &CommandBus,
    ctx: StepContext<Fulfillment>,
) -> Result<Fulfillment, StepError> {
    match commands
        .execute::<Order>(ctx.data.order_id.clone(), OrderCommand::Confirm)
        .await
    {
        Ok(_) => Ok(ctx.data),
        Err(e) => match e.rejected() {
            Some(OrderError::CannotConfirm {
                status: OrderStatus::Confirmed | OrderStatus::Shipped | OrderStatus::Delivered,
            }) => Ok(ctx.data),
            Some(refused) => Err(StepError::failed(refused.to_string())),
            None => Err(StepError::unknown(e)),
        },
    }
}
