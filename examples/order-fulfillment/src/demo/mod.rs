//! `order-fulfillment demo` (`runnel demo` runs this): the whole order flow — the service
//! running, HTTP clients placing orders, the fulfillment saga and its services, injected
//! failures — with a progress bar and a summary ([`flow`]). `--race` runs the older demo
//! instead: the Order aggregate driven by many concurrent clients through the command bus,
//! racing each other on purpose.
//!
//! The demo opens a store itself instead of starting the service: `--store` / `--db`, else
//! `$RUNNEL_STORE` / `$RUNNEL_DB`, else a recreated `runnel-demo.db` in the current
//! directory. runnel.toml is not read, so the demo never writes demo orders into a
//! project's configured store by accident.

mod flow;
mod progress;
mod workload;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use futures_util::{StreamExt as _, TryStreamExt as _};
use order_fulfillment::{GetOrder, OrderStatus};
use runnel::connect::{open_stores, OpenMode, StoreUrl, Stores, ENV_DB, ENV_STORE};
use runnel::core::{EventFilter, EventStore, Position};
use runnel::{CommandBus, QueryBus};
use runnel_testkit::append_hook::{ConflictCounter, HookedAppends};
use serde::Serialize;

use progress::{bar, group_digits};
use workload::{Client, ClientStats, Fate};

/// The demo's own store file when no --db / --store flag is given; recreated every run.
pub const DEMO_DB_DEFAULT: &str = "runnel-demo.db";
/// Most orders one demo run accepts.
const ORDERS_MAX: u64 = 1_000_000;
/// Most concurrent clients one demo run accepts.
const CLIENTS_MAX: u64 = 1024;
/// Orders checked concurrently after the run.
const VERIFY_CONCURRENCY: usize = 16;
/// Events per read while counting what the run stored.
const VERIFY_PAGE_EVENTS: usize = 1000;

/// The help after the demo's flags.
pub const AFTER_HELP: &str = "\
The demo runs the order service on the embedded default (or the --store / --bus given):
commands, the read model, the outbox relay, the fulfillment saga with its inventory,
payment and shipping services, and the HTTP API. Clients place orders with POST /orders;
each order is reserved, charged, shipped and confirmed. Per 100 orders, 2 ask for a product
out of stock and 3 are paid with a declined card (compensated: completed steps undone in
reverse, the order cancelled), and 1 ships to an address whose shipment command is a poison
message (dead-lettered; the order waits for a replay). The demo waits until every order is
settled, checks each against its fate (aggregate, read model, payment ledger) and prints
orders placed / confirmed / compensated / dead-lettered, p50 and p99 time from POST to
confirmed, events per commit, and where to look.

--serve keeps the service, the API and the dashboard up afterwards (http://127.0.0.1:7411/dashboard):
replay the dead letters from the dashboard or `runnel dead-letters replay`.

--race runs the older demo: clients place, confirm, ship and cancel orders through the
command bus, some deliberately on the same orders at once; it counts optimistic-concurrency
conflicts retried and commands refused by the aggregate.

The demo uses --store / --db, else $RUNNEL_STORE / $RUNNEL_DB, adding orders to that
store; otherwise it recreates runnel-demo.db in the current directory. runnel.toml is
ignored, so the demo never writes into a project's configured store by accident.

The flow's consumers start at a new group's earliest message (a service that comes up late
misses nothing). On SQS/SNS that needs the SNS topic archive's replay, which AWS has and
local emulators (moto) refuse: there the consumers fail to subscribe and say so.

Examples:
  cargo run --release -p order-fulfillment -- demo
  order-fulfillment demo --orders 5000 --clients 64
  order-fulfillment demo --serve                      # then open http://127.0.0.1:7411/dashboard
  order-fulfillment --store postgres://postgres@127.0.0.1/postgres?schema=demo --bus nats://127.0.0.1:4222 demo
  # the services in a process of their own, with the demo's failures:
  order-fulfillment --store postgres://… --bus nats://127.0.0.1:4222 run --parts inventory,payments,shipping \\
      --out-of-stock p-sold-out --decline-above 50000 --poison-address POISON &
  order-fulfillment --store postgres://… --bus nats://127.0.0.1:4222 demo --parts orders
  order-fulfillment demo --race --orders 10000
  runnel demo --json                                  # the same, through the runnel CLI";

/// The demo's flags (the store and bus come from the global --store / --db / --bus).
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Orders to place [default: 1000; with --race 5000]
    #[arg(long, value_name = "N")]
    pub orders: Option<u64>,
    /// Concurrent clients
    #[arg(long, value_name = "C", default_value_t = 32)]
    pub clients: u64,
    /// Print the summary as one JSON object
    #[arg(long)]
    pub json: bool,
    /// Keep the service, the API and the dashboard up after the summary (until Ctrl-C)
    #[arg(long)]
    pub serve: bool,
    /// Where to serve HTTP [default: 127.0.0.1:7411 with --serve, else any free port]
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// Inject no failures: every order is confirmed
    #[arg(long)]
    pub no_failures: bool,
    /// The parts of the flow this process runs (comma separated; must include orders):
    /// run the services as separate processes with `run --parts …`
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "orders,inventory,payments,shipping"
    )]
    pub parts: Vec<String>,
    /// Run the aggregate-contention demo instead (clients racing on the same orders
    /// through the command bus)
    #[arg(long, conflicts_with_all = ["serve", "http", "no_failures"])]
    pub race: bool,
}

