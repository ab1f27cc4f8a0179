//! Every route, with the permission it needs, in one table ([`ROUTES`]); the router is
//! built from it, so a route cannot exist without declaring who may call it.
//!
//! Authorisation fails closed: a route's guard lets a request through only when the
//! route is [`Access::Public`] or the caller's key has at least the route's role. With no
//! key configured (an open server, loopback only) every caller is `anonymous` with the
//! admin role. Every request that may change something (any method but GET) is logged at
//! info on the `runnel_server::audit` target with the key's name, the route and the
//! status.

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{self, MethodRouter};
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;

use crate::admin::{consumers, dead_letters, outbox, processors, stream_jobs, whoami};
use crate::auth::{forbidden, unauthorized, Caller, Role};
use crate::openapi::{self, doc, OperationDoc};
use crate::problem::{Problem, PROBLEM_CONTENT_TYPE};
use crate::state::AppState;
use crate::{catalog, commands, dashboard, events, health, metrics, queries, sse};

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a key (the liveness and readiness probes, the OpenAPI document and
    /// the dashboard's files, none of which holds data).
    Public,
    /// A key with at least this role.
    Role(Role),
}

/// One route: method, path (axum syntax), who may call it, and its handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    /// One line for documentation and the OpenAPI summary.
    pub summary: &'static str,
    /// The route's OpenAPI operation (`#[utoipa::path]` on its handler): parameters,
    /// bodies, success responses. [`crate::openapi`] adds the summary, the security
    /// requirement (from `access`) and the problem response every route has.
    pub(crate) doc: OperationDoc,
    handler: fn() -> MethodRouter<AppState>,
}

