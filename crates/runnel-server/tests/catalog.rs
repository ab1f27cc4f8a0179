//! `GET /catalog` and `GET /asyncapi.json`: an application's catalog served to viewer
//! keys (schemas and names, never a message body), and a clear 404 when the server was
//! started without one.

use std::time::Duration;

use reqwest::StatusCode;
use runnel::app::ShutdownTrigger;
use runnel::catalog::CatalogRegistry;
use runnel::connect::{open_stores, OpenMode, StoreUrl};
use runnel::core::outbox::TopicRouting;
use runnel::core::EventFilter;
use runnel::core::{DomainEvent, GroupName, TopicName};
use runnel::schemars::JsonSchema;
use runnel_server::auth::hash_secret;
use runnel_server::{ApiKey, ApiKeys, Role, ServedCatalog, Server, ServerConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);

#[derive(Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "runnel::schemars")]
enum CartEvent {
    ItemAdded { sku: String, quantity: u32 },
    CheckedOut,
}

impl DomainEvent for CartEvent {
    fn event_type(&self) -> &'static str {
        match self {
            CartEvent::ItemAdded { .. } => "ItemAdded",
            CartEvent::CheckedOut => "CheckedOut",
        }
    }
}

/// Serves `catalog` (if any) with one viewer key; returns the base URL, the key, the
/// trigger and the task.
async fn serve(
    catalog: Option<ServedCatalog>,
    dir: &std::path::Path,
) -> (
    String,
    String,
    ShutdownTrigger,
    tokio::task::JoinHandle<Result<(), runnel_server::ServerError>>,
) {
    let stores = open_stores(
        &StoreUrl::sqlite(dir.join("t.db")),
        OpenMode::CreateIfMissing,
    )
    .await
    .unwrap();
    let secret = format!("viewer-{}", uuid::Uuid::now_v7().simple());
    let keys = ApiKeys::new(vec![ApiKey::from_hash(
        "viewer-key",
        Role::Viewer,
        &hash_secret(&secret),
    )
    .unwrap()])
    .unwrap();
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        keys,
        ..ServerConfig::local()
    };
    let mut server = Server::bind(config, stores.events.clone()).await.unwrap();
    if let Some(catalog) = catalog {
        server = server.with_catalog(catalog);
    }
    let base = format!("http://{}", server.local_addr());
    let (trigger, shutdown) = ShutdownTrigger::new();
    let task = tokio::spawn(server.run(shutdown));
    (base, secret, trigger, task)
}

#[tokio::test]
async fn catalog_and_asyncapi_are_served_to_viewers() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = CatalogRegistry::new();
    registry.describe_events::<CartEvent>(Some("Cart")).unwrap();
    registry
        .relay(
            "event-store-relay:r",
            &TopicRouting::Category,
            &EventFilter::all(),
        )
        .unwrap()
        .receiver(
            &TopicName::new("Cart").unwrap(),
            &GroupName::new("billing").unwrap(),
            runnel::catalog::ReceiverKind::Consumer,
        )
        .unwrap();
    let catalog = registry.build(&["Checkout"], &[]);
    let (base, key, trigger, task) = serve(
        Some(ServedCatalog::new(&catalog, "Carts", "2.0.0")),
        dir.path(),
    )
    .await;
    let c = reqwest::Client::new();

    let r = c.get(format!("{base}/catalog")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "a key is needed");
    let r = c
        .get(format!("{base}/catalog"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["events"][1]["event_type"], "ItemAdded");
    assert_eq!(body["events"][1]["schema_version"], 1);
    assert_eq!(
        body["events"][1]["schema"]["required"],
        json!(["quantity", "sku"])
    );
    assert_eq!(body["commands"], json!([{ "name": "Checkout" }]));
    assert_eq!(body["topics"][0]["topic"], "Cart");
    assert_eq!(body["topics"][0]["receivers"][0]["group"], "billing");
    assert_eq!(
        serde_json::from_value::<runnel::catalog::Catalog>(body).unwrap(),
        catalog,
        "the body reads back as the catalog (what `runnel schema check --current` reads)"
    );

    let r = c
        .get(format!("{base}/asyncapi.json"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], "Carts");
    assert_eq!(doc["info"]["version"], "2.0.0");
    assert_eq!(doc["channels"]["Cart"]["address"], "Cart");
    assert_eq!(
        doc["operations"]["receive.Cart.billing"]["action"],
        "receive"
    );

    trigger.fire();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the server stops before the deadline")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn without_a_catalog_the_routes_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let (base, key, trigger, task) = serve(None, dir.path()).await;
    let c = reqwest::Client::new();
    for path in ["/catalog", "/asyncapi.json"] {
        let r = c
            .get(format!("{base}{path}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["type"], "urn:runnel:problem:catalog-disabled",
            "{path}"
        );
    }
    trigger.fire();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the server stops before the deadline")
        .unwrap()
        .unwrap();
}