/// A flag the demo refuses before it touches a store (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// The store the demo adds orders to: `--store` or `--db`, else `$RUNNEL_STORE` or
/// `$RUNNEL_DB`; `None` for the demo's own recreated file. runnel.toml is not read.
pub fn store_url(store: Option<String>, db: Option<PathBuf>) -> anyhow::Result<Option<StoreUrl>> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let store = store.or_else(|| env(ENV_STORE));
    let db = db.or_else(|| env(ENV_DB).map(PathBuf::from));
    Ok(match (store, db) {
        (Some(_), Some(_)) => {
            return Err(BadInput("--store and --db both name a store; give only one".into()).into())
        }
        (Some(url), None) => Some(StoreUrl::parse(&url)?),
        (None, Some(path)) => Some(StoreUrl::sqlite(path)),
        (None, None) => None,
    })
}

/// Runs the demo on `url` (or a recreated [`DEMO_DB_DEFAULT`]) and `bus` (else
/// `$RUNNEL_BUS`, else the embedded bus) and prints the summary.
pub async fn run(url: Option<StoreUrl>, bus: Option<String>, args: DemoArgs) -> anyhow::Result<()> {
    if !args.race {
        return run_flow(url, bus, args).await;
    }
    let args = RaceArgs {
        orders: args.orders.unwrap_or(RACE_ORDERS_DEFAULT),
        clients: args.clients,
        json: args.json,
    };
    if args.orders == 0 || args.orders > ORDERS_MAX {
        return Err(BadInput(format!("--orders must be 1..={ORDERS_MAX}")).into());
    }
    if args.clients == 0 || args.clients > CLIENTS_MAX {
        return Err(BadInput(format!("--clients must be 1..={CLIENTS_MAX}")).into());
    }
    let (url, fresh) = match url {
        Some(url) => (url, false),
        None => {
            let path = PathBuf::from(DEMO_DB_DEFAULT);
            remove_sqlite_files(&path)?;
            (StoreUrl::sqlite(path), true)
        }
    };
    let stores = open_stores(&url, OpenMode::CreateIfMissing).await?;
    eprintln!(
        "order-fulfillment demo: {} orders, {} concurrent clients, store {} ({})",
        group_digits(args.orders as f64),
        args.clients,
        stores.location(),
        if fresh {
            "recreated"
        } else {
            "orders are added to it"
        }
    );
    let summary = drive(&stores, &args).await?;
    let text = if args.json {
        serde_json::to_string(&summary)?
    } else {
        summary.human(&stores.location())
    };
    print_line(&text)
}

/// Orders the flow demo places by default.
const FLOW_ORDERS_DEFAULT: u64 = 1000;
/// Orders the race demo places by default.
const RACE_ORDERS_DEFAULT: u64 = 5000;

/// The race demo's flags.
struct RaceArgs {
    orders: u64,
    clients: u64,
    json: bool,
}

async fn run_flow(
    url: Option<StoreUrl>,
    bus: Option<String>,
    args: DemoArgs,
) -> anyhow::Result<()> {
    let parts = order_fulfillment::service::Parts::parse(args.parts.iter().map(String::as_str))
        .map_err(|e| BadInput(e.to_string()))?;
    let options = flow::FlowOptions {
        orders: args.orders.unwrap_or(FLOW_ORDERS_DEFAULT),
        clients: args.clients,
        failures: !args.no_failures,
        serve: args.serve,
        http: args.http,
        parts,
        json: args.json,
    };
    if options.orders == 0 || options.orders > flow::FLOW_ORDERS_MAX {
        return Err(BadInput(format!("--orders must be 1..={}", flow::FLOW_ORDERS_MAX)).into());
    }
    if options.clients == 0 || options.clients > flow::FLOW_CLIENTS_MAX {
        return Err(BadInput(format!("--clients must be 1..={}", flow::FLOW_CLIENTS_MAX)).into());
    }
    let url = match url {
        Some(url) => url,
        None => {
            let path = PathBuf::from(DEMO_DB_DEFAULT);
            remove_sqlite_files(&path)?;
            StoreUrl::sqlite(path)
        }
    };
    let env_bus = std::env::var(runnel::connect::ENV_BUS)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let settings = runnel::connect::SettingsInputs {
        env_bus,
        ..Default::default()
    }
    .store("--store", Some(url.as_secret_str().to_string()))
    .bus("--bus", bus)
    .resolve()?;
    flow::run(settings, url.to_string(), options).await
}

