//! `order-fulfillment`: the reference order service on the Runnel application runtime.
//!
//! ```text
//! cargo run -p order-fulfillment                       # the service, on sqlite:runnel.db
//! cargo run -p order-fulfillment -- run --simulate 20  # …placing and shipping 20 orders
//! cargo run -p order-fulfillment -- place o-1 --customer c-1 --item p-1:2:1250
//! cargo run -p order-fulfillment -- show o-1
//! cargo run -p order-fulfillment -- send RegisterCustomer '{"customer_id":"c-1","name":"Ada"}'
//! cargo run -p order-fulfillment -- query FindOrdersByCustomerName '{"customer_name":"Ada"}'
//! cargo run --release -p order-fulfillment -- demo   # the whole order flow, a summary
//! cargo run -p order-fulfillment -- run --http 127.0.0.1:7411   # POST /orders, the dashboard
//! RUNNEL_STORE=postgres://postgres@127.0.0.1/postgres RUNNEL_BUS=nats://127.0.0.1:4222 \
//!   cargo run -p order-fulfillment                     # the same binary, scaled out
//! ```

mod demo;
mod faults_args;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use order_fulfillment::customer::{CustomerCommand, CustomerError};
use order_fulfillment::product::{ProductCommand, ProductError};
use order_fulfillment::service;
use order_fulfillment::{
    Customer, GetOrderSummary, Order, OrderCommand, OrderLine, OrderStatus, Product,
};
use runnel::app::{App, RunningApp, SHUTDOWN_DEADLINE_DEFAULT};
use runnel::catalog::SnapshotError;
use runnel::connect::{ConnectError, Settings, SettingsInputs};
use runnel::DispatchError;
use tracing_subscriber::EnvFilter;

/// Exit code for input refused before anything ran (a demo flag out of range, an unusable
/// store URL, an unknown command or query name, a payload that does not fit it), as the
/// `runnel` CLI uses it; every other failure is 1.
const EXIT_BAD_INPUT: u8 = 2;
/// Exit code of `schema check` when it finds a backward-incompatible change, as the
/// `runnel` CLI uses it.
const EXIT_INCOMPATIBLE: u8 = 6;

/// `schema check` found backward-incompatible changes (already printed).
#[derive(Debug, thiserror::Error)]
#[error("{0} backward-incompatible schema change(s)")]
struct Incompatible(usize);

