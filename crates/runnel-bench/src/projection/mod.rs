//! `runnel-bench projection`: events per second a projection that upserts one row per
//! event applies while it rebuilds from the start of `$all`, through Runnel's
//! [`ProjectionRunner`] on SQLite and on PostgreSQL, beside a hand-written loop doing the
//! same work on the same database (read a page of `$all`, upsert each event's row, save
//! the checkpoint, one transaction per page); and, with `--memory`, whether the resident
//! set of a rebuild stays flat as the history grows (100,000 then 1,000,000 events).

mod backend;
mod memory;
mod raw_postgres;
mod raw_sqlite;
mod workload;

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use crate::cli::BenchProjectionArgs;
use crate::disk;
use crate::exit::BadInput;
use crate::machine::{filesystem_of, load_average, machine_lines};
use crate::output::print_line;
use crate::progress::group_digits;
use crate::report::{rate, ratio, Target};
use crate::rss;
use backend::{Backend, SideRun};

/// Every side runs this many rebuilds, the sides taking turns at going first, so a change
/// in the disk's speed or a neighbour's load during the run hits them alike.
const ROUNDS: u32 = 3;
/// The ratio the issue sets for Runnel against the hand-written loop.
const TARGET_RATIO: f64 = 0.8;
/// Most events `--events` and `--memory-events` accept.
const EVENTS_MAX: u64 = 100_000_000;
/// Most events per batch `--batch` accepts (the store's limit on one batch's statements
/// is higher; this keeps one transaction's memory small).
const BATCH_MAX: usize = 10_000;
/// How long the disk's fsync rate is probed before the SQLite scenarios.
const FSYNC_PROBE: Duration = Duration::from_secs(1);

/// Sizes of one run.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Events in `$all` for the throughput rebuilds.
    pub events: u64,
    /// Streams they are spread over (= rows of the read model).
    pub streams: u64,
    /// Events per batch (Runnel's `batch_events`) and per page (the loop's).
    pub batch: usize,
    /// Runnel's side only (profiling).
    pub runnel_only: bool,
    /// `--memory`: the history at the first checkpoint, at the last, and its streams.
    pub memory_first: u64,
    pub memory_total: u64,
    pub memory_streams: u64,
}

impl Settings {
    pub fn from_args(args: &BenchProjectionArgs) -> Result<Self, BadInput> {
        if args.events == 0 || args.events > EVENTS_MAX {
            return Err(BadInput(format!("--events must be 1..={EVENTS_MAX}")));
        }
        if args.streams == 0 || args.streams > args.events {
            return Err(BadInput(
                "--streams must be 1..=--events (each stream gets at least one event)".into(),
            ));
        }
        if args.batch == 0 || args.batch > BATCH_MAX {
            return Err(BadInput(format!("--batch must be 1..={BATCH_MAX}")));
        }
        if args.memory_events < memory::FIRST_CHECKPOINT || args.memory_events > EVENTS_MAX {
            return Err(BadInput(format!(
                "--memory-events must be {}..={EVENTS_MAX} (the first checkpoint is {})",
                memory::FIRST_CHECKPOINT,
                group_digits(memory::FIRST_CHECKPOINT as f64)
            )));
        }
        if args.memory_streams == 0 || args.memory_streams > memory::FIRST_CHECKPOINT {
            return Err(BadInput(format!(
                "--memory-streams must be 1..={} (every stream has an event at the first \
                 checkpoint, so the read model is as large there as at the last)",
                memory::FIRST_CHECKPOINT
            )));
        }
        Ok(if args.quick {
            Settings {
                events: 2_000,
                streams: 200,
                batch: args.batch,
                runnel_only: args.runnel_only,
                memory_first: 1_000,
                memory_total: 3_000,
                memory_streams: 500,
            }
        } else {
            Settings {
                events: args.events,
                streams: args.streams,
                batch: args.batch,
                runnel_only: args.runnel_only,
                memory_first: memory::FIRST_CHECKPOINT,
                memory_total: args.memory_events,
                memory_streams: args.memory_streams,
            }
        })
    }
}

