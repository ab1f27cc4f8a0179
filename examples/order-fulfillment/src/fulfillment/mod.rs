//! Order fulfillment: the saga that takes a placed order through inventory, payment and
//! shipping, and the three services it talks to — only through the bus.
//!
//! ```text
//! OrderPlaced ──▶ saga: reserve-inventory ──▶ charge-payment ──▶ create-shipment ──▶ confirm-order
//!                        │ ReserveInventory      │ ChargePayment     │ CreateShipment     (local: Confirm
//!                        ▼                       ▼                   ▼                     on the Order)
//!                   inventory service       payment service     shipping service
//! ```
//!
//! Each remote step sends a command through the outbox and is settled by the service's
//! reply on `sagas.order-fulfillment.replies`. A definite failure (out of stock, a declined
//! card, an address no carrier serves) compensates in reverse: cancel the shipment, refund
//! the payment, release the reservation; the order is then cancelled (the order service
//! reacts to `SagaCompensated`). A service that crashes or does not answer leaves the step's
//! outcome unknown: the command is sent again after the reply deadline, with the same
//! idempotency key, and after the retries the instance waits for an operator
//! (`runnel sagas list --status needs-attention`).
//!
//! The services are idempotent by the commands' `runnel-idempotency-key` header, through
//! the application's dedup store: a command sent again gets the first answer again. The
//! payment service also keeps its [ledger](payment_ledger) in the event store (each
//! charge and refund, once per command), which the [analytics](crate::analytics) read.

pub mod payment_ledger;
mod saga;
mod services;

pub use payment_ledger::{PaymentEvent, PAYMENT_CATEGORY};
pub use saga::{fulfillment_saga, Fulfillment, FULFILLMENT_SAGA};
pub use services::{
    service_handler, Failures, Faults, FaultsError, FAULT_DELAY_MS_MAX, INVENTORY_TOPIC,
    PAYMENTS_TOPIC, SERVICE_GROUPS, SHIPPING_TOPIC,
};

use std::sync::Arc;
use std::time::Duration;

use runnel::app::App;
use runnel::consumer::{HandlerContext, HandlerError};
use runnel::core::{GroupName, TopicName};
use runnel::saga::{SagaOptions, SagaRuntime, StartRequest};
use runnel::Upcasters;

use crate::order::{Order, OrderCommand, OrderEvent};
use crate::service::{decode_order_event, ORDER_TOPIC};

/// The consumer group that starts a saga for each placed order.
pub const STARTER_GROUP: &str = "fulfillment";
/// The consumer group of the order service that cancels orders whose fulfillment was
/// compensated.
pub const CANCELLER_GROUP: &str = "order-cancellations";

/// The topic the services answer the fulfillment saga on (`sagas.order-fulfillment.replies`).
pub fn reply_topic() -> TopicName {
    TopicName::new(format!("sagas.{FULFILLMENT_SAGA}.replies")).expect("a valid topic name")
}

/// How fulfillment runs.
#[derive(Clone, Debug)]
pub struct FulfillmentConfig {
    /// Failures the services inject (a switch: change it while they run).
    pub faults: Faults,
    /// The services this process runs (of [`SERVICE_GROUPS`]; all by default).
    pub services: Vec<&'static str>,
    /// How long a service may take to reply before the step's outcome counts as unknown.
    pub reply_deadline: Duration,
    /// The saga runtime's options.
    pub saga: SagaOptions,
    /// Handlers each service consumer runs at once in this process (`None`: the
    /// consumer default, [`runnel::consumer::MAX_CONCURRENCY_DEFAULT`]).
    pub service_concurrency: Option<usize>,
}

impl Default for FulfillmentConfig {
    fn default() -> Self {
        FulfillmentConfig {
            faults: Faults::default(),
            services: SERVICE_GROUPS.to_vec(),
            reply_deadline: Duration::from_secs(30),
            saga: SagaOptions::default(),
            service_concurrency: None,
        }
    }
}

