//! The web dashboard's files and `GET /admin/whoami`, over real HTTP against a server
//! that has keys (so "public" is proven, not assumed). The page itself is driven in
//! headless Chromium by `examples/order-fulfillment/tests/dashboard_browser.rs`.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use runnel::app::ShutdownTrigger;
use runnel::connect::{open_stores, OpenMode, StoreUrl};
use runnel_server::auth::hash_secret;
use runnel_server::dashboard::{ASSETS, CONTENT_SECURITY_POLICY};
use runnel_server::{ApiKey, ApiKeys, Application, Role, Server, ServerConfig, ServerError};
use serde_json::Value;

/// Every wait in these tests ends by this deadline at the latest.
const DEADLINE: Duration = Duration::from_secs(60);

struct TestServer {
    base: String,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
    _dir: tempfile::TempDir,
}

async fn start(keys: ApiKeys) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let stores = open_stores(
        &StoreUrl::sqlite(dir.path().join("t.db")),
        OpenMode::CreateIfMissing,
    )
    .await
    .unwrap();
    let bus = runnel::connect::open_bus(&runnel::connect::BusUrl::Embedded, &stores)
        .await
        .unwrap();
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        keys,
        ..ServerConfig::local()
    };
    let server = Server::bind_app(config, Application::bare(stores, bus))
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    let (trigger, shutdown) = ShutdownTrigger::new();
    let task = tokio::spawn(server.run(shutdown));
    TestServer {
        base,
        trigger,
        task,
        _dir: dir,
    }
}

impl TestServer {
    async fn stop(self) {
        self.trigger.fire();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the server stops before the deadline")
            .unwrap()
            .unwrap();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        // A redirect would hide which path answered.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn keys() -> (ApiKeys, HashMap<Role, String>) {
    let mut secrets = HashMap::new();
    let mut list = Vec::new();
    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        let secret = format!("{role}-{}", uuid::Uuid::now_v7().simple());
        list.push(ApiKey::from_hash(&format!("{role}-key"), role, &hash_secret(&secret)).unwrap());
        secrets.insert(role, secret);
    }
    (ApiKeys::new(list).unwrap(), secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_assets_are_served_without_a_key_with_their_type_csp_and_cache_headers() {
    let (keys, _) = keys();
    let s = start(keys).await;
    let c = client();
    let mut served = Vec::new();
    for (path, expected_type, expected) in [
        ("/dashboard", "text/html", ASSETS[0].body),
        ("/dashboard/", "text/html", ASSETS[0].body),
        ("/dashboard/index.html", "text/html", ASSETS[0].body),
        ("/dashboard/dashboard.css", "text/css", ASSETS[1].body),
        ("/dashboard/dashboard.js", "text/javascript", ASSETS[2].body),
    ] {
        let r = c.get(format!("{}{path}", s.base)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path} without a key");
        let h = r.headers().clone();
        let content_type = h["content-type"].to_str().unwrap();
        assert_eq!(
            content_type,
            format!("{expected_type}; charset=utf-8"),
            "{path}"
        );
        assert_eq!(h["content-security-policy"], CONTENT_SECURITY_POLICY);
        let csp = CONTENT_SECURITY_POLICY;
        assert!(
            csp.contains("default-src 'self'")
                && !csp.contains("unsafe")
                && !csp.contains('*')
                && !csp.contains("http"),
            "the policy allows only this origin: {csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-cache", "{path} is revalidated");
        let etag = h["etag"].to_str().unwrap().to_string();
        let body = r.text().await.unwrap();
        assert_eq!(body, expected, "{path} is the embedded file");
        // Revalidation: the same ETag is a 304 without a body.
        let r = c
            .get(format!("{}{path}", s.base))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert!(r.text().await.unwrap().is_empty());
        served.push(etag);
    }
    // The page loads its script and style from this server only.
    let page = ASSETS[0].body;
    assert!(page.contains("src=\"/dashboard/dashboard.js\""));
    assert!(page.contains("href=\"/dashboard/dashboard.css\""));

    // Anything else under /dashboard/ is a 404 problem, not a file of the disk.
    for path in ["/dashboard/secret.txt", "/dashboard/..%2fCargo.toml"] {
        let r = c.get(format!("{}{path}", s.base)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    // The data the page shows still needs a key.
    let r = c
        .get(format!("{}/admin/whoami", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_returns_the_key_name_and_role() {
    let (keys, secrets) = keys();
    let s = start(keys).await;
    let c = client();
    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        let r = c
            .get(format!("{}/admin/whoami", s.base))
            .bearer_auth(&secrets[&role])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{role}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["name"], format!("{role}-key"));
        assert_eq!(body["role"], role.as_str());
        assert_eq!(body["sees_bodies"], role >= Role::Operator, "{role}");
    }
    s.stop().await;

    // An open server (loopback, no keys): everyone is the anonymous admin.
    let s = start(ApiKeys::none()).await;
    let body: Value = client()
        .get(format!("{}/admin/whoami", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["name"], "anonymous");
    assert_eq!(body["role"], "admin");
    s.stop().await;
}

/// The dead-letter list the dashboard pages takes `include_replayed` in its query string
/// like the summary does (the list's query flattens the filter, which once refused it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_list_and_summary_take_include_replayed_in_the_query() {
    let s = start(ApiKeys::none()).await;
    let c = client();
    for path in [
        "/admin/dead-letters?include_replayed=true&limit=5",
        "/admin/dead-letters?include_replayed=false",
        "/admin/dead-letters/summary?include_replayed=true",
    ] {
        let r = c.get(format!("{}{path}", s.base)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let r = c
        .get(format!(
            "{}/admin/dead-letters?include_replayed=maybe",
            s.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("include_replayed"),
        "{body}"
    );
    s.stop().await;
}
