//! `runnel-bench saga`: instances per second completing the three-step order saga (local
//! no-op steps) through Runnel's saga runtime, on SQLite and on PostgreSQL, beside
//! hand-written SQL that writes the same rows in the same number of transactions;
//! start-to-completion latency and peak RSS; and, with `--memory`, whether the resident
//! set stays flat as finished instances pile up.

mod memory;
mod observed;
mod raw_postgres;
mod raw_sqlite;
mod runtime;
mod workload;

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use runnel_core::processor::ProcessorStore;
use runnel_postgres::sqlx::{self, AssertSqlSafe, Connection as _, PgConnection};
use runnel_postgres::{PostgresOptions, PostgresProcessorStore, PostgresStore};
use runnel_sqlite::{SqliteProcessorStore, SqliteStore};

use crate::cli::BenchSagaArgs;
use crate::cpu;
use crate::disk;
use crate::exit::BadInput;
use crate::machine::{filesystem_of, load_average, machine_lines};
use crate::output::print_line;
use crate::progress::group_digits;
use crate::report::{rate, ratio, Target};
use crate::rss;
use crate::scenario::counted;
use observed::Calls;
use raw_postgres::RawPostgres;
use raw_sqlite::{Batching, RawSqlite};
use runtime::{verify_completed, Driver};
use workload::{SideRun, STEPS, TRANSITIONS_PER_INSTANCE};

pub(crate) use memory::sqlite_heap_bytes;

/// Every side runs in this many rounds, the sides taking turns at going first, so a
/// change in the disk's speed or a neighbour's load during the run hits them alike.
const ROUNDS: u64 = 3;
/// The ratio the issue sets for Runnel against the one-transaction-per-step baseline.
const TARGET_RATIO: f64 = 0.7;
/// Most instances `--instances` and `--memory-instances` accept.
const INSTANCES_MAX: u64 = 100_000_000;
/// Most concurrent clients `--clients` accepts.
const CLIENTS_MAX: usize = 1024;
/// Most runtimes `--runtimes` accepts.
const RUNTIMES_MAX: usize = 64;
/// PostgreSQL connections kept free besides the benchmark's own (the store's appender,
/// the migration lock, a psql an operator may have open).
const PG_SPARE_CONNECTIONS: u64 = 8;
/// How long the disk's fsync rate is probed before and after the SQLite scenarios.
const FSYNC_PROBE: Duration = Duration::from_secs(1);

/// Sizes of one run.
#[derive(Clone, Copy, Debug)]
struct Settings {
    /// Timed instances per side, over all rounds.
    instances: u64,
    clients: usize,
    /// Runtimes sharing the store on Runnel's side.
    runtimes: usize,
    /// Runnel's side only (profiling).
    runnel_only: bool,
    /// Untimed instances each side completes at the start of each round (connections
    /// opened, statements prepared, caches warm).
    warm_up: u64,
    memory_first: u64,
    memory_total: u64,
}

impl Settings {
    fn from_args(args: &BenchSagaArgs) -> Result<Self, BadInput> {
        if args.clients == 0 || args.clients > CLIENTS_MAX {
            return Err(BadInput(format!("--clients must be 1..={CLIENTS_MAX}")));
        }
        if args.runtimes == 0 || args.runtimes > RUNTIMES_MAX || args.runtimes > args.clients {
            return Err(BadInput(format!(
                "--runtimes must be 1..={RUNTIMES_MAX} and at most --clients"
            )));
        }
        if args.instances < ROUNDS || args.instances > INSTANCES_MAX {
            return Err(BadInput(format!(
                "--instances must be {ROUNDS}..={INSTANCES_MAX} (at least one per round)"
            )));
        }
        if args.memory_instances < memory::FIRST_CHECKPOINT || args.memory_instances > INSTANCES_MAX
        {
            return Err(BadInput(format!(
                "--memory-instances must be {}..={INSTANCES_MAX} (the first checkpoint is {})",
                memory::FIRST_CHECKPOINT,
                group_digits(memory::FIRST_CHECKPOINT as f64)
            )));
        }
        let (clients, runtimes) = (args.clients, args.runtimes);
        Ok(if args.quick {
            Settings {
                instances: 150,
                clients,
                runtimes,
                runnel_only: args.runnel_only,
                warm_up: 8,
                memory_first: 200,
                memory_total: 1_000,
            }
        } else {
            Settings {
                instances: args.instances,
                clients,
                runtimes,
                runnel_only: args.runnel_only,
                warm_up: clients as u64,
                memory_first: memory::FIRST_CHECKPOINT,
                memory_total: args.memory_instances,
            }
        })
    }

