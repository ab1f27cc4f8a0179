//! `runnel-bench bus`: the embedded bus's publish and end-to-end throughput and latency,
//! and the consumer router's overhead, each scenario beside its baseline measured in the
//! same run (raw SQLite at the same durability, a bare tokio mpsc pipeline, a direct
//! handler call), as a ratio.

mod end_to_end;
mod postgres;
mod publish;
mod raw;
mod router;
mod workload;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use runnel_core::bus::{SubscribeOptions, Subscriber as _};
use runnel_core::{GroupName, TopicName};
use runnel_sqlite::bus::{BusOptions, SqliteBus};
use runnel_sqlite::{SqliteDeadLetters, SqliteStore};

use crate::cli::BenchBusArgs;
use crate::disk;
use crate::exit::BadInput;
use crate::machine::{filesystem_of, load_average, machine_lines};
use crate::output::print_line;
use crate::progress::group_digits;
use crate::report::{self, rate, Row};
use crate::rss;
use crate::scenario::{blocking, counted};
use end_to_end::{Endpoints, IN_FLIGHT};
use workload::{Budget, Run, PAYLOAD_BYTES};

/// Every scenario runs in this many rounds, all scenarios once per round, so a change in
/// the disk's speed (or a neighbour's load) during the run hits Runnel and its baseline
/// alike.
const ROUNDS: u32 = 3;
/// Publishers in the concurrent publish scenario.
const PUBLISHERS: usize = 64;
/// Messages per call in the batched publish scenario.
const BATCH: usize = 100;
/// Most messages `--messages` accepts.
const MESSAGES_MAX: u64 = 1_000_000_000;
/// Fewest messages `--messages` accepts: one batch of [`BATCH`] per round.
const MESSAGES_MIN: u64 = BATCH as u64 * ROUNDS as u64;

/// Durations and caps of one run.
#[derive(Clone, Copy, Debug)]
struct Settings {
    /// Each bus scenario's time over all rounds.
    scenario: Duration,
    /// Each router scenario's time over all rounds.
    router: Duration,
    /// The fsync probe's time over all rounds.
    fsync: Duration,
    /// Each bus scenario's message cap over all rounds.
    messages_max: u64,
}

impl Settings {
    fn from_args(args: &BenchBusArgs) -> Result<Self, BadInput> {
        if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 600.0) {
            return Err(BadInput("--seconds must be in (0, 600]".into()));
        }
        match args.messages {
            // Every round of the batched scenarios needs room for one whole batch.
            Some(n) if n < MESSAGES_MIN => {
                return Err(BadInput(format!(
                    "--messages must be at least {MESSAGES_MIN}"
                )))
            }
            Some(n) if n > MESSAGES_MAX => {
                return Err(BadInput(format!(
                    "--messages must be at most {MESSAGES_MAX}"
                )))
            }
            _ => {}
        }
        let messages_max = args.messages.unwrap_or(MESSAGES_MAX);
        Ok(if args.quick {
            Settings {
                scenario: Duration::from_millis(150),
                router: Duration::from_millis(30),
                fsync: Duration::from_millis(30),
                messages_max,
            }
        } else {
            let scenario = Duration::from_secs_f64(args.seconds);
            Settings {
                scenario,
                router: scenario.min(Duration::from_secs(1)),
                fsync: scenario.min(Duration::from_secs(2)),
                messages_max,
            }
        })
    }

    /// One round's share of a bus scenario.
    fn round_budget(&self) -> Budget {
        Budget {
            duration: self.scenario / ROUNDS,
            messages_max: self.messages_max.div_ceil(u64::from(ROUNDS)),
        }
    }
}

