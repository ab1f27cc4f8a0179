//! The query side on a running application, on SQLite and PostgreSQL: order summaries
//! enriched with customer and product names from their own projections, read through the
//! query bus. Names resolve, renames show in orders placed before them, an order placed
//! before its customer and products gets their names once they exist, a query carrying its
//! command's position reads that command's write, and queries are dispatched by name.
//!
//! Nothing here sleeps: every read waits for a position (read-your-writes), which fails
//! with a typed error after a deadline.

use std::sync::Arc;
use std::time::Duration;

use order_fulfillment::service;
use order_fulfillment::{
    upcasters, AddProduct, ConfirmOrder, EnrichedOrderSummary, FindOrdersByCustomerName,
    GetOrderSummary, OrderLine, OrderStatus, PlaceOrder, ReadModel, ReadModelError,
    RegisterCustomer, RenameCustomer, RenameProduct,
};
use runnel::app::{App, RunningApp};
use runnel::connect::{Settings, SettingsInputs};
use runnel::core::{Metadata, Position};
use runnel::projection::WaitError;
use runnel::DispatchError;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

/// The application with its commands and read model (no fulfillment, no relay: the
/// projections read `$all` themselves), not started yet.
struct Wired {
    app: App,
    read_model: ReadModel,
    dir: Option<tempfile::TempDir>,
}

async fn wire(settings: Settings, dir: Option<tempfile::TempDir>) -> Wired {
    let mut app = App::connect(&settings).await.unwrap();
    let upcasters = Arc::new(upcasters().unwrap());
    service::wire_commands(&app, &upcasters).unwrap();
    let read_model = service::wire_read_model(&mut app, &upcasters)
        .await
        .unwrap();
    for name in ["customers", "products", "enriched_orders"] {
        assert!(
            app.task_names()
                .iter()
                .any(|t| t.starts_with(&format!("projection:{name}:"))),
            "{:?}",
            app.task_names()
        );
    }
    Wired {
        app,
        read_model,
        dir,
    }
}

impl Wired {
    async fn start(self) -> Running {
        Running {
            app: self.app.start().await.unwrap(),
            read_model: self.read_model,
            _dir: self.dir,
        }
    }
}

/// The application, running.
struct Running {
    app: RunningApp,
    read_model: ReadModel,
    _dir: Option<tempfile::TempDir>,
}

fn sqlite() -> Option<(Settings, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let settings = SettingsInputs::default()
        .db("--db", Some(dir.path().join("app.db")))
        .resolve()
        .unwrap();
    Some((settings, Some(dir)))
}

/// A fresh schema (`qry_<uuid>`, dropped by `scripts/pg-clean-test-schemas.sh`) on the
/// server in `RUNNEL_TEST_POSTGRES_URL`; `None` (skipped, loudly) without one.
fn postgres() -> Option<(Settings, Option<tempfile::TempDir>)> {
    let url = match std::env::var("RUNNEL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "RUNNEL_TEST_POSTGRES_URL is not set but RUNNEL_REQUIRE_SERVICES=1"
            );
            eprintln!("SKIPPED: RUNNEL_TEST_POSTGRES_URL is not set");
            return None;
        }
    };
    let schema = format!("qry_{}", uuid::Uuid::now_v7().simple());
    let sep = if url.contains('?') { '&' } else { '?' };
    let settings = SettingsInputs::default()
        .store("--store", Some(format!("{url}{sep}schema={schema}")))
        .resolve()
        .unwrap();
    Some((settings, None))
}

impl Running {
    async fn stop(self) {
        let report = self.app.shutdown(DEADLINE).await;
        assert!(report.all_stopped_in_time(), "{report:?}");
    }

    async fn register_customer(&self, id: &str, name: &str) -> Position {
        let outcome = self
            .app
            .commands()
            .send(RegisterCustomer {
                customer_id: id.into(),
                name: name.into(),
            })
            .await
            .unwrap();
        outcome.position.expect("a new customer is recorded")
    }

    async fn add_product(&self, sku: &str, name: &str) -> Position {
        let outcome = self
            .app
            .commands()
            .send(AddProduct {
                sku: sku.into(),
                name: name.into(),
                unit_price_cents: 999,
            })
            .await
            .unwrap();
        outcome.position.expect("a new product is recorded")
    }

    async fn place(&self, order_id: &str, customer_id: &str, skus: &[&str]) -> Position {
        let outcome = self
            .app
            .commands()
            .send(PlaceOrder {
                order_id: order_id.into(),
                customer_id: customer_id.into(),
                items: skus
                    .iter()
                    .map(|sku| OrderLine::new(*sku, 2, 500))
                    .collect(),
                shipping_address: "1 Main St".into(),
                billing_address: None,
            })
            .await
            .unwrap();
        outcome.position.expect("a placed order is recorded")
    }