/// Every route of the server.
pub static ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/openapi.json",
        // The document describes the API and holds no data.
        access: Access::Public,
        summary: "This API as an OpenAPI 3.1 document",
        doc: doc::<openapi::__path_serve>(),
        handler: || routing::get(openapi::serve),
    },
    Route {
        method: Method::GET,
        path: "/healthz",
        access: Access::Public,
        summary: "The process is alive",
        doc: doc::<health::__path_healthz>(),
        handler: || routing::get(health::healthz),
    },
    Route {
        method: Method::GET,
        path: "/readyz",
        access: Access::Public,
        summary: "The store is reachable",
        doc: doc::<health::__path_readyz>(),
        handler: || routing::get(health::readyz),
    },
    Route {
        method: Method::GET,
        path: "/dashboard",
        // The page and its files hold no data: the browser reads the API with the key
        // the user enters, and each of those requests is checked like any other.
        access: Access::Public,
        summary: "The web dashboard (a page that reads this API with your key)",
        doc: doc::<dashboard::__path_index>(),
        handler: || routing::get(dashboard::index),
    },
    Route {
        method: Method::GET,
        path: "/dashboard/",
        access: Access::Public,
        summary: "The web dashboard (the same page as /dashboard)",
        doc: doc::<dashboard::__path_index_slash>(),
        handler: || routing::get(dashboard::index_slash),
    },
    Route {
        method: Method::GET,
        path: "/dashboard/{asset}",
        access: Access::Public,
        summary: "One embedded file of the web dashboard",
        doc: doc::<dashboard::__path_asset>(),
        handler: || routing::get(dashboard::asset),
    },
    Route {
        method: Method::POST,
        path: "/streams/{stream}",
        access: Access::Role(Role::Operator),
        summary: "Append events to a stream (Runnel-Expected-Revision)",
        doc: doc::<events::__path_append>(),
        handler: || routing::post(events::append),
    },
    Route {
        method: Method::GET,
        path: "/streams/{stream}",
        access: Access::Role(Role::Viewer),
        summary: "Read a stream forward or backward, one page",
        doc: doc::<events::__path_read_stream>(),
        handler: || routing::get(events::read_stream),
    },
    Route {
        method: Method::GET,
        path: "/streams",
        access: Access::Role(Role::Viewer),
        summary: "List streams, optionally of one category",
        doc: doc::<events::__path_list_streams>(),
        handler: || routing::get(events::list_streams),
    },
    Route {
        method: Method::GET,
        path: "/all",
        access: Access::Role(Role::Viewer),
        summary: "Read $all after a position, optionally filtered",
        doc: doc::<events::__path_read_all>(),
        handler: || routing::get(events::read_all),
    },
    Route {
        method: Method::GET,
        path: "/subscribe/all",
        access: Access::Role(Role::Viewer),
        summary: "Subscribe to $all over SSE: catch-up then live",
        doc: doc::<sse::__path_subscribe_all>(),
        handler: || routing::get(sse::subscribe_all),
    },
    Route {
        method: Method::GET,
        path: "/subscribe/streams/{stream}",
        access: Access::Role(Role::Viewer),
        summary: "Subscribe to one stream over SSE: catch-up then live",
        doc: doc::<sse::__path_subscribe_stream>(),
        handler: || routing::get(sse::subscribe_stream),
    },
    Route {
        method: Method::GET,
        path: "/commands",
        access: Access::Role(Role::Viewer),
        summary: "The names of the registered commands",
        doc: doc::<commands::__path_list>(),
        handler: || routing::get(commands::list),
    },
    Route {
        method: Method::POST,
        path: "/commands/{name}",
        access: Access::Role(Role::Operator),
        summary: "Send a command by name (Idempotency-Key, Prefer: wait=N)",
        doc: doc::<commands::__path_send>(),
        handler: || routing::post(commands::send),
    },
    Route {
        method: Method::GET,
        path: "/commands/{name}/{id}",
        access: Access::Role(Role::Operator),
        summary: "The outcome of a command sent earlier",
        doc: doc::<commands::__path_outcome>(),
        handler: || routing::get(commands::outcome),
    },
    Route {
        method: Method::POST,
        path: "/queries/{name}",
        access: Access::Role(Role::Viewer),
        summary: "Run a query by name (Runnel-Min-Position: read your writes)",
        doc: doc::<queries::__path_run>(),
        handler: || routing::post(queries::run),
    },
    Route {
        method: Method::GET,
        path: "/admin/whoami",
        access: Access::Role(Role::Viewer),
        summary: "The caller's key name and role",
        doc: doc::<whoami::__path_whoami>(),
        handler: || routing::get(whoami::whoami),
    },
    Route {
        method: Method::GET,
        path: "/admin/dead-letters/summary",
        access: Access::Role(Role::Viewer),
        summary: "Dead letters counted by topic, group and error type",
        doc: doc::<dead_letters::__path_summary>(),
        handler: || routing::get(dead_letters::summary),
    },
    Route {
        method: Method::GET,
        path: "/admin/dead-letters",
        access: Access::Role(Role::Viewer),
        summary: "Dead letters, one page after a cursor (no bodies)",
        doc: doc::<dead_letters::__path_list>(),
        handler: || routing::get(dead_letters::list),
    },
    Route {
        method: Method::GET,
        path: "/admin/dead-letters/{id}",
        access: Access::Role(Role::Viewer),
        summary: "One dead letter with its failures (its body for operators)",
        doc: doc::<dead_letters::__path_show>(),
        handler: || routing::get(dead_letters::show),
    },
    Route {
        method: Method::POST,
        path: "/admin/dead-letters/{id}/retry",
        access: Access::Role(Role::Operator),
        summary: "Publish one dead letter again",
        doc: doc::<dead_letters::__path_retry_one>(),
        handler: || routing::post(dead_letters::retry_one),
    },
    Route {
        method: Method::POST,
        path: "/admin/dead-letters/retry",
        access: Access::Role(Role::Operator),
        summary: "Retry every match of a filter as a background operation",
        doc: doc::<dead_letters::__path_retry_many>(),
        handler: || routing::post(dead_letters::retry_many),
    },
    Route {
        method: Method::POST,
        path: "/admin/dead-letters/purge",
        access: Access::Role(Role::Admin),
        summary: "Delete the matches of a filter dead-lettered before a time",
        doc: doc::<dead_letters::__path_purge>(),
        handler: || routing::post(dead_letters::purge),
    },
    Route {
        method: Method::GET,
        path: "/admin/operations",
        access: Access::Role(Role::Viewer),
        summary: "Background operations, newest first",
        doc: doc::<dead_letters::__path_operations>(),
        handler: || routing::get(dead_letters::operations),
    },
    Route {
        method: Method::GET,
        path: "/admin/operations/{id}",
        access: Access::Role(Role::Viewer),
        summary: "One background operation's progress",
        doc: doc::<dead_letters::__path_operation>(),
        handler: || routing::get(dead_letters::operation),
    },
    Route {
        method: Method::POST,
        path: "/admin/operations/{id}/cancel",
        access: Access::Role(Role::Operator),
        summary: "Cancel a running background operation",
        doc: doc::<dead_letters::__path_cancel_operation>(),
        handler: || routing::post(dead_letters::cancel_operation),
    },
    Route {
        method: Method::GET,
        path: "/admin/outbox",
        access: Access::Role(Role::Viewer),
        summary: "The outbox backlog: pending, parked, oldest age, per topic",
        doc: doc::<outbox::__path_status>(),
        handler: || routing::get(outbox::status),
    },
    Route {
        method: Method::POST,
        path: "/admin/outbox/retry-parked",
        access: Access::Role(Role::Operator),
        summary: "Make parked outbox rows claimable again",
        doc: doc::<outbox::__path_retry_parked>(),
        handler: || routing::post(outbox::retry_parked),
    },
    Route {
        method: Method::GET,
        path: "/admin/consumers",
        access: Access::Role(Role::Viewer),
        summary: "This process's consumer groups: lag in messages and seconds",
        doc: doc::<consumers::__path_list>(),
        handler: || routing::get(consumers::list),
    },
    Route {
        method: Method::GET,
        path: "/admin/sagas",
        access: Access::Role(Role::Viewer),
        summary: "Saga instances by kind and status, one page",
        doc: doc::<processors::__path_sagas>(),
        handler: || routing::get(processors::sagas),
    },
    Route {
        method: Method::GET,
        path: "/admin/sagas/{kind}/{id}",
        access: Access::Role(Role::Viewer),
        summary: "One saga instance with its history and timers",
        doc: doc::<processors::__path_saga>(),
        handler: || routing::get(processors::saga),
    },
    Route {
        method: Method::POST,
        path: "/admin/sagas/{kind}/{id}/{action}",
        access: Access::Role(Role::Operator),
        summary: "Retry, skip a step of, or compensate a saga instance",
        doc: doc::<processors::__path_saga_action>(),
        handler: || routing::post(processors::saga_action),
    },
    Route {
        method: Method::GET,
        path: "/admin/projections",
        access: Access::Role(Role::Viewer),
        summary: "Every projection generation with its lag",
        doc: doc::<processors::__path_projections>(),
        handler: || routing::get(processors::projections),
    },
    Route {
        method: Method::GET,
        path: "/admin/projections/{name}",
        access: Access::Role(Role::Viewer),
        summary: "One projection's generations and rebuild progress",
        doc: doc::<processors::__path_projection>(),
        handler: || routing::get(processors::projection),
    },
    Route {
        method: Method::POST,
        path: "/admin/projections/{name}/{action}",
        access: Access::Role(Role::Operator),
        summary: "Pause, resume, retry, skip, rebuild or drop old generations",
        doc: doc::<processors::__path_projection_action>(),
        handler: || routing::post(processors::projection_action),
    },
    Route {
        method: Method::GET,
        path: "/admin/processors",
        access: Access::Role(Role::Viewer),
        summary: "Every stream job: position, lag, watermark, late records, state size",
        doc: doc::<stream_jobs::__path_list>(),
        handler: || routing::get(stream_jobs::list),
    },
    Route {
        method: Method::GET,
        path: "/admin/processors/{name}",
        access: Access::Role(Role::Viewer),
        summary: "One stream job's status",
        doc: doc::<stream_jobs::__path_status>(),
        handler: || routing::get(stream_jobs::status),
    },
    Route {
        method: Method::POST,
        path: "/admin/processors/{name}/reset",
        access: Access::Role(Role::Operator),
        summary: "Start a stream job over from the beginning of $all (results emitted again)",
        doc: doc::<stream_jobs::__path_reset>(),
        handler: || routing::post(stream_jobs::reset),
    },
    Route {
        method: Method::GET,
        path: "/metrics",
        // Counts and durations only, never a body or an id: a viewer key is enough, so
        // the key Prometheus scrapes with cannot change anything.
        access: Access::Role(Role::Viewer),
        summary: "Every metric of the process, Prometheus text format",
        doc: doc::<metrics::__path_render>(),
        handler: || routing::get(metrics::render),
    },
    Route {
        method: Method::GET,
        path: "/catalog",
        // Schemas and names only, never a message body.
        access: Access::Role(Role::Viewer),
        summary: "The catalog: event types with schema versions and JSON Schemas, commands, queries, topics",
        doc: doc::<catalog::__path_catalog>(),
        handler: || routing::get(catalog::catalog),
    },
    Route {
        method: Method::GET,
        path: "/asyncapi.json",
        access: Access::Role(Role::Viewer),
        summary: "The AsyncAPI 3.0 document of the catalog",
        doc: doc::<catalog::__path_asyncapi>(),
        handler: || routing::get(catalog::asyncapi),
    },
];

