//! `runnel-server` in process: a server on 127.0.0.1:0 over a fresh SQLite store per
//! test, driven over real HTTP. (`runnel-cli/tests/serve.rs` runs the binary end to end.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use runnel::app::ShutdownTrigger;
use runnel::catalog::Catalog;
use runnel::connect::{open_stores, OpenMode, StoreUrl, Stores};
use runnel_server::auth::hash_secret;
use runnel_server::{
    Access, ApiKey, ApiKeys, Application, HttpLimits, Role, ServedCatalog, Server, ServerConfig,
    ServerError, ROUTES,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every wait in these tests ends by this deadline at the latest.
const DEADLINE: Duration = Duration::from_secs(60);

struct TestServer {
    base: String,
    addr: std::net::SocketAddr,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
    stores: Stores,
    _dir: tempfile::TempDir,
}

async fn start(keys: ApiKeys, limits: Option<HttpLimits>) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let stores = open_stores(
        &StoreUrl::sqlite(dir.path().join("t.db")),
        OpenMode::CreateIfMissing,
    )
    .await
    .unwrap();
    let (trigger, shutdown) = ShutdownTrigger::new();
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        keys,
        limits,
        heartbeat: Duration::from_millis(200),
        metrics: Some(runnel_server::metrics::install_recorder().unwrap()),
    };
    let bus = runnel::connect::open_bus(&runnel::connect::BusUrl::Embedded, &stores)
        .await
        .unwrap();
    let server = Server::bind_app(config, Application::bare(stores.clone(), bus))
        .await
        .unwrap()
        .with_catalog(ServedCatalog::new(&Catalog::default(), "test", "0.0.0"));
    let addr = server.local_addr();
    let task = tokio::spawn(server.run(shutdown));
    TestServer {
        base: format!("http://{addr}"),
        addr,
        trigger,
        task,
        stores,
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
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn append(
    c: &reqwest::Client,
    base: &str,
    stream: &str,
    expected: &str,
    events: Value,
) -> (StatusCode, Value) {
    let r = c
        .post(format!("{base}/streams/{stream}"))
        .header("Runnel-Expected-Revision", expected)
        .json(&events)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Server-sent events read off a response, frame by frame.
struct SseReader {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buf: String,
    heartbeats: usize,
}

#[derive(Debug)]
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

impl SseReader {
    async fn open(c: &reqwest::Client, url: &str, last_id: Option<&str>) -> SseReader {
        let mut req = c.get(url);
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        SseReader {
            body: r.bytes_stream().map(|b| b.map(|b| b.to_vec())).boxed(),
            buf: String::new(),
            heartbeats: 0,
        }
    }

    /// The next event (heartbeats counted and skipped); `None` when the stream ended.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                let mut any = false;
                for line in frame.lines() {
                    if line.starts_with(':') {
                        self.heartbeats += 1;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        event.id = Some(v.to_string());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event.event = Some(v.to_string());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        event.data.push_str(v);
                        any = true;
                    }
                }
                if any {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout(DEADLINE, self.body.next())
                .await
                .expect("an SSE frame before the deadline")?;
            self.buf
                .push_str(&String::from_utf8(chunk.unwrap()).unwrap());
        }
    }

    /// Reads until a heartbeat comment arrives; an event meanwhile is a failure.
    async fn next_heartbeat(&mut self) {
        let beats = self.heartbeats;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                assert!(
                    frame.lines().all(|l| l.starts_with(':') || l.is_empty()),
                    "an event arrived on an idle subscription: {frame}"
                );
                self.heartbeats += frame.lines().filter(|l| l.starts_with(':')).count();
                if self.heartbeats > beats {
                    return;
                }
                continue;
            }
            let chunk = tokio::time::timeout(DEADLINE, self.body.next())
                .await
                .expect("a heartbeat before the deadline")
                .expect("the stream ended");
            self.buf
                .push_str(&String::from_utf8(chunk.unwrap()).unwrap());
        }
    }

    /// The next `n` events' positions or revisions (their SSE ids), checking each is an
    /// event.
    async fn ids(&mut self, n: usize) -> Vec<u64> {
        let mut ids = Vec::with_capacity(n);
        while ids.len() < n {
            let e = self.next().await.expect("the stream ended early");
            assert_eq!(e.event.as_deref(), Some("event"), "{e:?}");
            let body: Value = serde_json::from_str(&e.data).unwrap();
            let id: u64 = e.id.unwrap().parse().unwrap();
            assert!(id == body["position"] || id == body["revision"], "{body}");
            ids.push(id);
        }
        ids
    }
}