/// `runnel-bench projection`.
pub async fn bench(
    args: BenchProjectionArgs,
    postgres: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let s = Settings::from_args(&args)?;
    let base = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir()?,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".runnel-bench-projection-")
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a temporary directory in {}", base.display()))?;
    let run = Run {
        dir: tmp.path(),
        s: &s,
        args: &args,
        postgres: postgres.as_deref(),
        json,
    };
    if args.memory {
        memory_bench(&run).await
    } else {
        throughput_bench(&run).await
    }
}

/// What one invocation was asked for.
struct Run<'a> {
    dir: &'a Path,
    s: &'a Settings,
    args: &'a BenchProjectionArgs,
    postgres: Option<&'a str>,
    json: bool,
}

/// One store's throughput: Runnel and the loop over the rounds.
struct Throughput {
    store: &'static str,
    runnel: SideRun,
    baseline: SideRun,
}

impl Throughput {
    fn ratio(&self) -> Option<f64> {
        (self.baseline.events > 0)
            .then(|| self.runnel.per_second() / self.baseline.per_second().max(1e-9))
    }
}

/// Seeds `backend` with the run's events, then rebuilds it `ROUNDS` times each way.
async fn throughput_rounds(
    backend: &Backend,
    s: &Settings,
    store: &'static str,
) -> anyhow::Result<Throughput> {
    backend
        .seed(0, s.events, s.streams, &format!("{store}: appending"))
        .await?;
    backend.warm_up().await?;
    let expected = workload::Totals::expected(s.events, s.streams);
    let (mut runnel, mut baseline) = (SideRun::default(), SideRun::default());
    for r in 0..ROUNDS {
        let of = format!("round {}/{ROUNDS}", r + 1);
        for turn in 0..2 {
            if (turn + r) % 2 == 0 {
                let name = format!("bench_totals_{}", r + 1);
                let run = backend
                    .runnel_rebuild(&name, s.batch, s.events, &format!("{store}, Runnel, {of}"))
                    .await?;
                backend.check(&name, expected, "Runnel").await?;
                runnel.add(run);
            } else if !s.runnel_only {
                let table = format!("raw_totals_{}", r + 1);
                let run = backend
                    .raw_rebuild(&table, s.batch, s.events, &format!("{store}, loop, {of}"))
                    .await?;
                backend.check(&table, expected, "the loop").await?;
                baseline.add(run);
            }
        }
    }
    Ok(Throughput {
        store,
        runnel,
        baseline,
    })
}

