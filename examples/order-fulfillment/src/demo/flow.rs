//! The demo of the whole order flow: the service runs (commands, read model, relay, the
//! fulfillment saga, the inventory, payment and shipping services, analytics, HTTP), and
//! clients place orders with `POST /orders` over HTTP. A fixed share of the orders meets
//! an injected failure: a product out of stock and a declined card (both compensated, the
//! order cancelled), and a poison message (the shipment command is dead-lettered; the
//! order waits for an operator to replay it). The demo waits until every order is settled,
//! checks each ended as its failure says it must, and prints a summary.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures_util::{StreamExt as _, TryStreamExt as _};
use hdrhistogram::Histogram;
use order_fulfillment::customer::{CustomerCommand, CustomerError};
use order_fulfillment::fulfillment::{Failures, FulfillmentConfig, PAYMENT_CATEGORY};
use order_fulfillment::http::{OrderAccepted, OrdersHttp};
use order_fulfillment::product::{ProductCommand, ProductError};
use order_fulfillment::service::{self, Parts};
use order_fulfillment::{Customer, GetOrder, OrderStatus, Product};
use runnel::app::{App, RunningApp, SHUTDOWN_DEADLINE_DEFAULT};
use runnel::connect::{Settings, Stores};
use runnel::core::dead_letter::{DeadLetterFilter, DeadLetterId};
use runnel::core::{EventFilter, Position, ReadStream, StreamName};
use runnel_server::ApiKeys;
use serde::Serialize;

use super::progress::{bar, group_digits};
use super::BadInput;

/// Most orders one flow demo accepts.
pub const FLOW_ORDERS_MAX: u64 = 100_000;
/// Most concurrent HTTP clients.
pub const FLOW_CLIENTS_MAX: u64 = 256;
/// Where `--serve` listens when `--http` is not given.
pub const SERVE_BIND_DEFAULT: &str = "127.0.0.1:7411";
/// Product the inventory never has (the out-of-stock failure).
const SOLD_OUT: &str = "p-sold-out";
/// Payments above this are declined (the declined-card failure).
const DECLINE_ABOVE_CENTS: i64 = 50_000;
/// Shipping addresses with this are poison messages.
const POISON: &str = "POISON";
/// Events per read while watching `$all`.
const WATCH_PAGE_EVENTS: usize = 1000;
/// How often the watcher looks again once it has read everything.
const WATCH_IDLE: Duration = Duration::from_millis(10);
/// How often the dead letters are counted.
const DEAD_LETTER_POLL: Duration = Duration::from_millis(200);
/// Orders (and ledgers) checked concurrently after the run.
const VERIFY_CONCURRENCY: usize = 16;
/// Largest latency tracked, in microseconds.
const LATENCY_MICROS_MAX: u64 = 600_000_000;
/// Longest the demo waits for every order to settle, beyond a second per 20 orders.
const SETTLE_DEADLINE_BASE: Duration = Duration::from_secs(60);
/// Longest a client waits for its order to settle.
const ORDER_SETTLE_DEADLINE: Duration = Duration::from_secs(60);

/// What an order is set up to meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fate {
    /// Reserved, charged, shipped, confirmed.
    Confirmed,
    /// The product is out of stock: nothing to compensate; cancelled.
    OutOfStock,
    /// The card is declined: the reservation is released; cancelled.
    Declined,
    /// The shipment command is a poison message: dead-lettered; the order waits.
    Poison,
}

impl Fate {
    /// Order `i`'s fate: a fixed mix (per 100 orders: 2 out of stock, 3 declined, 1
    /// poison), none when failures are off.
    fn of(i: u64, failures: bool) -> Fate {
        if !failures {
            return Fate::Confirmed;
        }
        match i % 100 {
            17 | 67 => Fate::OutOfStock,
            29 | 59 | 89 => Fate::Declined,
            41 => Fate::Poison,
            _ => Fate::Confirmed,
        }
    }
}

/// The demo's flags for the flow (see `demo --help`).
pub struct FlowOptions {
    pub orders: u64,
    pub clients: u64,
    pub failures: bool,
    pub serve: bool,
    pub http: Option<SocketAddr>,
    pub parts: Parts,
    pub json: bool,
}

