//! The order service over HTTP: every route of `runnel serve` (the event store, commands
//! and queries by name, the admin API, metrics, the dashboard) plus the service's own:
//!
//! | route | role | what it does |
//! |---|---|---|
//! | `POST /orders` | operator | places an order (`PlaceOrder` on the `Order` aggregate) → 202 with the order id, the correlation id every event and message of its fulfillment carries, and the position it committed at |
//! | `GET /orders/{id}` | viewer | the order as the read model has it (names, status, fulfillment progress); `Runnel-Min-Position: N` waits until the read model has applied `$all` up to N (read your own write) |
//! | `GET /faults` | viewer | the failures the services inject |
//! | `PUT /faults` | operator | changes them while the services run (e.g. clear a poison fault, then replay its dead letter) |
//!
//! Placing is idempotent with an `Idempotency-Key` header: the order id is derived from
//! the key (when the body names none), and sending the same key again answers with the
//! same order id and `Idempotent-Replayed: true` instead of a second order.

use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Json;
use runnel::app::App;
use runnel::core::{Metadata, Position};
use runnel::{CommandBus, CommandEnvelope};
use runnel_server::{
    Access, ApiKeys, AppRouteError, AppRoutes, Application, Problem, Role, ServedCatalog, Server,
    ServerConfig, ServerError,
};
use serde::{Deserialize, Serialize};

use crate::fulfillment::{Failures, Faults};
use crate::order::{Order, OrderCommand, OrderError, OrderLine};
use crate::read_model::{ReadModel, ReadModelError};

/// The header a reader sends to read its own write (the `position` of `POST /orders`).
pub const MIN_POSITION_HEADER: &str = "runnel-min-position";
/// The header that makes `POST /orders` idempotent.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Longest `Idempotency-Key` accepted, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 200;

/// What the service's routes reach.
#[derive(Clone)]
pub struct OrdersHttp {
    pub commands: CommandBus,
    pub read_model: ReadModel,
    pub faults: Faults,
}

/// `POST /orders`' body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    /// Default: derived from `Idempotency-Key`, else a new UUID.
    #[serde(default)]
    pub order_id: Option<String>,
    pub customer_id: String,
    pub items: Vec<OrderLine>,
    pub shipping_address: String,
    #[serde(default)]
    pub billing_address: Option<String>,
}

/// `POST /orders`' answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct OrderAccepted {
    pub order_id: String,
    /// Carried by every event and message the order's fulfillment causes.
    pub correlation_id: String,
    /// Where the `OrderPlaced` event committed in `$all` (send it back as
    /// `Runnel-Min-Position` to read the order as soon as the read model has it).
    pub position: Option<u64>,
    /// Where to read the order.
    pub location: String,
}

/// The service's routes (see the [module](self) docs).
pub fn routes(state: OrdersHttp) -> Result<AppRoutes, AppRouteError> {
    AppRoutes::new()
        .route(
            Method::POST,
            "/orders",
            Access::Role(Role::Operator),
            "Place an order; its fulfillment runs in the background",
            post(place).with_state(state.clone()),
        )?
        .route(
            Method::GET,
            "/orders/{id}",
            Access::Role(Role::Viewer),
            "One order as the read model has it (read-your-writes with Runnel-Min-Position)",
            get(show).with_state(state.clone()),
        )?
        .route(
            Method::GET,
            "/faults",
            Access::Role(Role::Viewer),
            "The failures the services inject",
            get(faults).with_state(state.clone()),
        )?
        .route(
            Method::PUT,
            "/faults",
            Access::Role(Role::Operator),
            "Change the failures the services inject while they run",
            put(set_faults).with_state(state),
        )
}

/// Binds the service's HTTP server on `bind` with `keys`, serving `app`'s buses, stores
/// and bus, its catalog, `/metrics`, and the [`routes`] of `state` (a process that runs
/// only services has none). Run it as the application's task:
/// `app.task("http", server.into_task())`.
pub async fn bind(
    app: &App,
    state: Option<OrdersHttp>,
    bind: SocketAddr,
    keys: ApiKeys,
) -> anyhow::Result<Server> {
    let metrics = runnel_server::metrics::install_recorder()?;
    let config = ServerConfig {
        bind,
        keys,
        metrics: Some(metrics),
        ..ServerConfig::local()
    };
    let server: Server = Server::bind_app(config, Application::of(app))
        .await
        .map_err(|e: ServerError| anyhow::Error::new(e))?;
    let server = server.with_catalog(ServedCatalog::new(
        &app.catalog(),
        "order-fulfillment",
        env!("CARGO_PKG_VERSION"),
    ));
    Ok(match state {
        Some(state) => server.with_routes(routes(state)?),
        None => server,
    })
}