/// A route an application adds to the server ([`AppRoutes`]), e.g. `POST /orders`: the
/// same guard (key, role, audit log), limits, metrics and tracing as the server's own.
#[derive(Clone)]
pub struct AppRoute {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    /// One line for documentation.
    pub summary: &'static str,
    handler: MethodRouter,
}

/// Routes of an application served beside the server's own
/// ([`Server::with_routes`](crate::Server::with_routes)). Each declares who may call it,
/// like every route of [`ROUTES`]; a path the server already serves is refused.
///
/// ```
/// use axum::http::Method;
/// use axum::routing::get;
/// use runnel_server::{Access, AppRoutes, Role};
///
/// let routes = AppRoutes::new()
///     .route(Method::GET, "/hello", Access::Role(Role::Viewer), "Says hello", get(|| async { "hello" }))
///     .expect("a new path");
/// assert_eq!(routes.iter().count(), 1);
/// ```
#[derive(Clone, Default)]
pub struct AppRoutes {
    routes: Vec<AppRoute>,
}

/// An application route that cannot be added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppRouteError {
    /// The server (or an earlier application route) already serves this method and path.
    #[error("{method} {path} is already a route of the server; choose another path")]
    Taken { method: Method, path: &'static str },
    /// The path does not start with `/`.
    #[error("route path {path:?} must start with '/'")]
    BadPath { path: &'static str },
}

impl AppRoutes {
    /// No routes.
    pub fn new() -> AppRoutes {
        AppRoutes::default()
    }

    /// Adds `handler` (its own state already applied) for `method` on `path` (axum
    /// syntax), callable by `access`.
    pub fn route(
        mut self,
        method: Method,
        path: &'static str,
        access: Access,
        summary: &'static str,
        handler: MethodRouter,
    ) -> Result<AppRoutes, AppRouteError> {
        if !path.starts_with('/') {
            return Err(AppRouteError::BadPath { path });
        }
        let taken = ROUTES
            .iter()
            .map(|r| (&r.method, r.path))
            .chain(self.routes.iter().map(|r| (&r.method, r.path)))
            .any(|(m, p)| *m == method && p == path);
        if taken {
            return Err(AppRouteError::Taken { method, path });
        }
        self.routes.push(AppRoute {
            method,
            path,
            access,
            summary,
            handler,
        });
        Ok(self)
    }

    /// The routes, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = &AppRoute> {
        self.routes.iter()
    }
}