/// `runnel-bench bus`: on fresh SQLite files in a temporary directory under `--dir`, or,
/// given a PostgreSQL URL, the publish and end-to-end scenarios in fresh schemas on that
/// server.
pub async fn bus(
    args: BenchBusArgs,
    store: Option<runnel::connect::StoreUrl>,
) -> anyhow::Result<()> {
    let settings = Settings::from_args(&args)?;
    if let Some(runnel::connect::StoreUrl::Postgres(raw)) = &store {
        let shown = store.as_ref().map(ToString::to_string).unwrap_or_default();
        let load_before = load_average();
        let outcome = postgres::run(raw, settings).await?;
        let load_after = load_average();
        let mut out = machine_lines(load_before, load_after);
        out.push_str(&format!(
            "PostgreSQL {} at {shown}, synchronous_commit=on, fresh schemas dropped at the end; \
             {PAYLOAD_BYTES}-byte JSON payloads, one consumer group per topic; scenarios alternate in {ROUNDS} rounds; {}\n",
            outcome.server_version,
            command_line(&args),
        ));
        out.push('\n');
        out.push_str(&report::markdown(&outcome.rows));
        out.push('\n');
        out.push_str(&peak_rss_line());
        return print_line(out.trim_end());
    }
    let base = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir()?,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".runnel-bench-bus-")
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a temporary directory in {}", base.display()))?;
    let load_before = load_average();
    let (rows, fsync_per_round) = run_scenarios(tmp.path(), settings).await?;
    let load_after = load_average();

    let mut out = header(tmp.path(), &args, &fsync_per_round, load_before, load_after);
    out.push('\n');
    out.push_str(&report::markdown(&rows));
    out.push('\n');
    out.push_str(&peak_rss_line());
    print_line(out.trim_end())
}

/// `Peak RSS of the benchmark process: 12.3 MiB`.
fn peak_rss_line() -> String {
    format!(
        "Peak RSS of the benchmark process: {}\n",
        match rss::peak_rss_bytes() {
            Some(bytes) => format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0)),
            None => "unknown (no /proc/self/status)".into(),
        }
    )
}

/// Totals of every scenario over the rounds.
struct Totals {
    fsync: disk::FsyncRun,
    fsync_per_round: Vec<f64>,
    /// Runnel and raw, per publish shape: 1 × 1, 64 × 1, 1 × 100.
    publish: [(Run, Run); 3],
    e2e: Run,
    e2e_mpsc: Run,
    e2e_raw: Run,
    direct: Run,
    layered: Run,
    consumer: Run,
}

/// A fresh embedded bus on `path`, with topic `bench` and group `bench` created (so every
/// publish writes one queue row).
async fn fresh_bus(path: &Path) -> anyhow::Result<(SqliteStore, SqliteBus, TopicName, GroupName)> {
    let store = SqliteStore::open(path)?;
    let bus = SqliteBus::new(store.clone(), BusOptions::default())?;
    let (topic, group) = (TopicName::new("bench")?, GroupName::new("bench")?);
    // Subscribing creates the group; the stream is dropped at once (nothing is claimed).
    drop(
        bus.subscribe(&topic, &group, SubscribeOptions::default())
            .await?,
    );
    Ok((store, bus, topic, group))
}