    /// Timed instances in round `r` (0-based): the rounds share `instances` evenly.
    fn round_share(&self, r: u64) -> u64 {
        self.instances * (r + 1) / ROUNDS - self.instances * r / ROUNDS
    }
}

/// One side's totals over the rounds, and what it cost in commits and store calls.
struct Side {
    run: SideRun,
    /// Database transactions (on SQLite: writer commits; each that changed a page is one
    /// fsync).
    transactions: u64,
    /// Runnel's store calls (Runnel's side only).
    calls: Calls,
    /// Instances in the side's tables, timed and warm-up (checked after each round).
    stored: u64,
}

impl Side {
    fn new() -> anyhow::Result<Side> {
        Ok(Side {
            run: SideRun::empty()?,
            transactions: 0,
            calls: Calls::default(),
            stored: 0,
        })
    }

    fn per_instance(&self, n: u64) -> f64 {
        n as f64 / self.run.instances.max(1) as f64
    }
}

/// Times `stretch` (which completes instances and reports them in its counter) under a
/// spinner, with the peak RSS reset before it and read after.
async fn timed<F, Fut>(label: &str, stretch: F) -> anyhow::Result<SideRun>
where
    F: FnOnce(Arc<AtomicU64>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Duration, workload::Latencies)>>,
{
    let own_peak = rss::reset_peak();
    let cpu_before = cpu::process_cpu();
    let server_before = cpu::local_postgres_cpu();
    let (elapsed, latencies) = counted(label, "instances", stretch).await?;
    let cpu = match (cpu_before, cpu::process_cpu()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => Duration::ZERO,
    };
    let server_cpu = match (server_before, cpu::local_postgres_cpu()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Ok(SideRun {
        instances: latencies.count(),
        elapsed,
        cpu,
        server_cpu,
        latencies,
        peak_rss_bytes: if own_peak {
            rss::peak_rss_bytes()
        } else {
            None
        },
    })
}

/// Runnel's side of one round on `store`: a fresh runtime, the warm-up, then `share`
/// timed instances. `sqlite`: the store whose writer commits are counted.
async fn runnel_round(
    store: &Arc<dyn ProcessorStore>,
    sqlite: Option<&SqliteStore>,
    s: &Settings,
    side: &mut Side,
    label: &str,
    share: u64,
) -> anyhow::Result<()> {
    let driver = Driver::start(Arc::clone(store), s.runtimes, s.clients)?;
    let warm = side.stored;
    driver
        .complete("i", warm, warm + s.warm_up, s.clients, Arc::default())
        .await
        .context("Runnel's warm-up")?;
    let from = warm + s.warm_up;
    let calls_before = driver.calls();
    let commits_before = sqlite.map(|s| s.writer_stats().commits);
    let run = timed(label, |count| {
        driver.complete("i", from, from + share, s.clients, count)
    })
    .await?;
    side.calls = side.calls.plus(driver.calls().since(calls_before));
    if let (Some(store), Some(before)) = (sqlite, commits_before) {
        side.transactions += store.writer_stats().commits - before;
    }
    driver.stop().await?;
    side.stored = from + share;
    verify_completed(&**store, side.stored).await?;
    side.run.add(run)
}

/// A hand-written SQLite side of one round.
async fn raw_sqlite_round(
    raw: &RawSqlite,
    path: &Path,
    s: &Settings,
    side: &mut Side,
    label: &str,
    share: u64,
) -> anyhow::Result<()> {
    let warm = side.stored;
    raw.complete("i", warm, warm + s.warm_up, s.clients, Arc::default())
        .await
        .context("the baseline's warm-up")?;
    let from = warm + s.warm_up;
    let commits_before = raw.commits();
    let run = timed(label, |count| {
        raw.complete("i", from, from + share, s.clients, count)
    })
    .await?;
    side.transactions += raw.commits() - commits_before;
    side.stored = from + share;
    let stored = raw_sqlite::count_completed(path)?;
    anyhow::ensure!(
        stored == side.stored,
        "the baseline's file holds {stored} completed instances, expected {}",
        side.stored
    );
    side.run.add(run)
}

/// `runnel-bench saga`.
pub async fn bench(args: BenchSagaArgs, postgres: Option<String>) -> anyhow::Result<()> {
    let s = Settings::from_args(&args)?;
    let base = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir()?,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".runnel-bench-saga-")
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a temporary directory in {}", base.display()))?;
    if args.memory {
        memory_bench(tmp.path(), &s, &args, postgres.as_deref()).await
    } else {
        throughput_bench(tmp.path(), &s, &args, postgres.as_deref()).await
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn latency(run: &SideRun) -> String {
    format!(
        "{} / {}",
        ms(run.latencies.quantile(0.50)),
        ms(run.latencies.quantile(0.99))
    )
}

fn peak(run: &SideRun) -> String {
    run.peak_rss_bytes.map_or("–".into(), rss::mib)
}

/// One line of the throughput table: Runnel beside one baseline.
fn row(store: &str, scenario: &str, runnel: &SideRun, base: &SideRun, target: bool) -> String {
    if base.instances == 0 {
        return format!(
            "| {store} | {scenario} | {} | – | – | – | {} | – | {} / – |",
            rate(runnel.per_second(), "/s"),
            latency(runnel),
            peak(runnel),
        );
    }
    let r = runnel.per_second() / base.per_second().max(1e-9);
    let target = if target {
        match Target::at_least(r, TARGET_RATIO) {
            Target {
                text,
                met: Some(true),
            } => format!("{text} ✅ met"),
            Target { text, .. } => format!("{text} ❌ missed"),
        }
    } else {
        "—".into()
    };
    format!(
        "| {store} | {scenario} | {} | {} | {} | {target} | {} | {} | {} / {} |",
        rate(runnel.per_second(), "/s"),
        rate(base.per_second(), "/s"),
        ratio(r),
        latency(runnel),
        latency(base),
        peak(runnel),
        peak(base),
    )
}

/// What Runnel's side asked of its store, per completed instance.
fn calls_line(store: &str, side: &Side) -> String {
    let c = side.calls;
    let each = |count: observed::Count| {
        format!(
            "{:.2} (mean {})",
            side.per_instance(count.calls),
            ms(count.mean())
        )
    };
    format!(
        "{store}, Runnel's store calls per instance: commits {}, loads {}, timer claims {}, \
         next-due reads {}, others {}",
        each(c.commits),
        each(c.loads),
        each(c.claims),
        each(c.next_due),
        each(c.other),
    )
}

fn runtimes_text(runtimes: usize) -> String {
    if runtimes == 1 {
        "one runtime, one `run` task".into()
    } else {
        format!("{runtimes} runtimes sharing the store, a `run` task each")
    }
}

/// The ceiling the `run` loop sets: between two pieces of work it waits for a timer claim
/// and a next-due read, one after the other, so one loop takes at most one piece of work
/// per (claim + next-due) time.
fn run_loop_line(store: &str, side: &Side, runtimes: usize) -> String {
    let c = side.calls;
    let pairs = side.per_instance(c.claims.calls);
    let pair = c.claims.mean() + c.next_due.mean();
    let per_instance = pair.as_secs_f64() * pairs;
    let bound = runtimes as f64 / per_instance.max(1e-9);
    format!(
        "{store}, Runnel's `run` loop: a timer claim then a next-due read before each piece of \
         work it takes, {pairs:.2} times per instance at {} a pair = {} of loop time per \
         instance, so at most {} instances/s with {runtimes} loop(s)",
        ms(pair),
        ms(Duration::from_secs_f64(per_instance)),
        group_digits(bound),
    )
}

fn command_line(args: &BenchSagaArgs, postgres: Option<&str>) -> String {
    let mut command = String::from("runnel-bench saga");
    if let Some(url) = postgres {
        command.push_str(&format!(" --store {url}"));
    }
    if args.memory {
        command.push_str(" --memory");
    }
    if args.quick {
        command.push_str(" --quick");
    } else if args.memory {
        command.push_str(&format!(" --memory-instances {}", args.memory_instances));
    } else {
        command.push_str(&format!(" --instances {}", args.instances));
    }
    command.push_str(&format!(" --clients {}", args.clients));
    if args.runtimes != 1 {
        command.push_str(&format!(" --runtimes {}", args.runtimes));
    }
    if args.runnel_only {
        command.push_str(" --runnel-only");
    }
    if args.quick {
        command.push_str(" (smoke test: numbers are not meaningful)");
    }
    command
}

fn disk_line(dir: &Path, fsync_before: f64, fsync_after: f64) -> String {
    let (fs, device) = filesystem_of(dir).unwrap_or_else(|| ("unknown".into(), "unknown".into()));
    format!(
        "Disk: {} ({fs} on {device}); fsync rate {} /s before the SQLite scenarios, {} /s after\n",
        dir.parent().unwrap_or(dir).display(),
        group_digits(fsync_before),
        group_digits(fsync_after),
    )
}

pub(crate) async fn postgres_version(url: &str) -> anyhow::Result<(String, u64)> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("connect to PostgreSQL")?;
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut conn)
        .await?;
    let max: String = sqlx::query_scalar("SHOW max_connections")
        .fetch_one(&mut conn)
        .await?;
    let _ = conn.close().await;
    let short = version.split(" on ").next().unwrap_or(&version).to_string();
    Ok((short, max.parse().unwrap_or(100)))
}