/// An order sent, waiting to settle.
struct Sent {
    fate: Fate,
    at: DateTime<Utc>,
}

/// How an order settled.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Settled {
    Confirmed,
    Cancelled,
    DeadLettered,
}

#[derive(Default)]
struct Board {
    sent: HashMap<String, Sent>,
    /// The clients waiting for their order to settle.
    waiters: HashMap<String, tokio::sync::oneshot::Sender<()>>,
    settled: HashMap<String, Settled>,
    /// POST → confirmed, microseconds.
    latencies: Vec<u64>,
}

/// The summary (also the `--json` output).
#[derive(Debug, Serialize)]
pub struct FlowSummary {
    pub orders: u64,
    pub clients: u64,
    pub store: String,
    pub bus: String,
    pub placed: u64,
    pub confirmed: u64,
    pub compensated: u64,
    pub compensated_by_reason: BTreeMap<String, u64>,
    pub dead_lettered: u64,
    pub elapsed_seconds: f64,
    pub orders_per_second: f64,
    pub confirm_latency_p50_ms: f64,
    pub confirm_latency_p99_ms: f64,
    pub confirm_latency_max_ms: f64,
    pub events: u64,
    pub commits: Option<u64>,
    pub events_per_commit: Option<f64>,
    /// Every order checked: its aggregate, read model row and payment ledger agree with
    /// its fate.
    pub verified: u64,
    pub dashboard: Option<String>,
}

/// Runs the flow demo on `settings`.
pub async fn run(settings: Settings, location: String, options: FlowOptions) -> anyhow::Result<()> {
    if options.orders == 0 || options.orders > FLOW_ORDERS_MAX {
        return Err(BadInput(format!("--orders must be 1..={FLOW_ORDERS_MAX}")).into());
    }
    if options.clients == 0 || options.clients > FLOW_CLIENTS_MAX {
        return Err(BadInput(format!("--clients must be 1..={FLOW_CLIENTS_MAX}")).into());
    }
    if !options.parts.orders {
        return Err(BadInput(
            "the demo places orders: --parts must include orders (run the services elsewhere \
             with `order-fulfillment run --parts inventory,payments,shipping`)"
                .into(),
        )
        .into());
    }
    let bind = match (options.http, options.serve) {
        (Some(addr), _) => addr,
        (None, true) => SERVE_BIND_DEFAULT.parse().expect("a valid address"),
        (None, false) => "127.0.0.1:0".parse().expect("a valid address"),
    };
    if !bind.ip().is_loopback() {
        return Err(BadInput(format!(
            "the demo serves without API keys, so only on loopback; {bind} is not"
        ))
        .into());
    }

    let mut app = App::connect(&settings).await?;
    let failures = Failures {
        out_of_stock: [SOLD_OUT.to_string()].into_iter().collect(),
        decline_above_cents: Some(DECLINE_ABOVE_CENTS),
        poison_address: Some(POISON.to_string()),
        ..Failures::default()
    };
    let config = FulfillmentConfig {
        faults: if options.failures {
            failures.into()
        } else {
            Failures::default().into()
        },
        ..FulfillmentConfig::default()
    };
    let faults = config.faults.clone();
    let service = service::wire_parts(&mut app, &options.parts, config)
        .await
        .map_err(|e| anyhow::anyhow!(e))?
        .context("the order service is wired")?;
    let state = OrdersHttp {
        commands: app.commands().clone(),
        read_model: service.read_model.clone(),
        faults,
    };
    let server = order_fulfillment::http::bind(&app, Some(state), bind, ApiKeys::none()).await?;
    let addr = server.local_addr();
    app.task("http", server.into_task());
    let bus = app.bus().url().to_string();
    let running = app.start().await?;
    eprintln!(
        "order-fulfillment demo: {} orders by {} HTTP clients on http://{addr}, store {location}, bus {bus}{}",
        group_digits(options.orders as f64),
        options.clients,
        if options.failures { "; injected: out of stock, declined cards, poison messages" } else { "" }
    );
    let result = drive(&running, addr, &location, &bus, &options).await;
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => {
            let _ = running.shutdown(SHUTDOWN_DEADLINE_DEFAULT).await;
            return Err(e);
        }
    };
    let text = if options.json {
        serde_json::to_string(&summary)?
    } else {
        summary.human(&location, options.serve)
    };
    super::print_line(&text)?;
    if options.serve {
        eprintln!(
            "serving http://{addr}/dashboard and the API until Ctrl-C or SIGTERM (the services keep running)"
        );
        running.wait_for_signal().await;
    }
    let report = running.shutdown(SHUTDOWN_DEADLINE_DEFAULT).await;
    if !report.all_stopped_in_time() {
        tracing::warn!("some tasks did not stop in time");
    }
    Ok(())
}

