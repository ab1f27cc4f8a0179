//! The scale-out proof and benchmark that `scripts/scale-out.sh` runs: `order-fulfillment
//! run` processes on one PostgreSQL schema and one broker.
//!
//! 1. Throughput of the whole flow (every service waits 5 ms per command): orders to
//!    their final state per second with one process, then with three; the ratio.
//! 2. The services' stage, handler-bound: every process runs its service consumers one
//!    handler at a time (`--service-concurrency 1`) and each command waits 5 ms; a fixed
//!    number of commands is published straight onto a service's command topic (replies
//!    to a topic of the run's own) and the replies are counted: commands per second with
//!    one process, then with three; the ratio. This is where processes must add handler
//!    capacity: on NATS only partitioned groups (`partitions=`) spread a group's work.
//! 3. The kill: three processes under a steady load, the one running the order summaries
//!    killed with SIGKILL mid-load, and how long until what it held runs elsewhere.
//!
//! After each run every order is checked (final exactly once, saga finished, ledger, read
//! model against the event store) and the run's schema is dropped.
//!
//! ```text
//! cargo run --release -p order-fulfillment --example scale_out -- --bus nats --orders 1000
//! ```

mod harness;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use harness::{Cluster, Load, TAKEOVER_MAX};
use runnel::connect::{open_broker, BusUrl};
use runnel::core::bus::{StartPosition, SubscribeOptions};
use runnel::core::{GroupName, Message, TopicName};

/// Pause of each client between two orders in the kill run (a steady load well below
/// capacity, so work stuck behind the killed process stands out).
const KILL_RUN_CLIENT_PAUSE: Duration = Duration::from_millis(100);
/// Clients of the kill run.
const KILL_RUN_CLIENTS: usize = 4;
/// How long the orders of a run may take to reach their final state.
const SETTLE_DEADLINE: Duration = Duration::from_secs(600);
/// After the stage run's processes started, how long their groups get to balance (a few
/// NATS lease TTLs of 2 s; a Kafka rebalance) before the work is
/// published.
const STAGE_BALANCE: Duration = Duration::from_secs(8);
/// How long the stage run's replies may take.
const STAGE_DEADLINE: Duration = Duration::from_secs(300);
/// Commands published per batch in the stage run.
const STAGE_BATCH: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BusKind {
    Nats,
    Kafka,
}

/// Scale-out proof and throughput: one process vs three, and a SIGKILL mid-load.
#[derive(Parser)]
struct Args {
    /// The broker the processes share.
    #[arg(long, value_enum, default_value_t = BusKind::Nats)]
    bus: BusKind,
    /// PostgreSQL (each run gets a fresh `scaleout_<12 hex digits>` schema, dropped afterwards).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg: String,
    /// NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Kafka brokers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka: String,
    /// Orders per throughput run.
    #[arg(long, default_value_t = 1000)]
    orders: usize,
    /// Concurrent HTTP clients of a throughput run.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Processes of the scaled-out runs.
    #[arg(long, default_value_t = 3)]
    processes: usize,
    /// Orders of the kill run.
    #[arg(long, default_value_t = 300)]
    kill_orders: usize,
    /// Skip the throughput runs.
    #[arg(long)]
    no_throughput: bool,
    /// Skip the kill run.
    #[arg(long)]
    no_kill: bool,
    /// Commands of the services' stage run (0 skips it).
    #[arg(long, default_value_t = 3000)]
    stage_commands: usize,
    /// The service(s) the stage run's commands go to: inventory, payments, shipping, or
    /// all (spread evenly).
    #[arg(long, default_value = "inventory")]
    stage_service: String,
    /// Handlers each service consumer runs at once per process in the stage run.
    #[arg(long, default_value_t = 1)]
    stage_concurrency: usize,
    /// NATS partitions per topic (`partitions=`; 1 = unpartitioned groups, one process
    /// pulls a group's messages).
    #[arg(long, default_value_t = 6)]
    nats_partitions: u32,
    /// Kafka partitions of the run's topics (`partitions=`; each run has topics of its
    /// own, under a fresh `prefix=`).
    #[arg(long, default_value_t = 6)]
    kafka_partitions: u32,
    /// The `order-fulfillment` binary (default: next to this example's directory).
    #[arg(long)]
    bin: Option<PathBuf>,
}

/// One throughput run's figures.
struct Throughput {
    processes: usize,
    orders: usize,
    placed_secs: f64,
    final_secs: f64,
    peak_rss_mib: Vec<f64>,
}