/// The PostgreSQL options for Runnel's store in `schema`, with a pool of `clients`.
fn postgres_options(url: &str, schema: &str, clients: usize) -> anyhow::Result<PostgresOptions> {
    Ok(PostgresOptions::from_url(url)
        .map_err(|e| BadInput(e.to_string()))?
        .schema(schema.to_string())
        .pool_size(clients.max(2) as u32))
}

/// A suffix that makes this run's schema names unique: the random tail of a UUIDv7 (the
/// store refuses schema names over 40 characters).
pub(crate) fn schema_suffix() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    id[id.len() - 12..].to_string()
}

pub(crate) async fn drop_schemas(url: &str, schemas: &[&str]) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(url).await?;
    for schema in schemas {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .execute(&mut conn)
        .await?;
    }
    let _ = conn.close().await;
    Ok(())
}

/// The throughput table: SQLite, then PostgreSQL with a URL.
async fn throughput_bench(
    dir: &Path,
    s: &Settings,
    args: &BenchSagaArgs,
    postgres: Option<&str>,
) -> anyhow::Result<()> {
    let load_before = load_average();
    let pg_info = match postgres {
        Some(url) => Some(postgres_version(url).await?),
        None => None,
    };
    if let Some((_, max)) = &pg_info {
        if s.clients as u64 + PG_SPARE_CONNECTIONS > *max {
            return Err(BadInput(format!(
                "--clients {} needs {} PostgreSQL connections and the server allows {max}",
                s.clients,
                s.clients as u64 + PG_SPARE_CONNECTIONS
            ))
            .into());
        }
    }
    let fsync_before = disk::probe(dir, FSYNC_PROBE).await?.per_second();
    let sqlite = sqlite_sides(dir, s).await?;
    let fsync_after = disk::probe(dir, FSYNC_PROBE).await?.per_second();
    let pg = match postgres {
        Some(url) => Some(postgres_sides(url, s).await?),
        None => None,
    };
    let load_after = load_average();

    let mut out = String::new();
    out.push_str(&format!(
        "Saga: {} local no-op steps, each with a no-op compensation, retention off; {} timed \
         instances per side in {ROUNDS} rounds (the sides take turns at going first, each \
         round after {} untimed warm-up instances); {} clients, each starting its next \
         instance when its last one completed; start→completed = from before start() to \
         the return of the commit that made the instance Completed\n",
        STEPS.len(),
        group_digits(s.instances as f64),
        s.warm_up,
        s.clients,
    ));
    out.push_str(&machine_lines(load_before, load_after));
    out.push_str(&disk_line(dir, fsync_before, fsync_after));
    out.push_str(&format!(
        "SQLite {}, WAL, synchronous=FULL (Runnel's default); Runnel: {}, max_concurrency {} \
         in all\n",
        runnel_sqlite::rusqlite::version(),
        runtimes_text(s.runtimes),
        s.clients
    ));
    if let (Some(url), Some((version, _))) = (postgres, &pg_info) {
        out.push_str(&format!(
            "{version} at {url}, synchronous_commit=on, fresh schemas dropped at the end; \
             Runnel's pool: {} connections\n",
            s.clients
        ));
    }
    out.push_str(&command_line(args, postgres));
    out.push_str("\n\n| store | scenario | Runnel instances/s | baseline instances/s | ratio | target | Runnel p50 / p99 start→completed | baseline p50 / p99 | peak RSS Runnel / baseline |\n");
    out.push_str("|---|---|---:|---:|---:|---|---:|---:|---:|\n");
    let (runnel, per_tx, group) = &sqlite;
    out.push_str(&row(
        "SQLite",
        &format!(
            "vs hand-written SQL, 1 transaction per transition ({TRANSITIONS_PER_INSTANCE} per \
             instance), one writer thread"
        ),
        &runnel.run,
        &per_tx.run,
        true,
    ));
    out.push('\n');
    out.push_str(&row(
        "SQLite",
        "vs the same SQL with group commit (one transaction for all queued transitions), for reading",
        &runnel.run,
        &group.run,
        false,
    ));
    out.push('\n');
    if let Some((runnel_pg, raw_pg)) = &pg {
        out.push_str(&row(
            "PostgreSQL",
            &format!(
                "vs hand-written SQL, 1 transaction per transition, {} connections",
                s.clients
            ),
            &runnel_pg.run,
            &raw_pg.run,
            true,
        ));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&format!(
        "SQLite write transactions per instance (each that changed a page is one fsync; Runnel's include its timer claims, most of which change nothing): Runnel {:.2}, 1-transaction-per-transition baseline {:.2}, group-commit baseline {:.2}\n",
        runnel.per_instance(runnel.transactions),
        per_tx.per_instance(per_tx.transactions),
        group.per_instance(group.transactions),
    ));
    let cpu = |side: &Side| ms(side.run.cpu_per_instance());
    out.push_str(&format!(
        "CPU time of this process per instance, SQLite: Runnel {}, 1-transaction-per-transition baseline {}, group-commit baseline {}\n",
        cpu(runnel),
        cpu(per_tx),
        cpu(group),
    ));
    if let Some((runnel_pg, raw_pg)) = &pg {
        let server = |side: &Side| {
            side.run
                .server_cpu_per_instance()
                .map_or("unknown (not a local server)".into(), ms)
        };
        out.push_str(&format!(
            "CPU time per instance, PostgreSQL: this process Runnel {}, baseline {}; the local \
             `postgres` processes Runnel {}, baseline {}\n",
            cpu(runnel_pg),
            cpu(raw_pg),
            server(runnel_pg),
            server(raw_pg),
        ));
    }
    out.push_str(&calls_line("SQLite", runnel));
    out.push('\n');
    out.push_str(&run_loop_line("SQLite", runnel, s.runtimes));
    out.push('\n');
    if let Some((runnel_pg, _)) = &pg {
        out.push_str(&calls_line("PostgreSQL", runnel_pg));
        out.push('\n');
        out.push_str(&run_loop_line("PostgreSQL", runnel_pg, s.runtimes));
        out.push('\n');
    }
    print_line(out.trim_end())
}

