//! The OpenAPI document at `GET /openapi.json`: OpenAPI 3.1, generated from the route
//! table, so it holds every route with its method and nothing else, every route but the
//! public ones needs a bearer key, and every `$ref` resolves. (Schemathesis checks the
//! live server against it: `runnel-cli/tests/serve.rs`.)

use std::collections::BTreeSet;
use std::time::Duration;

use runnel::app::ShutdownTrigger;
use runnel::connect::{open_stores, OpenMode, StoreUrl};
use runnel_server::{Access, Server, ServerConfig, ROUTES};
use serde_json::Value;

/// Every wait in these tests ends by this deadline at the latest.
const DEADLINE: Duration = Duration::from_secs(60);

/// The document as a client gets it: over HTTP, without a key, from a server that has
/// keys configured (so a public route is really public).
async fn fetched_document() -> Value {
    let dir = tempfile::tempdir().unwrap();
    let stores = open_stores(
        &StoreUrl::sqlite(dir.path().join("t.db")),
        OpenMode::CreateIfMissing,
    )
    .await
    .unwrap();
    let keys = runnel_server::ApiKeys::from_inline(&format!(
        "ci:admin:{}",
        runnel_server::auth::hash_secret("secret")
    ))
    .unwrap();
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        keys,
        ..ServerConfig::local()
    };
    let server = Server::bind(config, stores.events.clone()).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let (trigger, shutdown) = ShutdownTrigger::new();
    let task = tokio::spawn(server.run(shutdown));
    let client = reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .unwrap();
    let r = client
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    trigger.fire();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    doc
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            out.push((method.to_uppercase(), path.clone(), op));
        }
    }
    out
}

fn route_op<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let op = &doc["paths"][path][method.to_ascii_lowercase()];
    assert!(op.is_object(), "{method} {path} is not in the document");
    op
}

#[tokio::test]
async fn openapi_document_is_3_1_and_has_exactly_the_routes() {
    let doc = fetched_document().await;
    let version = doc["openapi"].as_str().expect("an openapi field");
    assert!(version.starts_with("3.1"), "OpenAPI {version}");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(routes.len(), ROUTES.len(), "a route is declared twice");
    assert_eq!(documented, routes, "the document and ROUTES differ");
    for route in ROUTES {
        let op = route_op(&doc, route.method.as_str(), route.path);
        assert_eq!(
            op["summary"], route.summary,
            "{} {}",
            route.method, route.path
        );
    }
}

#[tokio::test]
async fn every_non_public_operation_needs_a_bearer_key() {
    let doc = fetched_document().await;
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert!(doc.get("security").is_none(), "no global requirement");
    for route in ROUTES {
        let op = route_op(&doc, route.method.as_str(), route.path);
        let what = format!("{} {}", route.method, route.path);
        match route.access {
            Access::Public => assert!(op.get("security").is_none(), "{what} is public"),
            Access::Role(role) => {
                assert_eq!(
                    op["security"],
                    serde_json::json!([{"bearer": []}]),
                    "{what}"
                );
                let description = op["description"].as_str().unwrap_or("");
                assert!(
                    description.contains(&format!("`{role}`")),
                    "{what} names its role: {description}"
                );
            }
        }
    }
}

#[tokio::test]
async fn every_operation_documents_its_success_and_a_problem_default() {
    let doc = fetched_document().await;
    for (method, path, op) in operations(&doc) {
        let what = format!("{method} {path}");
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{what} documents a success status"
        );
        assert_eq!(
            responses["default"]["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem",
            "{what}"
        );
        // Every path parameter of the template is declared as one.
        let declared: BTreeSet<&str> = op["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let template: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        assert_eq!(declared, template, "{what} path parameters");
    }
    // The SSE routes answer with an event stream.
    for path in ["/subscribe/all", "/subscribe/streams/{stream}"] {
        let ok = &doc["paths"][path]["get"]["responses"]["200"]["content"];
        assert!(ok.get("text/event-stream").is_some(), "{path}: {ok}");
    }
    // Page limits are typed with their bounds.
    for path in [
        "/all",
        "/streams",
        "/streams/{stream}",
        "/admin/dead-letters",
        "/admin/sagas",
    ] {
        let limit = doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap_or_else(|| panic!("{path} has a limit"));
        assert_eq!(limit["in"], "query");
        assert_eq!(limit["schema"]["minimum"], 1, "{path}");
        assert_eq!(
            limit["schema"]["maximum"],
            runnel_server::limits::PAGE_LIMIT_MAX,
            "{path}"
        );
    }
    // The headers that matter are declared where they act.
    for (method, path, header) in [
        ("post", "/streams/{stream}", "Runnel-Expected-Revision"),
        ("post", "/commands/{name}", "Idempotency-Key"),
        ("post", "/commands/{name}", "Prefer"),
        ("post", "/queries/{name}", "Runnel-Min-Position"),
        ("post", "/queries/{name}", "Runnel-Projections"),
        ("get", "/subscribe/all", "Last-Event-ID"),
        ("get", "/subscribe/streams/{stream}", "Last-Event-ID"),
    ] {
        let declared = doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == header && p["in"] == "header");
        assert!(declared, "{method} {path} declares {header}");
    }
}

/// Every `$ref` in `value`, with where it was found.
fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    if let Some(r) = v.as_str() {
                        out.push((at.clone(), r));
                    }
                } else {
                    refs(v, format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn every_ref_in_the_openapi_document_resolves() {
    let doc = fetched_document().await;
    let mut found = Vec::new();
    refs(&doc, String::new(), &mut found);
    assert!(found.len() > 20, "the document uses component schemas");
    for (at, r) in found {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: {r} is not local"));
        assert!(doc.pointer(pointer).is_some(), "{at}: {r} does not resolve");
    }
}
