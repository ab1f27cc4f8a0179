//! The order service, wired on the application runtime: the `Order`, `Customer` and
//! `Product` aggregates behind the command bus; the [read model](crate::read_model) (three
//! projections from `$all`: customers, products and enriched order summaries) behind the
//! query bus; the event store as the outbox (every order event published to topic
//! `Order`, keyed by the order's stream); fulfillment; and the [analytics](crate::analytics)
//! stream jobs (revenue per product per minute, orders not paid in time) behind two more
//! queries.
//!
//! The read model's projections read the event store, not the bus: they live in the
//! store's database, so each commits its checkpoint with its rows (exactly once, no
//! inbox needed) and can be rebuilt from history; the bus carries the order events to
//! the services that live elsewhere (fulfillment).
//!
//! These functions are the whole wiring; `main.rs` only chooses the backends.

use std::sync::Arc;

use runnel::app::App;
use runnel::catalog::{Catalog, CatalogError};
use runnel::connect::SettingsInputs;
use runnel::consumer::HandlerError;
use runnel::core::codec;
use runnel::core::outbox::TopicRouting;
use runnel::outbox::EventStoreRelayOptions;
use runnel::projection::{OnFailure, RunnerOptions};
use runnel::saga::SagaRuntime;
use runnel::{DispatchError, Upcasters};

use crate::analytics::{self, Analytics, GetRevenuePerProduct, ListUnpaidOrders};
use crate::commands::{CancelOrder, ConfirmOrder, DeliverOrder, PlaceOrder, ShipOrder};
use crate::customer::{Customer, RegisterCustomer, RenameCustomer};
use crate::fulfillment::{Fulfillment, FulfillmentConfig, PaymentEvent};
use crate::order::{Order, OrderEvent};
use crate::product::Product;
use crate::product::{AddProduct, RenameProduct};
use crate::queries::{FindOrdersByCustomerName, GetOrder, GetOrderSummary};
use crate::read_model::{self, ReadModel};
use crate::{order_repository, register, register_catalog, register_read_model_queries, upcasters};

/// The topic every order event is published to (the aggregate type: one topic per
/// category keeps one order's events in order).
pub const ORDER_TOPIC: &str = "Order";
/// The event store relay's checkpoint.
pub const RELAY_CHECKPOINT: &str = "order-service-relay";

type WireError = Box<dyn std::error::Error + Send + Sync>;

/// The wired service: what callers use once the application runs.
#[derive(Clone)]
pub struct OrderService {
    /// The enriched order summaries (also on the query bus).
    pub read_model: ReadModel,
    /// The fulfillment saga's runtime.
    pub fulfillment: SagaRuntime<Fulfillment>,
    /// The analytics jobs' results (also on the query bus).
    pub analytics: Analytics,
}

/// Which parts of the order flow a process runs. Processes that share one store and one
/// broker split the work: consumer groups share messages, leases give each projection,
/// relay and saga timer one runner at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parts {
    /// The order service: commands, the read model, the event store relay, the
    /// fulfillment saga, the analytics jobs (and, over HTTP, `/orders`).
    pub orders: bool,
    /// The services it runs, of [`SERVICE_GROUPS`](crate::fulfillment::SERVICE_GROUPS).
    pub services: Vec<&'static str>,
}

/// A `--parts` list that names something else.
#[derive(Debug, thiserror::Error)]
#[error("unknown part {0:?}: the parts are orders, inventory, payments and shipping")]
pub struct UnknownPart(String);

impl Parts {
    /// Everything: one process runs the whole flow (the embedded default).
    pub fn all() -> Parts {
        Parts {
            orders: true,
            services: crate::fulfillment::SERVICE_GROUPS.to_vec(),
        }
    }

    /// Parts from their names (`orders`, `inventory`, `payments`, `shipping`).
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Parts, UnknownPart> {
        let mut parts = Parts {
            orders: false,
            services: Vec::new(),
        };
        for name in names {
            let name = name.trim();
            if name == "orders" {
                parts.orders = true;
            } else if let Some(service) = crate::fulfillment::SERVICE_GROUPS
                .into_iter()
                .find(|s| *s == name)
            {
                if !parts.services.contains(&service) {
                    parts.services.push(service);
                }
            } else {
                return Err(UnknownPart(name.to_string()));
            }
        }
        Ok(parts)
    }
}

/// Wires `parts` of the order flow into `app`: with `orders`, the whole order service
/// ([`wire_with`]) and the services `parts` names; without, only those services. The
/// order service is returned when this process runs it.
pub async fn wire_parts(
    app: &mut App,
    parts: &Parts,
    mut fulfillment: FulfillmentConfig,
) -> Result<Option<OrderService>, WireError> {
    fulfillment.services = parts.services.clone();
    if parts.orders {
        return Ok(Some(wire_with(app, fulfillment).await?));
    }
    describe(app, &upcasters()?)?;
    crate::fulfillment::wire_services(app, &fulfillment)?;
    Ok(None)
}