/// Runnel, the per-transition baseline and the group-commit baseline on SQLite files in
/// `dir`, in rounds.
async fn sqlite_sides(dir: &Path, s: &Settings) -> anyhow::Result<(Side, Side, Side)> {
    let store = SqliteStore::open(dir.join("runnel-saga.db"))?;
    let processors: Arc<dyn ProcessorStore> = Arc::new(SqliteProcessorStore::new(store.clone()));
    let per_tx_path = dir.join("raw-per-transition.db");
    let group_path = dir.join("raw-group-commit.db");
    let per_tx = RawSqlite::open(&per_tx_path, Batching::PerTransition)?;
    let group = RawSqlite::open(&group_path, Batching::Group)?;
    let (mut a, mut b, mut c) = (Side::new()?, Side::new()?, Side::new()?);
    for r in 0..ROUNDS {
        let share = s.round_share(r);
        let of = format!("round {}/{ROUNDS}", r + 1);
        for turn in 0..3 {
            match (turn + r) % 3 {
                0 => {
                    let label = format!("SQLite, Runnel, {of}");
                    runnel_round(&processors, Some(&store), s, &mut a, &label, share).await?
                }
                _ if s.runnel_only => {}
                1 => {
                    let label = format!("SQLite, baseline 1 tx/transition, {of}");
                    raw_sqlite_round(&per_tx, &per_tx_path, s, &mut b, &label, share).await?
                }
                _ => {
                    let label = format!("SQLite, baseline group commit, {of}");
                    raw_sqlite_round(&group, &group_path, s, &mut c, &label, share).await?
                }
            }
        }
    }
    per_tx.close();
    group.close();
    Ok((a, b, c))
}