async fn drive(
    running: &RunningApp,
    addr: SocketAddr,
    location: &str,
    bus: &str,
    options: &FlowOptions,
) -> anyhow::Result<FlowSummary> {
    register_catalog(running).await?;
    let stores = running.stores().clone();
    let start_head = stores.events.head_position().await?;
    let commits_before = stores.commit_stats();
    let simple = uuid::Uuid::now_v7().simple().to_string();
    let run_id = format!("d{}", &simple[simple.len() - 8..]);
    let board = Arc::new(Mutex::new(Board::default()));
    let progress = bar(options.orders, "orders settled");
    let settled_count = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let watcher = tokio::spawn(watch(
        stores.clone(),
        start_head,
        run_id.clone(),
        Arc::clone(&board),
        progress.clone(),
        Arc::clone(&settled_count),
        stop_rx,
    ));

    let started = Instant::now();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.clients as usize)
        .build()?;
    let next = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..options.clients {
        let (http, next, board) = (http.clone(), Arc::clone(&next), Arc::clone(&board));
        let (run_id, orders, failures) = (run_id.clone(), options.orders, options.failures);
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= orders {
                    return Ok::<_, anyhow::Error>(());
                }
                let fate = Fate::of(i, failures);
                let id = format!("{run_id}-{i:06}");
                let body = order_body(&id, i, fate);
                let (settled_tx, settled_rx) = tokio::sync::oneshot::channel();
                {
                    let mut board = lock(&board);
                    board.waiters.insert(id.clone(), settled_tx);
                    board.sent.insert(
                        id.clone(),
                        Sent {
                            fate,
                            at: Utc::now(),
                        },
                    );
                }
                let response = http
                    .post(format!("http://{addr}/orders"))
                    .json(&body)
                    .send()
                    .await
                    .with_context(|| format!("POST /orders for {id}"))?;
                anyhow::ensure!(
                    response.status() == 202,
                    "POST /orders for {id} answered {}: {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                );
                let accepted: OrderAccepted = response.json().await?;
                anyhow::ensure!(accepted.order_id == id, "the order id came back changed");
                // A client is a customer: it waits for its order to settle before the
                // next, so the latency is the flow's, not a queue's.
                tokio::time::timeout(ORDER_SETTLE_DEADLINE, settled_rx)
                    .await
                    .with_context(|| {
                        format!(
                            "order {id} did not settle within {ORDER_SETTLE_DEADLINE:?}; see \
                             `runnel sagas list` and `runnel dead-letters list`"
                        )
                    })?
                    .context("the watcher stopped")?;
            }
        }));
    }
    let mut failure = None;
    for client in clients {
        if let Err(e) = client
            .await
            .context("a demo client panicked")
            .and_then(|r| r)
        {
            // The others stop taking new orders; the first failure is reported.
            next.store(options.orders, Ordering::Relaxed);
            failure.get_or_insert(e);
        }
    }
    if let Some(e) = failure {
        let _ = stop_tx.send(true);
        progress.finish_and_clear();
        return Err(e);
    }
    progress.set_message("all placed; waiting for fulfillment");

    let deadline = started + SETTLE_DEADLINE_BASE + Duration::from_secs(options.orders / 20);
    while settled_count.load(Ordering::Relaxed) < options.orders {
        if Instant::now() >= deadline {
            let _ = stop_tx.send(true);
            progress.finish_and_clear();
            let board = lock(&board);
            let waiting: Vec<&String> = board
                .sent
                .keys()
                .filter(|id| !board.settled.contains_key(*id))
                .take(5)
                .collect();
            anyhow::bail!(
                "{} orders did not settle in time (for example {waiting:?}); see `runnel sagas list` \
                 and `runnel dead-letters list`",
                options.orders - settled_count.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    watcher.await.context("the watcher panicked")??;
    progress.finish_and_clear();
    let commits = stores.commit_stats().since(commits_before);
    let events = stores.events.head_position().await?.get() - start_head.get();

    let verified = verify(running, &board).await?;
    let board = lock(&board);
    let mut latencies = Histogram::<u64>::new_with_bounds(1, LATENCY_MICROS_MAX, 3)?;
    for l in &board.latencies {
        latencies.record((*l).clamp(1, LATENCY_MICROS_MAX))?;
    }
    let count = |s: Settled| board.settled.values().filter(|v| **v == s).count() as u64;
    let mut by_reason = BTreeMap::new();
    for (id, sent) in &board.sent {
        if board.settled.get(id) == Some(&Settled::Cancelled) {
            let reason = match sent.fate {
                Fate::OutOfStock => "out of stock",
                Fate::Declined => "card declined",
                _ => "other",
            };
            *by_reason.entry(reason.to_string()).or_insert(0u64) += 1;
        }
    }
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    let sqlite = location.starts_with("sqlite:");
    Ok(FlowSummary {
        orders: options.orders,
        clients: options.clients,
        store: location.to_string(),
        bus: bus.to_string(),
        placed: board.sent.len() as u64,
        confirmed: count(Settled::Confirmed),
        compensated: count(Settled::Cancelled),
        compensated_by_reason: by_reason,
        dead_lettered: count(Settled::DeadLettered),
        elapsed_seconds: seconds,
        orders_per_second: options.orders as f64 / seconds,
        confirm_latency_p50_ms: ms(0.50),
        confirm_latency_p99_ms: ms(0.99),
        confirm_latency_max_ms: latencies.max() as f64 / 1000.0,
        events,
        commits: sqlite.then_some(commits.commits),
        events_per_commit: sqlite.then(|| commits.events_per_commit()),
        verified,
        dashboard: options.serve.then(|| format!("http://{addr}/dashboard")),
    })
}

fn lock(board: &Mutex<Board>) -> std::sync::MutexGuard<'_, Board> {
    board.lock().unwrap_or_else(|e| e.into_inner())
}

fn order_body(id: &str, i: u64, fate: Fate) -> serde_json::Value {
    let (product, cents) = match fate {
        Fate::OutOfStock => (SOLD_OUT.to_string(), 1_250),
        Fate::Declined => ("p-1".to_string(), DECLINE_ABOVE_CENTS + 10_000),
        _ => (format!("p-{}", i % 5), 1_250 + (i % 7) as i64 * 100),
    };
    let address = match fate {
        Fate::Poison => format!("{} {POISON} Row", i % 90 + 1),
        _ => format!("{} Main St", i % 90 + 1),
    };
    serde_json::json!({
        "order_id": id,
        "customer_id": format!("c-{}", i % 7),
        "items": [{"product_id": product, "quantity": 1 + i % 3, "unit_price_cents": cents}],
        "shipping_address": address,
    })
}

/// Registers the demo's customers and products (kept if a reused store has them).
async fn register_catalog(running: &RunningApp) -> anyhow::Result<()> {
    let commands = running.commands();
    for (i, name) in [
        "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret",
    ]
    .into_iter()
    .enumerate()
    {
        match commands
            .execute::<Customer>(
                format!("c-{i}"),
                CustomerCommand::Register { name: name.into() },
            )
            .await
        {
            Err(e) if matches!(e.rejected(), Some(CustomerError::AlreadyRegistered { .. })) => {}
            other => {
                other?;
            }
        }
    }
    for (i, name) in ["Espresso cup", "Teapot", "Milk jug", "Sugar bowl", "Saucer"]
        .into_iter()
        .enumerate()
    {
        match commands
            .execute::<Product>(
                format!("p-{i}"),
                ProductCommand::Add {
                    name: name.into(),
                    unit_price_cents: 1250,
                },
            )
            .await
        {
            Err(e) if matches!(e.rejected(), Some(ProductError::AlreadyAdded { .. })) => {}
            other => {
                other?;
            }
        }
    }
    Ok(())
}

/// Follows `$all` for this run's confirmations and cancellations, and the dead letters
/// for its poison messages, until told to stop.
async fn watch(
    stores: Stores,
    mut after: Position,
    run_id: String,
    board: Arc<Mutex<Board>>,
    progress: indicatif::ProgressBar,
    settled_count: Arc<AtomicU64>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let filter = EventFilter::event_types(["OrderConfirmed", "OrderCancelled"]);
    let prefix = format!("{run_id}-");
    let mut last_dead_letter_check = Instant::now() - DEAD_LETTER_POLL;
    let mut letters_after: Option<DeadLetterId> = None;
    let (mut confirmed, mut cancelled, mut dead) = (0u64, 0u64, 0u64);
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let page = stores
            .events
            .read_all(after, &filter, WATCH_PAGE_EVENTS)
            .await?;
        let mut changed = false;
        if let Some(last) = page.last() {
            after = last.position;
            let mut board = lock(&board);
            for event in &page {
                let id = event.stream.id();
                if !id.starts_with(&prefix) {
                    continue;
                }
                let settled = if event.event_type == "OrderConfirmed" {
                    Settled::Confirmed
                } else {
                    Settled::Cancelled
                };
                if settled == Settled::Confirmed {
                    if let Some(sent) = board.sent.get(id) {
                        let micros = (event.recorded_at - sent.at)
                            .num_microseconds()
                            .unwrap_or(0);
                        board.latencies.push(micros.max(1) as u64);
                    }
                    confirmed += 1;
                } else {
                    cancelled += 1;
                }
                if board.settled.insert(id.to_string(), settled).is_none() {
                    settled_count.fetch_add(1, Ordering::Relaxed);
                    progress.inc(1);
                    if let Some(waiter) = board.waiters.remove(id) {
                        let _ = waiter.send(());
                    }
                }
                changed = true;
            }
        }
        if last_dead_letter_check.elapsed() >= DEAD_LETTER_POLL {
            last_dead_letter_check = Instant::now();
            let letters = stores
                .dead_letters
                .list(&DeadLetterFilter::pending(), letters_after, 1000)
                .await?;
            let mut board = lock(&board);
            for letter in letters {
                letters_after = Some(letter.id);
                let Ok(body) = letter.message.payload_json() else {
                    continue;
                };
                let Some(id) = body["order_id"].as_str() else {
                    continue;
                };
                if id.starts_with(&prefix) && !board.settled.contains_key(id) {
                    board.settled.insert(id.to_string(), Settled::DeadLettered);
                    if let Some(waiter) = board.waiters.remove(id) {
                        let _ = waiter.send(());
                    }
                    settled_count.fetch_add(1, Ordering::Relaxed);
                    progress.inc(1);
                    dead += 1;
                    changed = true;
                }
            }
        }
        if changed {
            progress.set_message(format!(
                "{confirmed} confirmed, {cancelled} compensated, {dead} dead-lettered"
            ));
        }
        if page.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_IDLE) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// Checks every order against its fate: the aggregate's status, the read model's (after
/// it caught up), and the payment ledger (charged once when confirmed; never charged when
/// out of stock or declined).
async fn verify(running: &RunningApp, board: &Mutex<Board>) -> anyhow::Result<u64> {
    let expected: Vec<(String, Fate, Option<Settled>)> = {
        let board = lock(board);
        board
            .sent
            .iter()
            .map(|(id, s)| (id.clone(), s.fate, board.settled.get(id).cloned()))
            .collect()
    };
    let head = running.stores().events.head_position().await?;
    let queries = running.queries().clone();
    let events = Arc::clone(&running.stores().events);
    let checked: Vec<()> = futures_util::stream::iter(expected)
        .map(|(id, fate, settled)| {
            let (queries, events) = (queries.clone(), Arc::clone(&events));
            async move {
                let (want_status, want_settled, want_ledger): (OrderStatus, Settled, &[&str]) =
                    match fate {
                        Fate::Confirmed => (
                            OrderStatus::Confirmed,
                            Settled::Confirmed,
                            &["PaymentCharged"],
                        ),
                        Fate::OutOfStock | Fate::Declined => {
                            (OrderStatus::Cancelled, Settled::Cancelled, &[])
                        }
                        Fate::Poison => (
                            OrderStatus::Pending,
                            Settled::DeadLettered,
                            &["PaymentCharged"],
                        ),
                    };
                anyhow::ensure!(
                    settled.as_ref() == Some(&want_settled),
                    "order {id} ({fate:?}) settled as {settled:?}"
                );
                let order = queries
                    .dispatch(GetOrder {
                        order_id: id.clone(),
                    })
                    .await?
                    .with_context(|| format!("order {id} was never placed"))?;
                anyhow::ensure!(
                    order.status == want_status,
                    "order {id} ({fate:?}) is {}",
                    order.status
                );
                let summary = queries
                    .dispatch(order_fulfillment::GetOrderSummary {
                        order_id: id.clone(),
                        min_position: Some(head),
                    })
                    .await?
                    .with_context(|| format!("order {id} is not in the read model"))?;
                anyhow::ensure!(
                    summary.status == want_status,
                    "the read model shows order {id} ({fate:?}) {}",
                    summary.status
                );
                let ledger: Vec<String> = events
                    .read_stream(
                        &StreamName::new(format!("{PAYMENT_CATEGORY}-{id}"))?,
                        ReadStream::forward(100),
                    )
                    .await?
                    .iter()
                    .map(|e| e.event_type.clone())
                    .collect();
                anyhow::ensure!(
                    ledger == want_ledger,
                    "order {id} ({fate:?}): the payment ledger holds {ledger:?}"
                );
                Ok(())
            }
        })
        .buffer_unordered(VERIFY_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(checked.len() as u64)
}

impl FlowSummary {
    fn human(&self, location: &str, serving: bool) -> String {
        let n = |v: u64| group_digits(v as f64);
        let mut out = String::new();
        out.push_str(&format!(
            "Order flow demo: {} orders by {} HTTP clients in {:.2} s ({} orders/s)\n",
            n(self.orders),
            self.clients,
            self.elapsed_seconds,
            group_digits(self.orders_per_second)
        ));
        out.push_str(&format!(
            "  placed         {} (POST /orders)\n",
            n(self.placed)
        ));
        out.push_str(&format!(
            "  confirmed      {} (reserved, charged, shipped, confirmed)\n",
            n(self.confirmed)
        ));
        let reasons: Vec<String> = self
            .compensated_by_reason
            .iter()
            .map(|(r, c)| format!("{} {r}", n(*c)))
            .collect();
        out.push_str(&format!(
            "  compensated    {}{}\n",
            n(self.compensated),
            if reasons.is_empty() {
                String::new()
            } else {
                format!(
                    " ({}; completed steps undone in reverse, order cancelled)",
                    reasons.join(", ")
                )
            }
        ));
        out.push_str(&format!(
            "  dead-lettered  {} (poison shipment commands; the orders wait for a replay)\n",
            n(self.dead_lettered)
        ));
        out.push_str(&format!(
            "  POST→confirmed p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
            self.confirm_latency_p50_ms, self.confirm_latency_p99_ms, self.confirm_latency_max_ms
        ));
        match (self.commits, self.events_per_commit) {
            (Some(commits), Some(per_commit)) => out.push_str(&format!(
                "  events         {} appended, {per_commit:.1} per commit ({} commits)\n",
                n(self.events),
                n(commits)
            )),
            _ => out.push_str(&format!("  events         {} appended\n", n(self.events))),
        }
        out.push_str(&format!(
            "  verified       {} orders: aggregate, read model and payment ledger agree with each fate\n",
            n(self.verified)
        ));
        let store_flag = match location.strip_prefix("sqlite:") {
            Some(path) => format!("--db {path}"),
            None => "--store <the store URL>".to_string(),
        };
        out.push_str("\nWhere to look:\n");
        out.push_str(&format!("  runnel {store_flag} sagas list\n"));
        out.push_str(&format!("  runnel {store_flag} dead-letters list\n"));
        out.push_str(&format!("  runnel {store_flag} projections status\n"));
        match &self.dashboard {
            Some(url) if serving => out.push_str(&format!("  dashboard: {url}\n")),
            _ => out.push_str(
                "  dashboard: run the demo with --serve, then open http://127.0.0.1:7411/dashboard\n",
            ),
        }
        out.truncate(out.trim_end().len());
        out
    }
}