/// Every position in `$all`, paging through `GET /all`.
async fn all_positions(c: &reqwest::Client, base: &str) -> Vec<u64> {
    let mut after = 0;
    let mut out = Vec::new();
    loop {
        let page: Value = c
            .get(format!("{base}/all?after={after}&limit=50"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap();
        out.extend(events.iter().map(|e| e["position"].as_u64().unwrap()));
        let next = page["next_after"].as_u64().unwrap();
        if events.is_empty() {
            return out;
        }
        after = next;
    }
}

fn keys() -> (ApiKeys, HashMap<Role, String>) {
    let mut secrets = HashMap::new();
    let mut list = Vec::new();
    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        let secret = format!("{}-{}", role, uuid::Uuid::now_v7().simple());
        list.push(ApiKey::from_hash(&format!("{role}-key"), role, &hash_secret(&secret)).unwrap());
        secrets.insert(role, secret);
    }
    (ApiKeys::new(list).unwrap(), secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_declares_and_enforces_a_permission() {
    let (keys, secrets) = keys();
    let s = start(keys, None).await;
    let c = client();
    let request = |method: &reqwest::Method, path: &str, key: Option<&str>| {
        let path = [
            ("{stream}", "Order-1"),
            ("{name}", "Unknown"),
            ("{id}", "1"),
            ("{kind}", "checkout"),
            ("{action}", "retry"),
            ("{asset}", "dashboard.js"),
        ]
        .iter()
        .fold(path.to_string(), |p, (from, to)| p.replace(from, to));
        let url = format!("{}{}", s.base, path);
        let mut req = c.request(method.clone(), url);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if method == reqwest::Method::POST {
            req = req.json(&json!([{ "type": "OrderPlaced", "data": {} }]));
        }
        req.send()
    };
    let mut public = Vec::new();
    for route in ROUTES {
        let method = reqwest::Method::from_bytes(route.method.as_str().as_bytes()).unwrap();
        let required = match route.access {
            Access::Public => {
                public.push(route.path);
                let r = request(&method, route.path, None).await.unwrap();
                assert_eq!(
                    r.status(),
                    StatusCode::OK,
                    "{} {}",
                    route.method,
                    route.path
                );
                continue;
            }
            Access::Role(role) => role,
        };
        let what = format!("{} {}", route.method, route.path);
        // No key, a malformed header, an unknown key: 401 with a challenge.
        let r = request(&method, route.path, None).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what} without a key");
        assert_eq!(r.headers()["www-authenticate"], "Bearer", "{what}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
        let r = request(&method, route.path, Some("not-a-key"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what} unknown key");
        // Every role below the required one: 403; the required role and above: through.
        for role in [Role::Viewer, Role::Operator, Role::Admin] {
            let r = request(&method, route.path, Some(&secrets[&role]))
                .await
                .unwrap();
            if role < required {
                assert_eq!(r.status(), StatusCode::FORBIDDEN, "{what} as {role}");
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["required_role"], required.as_str(), "{what}");
            } else {
                // Let through: whatever the handler makes of the placeholder input (a
                // 404 for a dead letter that does not exist, a 422 for a body of the wrong
                // shape), never a refusal of the key.
                assert!(
                    ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&r.status()),
                    "{what} as {role}: {}",
                    r.status()
                );
                assert_ne!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{what}");
            }
        }
    }
    assert_eq!(
        public,
        [
            "/openapi.json",
            "/healthz",
            "/readyz",
            "/dashboard",
            "/dashboard/",
            "/dashboard/{asset}"
        ],
        "only the OpenAPI document and the dashboard's files (they hold no data) and the \
         probes are public"
    );
    // A path no route declares: 404, never served.
    let r = c
        .get(format!("{}/admin/anything", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_request_duration_by_route_template() {
    let (keys, secrets) = keys();
    let s = start(keys, None).await;
    let c = client();
    let operator = &secrets[&Role::Operator];
    // A stream name no other test uses: the recorder is shared by the whole test binary.
    let stream = format!("Metered-{}", uuid::Uuid::now_v7().simple());
    let r = c
        .post(format!("{}/streams/{stream}", s.base))
        .bearer_auth(operator)
        .header("Runnel-Expected-Revision", "no-stream")
        .json(&json!([{ "type": "OrderPlaced", "data": {} }]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c
        .get(format!("{}/no/such/{stream}", s.base))
        .bearer_auth(operator)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let r = c
        .get(format!("{}/metrics", s.base))
        .bearer_auth(&secrets[&Role::Viewer])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        runnel_server::metrics::PROMETHEUS_CONTENT_TYPE
    );
    let body = r.text().await.unwrap();
    assert!(
        body.contains("# TYPE http_server_request_duration_seconds histogram"),
        "{body}"
    );
    // The append, by its route template, with the explicit buckets.
    let append_bucket = body
        .lines()
        .find(|l| {
            l.starts_with("http_server_request_duration_seconds_bucket{")
                && l.contains(r#"http_route="/streams/{stream}""#)
                && l.contains(r#"http_request_method="POST""#)
                && l.contains(r#"http_response_status_code="201""#)
                && l.contains(r#"le="+Inf""#)
        })
        .unwrap_or_else(|| panic!("no bucket of the append:\n{body}"));
    assert!(!append_bucket.ends_with(" 0"), "{append_bucket}");
    assert!(
        body.contains(r#"http_route="unmatched""#),
        "an unknown path is labelled unmatched:\n{body}"
    );
    // Never a concrete path: the stream name appears in no label.
    assert!(!body.contains(&stream), "a concrete path leaked:\n{body}");
    s.stop().await;
}

#[tokio::test]
async fn metrics_are_off_without_a_recorder() {
    let dir = tempfile::tempdir().unwrap();
    let stores = open_stores(
        &StoreUrl::sqlite(dir.path().join("t.db")),
        OpenMode::CreateIfMissing,
    )
    .await
    .unwrap();
    let (trigger, shutdown) = ShutdownTrigger::new();
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::local()
    };
    let server = Server::bind(config, stores.events.clone()).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let task = tokio::spawn(server.run(shutdown));
    let r = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["type"].as_str().unwrap().ends_with("metrics-disabled"),
        "{body}"
    );
    trigger.fire();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_open_server_refuses_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let stores = open_stores(
        &StoreUrl::sqlite(dir.path().join("t.db")),
        OpenMode::CreateIfMissing,
    )
    .await
    .unwrap();
    let config = ServerConfig {
        bind: "0.0.0.0:0".parse().unwrap(),
        ..ServerConfig::local()
    };
    let refused = Server::bind(config.clone(), stores.events.clone()).await;
    assert!(
        matches!(refused, Err(ServerError::OpenPublicBind { .. })),
        "an open server bound 0.0.0.0"
    );
    let (keys, _) = keys();
    let with_keys = ServerConfig { keys, ..config };
    assert!(Server::bind(with_keys, stores.events.clone()).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_http_appends_exactly_one_wins() {
    let s = start(ApiKeys::none(), None).await;
    let c = client();
    let (status, _) = append(
        &c,
        &s.base,
        "Race-1",
        "no-stream",
        json!([{"type": "Opened", "data": {}}]),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let racers = 32;
    let tasks: Vec<_> = (0..racers)
        .map(|i| {
            let c = c.clone();
            let base = s.base.clone();
            tokio::spawn(async move {
                append(
                    &c,
                    &base,
                    "Race-1",
                    "1",
                    json!([{"type": "Won", "data": {"racer": i}}]),
                )
                .await
            })
        })
        .collect();
    let mut created = 0;
    let mut conflicts = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::CREATED => {
                created += 1;
                assert_eq!(body["revision"], 2);
            }
            StatusCode::CONFLICT => {
                conflicts += 1;
                assert_eq!(body["actual_revision"], 2, "{body}");
                assert_eq!(body["type"], "urn:runnel:problem:conflict");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((created, conflicts), (1, racers - 1));
    let page: Value = c
        .get(format!("{}/streams/Race-1", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_append_returns_the_original_result() {
    let s = start(ApiKeys::none(), None).await;
    let c = client();
    let id = uuid::Uuid::now_v7();
    let batch = json!([{"type": "OrderPlaced", "data": {"n": 1}, "id": id, "metadata": {"correlation_id": "c-1"}, "schema_version": 2}]);
    let first = append(&c, &s.base, "Order-7", "no-stream", batch.clone()).await;
    assert_eq!(first.0, StatusCode::CREATED);
    // Another event moves the stream on; the retry still answers what the first did.
    append(
        &c,
        &s.base,
        "Order-7",
        "1",
        json!([{"type": "OrderPaid", "data": {}}]),
    )
    .await;
    let again = append(&c, &s.base, "Order-7", "no-stream", batch).await;
    assert_eq!(again, first);
    let page: Value = c
        .get(format!("{}/streams/Order-7", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["id"], id.to_string());
    assert_eq!(events[0]["metadata"]["correlation_id"], "c-1");
    assert_eq!(events[0]["schema_version"], 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_page_forward_backward_and_through_all_with_filters() {
    let s = start(ApiKeys::none(), None).await;
    let c = client();
    for i in 0..5 {
        append(
            &c,
            &s.base,
            "Order-1",
            "any",
            json!([{"type": "OrderLine", "data": {"i": i}}]),
        )
        .await;
        append(
            &c,
            &s.base,
            &format!("Customer-{i}"),
            "any",
            json!([{"type": "CustomerSeen", "data": {}}]),
        )
        .await;
    }
    let get = |url: String| {
        let c = c.clone();
        async move {
            c.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let revisions = |page: &Value| -> Vec<u64> {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["revision"].as_u64().unwrap())
            .collect()
    };
    let p = get(format!("{}/streams/Order-1?limit=2", s.base)).await;
    assert_eq!((revisions(&p), p["next"].clone()), (vec![1, 2], json!(3)));
    let p = get(format!("{}/streams/Order-1?limit=2&from=5", s.base)).await;
    assert_eq!((revisions(&p), p["next"].clone()), (vec![5], Value::Null));
    let p = get(format!(
        "{}/streams/Order-1?limit=2&direction=backward",
        s.base
    ))
    .await;
    assert_eq!((revisions(&p), p["next"].clone()), (vec![5, 4], json!(3)));
    let p = get(format!("{}/all?category=Customer&limit=3", s.base)).await;
    let events = p["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e["type"] == "CustomerSeen"));
    let p = get(format!(
        "{}/all?type=OrderLine&after={}",
        s.base, p["next_after"]
    ))
    .await;
    assert_eq!(p["events"].as_array().unwrap().len(), 2, "{p}");
    let p = get(format!("{}/streams?category=Customer&limit=4", s.base)).await;
    assert_eq!(p["streams"].as_array().unwrap().len(), 4);
    let p = get(format!(
        "{}/streams?category=Customer&after={}",
        s.base,
        p["next_after"].as_str().unwrap()
    ))
    .await;
    assert_eq!(p["streams"].as_array().unwrap().len(), 1);
    assert_eq!(p["next_after"], Value::Null);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_problem_and_changes_nothing() {
    let limits = HttpLimits {
        body_bytes_max: 4096,
        page_limit_max: 50,
        subscribers_max: 4,
        subscription_page_events: 8,
    };
    let s = start(ApiKeys::none(), Some(limits)).await;
    let c = client();
    let post = |stream: &str, expected: &str, body: String| {
        c.post(format!("{}/streams/{stream}", s.base))
            .header("Runnel-Expected-Revision", expected)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let ok = r#"[{"type":"T","data":{}}]"#.to_string();
    let cases: Vec<(&str, reqwest::Response, StatusCode)> = vec![
        (
            "malformed JSON",
            post("Order-1", "any", "[{".into()).await.unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "not an array",
            post("Order-1", "any", "{}".into()).await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "no data",
            post("Order-1", "any", r#"[{"type":"T"}]"#.into())
                .await
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown field",
            post("Order-1", "any", r#"[{"type":"T","data":{},"x":1}]"#.into())
                .await
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "empty append",
            post("Order-1", "any", "[]".into()).await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "bad event type",
            post(
                "Order-1",
                "any",
                r#"[{"type":"has space","data":{}}]"#.into(),
            )
            .await
            .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "bad expected revision",
            post("Order-1", "soon", ok.clone()).await.unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad stream name",
            post("Order%20x", "any", ok.clone()).await.unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "body over the limit",
            post(
                "Order-1",
                "any",
                format!(r#"[{{"type":"T","data":"{}"}}]"#, "x".repeat(5000)),
            )
            .await
            .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "page over the limit",
            c.get(format!("{}/all?limit=51", s.base))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown query parameter",
            c.get(format!("{}/all?limt=5", s.base))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad Last-Event-ID",
            c.get(format!("{}/subscribe/all", s.base))
                .header("Last-Event-ID", "x")
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "wrong method",
            c.delete(format!("{}/streams/Order-1", s.base))
                .send()
                .await
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (what, r, status) in cases {
        assert_eq!(r.status(), status, "{what}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
        let body: Value = r.json().await.unwrap();
        assert!(
            body["title"].is_string() && body["detail"].is_string(),
            "{what}: {body}"
        );
        assert_eq!(body["status"], status.as_u16(), "{what}");
    }
    assert!(
        all_positions(&c, &s.base).await.is_empty(),
        "nothing was written"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_from_last_event_id_without_gaps() {
    let s = start(ApiKeys::none(), None).await;
    let c = client();
    for i in 0..30 {
        append(
            &c,
            &s.base,
            &format!("Order-{}", i % 3),
            "any",
            json!([{"type": "Tick", "data": {"i": i}}]),
        )
        .await;
    }
    // $all: read 20, drop the connection, write 30 more, resume after the 20th.
    let mut sub = SseReader::open(&c, &format!("{}/subscribe/all", s.base), None).await;
    let mut seen = sub.ids(20).await;
    drop(sub);
    for i in 30..60 {
        append(
            &c,
            &s.base,
            &format!("Order-{}", i % 3),
            "any",
            json!([{"type": "Tick", "data": {"i": i}}]),
        )
        .await;
    }
    let last = seen.last().unwrap().to_string();
    let mut sub = SseReader::open(&c, &format!("{}/subscribe/all", s.base), Some(&last)).await;
    seen.extend(sub.ids(40).await);
    assert_eq!(
        seen,
        all_positions(&c, &s.base).await,
        "every position once, in order"
    );
    // Live: an append after the catch-up arrives on the open subscription.
    append(
        &c,
        &s.base,
        "Order-9",
        "any",
        json!([{"type": "Late", "data": {}}]),
    )
    .await;
    let late = sub.ids(1).await[0];
    assert!(late > *seen.last().unwrap());
    // Heartbeats are comments on an idle subscription, and nothing else arrives on it.
    sub.next_heartbeat().await;
    append(
        &c,
        &s.base,
        "Order-9",
        "any",
        json!([{"type": "Later", "data": {}}]),
    )
    .await;
    assert!(sub.ids(1).await[0] > late);

    // One stream: ids are revisions.
    let mut sub = SseReader::open(&c, &format!("{}/subscribe/streams/Order-1", s.base), None).await;
    let first = sub.ids(5).await;
    assert_eq!(first, [1, 2, 3, 4, 5]);
    drop(sub);
    let mut sub = SseReader::open(
        &c,
        &format!("{}/subscribe/streams/Order-1", s.base),
        Some("5"),
    )
    .await;
    assert_eq!(sub.ids(15).await, (6..=20).collect::<Vec<u64>>());
    s.stop().await;
}

/// A client that sends a subscription request, reads the response head, then stops
/// reading while holding the connection open.
async fn stalled_subscriber(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET /subscribe/all HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// 64 writers append `rounds` events of `payload_bytes` each; the time they took.
async fn writers(c: &reqwest::Client, base: &str, rounds: usize, payload: &str) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|w| {
            let c = c.clone();
            let base = base.to_string();
            let payload = payload.to_string();
            tokio::spawn(async move {
                for r in 0..rounds {
                    let (status, _) = append(
                        &c,
                        &base,
                        &format!("Load-{w}"),
                        "any",
                        json!([{"type": "Loaded", "data": {"r": r, "pad": payload}}]),
                    )
                    .await;
                    assert_eq!(status, StatusCode::CREATED);
                }
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(DEADLINE, t)
            .await
            .expect("every append completes before the deadline")
            .unwrap();
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sse_client_does_not_block_writers() {
    let s = start(ApiKeys::none(), None).await;
    let c = client();
    let payload = "x".repeat(8 * 1024);
    let rounds = 10;
    // Baseline: the same load with nobody subscribed.
    let baseline = writers(&c, &s.base, rounds, &payload).await;
    // Two stalled subscribers hold their connections without reading, while a live one
    // keeps up; together the writes are ~10 MiB, far over what the sockets buffer.
    let mut stalled = vec![
        stalled_subscriber(s.addr).await,
        stalled_subscriber(s.addr).await,
    ];
    let total = 64 * rounds * 2;
    let live_client = client();
    let live_url = format!("{}/subscribe/all", s.base);
    let live = tokio::spawn(async move {
        let mut sub = SseReader::open(&live_client, &live_url, None).await;
        sub.ids(total).await
    });
    let loaded = writers(&c, &s.base, rounds, &payload).await;
    let ratio = loaded.as_secs_f64() / baseline.as_secs_f64().max(0.001);
    eprintln!(
        "64 writers: {baseline:?} alone, {loaded:?} beside 2 stalled subscribers (x{ratio:.2})"
    );
    // Generous: a writer that waited on a stalled reader would not finish at all (the
    // deadline above); this bounds a slowdown from anything else.
    assert!(
        loaded <= baseline * 10 + Duration::from_secs(5),
        "writers slowed x{ratio:.1} by stalled subscribers"
    );
    let expected = all_positions(&c, &s.base).await;
    assert_eq!(expected.len(), total);
    let live_ids = tokio::time::timeout(DEADLINE, live)
        .await
        .expect("the live subscriber keeps up")
        .unwrap();
    assert_eq!(
        live_ids, expected,
        "the live subscriber got everything, in order"
    );
    // The stalled subscribers still hold their connections; reading now, each catches up
    // by reads, in order, with no gap.
    for tcp in &mut stalled {
        let mut text = String::new();
        let mut buf = vec![0u8; 64 * 1024];
        let until = Instant::now() + DEADLINE;
        let mut ids = Vec::new();
        while ids.len() < total {
            assert!(
                Instant::now() < until,
                "the stalled subscriber caught up before the deadline"
            );
            let n = tokio::time::timeout(DEADLINE, tcp.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "the server closed a stalled subscriber's connection");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            while let Some(i) = text.find("\nid: ") {
                let rest = &text[i + 5..];
                let Some(end) = rest.find('\n') else { break };
                ids.push(rest[..end].trim().parse::<u64>().unwrap());
                text = rest[end..].to_string();
            }
        }
        assert_eq!(ids, expected, "a stalled subscriber catches up with no gap");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_live_subscriptions_cleanly() {
    let s = start(ApiKeys::none(), None).await;
    let c = client();
    append(
        &c,
        &s.base,
        "Order-1",
        "any",
        json!([{"type": "T", "data": {}}]),
    )
    .await;
    let mut sub = SseReader::open(&c, &format!("{}/subscribe/all", s.base), None).await;
    sub.ids(1).await;
    let ready: Value = c
        .get(format!("{}/readyz", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    let stores = s.stores.clone();
    s.stop().await;
    assert!(
        sub.next().await.is_none(),
        "the subscription ended with the server"
    );
    drop(stores);
}

/// The event store, counting the events `read_all` hands out (what subscriptions read).
struct CountingStore {
    inner: std::sync::Arc<dyn runnel_core::EventStore>,
    read: std::sync::atomic::AtomicUsize,
    /// While set, `read_all` fails as an unreachable store does.
    fail_reads: std::sync::atomic::AtomicBool,
}

#[runnel_core::async_trait]
impl runnel_core::EventStore for CountingStore {
    async fn append(
        &self,
        stream: &runnel_core::StreamName,
        expected: runnel_core::ExpectedRevision,
        events: Vec<runnel_core::NewEvent>,
    ) -> Result<runnel_core::AppendResult, runnel_core::StoreError> {
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &runnel_core::StreamName,
        options: runnel_core::store::ReadStream,
    ) -> Result<Vec<runnel_core::RecordedEvent>, runnel_core::StoreError> {
        self.inner.read_stream(stream, options).await
    }
    async fn read_all(
        &self,
        after: runnel_core::Position,
        filter: &runnel_core::store::EventFilter,
        limit: usize,
    ) -> Result<Vec<runnel_core::RecordedEvent>, runnel_core::StoreError> {
        if self.fail_reads.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(runnel_core::StoreError::Unavailable(
                "test: reads fail".into(),
            ));
        }
        let page = self.inner.read_all(after, filter, limit).await?;
        self.read
            .fetch_add(page.len(), std::sync::atomic::Ordering::SeqCst);
        Ok(page)
    }
    async fn read_by_type(
        &self,
        event_type: &str,
        since: chrono::DateTime<chrono::Utc>,
        after: runnel_core::Position,
        limit: usize,
    ) -> Result<Vec<runnel_core::RecordedEvent>, runnel_core::StoreError> {
        self.inner
            .read_by_type(event_type, since, after, limit)
            .await
    }
    async fn stream_revision(
        &self,
        stream: &runnel_core::StreamName,
    ) -> Result<Option<u64>, runnel_core::StoreError> {
        self.inner.stream_revision(stream).await
    }
    async fn list_streams(
        &self,
        category: Option<&str>,
        after: Option<&runnel_core::StreamName>,
        limit: usize,
    ) -> Result<Vec<runnel_core::store::StreamInfo>, runnel_core::StoreError> {
        self.inner.list_streams(category, after, limit).await
    }
    async fn head_position(&self) -> Result<runnel_core::Position, runnel_core::StoreError> {
        self.inner.head_position().await
    }
    async fn wait_for_events(
        &self,
        after: runnel_core::Position,
        max_wait: Duration,
    ) -> Result<(), runnel_core::StoreError> {
        self.inner.wait_for_events(after, max_wait).await
    }
    fn limits(&self) -> &runnel_core::StoreLimits {
        self.inner.limits()
    }
}

/// The largest send buffer the kernel lets a socket grow to (the server's side of a
/// stalled subscription can hold that much).
fn send_buffer_max_bytes() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 * 1024 * 1024)
}

/// An open local server over a [`CountingStore`] on a fresh SQLite file in `dir`: the
/// store, the address, the shutdown trigger and the server's task.
async fn serve_counting(
    dir: &tempfile::TempDir,
) -> (
    std::sync::Arc<CountingStore>,
    std::net::SocketAddr,
    ShutdownTrigger,
    tokio::task::JoinHandle<Result<(), runnel_server::ServerError>>,
) {
    let stores = open_stores(
        &StoreUrl::sqlite(dir.path().join("t.db")),
        OpenMode::CreateIfMissing,
    )
    .await
    .unwrap();
    let counting = std::sync::Arc::new(CountingStore {
        inner: stores.events.clone(),
        read: Default::default(),
        fail_reads: Default::default(),
    });
    let (trigger, shutdown) = ShutdownTrigger::new();
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::local()
    };
    let server = Server::bind(config, counting.clone()).await.unwrap();
    let addr = server.local_addr();
    (counting, addr, trigger, tokio::spawn(server.run(shutdown)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_holds_a_bounded_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let (counting, addr, trigger, task) = serve_counting(&dir).await;
    let base = format!("http://{addr}");

    // The subscriber's own receive buffer is pinned small, so what the server can push
    // into the connection is its send buffer; the server's bound is that plus one page.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    tcp.write_all(b"GET /subscribe/all HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    let event_bytes = 32 * 1024;
    let slack_bytes = 2 * 1024 * 1024; // the receive buffer, hyper's write buffer, framing
    let bound = (send_buffer_max_bytes() + slack_bytes) / event_bytes
        + runnel_server::limits::SUBSCRIPTION_PAGE_EVENTS_DEFAULT;
    // Write at least twice the bound, so an unbounded backlog could not pass.
    let rounds = (2 * bound).div_ceil(64).max(8);
    let c = client();
    writers(&c, &base, rounds, &"y".repeat(event_bytes)).await;
    let total = 64 * rounds;
    let read = counting.read.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("{total} events written; the stalled subscriber read {read} (bound {bound})");
    assert!(
        read <= bound,
        "a stalled subscriber read {read} of {total} events, over its bound of {bound}"
    );
    trigger.fire();
    drop(tcp);
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_over_the_limit_are_refused_until_one_ends() {
    let limits = HttpLimits {
        subscribers_max: 1,
        ..HttpLimits::for_store(&runnel_core::StoreLimits::default())
    };
    let s = start(ApiKeys::none(), Some(limits)).await;
    let c = client();
    let url = format!("{}/subscribe/all", s.base);
    let first = SseReader::open(&c, &url, None).await;
    let refused = c.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    drop(first);
    // The slot frees once the server sees the connection close.
    let until = Instant::now() + DEADLINE;
    loop {
        let r = c.get(&url).send().await.unwrap();
        if r.status() == StatusCode::OK {
            break;
        }
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < until, "the slot was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_as_a_task_of_an_application() {
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
        ..ServerConfig::local()
    };
    let server = Server::bind(config, stores.events.clone()).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let mut app = runnel::app::App::with(stores, bus);
    app.task("http", server.into_task());
    let running = app.start().await.unwrap();
    let c = client();
    let (status, _) = append(
        &c,
        &base,
        "Order-1",
        "no-stream",
        json!([{"type": "T", "data": {}}]),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut sub = SseReader::open(&c, &format!("{base}/subscribe/all"), None).await;
    assert_eq!(sub.ids(1).await, [1]);
    let report = running.shutdown(DEADLINE).await;
    assert!(report.all_stopped_in_time(), "{report:?}");
    assert!(
        sub.next().await.is_none(),
        "the subscription ended with the application"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_ends_a_subscription_with_an_error_event() {
    let dir = tempfile::tempdir().unwrap();
    let (failing, addr, trigger, task) = serve_counting(&dir).await;
    let base = format!("http://{addr}");
    let c = client();
    append(
        &c,
        &base,
        "Order-1",
        "any",
        json!([{"type": "T", "data": {}}]),
    )
    .await;
    let mut sub = SseReader::open(&c, &format!("{base}/subscribe/all"), None).await;
    assert_eq!(sub.ids(1).await, [1]);
    failing
        .fail_reads
        .store(true, std::sync::atomic::Ordering::SeqCst);
    append(
        &c,
        &base,
        "Order-1",
        "any",
        json!([{"type": "T", "data": {}}]),
    )
    .await;
    let error = sub.next().await.expect("an error event");
    assert_eq!(error.event.as_deref(), Some("error"), "{error:?}");
    assert_eq!(
        error.id, None,
        "an error carries no id: a client resumes from its last event"
    );
    let problem: Value = serde_json::from_str(&error.data).unwrap();
    assert_eq!(problem["status"], 503, "{problem}");
    assert!(
        sub.next().await.is_none(),
        "the subscription ended after the error"
    );
    // Once the store answers again, the client resumes after its last id with no gap.
    failing
        .fail_reads
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let mut again = SseReader::open(&c, &format!("{base}/subscribe/all"), Some("1")).await;
    assert_eq!(again.ids(1).await, [2]);
    trigger.fire();
    drop(again);
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
