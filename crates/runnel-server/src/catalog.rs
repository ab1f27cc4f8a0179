//! `GET /catalog` and `GET /asyncapi.json`: the application's catalog (event types with
//! their schema versions and JSON Schemas, commands, queries, topics with their receivers
//! and publishers) and its AsyncAPI 3.0 document. Schemas only, never a message body: a
//! viewer key is enough. See `docs/catalog.md`.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use runnel::catalog::Catalog;

use crate::problem::Problem;
use crate::state::AppState;

/// The catalog a server serves, rendered once: it is registration-time data, so every
/// request answers the same bytes.
#[derive(Clone, Debug)]
pub struct ServedCatalog {
    catalog_json: String,
    asyncapi_json: String,
}

impl ServedCatalog {
    /// Renders `catalog` and its AsyncAPI document, titled `title` at the application's
    /// `version`.
    pub fn new(catalog: &Catalog, title: &str, version: &str) -> ServedCatalog {
        ServedCatalog {
            // Strings, numbers and JSON values only: serializing cannot fail, but if it
            // ever did the route says so rather than the process panicking.
            catalog_json: serde_json::to_string(catalog).unwrap_or_else(|e| {
                tracing::error!(error = %e, "the catalog does not serialize");
                "{}".into()
            }),
            asyncapi_json: catalog.asyncapi(title, version).to_string(),
        }
    }
}

fn json(body: &str) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

fn disabled() -> Response {
    Problem::new(
        StatusCode::NOT_FOUND,
        "catalog-disabled",
        "No catalog is served",
        "this server was started without an application catalog \
         (ServerConfig::catalog, from App::catalog)",
    )
    .into_response()
}

/// `GET /catalog`.
#[utoipa::path(get, path = "/catalog", responses(
    (status = 200, description = "The application's catalog (404 `catalog-disabled` without one)", body = crate::openapi::schemas::CatalogDoc),
))]
pub async fn catalog(State(state): State<AppState>) -> Response {
    match &state.inner.catalog {
        Some(served) => json(&served.catalog_json),
        None => disabled(),
    }
}

/// `GET /asyncapi.json`.
#[utoipa::path(get, path = "/asyncapi.json", responses(
    (status = 200, description = "The AsyncAPI 3.0 document of the catalog (404 `catalog-disabled` without one)", content_type = "application/json", body = Object),
))]
pub async fn asyncapi(State(state): State<AppState>) -> Response {
    match &state.inner.catalog {
        Some(served) => json(&served.asyncapi_json),
        None => disabled(),
    }
}