/// Runnel and the baseline on PostgreSQL, each in a fresh schema dropped at the end.
async fn postgres_sides(url: &str, s: &Settings) -> anyhow::Result<(Side, Side)> {
    let suffix = schema_suffix();
    let runnel_schema = format!("bench_saga_{suffix}");
    let raw_schema = format!("bench_saga_raw_{suffix}");
    let base_url = PostgresOptions::from_url(url)
        .map_err(|e| BadInput(e.to_string()))?
        .url;
    raw_postgres::create_schema(&base_url, &raw_schema).await?;
    let result = postgres_rounds(url, &base_url, &runnel_schema, &raw_schema, s).await;
    // Leave nothing behind, whatever happened.
    let dropped = drop_schemas(&base_url, &[&runnel_schema, &raw_schema]).await;
    let sides = result?;
    dropped?;
    Ok(sides)
}

async fn postgres_rounds(
    url: &str,
    base_url: &str,
    runnel_schema: &str,
    raw_schema: &str,
    s: &Settings,
) -> anyhow::Result<(Side, Side)> {
    let (mut a, mut b) = (Side::new()?, Side::new()?);
    for r in 0..ROUNDS {
        let share = s.round_share(r);
        let of = format!("round {}/{ROUNDS}", r + 1);
        for turn in 0..2 {
            if (turn + r) % 2 == 0 {
                // Runnel's pool and the baseline's connections never exist at once: the
                // server's connection limit could not hold both at 64 each.
                let store =
                    PostgresStore::connect_with(postgres_options(url, runnel_schema, s.clients)?)
                        .await?;
                let processors: Arc<dyn ProcessorStore> =
                    Arc::new(PostgresProcessorStore::new(store.clone()));
                let label = format!("PostgreSQL, Runnel, {of}");
                let outcome = runnel_round(&processors, None, s, &mut a, &label, share).await;
                store.pool().close().await;
                outcome?;
            } else if !s.runnel_only {
                let mut raw = RawPostgres::connect(base_url, raw_schema, s.clients).await?;
                let warm = b.stored;
                raw.complete("i", warm, warm + s.warm_up, Arc::default())
                    .await
                    .context("the baseline's warm-up")?;
                let from = warm + s.warm_up;
                let label = format!("PostgreSQL, baseline, {of}");
                let run =
                    timed(&label, |count| raw.complete("i", from, from + share, count)).await?;
                b.transactions += run.instances * TRANSITIONS_PER_INSTANCE as u64;
                b.stored = from + share;
                let stored = raw.count_completed().await?;
                raw.close().await;
                anyhow::ensure!(
                    stored == b.stored,
                    "the baseline's tables hold {stored} completed instances, expected {}",
                    b.stored
                );
                b.run.add(run)?;
            }
        }
    }
    Ok((a, b))
}

