//! The OpenAPI 3.1 document of the server, served at `GET /openapi.json`.
//!
//! It is assembled from [`ROUTES`], so a route cannot exist undocumented: each entry
//! carries its operation (the `#[utoipa::path]` on its handler: parameters with their
//! limits, request body, success responses), and this module adds what the table itself
//! knows — the summary, the security requirement (bearer, from the route's [`Access`]),
//! the role in the description, and the `default` response every route has, an
//! `application/problem+json` [`Problem`](schemas::ProblemDoc). Schemas come from
//! `#[derive(ToSchema)]` on the request and response types; bodies built with
//! `serde_json::json!` are described by the structs in [`schemas`].

pub mod schemas;

use std::sync::OnceLock;

use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{HttpMethod, Operation, Parameter, ParameterIn, Paths};
use utoipa::openapi::schema::{Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, InfoBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

use crate::problem::PROBLEM_CONTENT_TYPE;
use crate::routes::{Access, Route, ROUTES};

/// The name of the bearer security scheme in the document.
pub const SECURITY_SCHEME: &str = "bearer";

/// A route's operation as its handler's `#[utoipa::path]` describes it.
#[derive(Clone, Copy)]
pub struct OperationDoc {
    /// The path the attribute names (checked against the route's in a test).
    pub(crate) path: fn() -> String,
    pub(crate) methods: fn() -> Vec<HttpMethod>,
    pub(crate) operation: fn() -> Operation,
}

/// The [`OperationDoc`] of a handler: `doc::<events::__path_append>()`.
pub(crate) const fn doc<P: utoipa::Path>() -> OperationDoc {
    OperationDoc {
        path: P::path,
        methods: P::methods,
        operation: P::operation,
    }
}

/// The schemas of the document's components (each brings the schemas it refers to).
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(
    schemas::ProblemDoc,
    schemas::CatalogDoc,
    schemas::Liveness,
    schemas::Readiness,
    schemas::CommandNames,
    schemas::Completed,
    schemas::DeadLetterCounts,
    schemas::DeadLetterPage,
    schemas::DeadLetterView,
    schemas::ReplayReport,
    schemas::Purged,
    schemas::OutboxBacklog,
    schemas::RetriedParked,
    schemas::Consumers,
    schemas::SagaPage,
    schemas::SagaDetail,
    schemas::SagaInstance,
    schemas::ProjectionGenerations,
    schemas::ProjectionDetail,
    schemas::ProjectionActionDone,
    schemas::RebuildStarted,
    crate::admin::stream_jobs::JobList,
    crate::admin::stream_jobs::JobView,
    crate::admin::stream_jobs::ResetStarted,
    crate::events::EventIn,
    crate::events::AppendOut,
    crate::events::EventOut,
    crate::events::StreamPage,
    crate::events::AllPage,
    crate::events::StreamsPage,
    crate::commands::Accepted,
    crate::admin::dead_letters::FilterIn,
    crate::admin::dead_letters::RetryOneIn,
    crate::admin::dead_letters::RetryManyIn,
    crate::admin::dead_letters::PurgeIn,
    crate::admin::outbox::RetryParkedIn,
    crate::operations::OperationView,
    crate::admin::whoami::Whoami,
)))]
struct Components;

/// The HTTP method of a route, as OpenAPI names it.
fn http_method(method: &Method) -> HttpMethod {
    match *method {
        Method::GET => HttpMethod::Get,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::DELETE => HttpMethod::Delete,
        Method::PATCH => HttpMethod::Patch,
        Method::HEAD => HttpMethod::Head,
        Method::OPTIONS => HttpMethod::Options,
        _ => HttpMethod::Trace,
    }
}

/// A unique operation id from the method and the path template:
/// `post_streams_stream`, `get_admin_dead_letters_id`.
fn operation_id(route: &Route) -> String {
    let mut id = route.method.as_str().to_ascii_lowercase();
    for part in route.path.split('/').filter(|p| !p.is_empty()) {
        id.push('_');
        id.extend(part.chars().filter(|c| !matches!(c, '{' | '}')).map(|c| {
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '_'
            }
        }));
    }
    // `/dashboard/` beside `/dashboard`: the trailing slash is part of the id.
    if route.path.len() > 1 && route.path.ends_with('/') {
        id.push_str("_index");
    }
    id
}