/// Wires the order service into `app` with default fulfillment (no injected failures):
/// see [`wire_with`].
pub async fn wire(app: &mut App) -> Result<OrderService, WireError> {
    wire_with(app, FulfillmentConfig::default()).await
}

/// Wires the order service into `app`: commands ([`wire_commands`]), the read model and
/// its queries ([`wire_read_model`]), the event store as outbox, fulfillment (the saga
/// and the services it talks to), and the analytics stream jobs with their queries.
pub async fn wire_with(
    app: &mut App,
    fulfillment: FulfillmentConfig,
) -> Result<OrderService, WireError> {
    let upcasters = Arc::new(upcasters()?);
    describe(app, &upcasters)?;
    wire_commands(app, &upcasters)?;
    let read_model = wire_read_model(app, &upcasters).await?;
    app.event_store_relay(EventStoreRelayOptions {
        checkpoint: RELAY_CHECKPOINT.to_string(),
        routing: TopicRouting::Category,
        filter: runnel::core::EventFilter::categories([<Order as runnel::Aggregate>::TYPE]),
        ..EventStoreRelayOptions::default()
    });
    let fulfillment = crate::fulfillment::wire(app, Arc::clone(&upcasters), fulfillment)?;
    let analytics = analytics::wire(app, &upcasters).await?;
    Ok(OrderService {
        read_model,
        fulfillment,
        analytics,
    })
}

/// Describes the service's schemas in the application's catalog (`GET /catalog`, the
/// AsyncAPI document, `schema check`): the three aggregates' events, the payment ledger's
/// events, the upcasters, and the commands' and queries' payloads.
pub fn describe(app: &mut App, upcasters: &Upcasters) -> Result<(), CatalogError> {
    app.describe_aggregate::<Order>()?
        .describe_aggregate::<Customer>()?
        .describe_aggregate::<Product>()?
        .describe_events::<PaymentEvent>()?
        .describe_upcasters(upcasters)
        .describe_command::<PlaceOrder>()?
        .describe_command::<ConfirmOrder>()?
        .describe_command::<CancelOrder>()?
        .describe_command::<ShipOrder>()?
        .describe_command::<DeliverOrder>()?
        .describe_command::<RegisterCustomer>()?
        .describe_command::<RenameCustomer>()?
        .describe_command::<AddProduct>()?
        .describe_command::<RenameProduct>()?
        .describe_query::<GetOrder>()?
        .describe_query::<GetOrderSummary>()?
        .describe_query::<FindOrdersByCustomerName>()?
        .describe_query::<GetRevenuePerProduct>()?
        .describe_query::<ListUnpaidOrders>()?;
    Ok(())
}

/// Registers the commands: the per-command bus types (`PlaceOrder`, …, `RegisterCustomer`,
/// `AddProduct`, …) for dispatch by name, the aggregates' own command enums for typed
/// callers, and the `GetOrder` query (which loads the aggregate).
pub fn wire_commands(app: &App, upcasters: &Arc<Upcasters>) -> Result<(), DispatchError> {
    let stores = app.stores();
    let orders = order_repository(
        Arc::clone(&stores.events),
        Some(Arc::clone(&stores.snapshots)),
        Arc::clone(upcasters),
    );
    register(app.commands(), app.queries(), orders.clone())?;
    app.commands().register_aggregate::<Order>(orders)?;
    register_catalog(
        app.commands(),
        app.repository::<Customer>(),
        app.repository::<Product>(),
    )
}

/// Registers the read model: its three projections as tasks of `app` (a failing event is
/// parked as a dead letter naming its projection, which goes on), and `GetOrderSummary`
/// and `FindOrdersByCustomerName` on the query bus.
pub async fn wire_read_model(
    app: &mut App,
    upcasters: &Arc<Upcasters>,
) -> Result<ReadModel, WireError> {
    let projections = read_model::projections(upcasters);
    let model = ReadModel::open(app.stores(), &projections).await?;
    for projection in projections {
        app.projection_with(
            projection,
            RunnerOptions {
                on_failure: OnFailure::Park,
                ..RunnerOptions::default()
            },
        );
    }
    register_read_model_queries(app.queries(), model.clone())?;
    Ok(model)
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

/// The service's catalog, from a wiring on a scratch embedded store (a fresh SQLite file
/// in the temporary directory, removed afterwards): what `schema` commands and the
/// AsyncAPI test read, without touching the configured store or bus.
pub async fn catalog() -> Result<Catalog, WireError> {
    let dir = std::env::temp_dir().join(format!(
        "order-fulfillment-catalog-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let result = async {
        let settings = SettingsInputs::gather(&dir)?
            .db("--db", Some(dir.join("catalog.db")))
            .bus("--bus", Some("embedded".to_string()))
            .resolve()?;
        let mut app = App::connect(&settings).await?;
        wire(&mut app).await?;
        Ok::<_, WireError>(app.catalog())
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