/// `--memory`: the checkpoints on SQLite, then on PostgreSQL with a URL.
async fn memory_bench(
    dir: &Path,
    s: &Settings,
    args: &BenchSagaArgs,
    postgres: Option<&str>,
) -> anyhow::Result<()> {
    let load_before = load_average();
    let checkpoints = memory::checkpoints(s.memory_first, s.memory_total);
    let mut results: Vec<(&str, Vec<memory::Point>)> = Vec::new();
    {
        let store = SqliteStore::open(dir.join("runnel-saga-memory.db"))?;
        let processors: Arc<dyn ProcessorStore> = Arc::new(SqliteProcessorStore::new(store));
        let points = memory::run("SQLite", processors, &checkpoints, s, true).await?;
        results.push(("SQLite", points));
    }
    let mut pg_version = None;
    if let Some(url) = postgres {
        let (version, _) = postgres_version(url).await?;
        pg_version = Some(version);
        let schema = format!("bench_saga_mem_{}", schema_suffix());
        let store = PostgresStore::connect_with(postgres_options(url, &schema, s.clients)?).await?;
        let processors: Arc<dyn ProcessorStore> =
            Arc::new(PostgresProcessorStore::new(store.clone()));
        let outcome = memory::run("PostgreSQL", processors, &checkpoints, s, false).await;
        store.pool().close().await;
        let base_url = PostgresOptions::from_url(url)
            .map_err(|e| BadInput(e.to_string()))?
            .url;
        let dropped = drop_schemas(&base_url, &[&schema]).await;
        results.push(("PostgreSQL", outcome?));
        dropped?;
    }
    let load_after = load_average();

    let mut out = String::new();
    out.push_str(&format!(
        "Saga memory: {} (retention off: finished instances stay in the store), {} clients; \
         it stops at each checkpoint and the resident set is read after {} ms idle\n",
        runtimes_text(s.runtimes),
        s.clients,
        memory::SETTLE.as_millis()
    ));
    out.push_str(&machine_lines(load_before, load_after));
    out.push_str(&format!(
        "SQLite {}, WAL, synchronous=FULL",
        runnel_sqlite::rusqlite::version()
    ));
    if let (Some(url), Some(version)) = (postgres, pg_version) {
        out.push_str(&format!(
            "; {version} at {url} (the server's memory is not counted)"
        ));
    }
    out.push('\n');
    out.push_str(&command_line(args, postgres));
    out.push_str("\n\n| store | finished instances | instances/s since the last checkpoint | RSS | anonymous RSS | SQLite heap | peak RSS since the last checkpoint |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    let opt = |b: Option<u64>| b.map_or("–".to_string(), rss::mib);
    for (store, points) in &results {
        for p in points {
            out.push_str(&format!(
                "| {store} | {} | {} | {} | {} | {} | {} |\n",
                group_digits(p.finished as f64),
                group_digits(p.rate),
                opt(p.rss),
                opt(p.anon_rss),
                opt(p.sqlite_heap),
                opt(p.peak),
            ));
        }
    }
    out.push('\n');
    for (store, points) in &results {
        out.push_str(&memory_verdict(store, points));
        out.push('\n');
    }
    print_line(out.trim_end())
}

/// Whether the resident set after the last checkpoint exceeds the one after the first.
fn memory_verdict(store: &str, points: &[memory::Point]) -> String {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return format!("{store}: no checkpoint");
    };
    let (Some(a), Some(b)) = (first.rss, last.rss) else {
        return format!("{store}: the resident set is not readable here (no /proc/self/status)");
    };
    let delta = b as f64 - a as f64;
    let verdict = if b <= a {
        "did not grow ✅".to_string()
    } else {
        format!(
            "grew by {} ({:+.1}%) ❌",
            rss::mib(b - a),
            delta / a as f64 * 100.0
        )
    };
    format!(
        "{store}: RSS after {} finished instances {} vs {} after {}: {verdict}",
        group_digits(last.finished as f64),
        rss::mib(b),
        rss::mib(a),
        group_digits(first.finished as f64),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(instances: u64, clients: usize, memory_instances: u64) -> BenchSagaArgs {
        BenchSagaArgs {
            dir: None,
            instances,
            clients,
            runtimes: 1,
            runnel_only: false,
            memory: false,
            memory_instances,
            quick: false,
        }
    }

    #[test]
    fn settings_refuse_out_of_range_flags() {
        assert!(Settings::from_args(&args(10_000, 0, 1_000_000)).is_err());
        assert!(Settings::from_args(&args(2, 64, 1_000_000)).is_err());
        assert!(Settings::from_args(&args(10_000, 64, 9_999)).is_err());
        let mut too_many = args(10_000, 4, 1_000_000);
        too_many.runtimes = 5;
        assert!(Settings::from_args(&too_many).is_err());
        let s = Settings::from_args(&args(10_000, 64, 1_000_000)).unwrap();
        let shares: Vec<u64> = (0..ROUNDS).map(|r| s.round_share(r)).collect();
        assert_eq!(shares.iter().sum::<u64>(), 10_000);
        assert_eq!(shares, vec![3333, 3333, 3334]);
    }
}