async fn run_scenarios(dir: &Path, s: Settings) -> anyhow::Result<(Vec<Row>, Vec<f64>)> {
    // One file per publish shape, as a real deployment has one per process.
    let shapes = [(1usize, 1usize), (PUBLISHERS, 1), (1, BATCH)];
    let mut publish_buses = Vec::with_capacity(shapes.len());
    for (i, _) in shapes.iter().enumerate() {
        publish_buses.push(fresh_bus(&dir.join(format!("bus-publish-{i}.db"))).await?);
    }
    let (e2e_store, e2e_bus, e2e_topic, e2e_group) =
        fresh_bus(&dir.join("bus-end-to-end.db")).await?;
    let dead_letters: Arc<dyn runnel_core::dead_letter::DeadLetterStore> =
        Arc::new(SqliteDeadLetters::new(e2e_store.clone()));
    let e2e_bus = Arc::new(e2e_bus);
    let ends = Endpoints {
        publisher: e2e_bus.clone(),
        subscriber: e2e_bus,
        dead_letters: Arc::clone(&dead_letters),
        topic: e2e_topic,
        group: e2e_group,
    };
    let router_setup = router::Setup::new(dead_letters)?;

    let mut t = Totals {
        fsync: disk::FsyncRun::default(),
        fsync_per_round: Vec::new(),
        publish: [
            (Run::empty()?, Run::empty()?),
            (Run::empty()?, Run::empty()?),
            (Run::empty()?, Run::empty()?),
        ],
        e2e: Run::empty()?,
        e2e_mpsc: Run::empty()?,
        e2e_raw: Run::empty()?,
        direct: Run::empty()?,
        layered: Run::empty()?,
        consumer: Run::empty()?,
    };
    let budget = s.round_budget();
    for round in 0..ROUNDS {
        let of = format!("round {}/{ROUNDS}", round + 1);
        let fsync = disk::probe(dir, s.fsync / ROUNDS).await?;
        t.fsync_per_round.push(fsync.per_second());
        t.fsync = t.fsync.plus(fsync);

        // Publish: Runnel, then raw rusqlite with the same batching.
        for (i, (publishers, per_call)) in shapes.iter().enumerate() {
            let (store, bus, topic, _) = &publish_buses[i];
            let shape = publish::Shape {
                publishers: *publishers,
                messages_per_call: *per_call,
            };
            let bus: Arc<dyn runnel_core::bus::Publisher> = Arc::new(bus.clone());
            let label = format!("publish, {publishers} × {per_call} msg/call, {of}");
            let commits = || store.writer_stats().commits;
            let runnel = counted(&label, "messages", |c| {
                publish::run(bus, topic, shape, budget, c, &commits)
            })
            .await?;
            t.publish[i].0.add(&runnel)?;
            let rows_per_tx = publishers * per_call;
            let path = dir.join(format!("raw-publish-{i}.db"));
            let raw = blocking(
                &format!("raw rusqlite, {rows_per_tx} msg/tx, {of}"),
                "messages",
                move |c| raw::publish(&path, rows_per_tx, budget, c),
            )
            .await?;
            t.publish[i].1.add(&raw)?;
        }

        // End to end: Runnel, the mpsc ceiling, raw SQLite.
        let commits = || e2e_store.writer_stats().commits;
        let run = counted(&format!("end to end, {of}"), "acked", |c| {
            end_to_end::runnel_round(&ends, budget, c, &commits)
        })
        .await?;
        t.e2e.add(&run)?;
        let run = counted(&format!("tokio mpsc pipeline, {of}"), "acked", |c| {
            end_to_end::mpsc_round(budget, c)
        })
        .await?;
        t.e2e_mpsc.add(&run)?;
        let path = dir.join("raw-end-to-end.db");
        let run = blocking(
            &format!("raw insert + select + delete, {of}"),
            "acked",
            move |c| raw::end_to_end(&path, IN_FLIGHT, budget, c),
        )
        .await?;
        t.e2e_raw.add(&run)?;

        // Router overhead, in memory.
        let d = s.router / ROUNDS;
        let run = counted(&format!("direct handler call, {of}"), "calls", |c| {
            router::direct(&router_setup, d, c)
        })
        .await?;
        t.direct.add(&run)?;
        let run = counted(&format!("default layers, {of}"), "calls", |c| {
            router::layered(&router_setup, d, c)
        })
        .await?;
        t.layered.add(&run)?;
        let run = counted(&format!("in-memory consumer, {of}"), "acked", |c| {
            router::consumer(&router_setup, d, c)
        })
        .await?;
        t.consumer.add(&run)?;
    }
    drop(ends);
    Ok((rows(&t), t.fsync_per_round.clone()))
}

/// `12,345 msg/s · p50 1.2 ms · p99 3.4 ms`.
fn rate_and_latency(run: &Run) -> String {
    format!(
        "{} · {}",
        rate(run.per_second(), "msg/s"),
        run.latency.summary()
    )
}

fn ns_per_message(run: &Run) -> String {
    format!("{} ns/msg", group_digits(run.nanos_per_message()))
}

