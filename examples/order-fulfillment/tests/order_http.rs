//! The complete order flow over HTTP, as a client sees it: `POST /orders` → `PlaceOrder` →
//! the `Order` aggregate → events → the outbox → the bus → the fulfillment saga and the
//! services → the read model that `GET /orders/{id}` reads. Injected failures (a declined
//! card, a poison message) are set at run time with `PUT /faults`, as an operator would.

use std::time::{Duration, Instant};

use order_fulfillment::fulfillment::{FulfillmentConfig, PAYMENT_CATEGORY};
use order_fulfillment::http::{self, OrdersHttp};
use order_fulfillment::service::{self, Parts};
use runnel::app::{App, RunningApp};
use runnel::connect::SettingsInputs;
use runnel::core::{ReadStream, StreamName};
use runnel::saga::SagaOptions;
use runnel_server::{ApiKey, ApiKeys, Role};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);

struct Flow {
    running: RunningApp,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// The whole flow in one process on a fresh embedded store, served on a free port.
async fn start(keys: ApiKeys) -> Flow {
    start_with(keys, Duration::from_secs(30)).await
}

/// [`start`], with the saga waiting `reply_deadline` for each service's answer.
async fn start_with(keys: ApiKeys, reply_deadline: Duration) -> Flow {
    let dir = tempfile::tempdir().unwrap();
    let settings = SettingsInputs::default()
        .db("--db", Some(dir.path().join("app.db")))
        .resolve()
        .unwrap();
    let mut app = App::connect(&settings).await.unwrap();
    let config = FulfillmentConfig {
        reply_deadline,
        saga: SagaOptions {
            poll_interval: Duration::from_millis(50),
            ..SagaOptions::default()
        },
        ..FulfillmentConfig::default()
    };
    let faults = config.faults.clone();
    let service = service::wire_parts(&mut app, &Parts::all(), config)
        .await
        .unwrap()
        .expect("the order service runs here");
    let state = OrdersHttp {
        commands: app.commands().clone(),
        read_model: service.read_model.clone(),
        faults,
    };
    let server = http::bind(&app, Some(state), "127.0.0.1:0".parse().unwrap(), keys)
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    app.task("http", server.into_task());
    let running = app.start().await.unwrap();
    for (id, name) in [("c-1", "Ada Lovelace")] {
        running
            .commands()
            .execute::<order_fulfillment::Customer>(
                id,
                order_fulfillment::customer::CustomerCommand::Register { name: name.into() },
            )
            .await
            .unwrap();
    }
    Flow {
        running,
        base,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

fn order(product: &str, cents: i64, address: &str) -> Value {
    json!({
        "customer_id": "c-1",
        "items": [{"product_id": product, "quantity": 1, "unit_price_cents": cents}],
        "shipping_address": address,
    })
}

impl Flow {
    async fn place(&self, body: &Value) -> Value {
        let response = self
            .http
            .post(format!("{}/orders", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{:?}", response.text().await);
        let location = response.headers()["location"].to_str().unwrap().to_string();
        let accepted: Value = response.json().await.unwrap();
        assert_eq!(
            location,
            format!("/orders/{}", accepted["order_id"].as_str().unwrap())
        );
        accepted
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    async fn put_faults(&self, faults: Value) -> reqwest::Response {
        self.http
            .put(format!("{}/faults", self.base))
            .json(&faults)
            .send()
            .await
            .unwrap()
    }

    /// Polls `GET /orders/{id}` until `done` holds for the summary.
    async fn order_until(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let response = self.get(&format!("/orders/{id}")).await;
            let summary: Option<Value> = match response.status().as_u16() {
                200 => Some(response.json().await.unwrap()),
                404 => None,
                other => panic!("GET /orders/{id}: {other} {:?}", response.text().await),
            };
            if let Some(summary) = &summary {
                if done(summary) {
                    return summary.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "order {id} never became {what}: {summary:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The saga instance of order `id` as `GET /admin/sagas/saga/{id}` shows it.
    async fn saga(&self, id: &str) -> Value {
        let response = self
            .get(&format!("/admin/sagas/saga:order-fulfillment/{id}"))
            .await;
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        response.json().await.unwrap()
    }

    async fn ledger(&self, id: &str) -> Vec<String> {
        let stream = StreamName::new(format!("{PAYMENT_CATEGORY}-{id}")).unwrap();
        self.running
            .stores()
            .events
            .read_stream(&stream, ReadStream::forward(100))
            .await
            .unwrap()
            .iter()
            .map(|e| e.event_type.clone())
            .collect()
    }

    async fn stop(self) {
        let report = self.running.shutdown(DEADLINE).await;
        assert!(report.all_stopped_in_time(), "{report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_flow_happy_path_end_to_end() {
    let flow = start(ApiKeys::none()).await;
    let accepted = flow.place(&order("p-1", 2500, "1 Main St")).await;
    let id = accepted["order_id"].as_str().unwrap().to_string();
    let correlation = accepted["correlation_id"].as_str().unwrap().to_string();
    let position = accepted["position"].as_u64().expect("the placing position");

    // Read your own write: with the position, the order is there at once.
    let response = flow
        .http
        .get(format!("{}/orders/{id}", flow.base))
        .header("Runnel-Min-Position", position.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first: Value = response.json().await.unwrap();
    assert!(
        ["pending", "confirmed"].contains(&first["status"].as_str().unwrap()),
        "{first}"
    );
    assert_eq!(first["customer_name"], "Ada Lovelace");
    assert!(first["last_position"].as_u64().unwrap() >= position);

    // The saga reserves, charges, ships and confirms; each step's answer shows.
    let done = flow
        .order_until(&id, "confirmed with a shipment", |s| {
            s["status"] == "confirmed" && s["fulfillment"]["tracking_number"].is_string()
        })
        .await;
    assert_eq!(done["fulfillment"]["reservation_id"], format!("res-{id}"));
    assert_eq!(done["fulfillment"]["payment_id"], format!("pay-{id}"));
    assert_eq!(done["fulfillment"]["tracking_number"], format!("trk-{id}"));
    assert_eq!(done["fulfillment"]["failure"], Value::Null);
    assert_eq!(done["fulfillment"]["compensations"], json!([]));
    assert_eq!(flow.ledger(&id).await, ["PaymentCharged"]);
    let saga = flow.saga(&id).await;
    assert_eq!(saga["status"], "completed", "the saga completed: {saga}");

    // The order's events carry the correlation id POST /orders answered with.
    let stream = StreamName::new(format!("Order-{id}")).unwrap();
    let events = flow
        .running
        .stores()
        .events
        .read_stream(&stream, ReadStream::forward(100))
        .await
        .unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["OrderPlaced", "OrderConfirmed"]);
    assert_eq!(
        events[0].metadata.correlation_id.as_deref(),
        Some(correlation.as_str())
    );
    flow.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn declined_card_compensates_inventory() {
    let flow = start(ApiKeys::none()).await;
    let set = flow
        .put_faults(json!({"decline_above_cents": 10_000}))
        .await;
    assert_eq!(set.status(), 200);
    let accepted = flow.place(&order("p-1", 25_000, "1 Main St")).await;
    let id = accepted["order_id"].as_str().unwrap().to_string();

    let cancelled = flow
        .order_until(&id, "cancelled after the reservation was released", |s| {
            s["status"] == "cancelled"
                && s["fulfillment"]["compensations"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|x| x == "inventory-released"))
        })
        .await;
    assert!(
        cancelled["fulfillment"]["failure"]
            .as_str()
            .unwrap()
            .starts_with("card declined"),
        "{cancelled}"
    );
    assert_eq!(
        cancelled["fulfillment"]["reservation_id"],
        format!("res-{id}")
    );
    assert_eq!(cancelled["fulfillment"]["payment_id"], Value::Null);
    assert_eq!(
        cancelled["fulfillment"]["compensations"],
        json!(["inventory-released"]),
        "only the reservation is compensated: nothing was charged or shipped"
    );
    assert!(
        flow.ledger(&id).await.is_empty(),
        "a declined card is never charged"
    );
    let saga = flow.saga(&id).await;
    assert_eq!(saga["status"], "compensated", "{saga}");

    // An order under the limit still goes through.
    let ok = flow.place(&order("p-1", 2_000, "1 Main St")).await;
    let ok_id = ok["order_id"].as_str().unwrap();
    flow.order_until(ok_id, "confirmed", |s| s["status"] == "confirmed")
        .await;
    flow.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_message_is_dead_lettered_and_replayed() {
    let flow = start(ApiKeys::none()).await;
    let set = flow.put_faults(json!({"poison_address": "POISON"})).await;
    assert_eq!(set.status(), 200);
    let faults: Value = flow.get("/faults").await.json().await.unwrap();
    assert_eq!(faults["poison_address"], "POISON");

    let accepted = flow.place(&order("p-1", 2500, "1 POISON Road")).await;
    let id = accepted["order_id"].as_str().unwrap().to_string();

    // The shipping service refuses it for good: dead-lettered at once, the order waits.
    let deadline = Instant::now() + DEADLINE;
    let letter = loop {
        let page: Value = flow
            .get("/admin/dead-letters?group=shipping")
            .await
            .json()
            .await
            .unwrap();
        if let Some(letter) = page["items"].as_array().and_then(|items| items.first()) {
            break letter.clone();
        }
        assert!(Instant::now() < deadline, "no dead letter appeared: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letter["topic"], "shipping.commands");
    let letter_id = letter["id"].as_u64().unwrap();
    let shown: Value = flow
        .get(&format!("/admin/dead-letters/{letter_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["message"]["type"], "CreateShipment");
    assert_eq!(shown["message"]["payload"]["order_id"], id);
    assert!(
        shown["failures"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("poison"),
        "{shown}"
    );
    let pending: Value = flow
        .get(&format!("/orders/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["fulfillment"]["stage"], "payment-charged");

    // The fix is deployed; the operator replays the dead letter and the order goes on.
    assert_eq!(flow.put_faults(json!({})).await.status(), 200);
    let replay = flow
        .http
        .post(format!(
            "{}/admin/dead-letters/{letter_id}/retry",
            flow.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200, "{:?}", replay.text().await);
    let done = flow
        .order_until(&id, "confirmed after the replay", |s| {
            s["status"] == "confirmed"
        })
        .await;
    assert_eq!(done["fulfillment"]["tracking_number"], format!("trk-{id}"));
    let replayed: Value = flow
        .get(&format!("/admin/dead-letters/{letter_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(replayed["replay_count"], 1, "{replayed}");
    assert_eq!(flow.ledger(&id).await, ["PaymentCharged"], "charged once");
    flow.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_orders_and_bad_faults_are_refused_and_change_nothing() {
    let flow = start(ApiKeys::none()).await;
    let head = || async { flow.running.stores().events.head_position().await.unwrap() };
    let before = head().await;
    for (body, status) in [
        (json!({"customer_id": "c-1"}), 400),
        (
            json!({"customer_id": "c-1", "items": [], "shipping_address": "x", "extra": 1}),
            400,
        ),
        (
            json!({"customer_id": "c-1", "items": [], "shipping_address": "1 Main St"}),
            422,
        ),
    ] {
        let response = flow
            .http
            .post(format!("{}/orders", flow.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    assert_eq!(head().await, before, "a refused order stores nothing");

    let refused = flow.put_faults(json!({"slow": {"warehouse": 10}})).await;
    assert_eq!(refused.status(), 400);
    let refused = flow.put_faults(json!({"poison": "x"})).await;
    assert_eq!(refused.status(), 400, "unknown fields are refused");
    let faults: Value = flow.get("/faults").await.json().await.unwrap();
    assert_eq!(
        faults["slow"],
        json!({}),
        "a refused change changes nothing"
    );

    // Idempotency-Key: the same key places one order, answered the same way twice.
    let send = || {
        flow.http
            .post(format!("{}/orders", flow.base))
            .header("Idempotency-Key", "checkout-42")
            .json(&order("p-1", 100, "1 Main St"))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 202);
    let again = send().await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let (first, again): (Value, Value) = (first.json().await.unwrap(), again.json().await.unwrap());
    assert_eq!(first["order_id"], again["order_id"]);
    let placed = flow
        .running
        .stores()
        .events
        .read_stream(
            &StreamName::new(format!("Order-{}", first["order_id"].as_str().unwrap())).unwrap(),
            ReadStream::forward(100),
        )
        .await
        .unwrap();
    assert_eq!(placed[0].event_type, "OrderPlaced");
    assert_eq!(
        placed
            .iter()
            .filter(|e| e.event_type == "OrderPlaced")
            .count(),
        1
    );
    // An order id that exists, without a key, is a conflict.
    let mut dup = order("p-1", 100, "1 Main St");
    dup["order_id"] = first["order_id"].clone();
    let conflict = flow
        .http
        .post(format!("{}/orders", flow.base))
        .json(&dup)
        .send()
        .await
        .unwrap();
    assert_eq!(conflict.status(), 409);
    let missing = flow.get("/orders/no-such-order").await;
    assert_eq!(missing.status(), 404);
    flow.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_routes_declare_their_roles() {
    let keys = ApiKeys::new(vec![
        ApiKey::from_secret("viewer", Role::Viewer, "viewer-secret-0123456789"),
        ApiKey::from_secret("operator", Role::Operator, "operator-secret-0123456789"),
    ])
    .unwrap();
    let flow = start(keys).await;
    let post = |key: Option<&'static str>| {
        let mut request =
            flow.http
                .post(format!("{}/orders", flow.base))
                .json(&order("p-1", 100, "1 Main St"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 401);
    assert_eq!(
        post(Some("viewer-secret-0123456789"))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        post(Some("operator-secret-0123456789"))
            .await
            .unwrap()
            .status(),
        202
    );
    let put = flow
        .http
        .put(format!("{}/faults", flow.base))
        .bearer_auth("viewer-secret-0123456789")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 403);
    let get = flow
        .http
        .get(format!("{}/faults", flow.base))
        .bearer_auth("viewer-secret-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    flow.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_service_times_out_and_is_asked_again_with_the_same_key() {
    let flow = start_with(ApiKeys::none(), Duration::from_millis(300)).await;
    let set = flow.put_faults(json!({"slow": {"payments": 900}})).await;
    assert_eq!(set.status(), 200);
    let accepted = flow.place(&order("p-1", 2500, "1 Main St")).await;
    let id = accepted["order_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + DEADLINE;
    let saga = loop {
        let response = flow
            .get(&format!("/admin/sagas/saga:order-fulfillment/{id}"))
            .await;
        if response.status() == 404 {
            // The saga starts when the relay has published OrderPlaced.
            assert!(Instant::now() < deadline, "the saga never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let saga: Value = response.json().await.unwrap();
        let status = saga["status"].as_str().unwrap_or_default().to_string();
        if status == "completed" || status == "needs-attention" {
            break saga;
        }
        assert!(Instant::now() < deadline, "the saga never settled: {saga}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The payment service answered after the deadline: the step's outcome was unknown, so
    // the charge was sent again with the same idempotency key (never compensated blindly),
    // and the service charged once.
    assert_eq!(saga["status"], "completed", "{saga}");
    let history = saga["history"].as_array().unwrap();
    assert!(
        history
            .iter()
            .any(|h| h["step"] == "charge-payment" && h["what"] == "deadline-fired"),
        "the reply deadline fired: {saga}"
    );
    assert!(
        !history.iter().any(|h| h["what"] == "compensated"),
        "{saga}"
    );
    assert_eq!(flow.ledger(&id).await, ["PaymentCharged"], "charged once");
    flow.order_until(&id, "confirmed", |s| s["status"] == "confirmed")
        .await;
    flow.stop().await;
}