/// Writes `line` to stdout; a reader that went away (`… | head`) is not an error.
fn print_line(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

fn remove_sqlite_files(path: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot remove the old demo store {}",
                    PathBuf::from(file).display()
                )))
            }
        }
    }
    Ok(())
}

/// What the summary reports (also the `--json` output).
#[derive(Debug, Serialize)]
struct Summary {
    orders: u64,
    clients: u64,
    commands: u64,
    accepted: u64,
    events: u64,
    conflicts_retried: u64,
    gave_up_after_retries: u64,
    rejected_by_invariants: u64,
    rejected_by_reason: BTreeMap<String, u64>,
    elapsed_seconds: f64,
    commands_per_second: f64,
    events_per_second: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
    /// Writer commits (fsyncs) during the run, where the backend has a single writer.
    commits: Option<u64>,
    events_per_commit: Option<f64>,
    final_states: BTreeMap<String, u64>,
    /// Events of this run found in the store afterwards (must equal `events`).
    events_verified: u64,
}

impl Summary {
    fn human(&self, location: &str) -> String {
        let n = |v: u64| group_digits(v as f64);
        let mut out = String::new();
        out.push_str(&format!(
            "Order fulfillment demo: {} orders by {} concurrent clients in {:.2} s\n",
            n(self.orders),
            self.clients,
            self.elapsed_seconds
        ));
        out.push_str(&format!(
            "  commands      {} sent: {} accepted, {} rejected by invariants\n",
            n(self.commands),
            n(self.accepted),
            n(self.rejected_by_invariants)
        ));
        for (reason, count) in &self.rejected_by_reason {
            out.push_str(&format!("                  {:>6} × {reason}\n", n(*count)));
        }
        out.push_str(&format!(
            "  conflicts     {} retried by the repository ({} commands gave up after every retry)\n",
            n(self.conflicts_retried),
            n(self.gave_up_after_retries)
        ));
        out.push_str(&format!("  events        {} appended\n", n(self.events)));
        out.push_str(&format!(
            "  throughput    {} commands/s, {} events/s\n",
            group_digits(self.commands_per_second),
            group_digits(self.events_per_second)
        ));
        out.push_str(&format!(
            "  latency       p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms per command (retries included)\n",
            self.latency_p50_ms, self.latency_p99_ms, self.latency_max_ms
        ));
        if let (Some(commits), Some(per_commit)) = (self.commits, self.events_per_commit) {
            out.push_str(&format!(
                "  group commit  {per_commit:.1} events per commit ({} commits, one fsync each)\n",
                n(commits)
            ));
        }
        let states: Vec<String> = self
            .final_states
            .iter()
            .map(|(state, count)| format!("{} {state}", n(*count)))
            .collect();
        out.push_str(&format!("  final states  {}\n", states.join(", ")));
        out.push_str(&format!(
            "  verified      {} events read back; every order ended in a state its script allows\n",
            n(self.events_verified)
        ));
        out.push_str(&format!(
            "\nInspect it: runnel --db {location} streams list --category Order --limit 5"
        ));
        out
    }
}

/// Shared by every client.
struct Work {
    run_id: String,
    orders: u64,
    next_order: AtomicU64,
}

impl Work {
    fn order_id(&self, i: u64) -> String {
        format!("{}-{i:06}", self.run_id)
    }
}