    /// The summary of `order_id` once the read model has applied `position`.
    async fn summary_at(&self, order_id: &str, position: Position) -> EnrichedOrderSummary {
        self.app
            .queries()
            .dispatch(GetOrderSummary {
                order_id: order_id.into(),
                min_position: Some(position),
            })
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("order {order_id} is in the read model at {position:?}"))
    }

    async fn by_name_at(&self, name: &str, position: Position) -> Vec<String> {
        self.app
            .queries()
            .dispatch(FindOrdersByCustomerName {
                customer_name: name.into(),
                min_position: Some(position),
            })
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.order_id)
            .collect()
    }
}

fn names(summary: &EnrichedOrderSummary) -> (Option<&str>, Vec<Option<&str>>) {
    (
        summary.customer_name.as_deref(),
        summary
            .lines
            .iter()
            .map(|l| l.product_name.as_deref())
            .collect(),
    )
}

async fn names_resolve(running: Running) {
    running.register_customer("c-1", "Ada Lovelace").await;
    running.add_product("p-cup", "Espresso cup").await;
    running.add_product("p-pot", "Teapot").await;
    let placed = running.place("o-1", "c-1", &["p-cup", "p-pot"]).await;

    let summary = running.summary_at("o-1", placed).await;
    assert_eq!(
        names(&summary),
        (
            Some("Ada Lovelace"),
            vec![Some("Espresso cup"), Some("Teapot")]
        )
    );
    assert_eq!(summary.customer_id, "c-1");
    assert_eq!(summary.status, OrderStatus::Pending);
    assert_eq!(summary.total_cents, 2 * 500 * 2);
    assert_eq!(summary.item_count, 4);
    assert_eq!(
        summary
            .lines
            .iter()
            .map(|l| (l.sku.as_str(), l.quantity, l.unit_price_cents))
            .collect::<Vec<_>>(),
        [("p-cup", 2, 500), ("p-pot", 2, 500)],
        "lines keep their order and the price they were ordered at"
    );
    assert_eq!(summary.last_position, placed.get());
    running.stop().await;
}

async fn renames_show_in_orders_placed_before_them(running: Running) {
    running.register_customer("c-1", "Ada Lovelace").await;
    running.register_customer("c-2", "Grace Hopper").await;
    running.add_product("p-cup", "Espresso cup").await;
    running.place("o-1", "c-1", &["p-cup"]).await;
    running.place("o-2", "c-1", &["p-cup"]).await;
    let placed = running.place("o-3", "c-2", &["p-cup"]).await;
    assert_eq!(
        running.by_name_at("Ada Lovelace", placed).await,
        ["o-2", "o-1"],
        "newest first, only that customer's"
    );

    running
        .app
        .commands()
        .send(RenameCustomer {
            customer_id: "c-1".into(),
            name: "Ada King".into(),
        })
        .await
        .unwrap();
    let renamed = running
        .app
        .commands()
        .send(RenameProduct {
            sku: "p-cup".into(),
            name: "Espresso cup, white".into(),
        })
        .await
        .unwrap()
        .position
        .unwrap();

    for order in ["o-1", "o-2"] {
        assert_eq!(
            names(&running.summary_at(order, renamed).await),
            (Some("Ada King"), vec![Some("Espresso cup, white")])
        );
    }
    assert_eq!(
        names(&running.summary_at("o-3", renamed).await),
        (Some("Grace Hopper"), vec![Some("Espresso cup, white")])
    );
    assert_eq!(
        running.by_name_at("Ada King", renamed).await,
        ["o-2", "o-1"]
    );
    assert!(running.by_name_at("Ada Lovelace", renamed).await.is_empty());
    running.stop().await;
}

async fn an_order_placed_before_its_customer_gets_the_names_later(running: Running) {
    // The order commits first: in `$all` its events come before the customer's and the
    // product's.
    let placed = running.place("o-early", "c-late", &["p-late"]).await;
    let early = running.summary_at("o-early", placed).await;
    assert_eq!(names(&early), (None, vec![None]));
    assert_eq!(early.lines[0].sku, "p-late");
    assert!(running.by_name_at("Late Customer", placed).await.is_empty());

    running.register_customer("c-late", "Late Customer").await;
    let added = running.add_product("p-late", "Late product").await;
    assert_eq!(
        names(&running.summary_at("o-early", added).await),
        (Some("Late Customer"), vec![Some("Late product")])
    );
    assert_eq!(
        running.by_name_at("Late Customer", added).await,
        ["o-early"]
    );
    running.stop().await;
}