/// Wires fulfillment into `app`: the saga (its runtime, its reply consumer, the outbox
/// relay), the consumer that starts it for each `OrderPlaced`, the inventory, payment and
/// shipping services, and the order service's reaction to compensated fulfillments.
pub fn wire(
    app: &mut App,
    upcasters: Arc<Upcasters>,
    config: FulfillmentConfig,
) -> Result<SagaRuntime<Fulfillment>, Box<dyn std::error::Error + Send + Sync>> {
    let saga = app.saga_with(
        fulfillment_saga(app.commands().clone(), config.reply_deadline)?,
        config.saga.clone(),
    );
    services::wire(
        app,
        &config.faults,
        &config.services,
        config.service_concurrency,
    )?;
    debug_assert_eq!(saga.definition().reply_topic(), &reply_topic());
    app.topic_projection(Arc::new(
        crate::read_model::FulfillmentProgressProjection::new(
            saga.definition().reply_topic().clone(),
        ),
    ));
    // The services answer on the saga's reply topic (the catalog cannot see a handler's
    // publishes, so they are described).
    for service in services::SERVICE_GROUPS {
        app.describe_publisher(saga.definition().reply_topic(), service)?;
    }

    let starter = saga.clone();
    app.consumer(
        TopicName::new(ORDER_TOPIC)?,
        GroupName::new(STARTER_GROUP)?,
        move |consumer| {
            let saga = starter.clone();
            let upcasters = Arc::clone(&upcasters);
            consumer
                .subscribe_options(from_earliest())
                .keep_lease_alive()
                .handler(move |ctx: HandlerContext| {
                    let saga = saga.clone();
                    let upcasters = Arc::clone(&upcasters);
                    async move { start(&saga, &upcasters, ctx).await }
                })
        },
    );

    let commands = app.commands().clone();
    app.consumer(
        saga.definition().events_topic().clone(),
        GroupName::new(CANCELLER_GROUP)?,
        move |consumer| {
            let commands = commands.clone();
            consumer
                .subscribe_options(from_earliest())
                .keep_lease_alive()
                .handler(move |ctx: HandlerContext| {
                    let commands = commands.clone();
                    async move { cancel_compensated(&commands, ctx).await }
                })
        },
    );
    Ok(saga)
}

/// Wires only the services `config.services` names (a process of a distributed
/// deployment that runs services and no saga).
pub fn wire_services(
    app: &mut App,
    config: &FulfillmentConfig,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    services::wire(
        app,
        &config.faults,
        &config.services,
        config.service_concurrency,
    )?;
    for service in &config.services {
        app.describe_publisher(&reply_topic(), service)?;
    }
    Ok(())
}

/// Subscription options for fulfillment's consumers: a group created after messages were
/// published (the first start of a service) still gets them. Nothing of the order flow may
/// be skipped because a consumer came up a moment late. The short ack timeout brings the
/// deliveries of a killed process back to the group within seconds; the consumers keep
/// their leases alive while they handle ([`ConsumerBuilder::keep_lease_alive`]).
///
/// [`ConsumerBuilder::keep_lease_alive`]: runnel::consumer::ConsumerBuilder::keep_lease_alive
pub fn from_earliest() -> runnel::core::bus::SubscribeOptions {
    runnel::core::bus::SubscribeOptions {
        start: runnel::core::bus::StartPosition::Earliest,
        ack_timeout: runnel::app::TAKEOVER_ACK_TIMEOUT,
        ..runnel::core::bus::SubscribeOptions::default()
    }
}

/// Starts the fulfillment of a placed order (once per order, whatever the redeliveries:
/// the start commits with the message's inbox mark and the order id as correlation key).
async fn start(
    saga: &SagaRuntime<Fulfillment>,
    upcasters: &Upcasters,
    ctx: HandlerContext,
) -> Result<(), HandlerError> {
    if ctx.event_type() != "OrderPlaced" {
        return Ok(());
    }
    let (order_id, event) = decode_order_event(upcasters, ctx.message())?;
    let OrderEvent::OrderPlaced {
        customer_id,
        items,
        shipping_address,
        ..
    } = event
    else {
        return Ok(());
    };
    let data = Fulfillment::new(&order_id, customer_id, items, shipping_address);
    let handler = runnel::consumer::layers::consumer_name(ctx.topic(), ctx.group());
    let request = StartRequest::new(order_id.clone(), data)
        .from_message(&handler, ctx.message())
        .correlation(order_id);
    saga.start_with(request).await.map_err(|e| {
        if e.is_transient() {
            HandlerError::retryable(e)
        } else {
            HandlerError::permanent(e)
        }
    })?;
    Ok(())
}

/// Cancels an order whose fulfillment was compensated (nothing was shipped or charged).
async fn cancel_compensated(
    commands: &runnel::CommandBus,
    ctx: HandlerContext,
) -> Result<(), HandlerError> {
    if ctx.event_type() != "SagaCompensated" {
        return Ok(());
    }
    let body: serde_json::Value = ctx.json()?;
    let Some(order_id) = body["instance"].as_str() else {
        return Err(HandlerError::permanent("SagaCompensated names no instance"));
    };
    let reason = body["failure"]
        .as_str()
        .unwrap_or("fulfillment failed")
        .to_string();
    match commands
        .execute::<Order>(order_id.to_string(), OrderCommand::Cancel { reason })
        .await
    {
        Ok(_) => Ok(()),
        // Cancelled already (a redelivery), or gone past cancelling: nothing to do.
        Err(e) if e.is_rejected() => {
            tracing::info!(order = %order_id, error = %e, "compensated order not cancelled");
            Ok(())
        }
        Err(e) => Err(HandlerError::retryable(e)),
    }
}