fn bad_json(rejection: JsonRejection) -> Problem {
    Problem::bad_request(format!(
        "the body is not what this route takes: {rejection}"
    ))
}

async fn place(
    State(state): State<OrdersHttp>,
    headers: HeaderMap,
    body: Result<Json<PlaceOrderRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body.map_err(bad_json)?;
    let key = match headers.get(IDEMPOTENCY_KEY_HEADER) {
        None => None,
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_BYTES_MAX)
                .ok_or_else(|| {
                    Problem::bad_request(format!(
                        "Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters"
                    ))
                })?;
            Some(key.to_string())
        }
    };
    let order_id = match (&request.order_id, &key) {
        (Some(id), _) => id.clone(),
        (None, Some(key)) => {
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, key.as_bytes()).to_string()
        }
        (None, None) => uuid::Uuid::now_v7().to_string(),
    };
    let command_id = match &key {
        Some(key) => uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{order_id}/{key}").as_bytes(),
        )
        .to_string(),
        None => uuid::Uuid::now_v7().to_string(),
    };
    let envelope = CommandEnvelope::new(OrderCommand::Place {
        customer_id: request.customer_id,
        items: request.items,
        shipping_address: request.shipping_address,
        billing_address: request.billing_address,
    })
    .with_command_id(command_id.clone())
    .with_metadata(Metadata {
        correlation_id: Some(command_id.clone()),
        causation_id: Some(command_id.clone()),
        ..Metadata::default()
    });
    let accepted = |position: Option<u64>, replayed: bool| {
        let location = format!("/orders/{order_id}");
        let mut response = (
            StatusCode::ACCEPTED,
            Json(OrderAccepted {
                order_id: order_id.clone(),
                correlation_id: command_id.clone(),
                position,
                location: location.clone(),
            }),
        )
            .into_response();
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        if replayed {
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    };
    match state
        .commands
        .execute_envelope::<Order>(order_id.clone(), envelope)
        .await
    {
        Ok(outcome) => Ok(accepted(outcome.position.map(|p| p.get()), false)),
        Err(e) => match e.rejected() {
            // The same key again: the order it placed the first time.
            Some(OrderError::AlreadyPlaced) if key.is_some() => Ok(accepted(None, true)),
            Some(OrderError::AlreadyPlaced) => Err(Problem::new(
                StatusCode::CONFLICT,
                "order-exists",
                "The order exists",
                format!("order {order_id} has been placed already; use a new order id"),
            )),
            Some(refused) => Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "order-refused",
                "The order was refused",
                refused.to_string(),
            )),
            None => {
                tracing::warn!(order = %order_id, error = %e, "placing an order failed");
                Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store-unavailable",
                    "The order could not be stored",
                    format!("{e}; try again (with the same Idempotency-Key)"),
                )
                .retry_after(1))
            }
        },
    }
}

async fn show(
    State(state): State<OrdersHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    if let Some(value) = headers.get(MIN_POSITION_HEADER) {
        let position = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|p| *p > 0)
            .map(Position)
            .ok_or_else(|| {
                Problem::bad_request("Runnel-Min-Position must be a position (1 or more)")
            })?;
        state
            .read_model
            .wait_for(position)
            .await
            .map_err(read_failed)?;
    }
    match state
        .read_model
        .order_summary(&id)
        .await
        .map_err(read_failed)?
    {
        Some(summary) => Ok(Json(summary).into_response()),
        None => Err(Problem::not_found(
            "no-such-order",
            format!(
                "order {id} is not in the read model (not placed, or placed a moment ago: \
                 send Runnel-Min-Position to wait for it)"
            ),
        )),
    }
}

fn read_failed(e: ReadModelError) -> Problem {
    match e {
        ReadModelError::NotCaughtUp(wait) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "read-model-behind",
            "The read model has not caught up",
            wait.to_string(),
        )
        .retry_after(1),
        other => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "read-model-failed",
            "The read model cannot be read",
            other.to_string(),
        ),
    }
}

async fn faults(State(state): State<OrdersHttp>) -> Json<Failures> {
    Json(state.faults.get())
}

async fn set_faults(
    State(state): State<OrdersHttp>,
    body: Result<Json<Failures>, JsonRejection>,
) -> Result<Json<Failures>, Problem> {
    let Json(failures) = body.map_err(bad_json)?;
    state
        .faults
        .set(failures)
        .map_err(|e| Problem::bad_request(e.to_string()))?;
    let now = state.faults.get();
    tracing::info!(faults = ?now, "injected failures changed");
    Ok(Json(now))
}