/// The order service: the Order, Customer and Product aggregates behind the command bus,
/// order summaries enriched with customer and product names (projections, exactly once)
/// behind the query bus, the event store as the outbox, and the fulfillment saga.
///
/// The store and the bus come from --store/--db and --bus, else $RUNNEL_STORE/$RUNNEL_DB and
/// $RUNNEL_BUS, else runnel.toml, else sqlite:runnel.db and the embedded bus. `demo` reads no
/// runnel.toml and defaults to its own recreated runnel-demo.db.
#[derive(Parser)]
#[command(name = "order-fulfillment", version)]
struct Cli {
    /// Store URL: sqlite:PATH or postgres://…
    #[arg(long, global = true)]
    store: Option<String>,
    /// SQLite file (shorthand for --store sqlite:PATH).
    #[arg(long, global = true)]
    db: Option<PathBuf>,
    /// Bus: embedded (default), nats://…, amqp://…, kafka://…, sqs://…
    #[arg(long, global = true)]
    bus: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service until SIGTERM or Ctrl-C (the default).
    Run(RunArgs),
    /// Place one order through the command bus.
    Place(PlaceArgs),
    /// Print an order as the read model has it (JSON, with the customer's and products'
    /// names), or say it is not there yet.
    Show {
        /// The order id.
        order_id: String,
        /// Wait up to this many seconds for the order to reach the read model (a service
        /// process is updating it).
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Send a command by name with a JSON payload (e.g. RegisterCustomer, RenameCustomer,
    /// AddProduct, RenameProduct, PlaceOrder); prints its outcome as JSON.
    Send {
        /// The command's registered name.
        name: String,
        /// Its JSON payload.
        json: String,
    },
    /// Run a query by name with a JSON payload (e.g. GetOrderSummary,
    /// FindOrdersByCustomerName, GetOrder); prints the answer as JSON.
    Query {
        /// The query's registered name.
        name: String,
        /// Its JSON payload.
        json: String,
    },
    /// The service's catalog and schema checks (for CI): print the catalog or its
    /// AsyncAPI 3.0 document, write the event schema snapshot, or check the current event
    /// schemas against a committed one.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Run the demo: the whole order flow on a fresh embedded store (HTTP clients place
    /// orders; the saga reserves, charges, ships and confirms them; injected failures are
    /// compensated or dead-lettered); prints a summary. --race: the aggregate-contention
    /// demo.
    #[command(after_help = demo::AFTER_HELP)]
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// Print the catalog (the body of `GET /catalog`) as JSON.
    Catalog,
    /// Print the AsyncAPI 3.0 document of the service.
    Asyncapi,
    /// Write the event schema snapshot to commit.
    Snapshot {
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check the current event schemas against a committed snapshot: exit 6 and list each
    /// backward-incompatible change (event type, JSON path) if there is one.
    Check {
        /// The committed snapshot.
        #[arg(long)]
        snapshot: PathBuf,
    },
}

#[derive(clap::Args, Default)]
struct RunArgs {
    /// Place, confirm and ship this many orders once the service is up, and report when
    /// the read model shows each one shipped.
    #[arg(long, default_value_t = 0)]
    simulate: u32,
    /// Stop once the simulated orders are all in the read model (instead of running until
    /// a signal).
    #[arg(long, requires = "simulate")]
    exit_after_simulation: bool,
    /// Serve HTTP on this address (e.g. 127.0.0.1:7411, or port 0 for any): every route of
    /// `runnel serve`, the dashboard, POST /orders, GET /orders/{id}, GET/PUT /faults.
    /// Prints `order-fulfillment: listening on http://ADDR` once bound.
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    /// API keys for --http, as `runnel serve --api-keys` takes them (also
    /// $RUNNEL_API_KEYS_FILE and $RUNNEL_API_KEYS). Without keys only a loopback address
    /// may be served.
    #[arg(long, value_name = "FILE")]
    api_keys: Option<PathBuf>,
    /// The parts of the flow this process runs (comma separated): orders (commands, read
    /// model, relay, saga, analytics, /orders), inventory, payments, shipping.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "orders,inventory,payments,shipping"
    )]
    parts: Vec<String>,
    #[command(flatten)]
    faults: faults_args::FaultArgs,
}

#[derive(clap::Args)]
struct PlaceArgs {
    /// The new order's id.
    order_id: String,
    /// The customer.
    #[arg(long)]
    customer: String,
    /// A line, PRODUCT:QUANTITY:UNIT_PRICE_CENTS (repeat for more lines).
    #[arg(long = "item", required = true, value_parser = parse_line)]
    items: Vec<OrderLine>,
    /// Where it ships.
    #[arg(long, default_value = "1 Main St")]
    address: String,
}

fn parse_line(text: &str) -> Result<OrderLine, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let [product, quantity, price] = parts[..] else {
        return Err("expected PRODUCT:QUANTITY:UNIT_PRICE_CENTS, e.g. p-1:2:1250".into());
    };
    let quantity = quantity
        .parse()
        .map_err(|_| format!("quantity {quantity:?} is not a number"))?;
    let price = price
        .parse()
        .map_err(|_| format!("unit price {price:?} is not a number of cents"))?;
    Ok(OrderLine::new(product, quantity, price))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The service reports what it does; the demo's output is its progress bar and summary.
    let log_default = match cli.command {
        // The demo injects poison messages on purpose: their dead-lettering is in the
        // summary, not in warnings over the progress bar.
        Some(Command::Demo(_)) => "warn,lapin=off,runnel::consumer::layers=error",
        Some(Command::Schema(_)) => "warn,lapin=off",
        _ => "info,lapin=off",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(log_default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_code(&e)
        }
    }
}