impl Throughput {
    fn rate(&self) -> f64 {
        self.orders as f64 / self.final_secs
    }
}

/// The run's bus. `kill`: a kill run, whose Kafka groups need a short session so the
/// killed member's partitions move within the takeover bound.
fn bus_url(args: &Args, kill: bool) -> String {
    match args.bus {
        BusKind::Nats => harness::nats_bus_partitioned(&args.nats, args.nats_partitions),
        BusKind::Kafka => harness::with_param(
            &if kill {
                harness::kafka_bus(&args.kafka)
            } else {
                harness::kafka_bus_with_session(&args.kafka, "10s")
            },
            &format!("partitions={}", args.kafka_partitions),
        ),
    }
}

/// One stage run's figures.
struct Stage {
    processes: usize,
    commands: usize,
    published_secs: f64,
    replied_secs: f64,
    peak_rss_mib: Vec<f64>,
}

impl Stage {
    fn rate(&self) -> f64 {
        self.commands as f64 / self.replied_secs
    }
}

/// The services' stage alone: `processes` processes with `--service-concurrency`, a fixed
/// number of commands published at once onto the command topics, timed until every reply
/// is back.
async fn stage(args: &Args, bin: &std::path::Path, processes: usize) -> anyhow::Result<Stage> {
    use order_fulfillment::fulfillment::{INVENTORY_TOPIC, PAYMENTS_TOPIC, SHIPPING_TOPIC};
    let topics: Vec<(&str, &str)> = match args.stage_service.as_str() {
        "inventory" => vec![(INVENTORY_TOPIC, "ReserveInventory")],
        "payments" => vec![(PAYMENTS_TOPIC, "ChargePayment")],
        "shipping" => vec![(SHIPPING_TOPIC, "CreateShipment")],
        "all" => vec![
            (INVENTORY_TOPIC, "ReserveInventory"),
            (PAYMENTS_TOPIC, "ChargePayment"),
            (SHIPPING_TOPIC, "CreateShipment"),
        ],
        other => anyhow::bail!("--stage-service {other:?}: inventory, payments, shipping or all"),
    };
    println!(
        "scale-out: services' stage, {processes} process(es), {} commands to {}, --service-concurrency {} --service-delay {}",
        args.stage_commands,
        args.stage_service,
        args.stage_concurrency,
        harness::SERVICE_DELAY
    );
    let url = bus_url(args, false);
    let extra = [
        "--service-concurrency".to_string(),
        args.stage_concurrency.to_string(),
    ];
    let cluster = Cluster::start_with(bin, &args.pg, &url, processes, &extra).await?;
    let result = async {
        let bus = open_broker(&BusUrl::parse(&url)?)
            .await?
            .context("a broker URL")?;
        let tag = uuid::Uuid::now_v7().simple().to_string();
        let tag = &tag[tag.len() - 12..];
        let replies = TopicName::new(format!("scaleout.stage.{tag}"))?;
        let mut stream = bus
            .subscriber
            .subscribe(
                &replies,
                &GroupName::new(format!("stage-{tag}"))?,
                SubscribeOptions {
                    start: StartPosition::Earliest,
                    max_in_flight: 256,
                    ..SubscribeOptions::default()
                },
            )
            .await?;
        // Let the groups balance over the processes before the work arrives.
        tokio::time::sleep(STAGE_BALANCE).await;
        let started = Instant::now();
        let mut batch: Vec<(&str, Message)> = Vec::new();
        for i in 0..args.stage_commands {
            let (topic, command) = topics[i % topics.len()];
            let order_id = format!("stage-{tag}-{i}");
            let body = serde_json::json!({
                "order_id": order_id,
                "customer_id": harness::CUSTOMERS[0].0,
                "items": [{"product_id": harness::PRODUCTS[0].0, "quantity": 1, "unit_price_cents": 1250}],
                "total_cents": 1250,
                "shipping_address": "1 Main St",
            });
            let mut m = Message::json(command, &body).with_key(order_id.clone());
            m.headers
                .insert(runnel::saga::REPLY_TO_HEADER.into(), replies.as_str().into());
            m.headers.insert(
                runnel::saga::IDEMPOTENCY_KEY_HEADER.into(),
                format!("{order_id}:{command}"),
            );
            batch.push((topic, m));
            if batch.len() == STAGE_BATCH || i + 1 == args.stage_commands {
                for (topic, _) in &topics {
                    let messages: Vec<Message> = batch
                        .iter()
                        .filter(|(t, _)| t == topic)
                        .map(|(_, m)| m.clone())
                        .collect();
                    if !messages.is_empty() {
                        bus.publisher.publish(&TopicName::new(*topic)?, messages).await?;
                    }
                }
                batch.clear();
            }
        }
        let published_secs = started.elapsed().as_secs_f64();
        println!(
            "scale-out:   published {} commands in {published_secs:.1} s",
            args.stage_commands
        );
        let mut seen = std::collections::HashSet::new();
        let deadline = started + STAGE_DEADLINE;
        let mut last_report = Instant::now();
        while seen.len() < args.stage_commands {
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(
                !left.is_zero(),
                "only {} of {} replies within {STAGE_DEADLINE:?}",
                seen.len(),
                args.stage_commands
            );
            let Ok(next) = tokio::time::timeout(left, stream.next()).await else {
                continue;
            };
            let delivery = next.context("the reply stream ended")??;
            if let Some(cause) = delivery.message.causation_id.clone() {
                seen.insert(cause);
            }
            delivery.ack().await?;
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                println!(
                    "scale-out:   {}/{} replies after {:.0} s",
                    seen.len(),
                    args.stage_commands,
                    started.elapsed().as_secs_f64()
                );
            }
        }
        let replied_secs = started.elapsed().as_secs_f64();
        let run = Stage {
            processes,
            commands: args.stage_commands,
            published_secs,
            replied_secs,
            peak_rss_mib: peak_rss(&cluster),
        };
        println!(
            "scale-out:   every reply after {replied_secs:.1} s: {:.1} commands/s",
            run.rate()
        );
        Ok::<_, anyhow::Error>(run)
    }
    .await;
    if result.is_err() {
        eprintln!("{}", cluster.tails());
    }
    cluster.finish().await?;
    result
}