#[derive(Clone)]
struct Guard {
    state: AppState,
    method: Method,
    path: &'static str,
    access: Access,
}

async fn guard(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    let required = match g.access {
        Access::Public => return next.run(req).await,
        Access::Role(role) => role,
    };
    let caller = match g.state.inner.keys.caller(req.headers()) {
        Ok(Some(caller)) => caller,
        Ok(None) if g.state.inner.keys.is_empty() => Caller::anonymous(),
        Ok(None) => return challenge(unauthorized("no API key was sent")),
        Err(problem) => return challenge(problem),
    };
    if caller.role < required {
        tracing::info!(
            target: "runnel_server::audit",
            key = %caller.name, role = %caller.role, method = %g.method,
            route = g.path, "refused: role too low"
        );
        return forbidden(&caller, required).into_response();
    }
    // What was changed: the concrete path (the stream), not only the route.
    let changed_path = (req.method() != Method::GET).then(|| req.uri().path().to_string());
    req.extensions_mut().insert(caller.clone());
    let response = next.run(req).await;
    if let Some(path) = changed_path {
        tracing::info!(
            target: "runnel_server::audit",
            key = %caller.name, role = %caller.role, method = %g.method,
            route = g.path, path = %path, status = response.status().as_u16(), "request"
        );
    }
    response
}

