//! The scale-out proof and benchmark that `scripts/scale-out.sh` runs: `order-fulfillment
//! run` processes on one PostgreSQL schema and one broker.
//!
//! 1. Throughput of handler-bound work (every service waits 5 ms per command): orders to
//!    their final state per second with one process, then with three; the ratio.
//! 2. The kill: three processes under a steady load, the one running the order summaries
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
use harness::{Cluster, Load, TAKEOVER_MAX};

/// Pause of each client between two orders in the kill run (a steady load well below
/// capacity, so work stuck behind the killed process stands out).
const KILL_RUN_CLIENT_PAUSE: Duration = Duration::from_millis(100);
/// Clients of the kill run.
const KILL_RUN_CLIENTS: usize = 4;
/// How long the orders of a run may take to reach their final state.
const SETTLE_DEADLINE: Duration = Duration::from_secs(600);

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

fn bus_url(args: &Args) -> String {
    match args.bus {
        BusKind::Nats => harness::nats_bus(&args.nats),
        BusKind::Kafka => harness::kafka_bus(&args.kafka),
    }
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
    let cluster = Cluster::start(bin, &args.pg, &bus_url(args), processes).await?;
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
    let mut cluster = Cluster::start(bin, &args.pg, &bus_url(args), processes).await?;
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
    let takeover = if args.no_kill {
        None
    } else {
        Some(kill_run(&args, &bin).await?)
    };

    println!(
        "scale-out: summary ({:?}, --service-delay {})",
        args.bus,
        harness::SERVICE_DELAY
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