async fn a_query_reads_its_own_commands_write(wired: Wired) {
    // Commands run before the application starts, so no projection has applied them yet.
    let commands = wired.app.commands().clone();
    commands
        .send(RegisterCustomer {
            customer_id: "c-1".into(),
            name: "Ada Lovelace".into(),
        })
        .await
        .unwrap();
    let placed = commands
        .send(PlaceOrder {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            items: vec![OrderLine::new("p-cup", 1, 450)],
            shipping_address: "1 Main St".into(),
            billing_address: None,
        })
        .await
        .unwrap()
        .position
        .unwrap();
    let read_model = wired.read_model.clone();
    assert_eq!(read_model.order_summary("o-1").await.unwrap(), None);
    // Nothing will reach the position while the projections do not run: a typed error at
    // the deadline.
    let err = read_model
        .clone()
        .with_wait_timeout(Duration::from_millis(300))
        .wait_for(placed)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReadModelError::NotCaughtUp(WaitError::Timeout { .. })),
        "{err}"
    );

    // Started, the query carrying the command's position answers with that write, at once.
    let running = wired.start().await;
    let summary = running.summary_at("o-1", placed).await;
    assert_eq!(summary.status, OrderStatus::Pending);
    assert_eq!(summary.customer_name.as_deref(), Some("Ada Lovelace"));
    let confirmed = running
        .app
        .commands()
        .send(ConfirmOrder {
            order_id: "o-1".into(),
        })
        .await
        .unwrap()
        .position
        .unwrap();
    let summary = running.summary_at("o-1", confirmed).await;
    assert_eq!(summary.status, OrderStatus::Confirmed);
    assert_eq!(summary.last_position, confirmed.get());

    // A position past the head: the same typed error.
    let beyond = Position(confirmed.get() + 1_000_000);
    let err = running
        .read_model
        .clone()
        .with_wait_timeout(Duration::from_millis(300))
        .wait_for(beyond)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReadModelError::NotCaughtUp(WaitError::Timeout { .. })),
        "{err}"
    );
    running.stop().await;
}

async fn queries_are_dispatched_by_name(running: Running) {
    let queries = running.app.queries();
    for name in ["GetOrderSummary", "FindOrdersByCustomerName", "GetOrder"] {
        assert!(queries.contains(name), "{:?}", queries.names());
    }
    // Commands by name too: what the HTTP API and the CLI do.
    let commands = running.app.commands();
    for (name, payload) in [
        (
            "RegisterCustomer",
            json!({"customer_id": "c-1", "name": "Ada Lovelace"}),
        ),
        (
            "AddProduct",
            json!({"sku": "p-cup", "name": "Espresso cup", "unit_price_cents": 450}),
        ),
    ] {
        commands
            .dispatch_json(name, payload, Metadata::default())
            .await
            .unwrap();
    }
    let placed = commands
        .dispatch_json(
            "PlaceOrder",
            json!({"order_id": "o-1", "customer_id": "c-1", "shipping_address": "1 Main St",
                   "items": [{"product_id": "p-cup", "quantity": 1, "unit_price_cents": 450}]}),
            Metadata::default(),
        )
        .await
        .unwrap();
    let position = placed["position"].as_u64().expect("the outcome's position");

    let summary = queries
        .dispatch_json(
            "GetOrderSummary",
            json!({"order_id": "o-1", "min_position": position}),
            Metadata::default(),
        )
        .await
        .unwrap();
    assert_eq!(summary["customer_name"], "Ada Lovelace");
    assert_eq!(summary["status"], "pending");
    assert_eq!(summary["lines"][0]["product_name"], "Espresso cup");
    let found = queries
        .dispatch_json(
            "FindOrdersByCustomerName",
            json!({"customer_name": "Ada Lovelace", "min_position": position}),
            Metadata::default(),
        )
        .await
        .unwrap();
    assert_eq!(found[0]["order_id"], "o-1");
    assert_eq!(
        queries
            .dispatch_json(
                "GetOrderSummary",
                json!({"order_id": "nope"}),
                Metadata::default()
            )
            .await
            .unwrap(),
        serde_json::Value::Null
    );

    // A misspelt field is refused by name; so is an unknown query.
    let err = queries
        .dispatch_json(
            "GetOrderSummary",
            json!({"order": "o-1"}),
            Metadata::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DispatchError::InvalidPayload { name, .. } if name == "GetOrderSummary"),
        "{err}"
    );
    let err = queries
        .dispatch_json("GetOrderSumary", json!({}), Metadata::default())
        .await
        .unwrap_err();
    assert!(matches!(err, DispatchError::NoHandler { .. }), "{err}");
    running.stop().await;
}

macro_rules! on_backend {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            async fn wired() -> Option<Wired> {
                let (settings, dir) = super::$backend()?;
                Some(wire(settings, dir).await)
            }

            async fn running() -> Option<Running> {
                Some(wired().await?.start().await)
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn order_summaries_show_customer_and_product_names() {
                let Some(running) = running().await else {
                    return;
                };
                names_resolve(running).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn renames_show_in_orders_placed_before_them() {
                let Some(running) = running().await else {
                    return;
                };
                super::renames_show_in_orders_placed_before_them(running).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_order_placed_before_its_customer_gets_the_names_later() {
                let Some(running) = running().await else {
                    return;
                };
                super::an_order_placed_before_its_customer_gets_the_names_later(running).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_query_reads_its_own_commands_write() {
                let Some(wired) = wired().await else { return };
                super::a_query_reads_its_own_commands_write(wired).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn queries_are_dispatched_by_name() {
                let Some(running) = running().await else {
                    return;
                };
                super::queries_are_dispatched_by_name(running).await;
            }
        }
    };
}

on_backend!(sqlite);
on_backend!(postgres);
