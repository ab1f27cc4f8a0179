//! The order service, wired on the application runtime: the `Order` aggregate behind the
//! command bus, the event store as the outbox (every order event published to topic
//! `Order`, keyed by the order's stream), and a consumer that keeps the
//! [`order_summaries`](crate::read_model) read model with an inbox, dead-lettering what it
//! cannot apply.
//!
//! This one function is the whole wiring; `main.rs` only chooses the backends.

use std::sync::Arc;

use runnel::app::App;
use runnel::connect::StoreBackend;
use runnel::consumer::{HandlerContext, HandlerError};
use runnel::core::outbox::TopicRouting;
use runnel::core::{codec, GroupName, TopicName};
use runnel::outbox::EventStoreRelayOptions;
use runnel::postgres::PostgresInbox;
use runnel::sqlite::SqliteInbox;
use runnel::{RetryPolicy, Upcasters};

use crate::fulfillment::{Fulfillment, FulfillmentConfig};
use crate::order::{Order, OrderEvent};
use crate::read_model::{OrderReadModel, RowChange};
use crate::{order_repository, register, upcasters};
use runnel::saga::SagaRuntime;

/// The topic every order event is published to (the aggregate type: one topic per
/// category keeps one order's events in order).
pub const ORDER_TOPIC: &str = "Order";
/// The consumer group that keeps the read model.
pub const SUMMARY_GROUP: &str = "order-summaries";
/// The event store relay's checkpoint.
pub const RELAY_CHECKPOINT: &str = "order-service-relay";

/// The wired service: what callers use once the application runs.
#[derive(Clone)]
pub struct OrderService {
    pub read_model: OrderReadModel,
    /// The fulfillment saga's runtime.
    pub fulfillment: SagaRuntime<Fulfillment>,
}

/// Wires the order service into `app` with default fulfillment (no injected failures):
/// see [`wire_with`].
pub async fn wire(app: &mut App) -> Result<OrderService, Box<dyn std::error::Error + Send + Sync>> {
    wire_with(app, FulfillmentConfig::default()).await
}

/// Wires the order service into `app`: commands and queries, the event store as outbox,
/// the read-model consumer, and fulfillment (the saga and the services it talks to).
pub async fn wire_with(
    app: &mut App,
    fulfillment: FulfillmentConfig,
) -> Result<OrderService, Box<dyn std::error::Error + Send + Sync>> {
    let upcasters = Arc::new(upcasters()?);
    let upcasters_for_saga = Arc::clone(&upcasters);
    let stores = app.stores().clone();
    let repository = order_repository(
        Arc::clone(&stores.events),
        Some(Arc::clone(&stores.snapshots)),
        Arc::clone(&upcasters),
    );
    // The per-command bus types (`PlaceOrder`, …, and the `GetOrder` query) for dispatch
    // by name, and the aggregate's own command enum for typed callers.
    register(app.commands(), app.queries(), repository.clone())?;
    app.commands().register_aggregate::<Order>(repository)?;

    let read_model = OrderReadModel::open(&stores).await?;
    let topic = TopicName::new(ORDER_TOPIC)?;
    app.event_store_relay(EventStoreRelayOptions {
        checkpoint: RELAY_CHECKPOINT.to_string(),
        routing: TopicRouting::Category,
        filter: runnel::core::EventFilter::categories([<Order as runnel::Aggregate>::TYPE]),
        ..EventStoreRelayOptions::default()
    });

    let model = read_model.clone();
    let backend = stores.backend().clone();
    app.consumer(topic, GroupName::new(SUMMARY_GROUP)?, move |consumer| {
        let model = model.clone();
        let upcasters = Arc::clone(&upcasters);
        let consumer = consumer
            // The read model must see every order event, even those published before its
            // group first subscribed.
            .subscribe_options(crate::fulfillment::from_earliest())
            .retry(RetryPolicy {
                max_attempts: 5,
                ..RetryPolicy::default()
            })
            .handler(move |ctx: HandlerContext| {
                let model = model.clone();
                let upcasters = Arc::clone(&upcasters);
                async move { apply(&model, &upcasters, ctx).await }
            });
        match &backend {
            StoreBackend::Sqlite(store) => {
                consumer.inbox(Arc::new(SqliteInbox::new(store.clone())))
            }
            StoreBackend::Postgres(store) => consumer.inbox(Arc::new(PostgresInbox::new(store))),
            _ => consumer,
        }
    });
    let fulfillment = crate::fulfillment::wire(app, Arc::clone(&upcasters_for_saga), fulfillment)?;
    Ok(OrderService {
        read_model,
        fulfillment,
    })
}

/// The order id and the decoded (upcast) order event of a message on the `Order` topic.
pub fn decode_order_event(
    upcasters: &Upcasters,
    message: &runnel::core::Message,
) -> Result<(String, OrderEvent), HandlerError> {
    let order_id = message
        .key
        .as_deref()
        .and_then(|stream| stream.strip_prefix("Order-"))
        .ok_or_else(|| HandlerError::permanent(format!("message {} names no order", message.id)))?
        .to_string();
    let version = message
        .headers
        .get("runnelschemaversion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let payload: serde_json::Value =
        serde_json::from_slice(&message.payload).map_err(HandlerError::permanent)?;
    let (version, payload) = upcasters
        .upcast(&message.event_type, version, payload)
        .map_err(HandlerError::permanent)?;
    let event: OrderEvent = codec::decode_value(&message.event_type, version, payload)
        .map_err(HandlerError::permanent)?;
    Ok((order_id, event))
}

/// Applies one order event to the read model, in the inbox's scope.
async fn apply(
    model: &OrderReadModel,
    upcasters: &Upcasters,
    ctx: HandlerContext,
) -> Result<(), HandlerError> {
    let (order_id, event) = decode_order_event(upcasters, ctx.message())?;
    let event_id = ctx.message().id.clone();
    model
        .apply_in(&ctx, order_id, event_id, RowChange::of(&event))
        .await
}