fn challenge(problem: Problem) -> Response {
    let mut response = problem.into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn not_found() -> Problem {
    Problem::not_found(
        "no-such-route",
        "no route matches this path; see docs/server.md",
    )
}

/// A bare 413 from the body limit (sent before any handler ran) becomes a problem too.
async fn problem_bodies(req: Request, next: Next) -> Response {
    let limit_hint = req
        .extensions()
        .get::<BodyLimit>()
        .map(|l| l.0)
        .unwrap_or_default();
    let response = next.run(req).await;
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_CONTENT_TYPE.as_bytes());
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE if !is_problem => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "The request body is over the limit",
            format!("request bodies are limited to {limit_hint} bytes; split the append"),
        )
        .with("limit_bytes", limit_hint as u64)
        .into_response(),
        StatusCode::METHOD_NOT_ALLOWED if !is_problem => Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this path does not take this method; see docs/server.md",
        )
        .into_response(),
        _ => response,
    }
}

#[derive(Clone, Copy)]
struct BodyLimit(usize);

/// The router: every route of [`ROUTES`] behind its guard, a problem for unknown paths,
/// the body limit, and the request duration histogram around all of it.
pub fn router(state: AppState) -> Router {
    router_with(state, &AppRoutes::new())
}

/// [`router`] with an application's own routes beside the server's, behind the same
/// guard and layers.
pub fn router_with(state: AppState, app_routes: &AppRoutes) -> Router {
    let body_bytes_max = state.inner.limits.body_bytes_max;
    let guard_of = |method: &Method, path: &'static str, access: Access| Guard {
        state: state.clone(),
        method: method.clone(),
        path,
        access,
    };
    let mut router = Router::new();
    for route in ROUTES {
        let guarded = (route.handler)().route_layer(middleware::from_fn_with_state(
            guard_of(&route.method, route.path, route.access),
            guard,
        ));
        router = router.route(route.path, guarded);
    }
    let mut router: Router = router.with_state(state.clone());
    for route in app_routes.iter() {
        let guarded = route
            .handler
            .clone()
            .route_layer(middleware::from_fn_with_state(
                guard_of(&route.method, route.path, route.access),
                guard,
            ));
        router = router.route(route.path, guarded);
    }
    // Layers run outside in: the problem rewrite sees what the body limit answers.
    router
        .fallback(not_found)
        // axum's own default (2 MiB) would refuse appends the store accepts; the tower-http
        // layer below is the one limit.
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .layer(RequestBodyLimitLayer::new(body_bytes_max))
        .layer(middleware::from_fn(problem_bodies))
        .layer(axum::Extension(BodyLimit(body_bytes_max)))
        // Outermost: the time includes refusals (401, 403, 413) and the route template
        // is known here (axum has matched the route before any `Router::layer` runs).
        .layer(middleware::from_fn(metrics::request_duration))
        .layer(middleware::from_fn(crate::trace::server_span))
}