/// The tag of a route: its first path segment (`admin` routes by their second).
fn tag(route: &Route) -> String {
    let mut parts = route.path.split('/').filter(|p| !p.is_empty());
    match parts.next() {
        Some("admin") => format!("admin/{}", parts.next().unwrap_or("")),
        Some("healthz" | "readyz") => "probes".into(),
        Some(first) => first.trim_end_matches(".json").to_string(),
        None => "root".into(),
    }
}

/// A header or path parameter is absent or a string, never `null` (utoipa makes an
/// `Option` nullable everywhere but in the query string).
fn not_nullable(param: &mut Parameter) {
    if let Some(RefOr::T(Schema::Object(object))) = param.schema.as_mut() {
        if let SchemaType::Array(types) = &object.schema_type {
            let rest: Vec<Type> = types
                .iter()
                .filter(|t| **t != Type::Null)
                .cloned()
                .collect();
            if let [only] = rest.as_slice() {
                object.schema_type = SchemaType::Type(only.clone());
            }
        }
    }
}

fn operation(route: &Route) -> Operation {
    let mut op = (route.doc.operation)();
    op.summary = Some(route.summary.to_string());
    op.operation_id = Some(operation_id(route));
    op.tags = Some(vec![tag(route)]);
    let who = match route.access {
        Access::Public => "Public: no key needed.".to_string(),
        Access::Role(role) => {
            op.security = Some(vec![SecurityRequirement::new(
                SECURITY_SCHEME,
                Vec::<String>::new(),
            )]);
            format!("Needs a key with the role `{role}` or higher.")
        }
    };
    op.description = Some(match op.description.take() {
        Some(d) if !d.is_empty() => format!("{d}\n\n{who}"),
        _ => who,
    });
    for param in op.parameters.iter_mut().flatten() {
        if param.parameter_in != ParameterIn::Query {
            not_nullable(param);
        }
    }
    op.responses
        .responses
        .entry("default".to_string())
        .or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(
                        "A refusal or failure: an RFC 9457 problem (400 malformed, 401/403 \
                         keys and roles, 404, 405, 409 conflict, 413, 415, 422, 429, 503).",
                    )
                    .content(
                        PROBLEM_CONTENT_TYPE,
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Problem")))
                            .build(),
                    )
                    .build(),
            )
        });
    op
}

/// Builds the document from [`ROUTES`].
pub fn build() -> OpenApi {
    let mut doc = <Components as utoipa::OpenApi>::openapi();
    doc.info = InfoBuilder::new()
        .title("runnel serve")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "The Runnel event store over HTTP: appends with optimistic concurrency, reads, \
             live subscriptions (SSE), commands and queries by name, and the admin API. \
             Errors are application/problem+json. See docs/server.md.",
        ))
        .build();
    let mut paths = Paths::new();
    for route in ROUTES {
        // The handler's attribute names the same route (also a test, for release builds).
        debug_assert!(
            (route.doc.path)() == route.path
                && (route.doc.methods)() == vec![http_method(&route.method)],
            "the #[utoipa::path] of {} {} names another route",
            route.method,
            route.path
        );
        paths.add_path_operation(
            route.path,
            vec![http_method(&route.method)],
            operation(route),
        );
    }
    doc.paths = paths;
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        SECURITY_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API key: `Authorization: Bearer KEY`. Roles: viewer < operator < admin.",
                ))
                .build(),
        ),
    );
    doc
}

/// The document as JSON, built once.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        build()
            .to_json()
            .expect("the OpenAPI document serializes to JSON")
    })
}

/// `GET /openapi.json`: this API as an OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((
        status = 200,
        description = "The OpenAPI 3.1 document of this server",
        content_type = "application/json",
        body = Object,
    ))
)]
pub async fn serve() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document_json(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_handler_documents_the_path_and_method_of_its_route() {
        for route in ROUTES {
            assert_eq!(
                (route.doc.path)(),
                route.path,
                "{} {}",
                route.method,
                route.path
            );
            assert!(
                (route.doc.methods)() == vec![http_method(&route.method)],
                "{} {}",
                route.method,
                route.path
            );
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let mut ids: Vec<String> = ROUTES.iter().map(operation_id).collect();
        ids.sort();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n);
    }
}