fn exit_code(e: &anyhow::Error) -> ExitCode {
    if e.chain().any(|cause| cause.is::<Incompatible>()) {
        return ExitCode::from(EXIT_INCOMPATIBLE);
    }
    let bad_input = e.chain().any(|cause| {
        cause.is::<demo::BadInput>()
            // `send` / `query`: a payload that is not JSON, or not the named type's.
            || cause.is::<serde_json::Error>()
            || cause.downcast_ref::<DispatchError>().is_some_and(|e| {
                matches!(
                    e,
                    DispatchError::InvalidPayload { .. }
                        | DispatchError::NoHandler { .. }
                        | DispatchError::InvalidName
                )
            })
            || cause
                .downcast_ref::<SnapshotError>()
                .is_some_and(SnapshotError::is_bad_input)
            || cause
                .downcast_ref::<ConnectError>()
                .is_some_and(ConnectError::is_bad_input)
    });
    if bad_input {
        ExitCode::from(EXIT_BAD_INPUT)
    } else {
        ExitCode::FAILURE
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli {
        store,
        db,
        bus,
        command,
    } = cli;
    match command.unwrap_or(Command::Run(RunArgs::default())) {
        Command::Demo(args) => demo::run(demo::store_url(store, db)?, bus, args).await,
        Command::Schema(command) => schema(command).await,
        Command::Run(args) => serve(store, db, bus, args).await,
        Command::Place(args) => {
            let app = connect(store, db, bus).await?;
            let outcome = app
                .commands()
                .execute::<Order>(
                    args.order_id.clone(),
                    OrderCommand::Place {
                        customer_id: args.customer,
                        items: args.items,
                        shipping_address: args.address,
                        billing_address: None,
                    },
                )
                .await?;
            println!(
                "placed {} at revision {} (position {}); `run` publishes it and updates the read model",
                args.order_id,
                outcome.revision.unwrap_or(0),
                outcome.position.map_or(0, |p| p.get())
            );
            Ok(())
        }
        Command::Send { name, json } => {
            let app = connect(store, db, bus).await?;
            let payload: serde_json::Value = serde_json::from_str(&json)?;
            let outcome = app
                .commands()
                .dispatch_json(&name, payload, Default::default())
                .await?;
            println!("{outcome}");
            Ok(())
        }
        Command::Query { name, json } => {
            let app = connect(store, db, bus).await?;
            let payload: serde_json::Value = serde_json::from_str(&json)?;
            let answer = app
                .queries()
                .dispatch_json(&name, payload, Default::default())
                .await?;
            println!("{answer}");
            Ok(())
        }
        Command::Show { order_id, wait } => {
            let app = connect(store, db, bus).await?;
            let deadline = Instant::now() + Duration::from_secs(wait);
            loop {
                let query = GetOrderSummary {
                    order_id: order_id.clone(),
                    min_position: None,
                };
                if let Some(row) = app.queries().dispatch(query).await? {
                    println!("{}", serde_json::to_string(&row)?);
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    anyhow::bail!(
                        "order {order_id} is not in the read model (yet); is `run` running?"
                    );
                }
                tokio::time::sleep(READ_MODEL_POLL).await;
            }
        }
    }
}

/// `schema …`: the catalog of a scratch wiring (the configured store and bus are not
/// touched).
async fn schema(command: SchemaCommand) -> anyhow::Result<()> {
    let catalog = service::catalog().await.map_err(|e| anyhow::anyhow!(e))?;
    match command {
        SchemaCommand::Catalog => println!("{}", serde_json::to_string_pretty(&catalog)?),
        SchemaCommand::Asyncapi => {
            let doc = catalog.asyncapi("order-fulfillment", env!("CARGO_PKG_VERSION"));
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        SchemaCommand::Snapshot { out } => {
            let snapshot = catalog.schema_snapshot();
            snapshot.write(&out)?;
            eprintln!(
                "wrote the schemas of {} event types to {}",
                snapshot.events.len(),
                out.display()
            );
        }
        SchemaCommand::Check { snapshot } => {
            let report = runnel::catalog::check(&catalog, &snapshot)?;
            println!("{report}");
            if !report.is_compatible() {
                return Err(Incompatible(report.problems.len()).into());
            }
        }
    }
    Ok(())
}

/// The application on the store and bus from the flags, else the environment, else
/// runnel.toml, else the embedded defaults, with the order service wired in.
async fn connect(
    store: Option<String>,
    db: Option<PathBuf>,
    bus: Option<String>,
) -> anyhow::Result<App> {
    let mut app = connect_bare(store, db, bus).await?;
    service::wire(&mut app)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(app)
}

/// The application on the configured store and bus, nothing wired yet.
async fn connect_bare(
    store: Option<String>,
    db: Option<PathBuf>,
    bus: Option<String>,
) -> anyhow::Result<App> {
    let cwd = std::env::current_dir()?;
    let settings: Settings = SettingsInputs::gather(&cwd)?
        .store("--store", store)
        .db("--db", db)
        .bus("--bus", bus)
        .resolve()?;
    Ok(App::connect(&settings).await?)
}

async fn serve(
    store: Option<String>,
    db: Option<PathBuf>,
    bus: Option<String>,
    args: RunArgs,
) -> anyhow::Result<()> {
    // Flags are checked before anything is opened: refused input changes nothing.
    let parts = service::Parts::parse(args.parts.iter().map(String::as_str))
        .map_err(|e| demo::BadInput(e.to_string()))?;
    let fulfillment = args.faults.config()?;
    let keys = match args.http {
        Some(bind) => Some(faults_args::api_keys(args.api_keys.clone(), bind)?),
        None => None,
    };
    let faults = fulfillment.faults.clone();
    let mut app = connect_bare(store, db, bus).await?;
    let service = service::wire_parts(&mut app, &parts, fulfillment)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut listening = None;
    if let (Some(bind), Some(keys)) = (args.http, keys) {
        let state = service
            .as_ref()
            .map(|s| order_fulfillment::http::OrdersHttp {
                commands: app.commands().clone(),
                read_model: s.read_model.clone(),
                faults: faults.clone(),
            });
        let server = order_fulfillment::http::bind(&app, state, bind, keys).await?;
        listening = Some(server.local_addr());
        app.task("http", server.into_task());
    }
    eprintln!(
        "order service: store {}, bus {}, tasks: {}",
        app.stores().url(),
        app.bus().url(),
        app.task_names().join(", ")
    );
    let running = app.start().await?;
    if let Some(addr) = listening {
        // The one line tests and scripts read the address from (the actual port for :0).
        eprintln!("order-fulfillment: listening on http://{addr}");
    }
    if args.simulate > 0 {
        let simulated = simulate(&running, args.simulate);
        tokio::select! {
            result = simulated => {
                result?;
                if args.exit_after_simulation {
                    return stop(running).await;
                }
            }
            _ = running.wait_for_signal() => return stop(running).await,
        }
    }
    eprintln!("order service running; Ctrl-C or SIGTERM stops it");
    running.wait_for_signal().await;
    stop(running).await
}

async fn stop(running: RunningApp) -> anyhow::Result<()> {
    let report = running.shutdown(SHUTDOWN_DEADLINE_DEFAULT).await;
    anyhow::ensure!(
        report.all_stopped_in_time(),
        "some tasks did not stop in time: {:?}",
        report
            .tasks
            .iter()
            .filter(|t| !t.stopped_in_time)
            .map(|t| &t.name)
            .collect::<Vec<_>>()
    );
    eprintln!(
        "order service stopped ({} task restarts)",
        report.restarts()
    );
    Ok(())
}

/// How often `show --wait` and the simulation look at the read model.
const READ_MODEL_POLL: Duration = Duration::from_millis(20);

/// The simulation's customers and products: (id, name).
const SIMULATED_CUSTOMERS: [(&str, &str); 7] = [
    ("c-0", "Ada Lovelace"),
    ("c-1", "Grace Hopper"),
    ("c-2", "Alan Turing"),
    ("c-3", "Edsger Dijkstra"),
    ("c-4", "Barbara Liskov"),
    ("c-5", "Donald Knuth"),
    ("c-6", "Margaret Hamilton"),
];
const SIMULATED_PRODUCTS: [(&str, &str); 5] = [
    ("p-0", "Espresso cup"),
    ("p-1", "Teapot"),
    ("p-2", "Milk jug"),
    ("p-3", "Sugar bowl"),
    ("p-4", "Saucer"),
];

/// Registers the simulation's customers and products (if missing), places, confirms
/// and ships `count` orders, then reads them back through the query bus at the last
/// command's position: each must be shipped, with its customer's and product's names.
async fn simulate(running: &RunningApp, count: u32) -> anyhow::Result<()> {
    let run = uuid::Uuid::now_v7().simple().to_string();
    let started = Instant::now();
    let commands = running.commands();
    // A store that already knows one of them (under another name, after a rename) keeps it.
    for (id, name) in SIMULATED_CUSTOMERS {
        let registered = commands
            .execute::<Customer>(id, CustomerCommand::Register { name: name.into() })
            .await;
        match registered {
            Err(e) if matches!(e.rejected(), Some(CustomerError::AlreadyRegistered { .. })) => {}
            other => {
                other?;
            }
        }
    }
    for (sku, name) in SIMULATED_PRODUCTS {
        let added = commands
            .execute::<Product>(
                sku,
                ProductCommand::Add {
                    name: name.into(),
                    unit_price_cents: 1250,
                },
            )
            .await;
        match added {
            Err(e) if matches!(e.rejected(), Some(ProductError::AlreadyAdded { .. })) => {}
            other => {
                other?;
            }
        }
    }
    let mut ids = Vec::with_capacity(count as usize);
    let mut last_position = None;
    for i in 0..count {
        let id = format!("sim-{}-{i}", &run[run.len() - 8..]);
        let (customer, _) = SIMULATED_CUSTOMERS[i as usize % SIMULATED_CUSTOMERS.len()];
        let (product, _) = SIMULATED_PRODUCTS[i as usize % SIMULATED_PRODUCTS.len()];
        commands
            .execute::<Order>(
                id.clone(),
                OrderCommand::Place {
                    customer_id: customer.into(),
                    items: vec![OrderLine::new(product, 1 + i % 3, 1250)],
                    shipping_address: "1 Main St".into(),
                    billing_address: None,
                },
            )
            .await?;
        commands
            .execute::<Order>(id.clone(), OrderCommand::Confirm)
            .await?;
        let shipped = commands
            .execute::<Order>(
                id.clone(),
                OrderCommand::Ship {
                    tracking_number: Some(format!("t-{i}")),
                },
            )
            .await?;
        last_position = shipped.position.or(last_position);
        ids.push(id);
    }
    for id in ids {
        let summary = running
            .queries()
            .dispatch(GetOrderSummary {
                order_id: id.clone(),
                min_position: last_position,
            })
            .await?;
        anyhow::ensure!(
            summary
                .as_ref()
                .is_some_and(|s| s.status == OrderStatus::Shipped
                    && s.customer_name.is_some()
                    && s.lines.iter().all(|l| l.product_name.is_some())),
            "simulated order {id} is not shipped with names in the read model: {summary:?}"
        );
    }
    eprintln!(
        "simulated {count} orders: placed, confirmed, shipped, and all shipped in the read model after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