fn command_line(run: &Run<'_>) -> String {
    let (args, s) = (run.args, run.s);
    let mut command = String::from("runnel-bench projection");
    if let Some(url) = run.postgres {
        command.push_str(&format!(" --store {url}"));
    }
    if args.memory {
        command.push_str(" --memory");
    }
    if args.quick {
        command.push_str(" --quick");
    } else if args.memory {
        command.push_str(&format!(
            " --memory-events {} --memory-streams {}",
            s.memory_total, s.memory_streams
        ));
    } else {
        command.push_str(&format!(" --events {} --streams {}", s.events, s.streams));
    }
    command.push_str(&format!(" --batch {}", s.batch));
    if args.runnel_only {
        command.push_str(" --runnel-only");
    }
    if args.quick {
        command.push_str(" (smoke test: numbers are not meaningful)");
    }
    command
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

fn peak(run: &SideRun) -> String {
    run.peak_rss_bytes.map_or("–".into(), rss::mib)
}

/// The paragraph that says what each side does.
fn sides_text(s: &Settings) -> String {
    format!(
        "Runnel: a ProjectionRunner (`run`, as an application runs it; batch_events {b}) of a \
         projection whose `apply` decodes the event's JSON and describes one upsert \
         (`INSERT … ON CONFLICT (stream) DO UPDATE`); each batch reads a page of `$all` \
         (EventStore::read_all, category filter) and commits the upserts with the \
         checkpoint in one transaction, which checks and renews the lease (claimed before \
         the first batch).\n\
         Baseline: a hand-written loop on its own connection to the same database: SELECT a \
         page of {b} events (position, stream name, payload) straight from the store's \
         `events` and `streams` tables, decode the same JSON, run the same upsert per event \
         (one prepared statement), UPDATE its checkpoint row, COMMIT — one transaction per \
         page, at the same durability. Each rebuild starts from position 0 into a fresh \
         table; every table is checked against the expected rows and sums.\n",
        b = s.batch
    )
}

/// The throughput table: SQLite, then PostgreSQL with a URL.
async fn throughput_bench(run: &Run<'_>) -> anyhow::Result<()> {
    let s = run.s;
    let load_before = load_average();
    let fsync = disk::probe(run.dir, FSYNC_PROBE).await?.per_second();
    let mut results = Vec::new();
    {
        let backend = Backend::sqlite(run.dir)?;
        results.push(throughput_rounds(&backend, s, "SQLite").await?);
    }
    let mut pg_version = None;
    if let Some(url) = run.postgres {
        pg_version = Some(crate::saga::postgres_version(url).await?.0);
        let backend = Backend::postgres(url, "bench_proj").await?;
        let outcome = throughput_rounds(&backend, s, "PostgreSQL").await;
        let dropped = backend.drop_schema().await;
        results.push(outcome?);
        dropped?;
    }
    let load_after = load_average();

    if run.json {
        let rows: Vec<_> = results
            .iter()
            .map(|t| {
                json!({
                    "store": t.store,
                    "runnel": side_json(&t.runnel),
                    "baseline": side_json(&t.baseline),
                    "ratio": t.ratio(),
                    "target": TARGET_RATIO,
                    "met": t.ratio().map(|r| r >= TARGET_RATIO),
                })
            })
            .collect();
        let doc = json!({
            "bench": "projection",
            "events": s.events,
            "streams": s.streams,
            "batch": s.batch,
            "rounds": ROUNDS,
            "quick": run.args.quick,
            "load_average": { "start": load_before, "end": load_after },
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "fsync_per_second": fsync,
            "postgres": pg_version,
            "results": rows,
        });
        return print_line(&serde_json::to_string_pretty(&doc)?);
    }

    let mut out = String::new();
    out.push_str(&format!(
        "Projection: a rebuild from the start of `$all` of {} events over {} streams (one \
         read-model row per stream, upserted by each of its events), in transactions of {} \
         events; {ROUNDS} rebuilds per side, the sides taking turns at going first\n",
        group_digits(s.events as f64),
        group_digits(s.streams as f64),
        s.batch,
    ));
    out.push_str(&sides_text(s));
    out.push_str(&machine_lines(load_before, load_after));
    out.push_str(&disk_line(run.dir, fsync));
    out.push_str(&format!(
        "SQLite {}, WAL, synchronous=FULL (Runnel's default) on both sides, one file",
        runnel_sqlite::rusqlite::version()
    ));
    if let (Some(url), Some(version)) = (run.postgres, &pg_version) {
        out.push_str(&format!(
            "; {version} at {url}, synchronous_commit=on, one fresh schema dropped at the end"
        ));
    }
    out.push('\n');
    out.push_str(&command_line(run));
    out.push_str("\n\n| store | scenario | Runnel events/s | baseline events/s | ratio | target | time per rebuild Runnel / baseline | peak RSS Runnel / baseline |\n");
    out.push_str("|---|---|---:|---:|---:|---|---:|---:|\n");
    for t in &results {
        out.push_str(&throughput_row(t, s));
        out.push('\n');
    }
    out.push('\n');
    for t in &results {
        out.push_str(&transactions_line(t));
        out.push('\n');
    }
    print_line(out.trim_end())
}

fn side_json(run: &SideRun) -> serde_json::Value {
    json!({
        "events": run.events,
        "seconds": run.elapsed.as_secs_f64(),
        "events_per_second": run.per_second(),
        "write_transactions": run.transactions,
        "cpu_seconds": run.cpu.as_secs_f64(),
        "peak_rss_bytes": run.peak_rss_bytes,
    })
}

fn throughput_row(t: &Throughput, s: &Settings) -> String {
    let scenario = format!("upsert 1 row per event, {} events per transaction", s.batch);
    let Some(r) = t.ratio() else {
        return format!(
            "| {} | {scenario} | {} | – | – | – | {} / – | {} / – |",
            t.store,
            rate(t.runnel.per_second(), "/s"),
            secs(t.runnel.per_rebuild(ROUNDS)),
            peak(&t.runnel),
        );
    };
    let target = match Target::at_least(r, TARGET_RATIO) {
        Target {
            text,
            met: Some(true),
        } => format!("{text} ✅ met"),
        Target { text, .. } => format!("{text} ❌ missed"),
    };
    format!(
        "| {} | {scenario} | {} | {} | {} | {target} | {} / {} | {} / {} |",
        t.store,
        rate(t.runnel.per_second(), "/s"),
        rate(t.baseline.per_second(), "/s"),
        ratio(r),
        secs(t.runnel.per_rebuild(ROUNDS)),
        secs(t.baseline.per_rebuild(ROUNDS)),
        peak(&t.runnel),
        peak(&t.baseline),
    )
}

fn transactions_line(t: &Throughput) -> String {
    let per = |run: &SideRun| {
        if run.events == 0 {
            "–".to_string()
        } else {
            format!(
                "{} ({:.2} per 1,000 events)",
                group_digits(run.transactions as f64),
                run.transactions as f64 * 1000.0 / run.events as f64
            )
        }
    };
    let cpu = |run: &SideRun| {
        if run.events == 0 {
            "–".to_string()
        } else {
            format!("{:.1} µs", run.cpu.as_secs_f64() * 1e6 / run.events as f64)
        }
    };
    let runnel_what = if t.store == "SQLite" {
        "the writer's commits: batches, lease claims, registration"
    } else {
        "batches; its lease claims are not counted"
    };
    format!(
        "{}: write transactions Runnel {} ({runnel_what}), loop {}; CPU time of this process \
         per event Runnel {}, loop {}",
        t.store,
        per(&t.runnel),
        per(&t.baseline),
        cpu(&t.runnel),
        cpu(&t.baseline),
    )
}

fn disk_line(dir: &Path, fsync: f64) -> String {
    let (fs, device) = filesystem_of(dir).unwrap_or_else(|| ("unknown".into(), "unknown".into()));
    format!(
        "Disk: {} ({fs} on {device}); fsync rate {} /s before the scenarios\n",
        dir.parent().unwrap_or(dir).display(),
        group_digits(fsync),
    )
}

/// `--memory`: rebuilds at each checkpoint on SQLite, then on PostgreSQL with a URL.
async fn memory_bench(run: &Run<'_>) -> anyhow::Result<()> {
    let s = run.s;
    let load_before = load_average();
    let checkpoints = memory::checkpoints(s.memory_first, s.memory_total);
    let mut results: Vec<(&str, Vec<memory::Point>)> = Vec::new();
    {
        let backend = Backend::sqlite(run.dir)?;
        results.push((
            "SQLite",
            memory::run("SQLite", &backend, &checkpoints, s).await?,
        ));
    }
    let mut pg_version = None;
    if let Some(url) = run.postgres {
        pg_version = Some(crate::saga::postgres_version(url).await?.0);
        let backend = Backend::postgres(url, "bench_proj_mem").await?;
        let outcome = memory::run("PostgreSQL", &backend, &checkpoints, s).await;
        let dropped = backend.drop_schema().await;
        results.push(("PostgreSQL", outcome?));
        dropped?;
    }
    let load_after = load_average();

    if run.json {
        let stores: Vec<_> = results
            .iter()
            .map(|(store, points)| {
                json!({
                    "store": store,
                    "checkpoints": points.iter().map(memory::Point::to_json).collect::<Vec<_>>(),
                    "rss_grew": memory::grew(points),
                })
            })
            .collect();
        let doc = json!({
            "bench": "projection",
            "memory": true,
            "streams": s.memory_streams,
            "batch": s.batch,
            "quick": run.args.quick,
            "load_average": { "start": load_before, "end": load_after },
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "postgres": pg_version,
            "results": stores,
        });
        return print_line(&serde_json::to_string_pretty(&doc)?);
    }

    let mut out = String::new();
    out.push_str(&format!(
        "Projection memory: events are appended over {} streams up to each checkpoint, then a \
         fresh projection rebuilds from the start of `$all` (batch_events {}); RSS is read \
         before the rebuild (what this process kept from appending the history), its peak \
         during the rebuild, and RSS after it, {} ms idle; the loop rebuilds the same \
         history after it. The verdict compares how far each rebuild raised RSS\n",
        group_digits(s.memory_streams as f64),
        s.batch,
        memory::SETTLE.as_millis()
    ));
    out.push_str(&sides_text(s));
    out.push_str(&machine_lines(load_before, load_after));
    out.push_str(&format!(
        "SQLite {}, WAL, synchronous=FULL",
        runnel_sqlite::rusqlite::version()
    ));
    if let (Some(url), Some(version)) = (run.postgres, pg_version) {
        out.push_str(&format!(
            "; {version} at {url} (the server's memory is not counted)"
        ));
    }
    out.push('\n');
    out.push_str(&command_line(run));
    out.push_str("\n\n| store | events in `$all` | read-model rows | Runnel rebuild | Runnel events/s | loop events/s | ratio | RSS before → peak during the rebuild | anonymous RSS before → after | RSS after | SQLite heap |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let opt = |b: Option<u64>| b.map_or("–".to_string(), rss::mib);
    for (store, points) in &results {
        for p in points {
            let (baseline, r) = match &p.baseline {
                Some(b) if b.events > 0 => (
                    rate(b.per_second(), "/s"),
                    ratio(p.runnel.per_second() / b.per_second().max(1e-9)),
                ),
                _ => ("–".into(), "–".into()),
            };
            out.push_str(&format!(
                "| {store} | {} | {} | {:.1} s | {} | {baseline} | {r} | {} → {} | {} → {} | {} | {} |\n",
                group_digits(p.events as f64),
                group_digits(p.rows as f64),
                p.runnel.elapsed.as_secs_f64(),
                rate(p.runnel.per_second(), "/s"),
                opt(p.rss_before),
                opt(p.runnel.peak_rss_bytes),
                opt(p.anon_before),
                opt(p.anon_after),
                opt(p.rss_after),
                opt(p.sqlite_heap),
            ));
        }
    }
    out.push('\n');
    for (store, points) in &results {
        out.push_str(&memory::verdict(store, points));
        out.push('\n');
    }
    print_line(out.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BenchProjectionArgs {
        BenchProjectionArgs {
            dir: None,
            events: 100_000,
            streams: 10_000,
            batch: 500,
            runnel_only: false,
            memory: false,
            memory_events: 1_000_000,
            memory_streams: 100_000,
            quick: false,
        }
    }

    #[test]
    fn settings_refuse_out_of_range_flags() {
        assert!(Settings::from_args(&args()).is_ok());
        for broken in [
            BenchProjectionArgs {
                events: 0,
                ..args()
            },
            BenchProjectionArgs {
                streams: 200_000,
                ..args()
            },
            BenchProjectionArgs { batch: 0, ..args() },
            BenchProjectionArgs {
                batch: BATCH_MAX + 1,
                ..args()
            },
            BenchProjectionArgs {
                memory_events: 10,
                ..args()
            },
            BenchProjectionArgs {
                memory_streams: memory::FIRST_CHECKPOINT + 1,
                ..args()
            },
        ] {
            assert!(Settings::from_args(&broken).is_err(), "{broken:?}");
        }
    }

    #[test]
    fn a_row_shows_the_ratio_against_the_target() {
        let side = |events: u64, secs: u64| SideRun {
            events,
            elapsed: Duration::from_secs(secs),
            transactions: events / 500,
            cpu: Duration::ZERO,
            peak_rss_bytes: Some(30 << 20),
        };
        let t = Throughput {
            store: "SQLite",
            runnel: side(90_000, 1),
            baseline: side(100_000, 1),
        };
        let s = Settings::from_args(&args()).unwrap();
        let row = throughput_row(&t, &s);
        assert!(
            row.contains("| 90,000 /s | 100,000 /s | 0.90× | ≥ 0.8× ✅ met |"),
            "{row}"
        );
        let slow = Throughput {
            runnel: side(70_000, 1),
            ..t
        };
        assert!(throughput_row(&slow, &s).contains("❌ missed"));
        let alone = Throughput {
            baseline: SideRun::default(),
            ..slow
        };
        assert_eq!(alone.ratio(), None);
        assert!(throughput_row(&alone, &s).contains("| – | – | – |"));
    }
}