fn rows(t: &Totals) -> Vec<Row> {
    let mut rows = vec![Row {
        scenario: "disk: 4 KiB overwrite + fdatasync, serial".into(),
        runnel: "—".into(),
        baseline: rate(t.fsync.per_second(), "fsyncs/s"),
        ratio: None,
        target: None,
    }];
    let labels = [
        "publish, 1 publisher × 1 msg/call",
        "publish, 64 publishers × 1 msg/call",
        "publish, 1 publisher × 100 msg/call",
    ];
    let raw_tx = [1, PUBLISHERS, BATCH];
    for (i, (runnel, raw)) in t.publish.iter().enumerate() {
        rows.push(Row {
            scenario: format!(
                "{} ({:.1} msg/commit) vs raw {} msg/tx",
                labels[i],
                runnel.per_commit(),
                raw_tx[i]
            ),
            runnel: rate_and_latency(runnel),
            baseline: rate_and_latency(raw),
            ratio: Some(runnel.per_second() / raw.per_second().max(1e-9)),
            target: None,
        });
    }
    let e2e = format!(
        "end to end: publish → router (default layers, no-op handler) → ack, {IN_FLIGHT} in flight ({:.1} msg/commit)",
        t.e2e.per_commit()
    );
    rows.push(Row {
        scenario: format!("{e2e} vs bare tokio mpsc pipeline (in-process ceiling)"),
        runnel: rate_and_latency(&t.e2e),
        baseline: rate_and_latency(&t.e2e_mpsc),
        ratio: Some(t.e2e.per_second() / t.e2e_mpsc.per_second().max(1e-9)),
        target: None,
    });
    rows.push(Row {
        scenario: format!("{e2e} vs raw SQLite insert + select + delete, {IN_FLIGHT} msg/tx"),
        runnel: rate_and_latency(&t.e2e),
        baseline: rate_and_latency(&t.e2e_raw),
        ratio: Some(t.e2e.per_second() / t.e2e_raw.per_second().max(1e-9)),
        target: None,
    });
    let direct = t.direct.per_second();
    rows.push(Row {
        scenario: format!(
            "router: no-op handler through the default layers vs direct call (+{} ns/msg)",
            group_digits(t.layered.nanos_per_message() - t.direct.nanos_per_message())
        ),
        runnel: ns_per_message(&t.layered),
        baseline: ns_per_message(&t.direct),
        ratio: Some(t.layered.per_second() / direct.max(1e-9)),
        target: None,
    });
    rows.push(Row {
        scenario: format!(
            "router: whole consumer (layers, task per delivery, ack), in-memory subscriber, vs direct call (+{} ns/msg)",
            group_digits(t.consumer.nanos_per_message() - t.direct.nanos_per_message())
        ),
        runnel: ns_per_message(&t.consumer),
        baseline: ns_per_message(&t.direct),
        ratio: Some(t.consumer.per_second() / direct.max(1e-9)),
        target: None,
    });
    rows
}

/// The command as run, for the header.
fn command_line(args: &BenchBusArgs) -> String {
    let mut command = String::from("runnel-bench bus");
    if args.quick {
        command.push_str(" --quick");
    } else if args.seconds != 3.0 {
        command.push_str(&format!(" --seconds {}", args.seconds));
    }
    if let Some(n) = args.messages {
        command.push_str(&format!(" --messages {n}"));
    }
    if args.quick {
        command.push_str(" (smoke test: numbers are not meaningful)");
    }
    command
}

/// What was measured where: machine, load, disk, versions, settings.
fn header(
    dir: &Path,
    args: &BenchBusArgs,
    fsync_per_round: &[f64],
    load_before: Option<String>,
    load_after: Option<String>,
) -> String {
    let (fs, device) = filesystem_of(dir).unwrap_or_else(|| ("unknown".into(), "unknown".into()));
    let rounds: Vec<String> = fsync_per_round.iter().map(|r| group_digits(*r)).collect();
    let mut out = machine_lines(load_before, load_after);
    out.push_str(&format!(
        "Disk: {} ({fs} on {device}); one fresh database file per scenario\n",
        dir.parent().unwrap_or(dir).display()
    ));
    out.push_str(&format!(
        "Disk fsync rate per round: {} /s (scenarios alternate in {ROUNDS} rounds)\n",
        rounds.join(", ")
    ));
    out.push_str(&format!(
        "SQLite {}, WAL, synchronous=FULL; {PAYLOAD_BYTES}-byte JSON payloads, one consumer group; {}\n",
        runnel_sqlite::rusqlite::version(),
        command_line(args),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(seconds: f64, messages: Option<u64>) -> BenchBusArgs {
        BenchBusArgs {
            dir: None,
            seconds,
            messages,
            quick: false,
        }
    }

    #[test]
    fn settings_refuse_out_of_range_flags() {
        assert!(Settings::from_args(&args(0.0, None)).is_err());
        assert!(Settings::from_args(&args(f64::NAN, None)).is_err());
        assert!(Settings::from_args(&args(3.0, Some(MESSAGES_MIN - 1))).is_err());
        assert!(Settings::from_args(&args(3.0, Some(MESSAGES_MAX + 1))).is_err());
        let s = Settings::from_args(&args(3.0, Some(MESSAGES_MIN))).unwrap();
        let round = s.round_budget();
        assert_eq!(round.duration, Duration::from_secs(1));
        assert_eq!(round.messages_max, BATCH as u64);
    }
}