fn peak_rss(cluster: &Cluster) -> Vec<f64> {
    cluster
        .processes
        .iter()
        .filter_map(|p| p.peak_rss_kib())
        .map(|kib| kib as f64 / 1024.0)
        .collect()
}

async fn throughput(
    args: &Args,
    bin: &std::path::Path,
    processes: usize,
) -> anyhow::Result<Throughput> {
    println!(
        "scale-out: throughput, {processes} process(es), {} orders, {} clients",
        args.orders, args.clients
    );
    let cluster = Cluster::start(bin, &args.pg, &bus_url(args, false), processes).await?;
    let result = async {
        let load = Load::new(
            args.orders,
            cluster.processes.iter().map(|p| p.base.clone()).collect(),
            None,
        );
        let started = Instant::now();
        harness::join_clients(load.spawn_clients(args.clients)).await?;
        let placed_secs = started.elapsed().as_secs_f64();
        println!("scale-out:   placed {} orders in {placed_secs:.1} s", args.orders);
        let orders = load.placed();
        harness::settle(&cluster, &orders, SETTLE_DEADLINE, |n| {
            println!("scale-out:   {n}/{} final after {:.0} s", orders.len(), started.elapsed().as_secs_f64());
        })
        .await?;
        let final_secs = started.elapsed().as_secs_f64();
        let peak_rss_mib = peak_rss(&cluster);
        let verified = harness::verify(&cluster, &orders).await?;
        let run = Throughput {
            processes,
            orders: orders.len(),
            placed_secs,
            final_secs,
            peak_rss_mib,
        };
        println!(
            "scale-out:   all final after {final_secs:.1} s: {:.1} orders/s ({} confirmed, {} cancelled; checked)",
            run.rate(),
            verified.confirmed,
            verified.cancelled
        );
        Ok::<_, anyhow::Error>(run)
    }
    .await;
    if result.is_err() {
        eprintln!("{}", cluster.tails());
    }
    cluster.finish().await?;
    result
}