async fn drive(stores: &Stores, args: &RaceArgs) -> anyhow::Result<Summary> {
    // Counts the conflicts the repository meets (and retries), whatever becomes of the
    // command.
    let counter = Arc::new(HookedAppends::new(
        Arc::clone(&stores.events),
        ConflictCounter::new(),
    ));
    let events: Arc<dyn EventStore> = counter.clone();
    let upcasters =
        Arc::new(order_fulfillment::upcasters().context("cannot build the order upcasters")?);
    let repository =
        order_fulfillment::order_repository(events, Some(Arc::clone(&stores.snapshots)), upcasters);
    let (commands, queries) = (CommandBus::new(), QueryBus::new());
    order_fulfillment::register(&commands, &queries, repository)
        .context("cannot register the order handlers")?;

    // A short random run id keeps this run's orders apart from earlier runs' in a reused store.
    let simple = uuid::Uuid::now_v7().simple().to_string();
    let work = Arc::new(Work {
        run_id: format!("d{}", &simple[simple.len() - 8..]),
        orders: args.orders,
        next_order: AtomicU64::new(0),
    });
    let start_head = stores.events.head_position().await?;
    let commits_before = stores.commit_stats();
    let progress = bar(args.orders, "orders");

    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients as usize);
    for c in 0..args.clients {
        let client = Client {
            name: format!("client-{c}"),
            bus: commands.clone(),
        };
        let (work, progress) = (Arc::clone(&work), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut stats = ClientStats::new()?;
            loop {
                let i = work.next_order.fetch_add(1, Ordering::Relaxed);
                if i >= work.orders {
                    return Ok::<_, anyhow::Error>(stats);
                }
                client.run_order(&mut stats, i, &work.order_id(i)).await?;
                progress.inc(1);
            }
        }));
    }
    let mut total = ClientStats::new()?;
    let mut failure = None;
    for task in tasks {
        match task.await.context("a demo client panicked").and_then(|r| r) {
            Ok(stats) => total.merge(stats)?,
            Err(e) => {
                // Stop the others from taking new orders, then report the first failure.
                work.next_order.store(work.orders, Ordering::Relaxed);
                failure.get_or_insert(e);
            }
        }
    }
    let elapsed = start.elapsed();
    progress.finish_and_clear();
    if let Some(e) = failure {
        return Err(e);
    }
    let commits = Some(stores.commit_stats().since(commits_before));

    let final_states = verify_final_states(&queries, &work, &total.unsettled_orders).await?;
    let events_verified =
        count_run_events(stores.events.as_ref(), start_head, &work.run_id).await?;
    anyhow::ensure!(
        events_verified == total.events,
        "the store holds {events_verified} events of this run, but {} were acknowledged",
        total.events
    );

    let seconds = elapsed.as_secs_f64().max(1e-9);
    let ms = |q: f64| total.latency_micros.value_at_quantile(q) as f64 / 1000.0;
    let conflicts = counter.hook().conflicts();
    Ok(Summary {
        orders: args.orders,
        clients: args.clients,
        commands: total.commands,
        accepted: total.accepted,
        events: total.events,
        // Every conflict is retried, except the last one of a command that gave up.
        conflicts_retried: conflicts.saturating_sub(total.gave_up),
        gave_up_after_retries: total.gave_up,
        rejected_by_invariants: total.rejected_total(),
        rejected_by_reason: total.rejected.clone(),
        elapsed_seconds: seconds,
        commands_per_second: total.commands as f64 / seconds,
        events_per_second: total.events as f64 / seconds,
        latency_p50_ms: ms(0.50),
        latency_p99_ms: ms(0.99),
        latency_max_ms: total.latency_micros.max() as f64 / 1000.0,
        commits: commits.map(|c| c.commits),
        events_per_commit: commits.map(|c| c.events_per_commit()),
        final_states,
        events_verified,
    })
}

/// Loads every order through the query bus and checks it ended in a state its script
/// allows (orders where a command gave up are only counted).
async fn verify_final_states(
    queries: &QueryBus,
    work: &Work,
    unsettled: &[u64],
) -> anyhow::Result<BTreeMap<String, u64>> {
    let checked: Vec<(u64, Option<OrderStatus>)> = futures_util::stream::iter(0..work.orders)
        .map(|i| async move {
            let summary = queries
                .dispatch(GetOrder {
                    order_id: work.order_id(i),
                })
                .await
                .with_context(|| format!("cannot load order {}", work.order_id(i)))?;
            Ok::<_, anyhow::Error>((i, summary.map(|s| s.status)))
        })
        .buffer_unordered(VERIFY_CONCURRENCY)
        .try_collect()
        .await?;
    let mut states = BTreeMap::new();
    for (i, status) in checked {
        let status =
            status.with_context(|| format!("order {} was never placed", work.order_id(i)))?;
        let fate = Fate::of(i);
        anyhow::ensure!(
            fate.allows(status) || unsettled.contains(&i),
            "order {} ended {status}, which its script ({fate:?}) does not allow",
            work.order_id(i)
        );
        *states.entry(status.to_string()).or_insert(0u64) += 1;
    }
    Ok(states)
}

/// Counts the events of this run's orders after `after`.
async fn count_run_events(
    store: &dyn EventStore,
    after: Position,
    run_id: &str,
) -> anyhow::Result<u64> {
    let filter = EventFilter::categories(["Order"]);
    let prefix = format!("{run_id}-");
    let (mut after, mut count) = (after, 0u64);
    loop {
        let page = store.read_all(after, &filter, VERIFY_PAGE_EVENTS).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        count += page
            .iter()
            .filter(|e| e.stream.id().starts_with(&prefix))
            .count() as u64;
    }
    Ok(count)
}