async fn kill_run(args: &Args, bin: &std::path::Path) -> anyhow::Result<Duration> {
    let processes = args.processes.max(2);
    println!(
        "scale-out: kill run, {processes} processes, {} orders at about {} orders/s, SIGKILL after a third",
        args.kill_orders,
        KILL_RUN_CLIENTS as u128 * 1000 / KILL_RUN_CLIENT_PAUSE.as_millis()
    );
    let mut cluster = Cluster::start(bin, &args.pg, &bus_url(args, true), processes).await?;
    let result = async {
        let load = Load::new(
            args.kill_orders,
            cluster.processes.iter().map(|p| p.base.clone()).collect(),
            Some(KILL_RUN_CLIENT_PAUSE),
        );
        let clients = load.spawn_clients(KILL_RUN_CLIENTS);
        let deadline = Instant::now() + harness::START_DEADLINE;
        while load.placed_count() < args.kill_orders / 3 {
            ensure!(Instant::now() < deadline, "the load did not get going");
            tokio::time::sleep(harness::POLL).await;
        }
        let (_victim, _held, takeover) = harness::kill_and_watch(&mut cluster, &load).await?;
        let ms = |d: Option<Duration>| d.map_or("not yet".to_string(), |d| format!("{} ms", d.as_millis()));
        println!(
            "scale-out:   taken over: projections {}, outbox rows {}, saga timers {}, sagas in flight {}",
            ms(takeover.projections),
            ms(takeover.outbox),
            ms(takeover.timers),
            ms(takeover.sagas)
        );
        let done = takeover.done().context("the killed process's work was not taken over")?;
        harness::join_clients(clients).await?;
        let orders = load.placed();
        harness::settle(&cluster, &orders, SETTLE_DEADLINE, |_| {}).await?;
        let verified = harness::verify(&cluster, &orders).await?;
        println!(
            "scale-out:   takeover {} ms (bound {} ms); {} orders final exactly once ({} confirmed, {} cancelled; {} charged, {} refunded)",
            done.as_millis(),
            TAKEOVER_MAX.as_millis(),
            orders.len(),
            verified.confirmed,
            verified.cancelled,
            verified.charged,
            verified.refunded
        );
        Ok::<_, anyhow::Error>(done)
    }
    .await;
    if result.is_err() {
        eprintln!("{}", cluster.tails());
    }
    cluster.finish().await?;
    result
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match &args.bin {
        Some(bin) => bin.clone(),
        None => harness::sibling_binary()?,
    };
    ensure!(
        bin.exists(),
        "no order-fulfillment binary at {}",
        bin.display()
    );
    let mut runs = Vec::new();
    if !args.no_throughput {
        for processes in [1, args.processes] {
            runs.push(throughput(&args, &bin, processes).await?);
        }
    }
    let mut stages = Vec::new();
    if args.stage_commands > 0 {
        for processes in [1, args.processes] {
            stages.push(stage(&args, &bin, processes).await?);
        }
    }
    let takeover = if args.no_kill {
        None
    } else {
        Some(kill_run(&args, &bin).await?)
    };

    let partitions = match args.bus {
        BusKind::Nats => args.nats_partitions,
        BusKind::Kafka => args.kafka_partitions,
    };
    println!(
        "scale-out: summary ({:?}, partitions={partitions}, --service-delay {})",
        args.bus,
        harness::SERVICE_DELAY,
    );
    for run in &runs {
        let rss: Vec<String> = run.peak_rss_mib.iter().map(|m| format!("{m:.0}")).collect();
        println!(
            "scale-out:   {} process(es): {} orders, placed in {:.1} s, final in {:.1} s: {:.1} orders/s; peak RSS per process {} MiB",
            run.processes,
            run.orders,
            run.placed_secs,
            run.final_secs,
            run.rate(),
            rss.join(", ")
        );
    }
    if let [one, many] = &runs[..] {
        println!(
            "scale-out:   ratio {} vs 1 process: {:.2}x (target >= 2.5x)",
            many.processes,
            many.rate() / one.rate()
        );
    }
    for run in &stages {
        let rss: Vec<String> = run.peak_rss_mib.iter().map(|m| format!("{m:.0}")).collect();
        println!(
            "scale-out:   stage, {} process(es): {} commands to {} (published in {:.1} s), all replied in {:.1} s: {:.1} commands/s; peak RSS per process {} MiB",
            run.processes,
            run.commands,
            args.stage_service,
            run.published_secs,
            run.replied_secs,
            run.rate(),
            rss.join(", ")
        );
    }
    if let [one, many] = &stages[..] {
        println!(
            "scale-out:   stage ratio {} vs 1 process: {:.2}x (target >= 2.5x)",
            many.processes,
            many.rate() / one.rate()
        );
    }
    if let Some(done) = takeover {
        println!(
            "scale-out:   takeover after SIGKILL: {} ms (bound {} ms)",
            done.as_millis(),
            TAKEOVER_MAX.as_millis()
        );
        ensure!(
            done < TAKEOVER_MAX,
            "takeover took {done:?}, over {TAKEOVER_MAX:?}"
        );
    }
    Ok(())
}
