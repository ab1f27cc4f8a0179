//! `runnel-bench store`: the event store's throughput, each scenario beside its raw
//! baseline measured in the same run, on the same disk, as a ratio.

mod aggregate;
mod pg_execute;
mod postgres;
mod raw;
mod reads;
mod workload;
mod writes;

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use runnel_core::StreamName;
use runnel_sqlite::SqliteStore;

use crate::cli::BenchStoreArgs;
use crate::disk;
use crate::exit::BadInput;
use crate::machine::{filesystem_of, read_first};
use crate::output::print_line;
use crate::progress::group_digits;
use crate::report::{self, rate, Row, Target};
use crate::rss;
use crate::scenario::{blocking, counted};
use workload::{Budget, ReadRun, WriteRun};

/// Rows or events per read call in the read scenarios.
const READ_PAGE: usize = 1000;
/// Most concurrent writers `--writers` accepts.
const WRITERS_MAX: u64 = 1024;
/// Read scenarios alternate Runnel and raw this many times.
const READ_ROUNDS: u32 = 3;

/// Durations and sizes of one benchmark run.
#[derive(Clone, Copy, Debug)]
struct Settings {
    write_duration: Duration,
    fsync_duration: Duration,
    read_duration: Duration,
    /// Events per stream in the 100-per-append scenario; its first stream is the one read
    /// and loaded as an aggregate.
    stream_len: u64,
    events_max: u64,
    writers: usize,
}

impl Settings {
    fn from_args(args: &BenchStoreArgs) -> Result<Self, BadInput> {
        if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 600.0) {
            return Err(BadInput("--seconds must be in (0, 600]".into()));
        }
        if args.writers == 0 || args.writers > WRITERS_MAX {
            return Err(BadInput(format!("--writers must be 1..={WRITERS_MAX}")));
        }
        if args.events == Some(0) {
            return Err(BadInput("--events must be at least 1".into()));
        }
        let events_max = args.events.unwrap_or(u64::MAX);
        let writers = args.writers as usize;
        Ok(if args.quick {
            Settings {
                write_duration: Duration::from_millis(200),
                fsync_duration: Duration::from_millis(200),
                read_duration: Duration::from_millis(50),
                stream_len: 1000,
                events_max,
                writers,
            }
        } else {
            let write_duration = Duration::from_secs_f64(args.seconds);
            Settings {
                write_duration,
                fsync_duration: write_duration.min(Duration::from_secs(2)),
                read_duration: Duration::from_secs(1),
                stream_len: 10_000,
                events_max,
                writers,
            }
        })
    }
}

/// `runnel-bench store`: on fresh SQLite files, or, given a PostgreSQL URL, in fresh
/// schemas on that server.
pub async fn store(
    args: BenchStoreArgs,
    store: Option<runnel::connect::StoreUrl>,
) -> anyhow::Result<()> {
    let settings = Settings::from_args(&args)?;
    if let Some(runnel::connect::StoreUrl::Postgres(raw)) = &store {
        let shown = store.as_ref().map(ToString::to_string).unwrap_or_default();
        let table = postgres::run(
            raw,
            &shown,
            settings.write_duration,
            settings.events_max,
            settings.writers,
            args.commands_only,
        )
        .await?;
        let peak = match rss::peak_rss_bytes() {
            Some(bytes) => format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0)),
            None => "unknown (no /proc/self/status)".into(),
        };
        return print_line(&format!(
            "{table}\nPeak RSS of the benchmark process: {peak}"
        ));
    }
    let base = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir()?,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".runnel-bench-")
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a temporary directory in {}", base.display()))?;
    let dir = tmp.path().to_path_buf();
    let outcome = run_scenarios(&dir, settings, &args).await;
    if args.keep {
        let kept = tmp.keep();
        eprintln!("kept the benchmark files in {}", kept.display());
    }
    outcome
}

/// Write scenarios run in this many rounds, every scenario once per round, so that a
/// change in the disk's speed during the run (on virtual disks the fsync rate can jump
/// tenfold from one second to the next) hits Runnel and its baseline alike.
const WRITE_ROUNDS: u32 = 3;
/// Round `r`'s streams start at index `r ×` this, so rounds never share a stream.
const ROUND_STREAM_STRIDE: u64 = 1_000_000;

/// Every write scenario's totals over the rounds.
#[derive(Default)]
struct WriteTotals {
    fsync: disk::FsyncRun,
    fsync_per_round: Vec<f64>,
    one: WriteRun,
    raw_one: WriteRun,
    many: WriteRun,
    raw_many: WriteRun,
    batch: WriteRun,
    raw_batch: WriteRun,
}

const ONE_WRITER_DB: &str = "runnel-1-writer.db";
const MANY_WRITERS_DB: &str = "runnel-n-writers.db";
const BATCH_DB: &str = "runnel-100-per-append.db";

async fn write_rounds(dir: &Path, s: Settings) -> anyhow::Result<WriteTotals> {
    let n = s.writers;
    let one_store = SqliteStore::open(dir.join(ONE_WRITER_DB))?;
    let many_store = SqliteStore::open(dir.join(MANY_WRITERS_DB))?;
    let batch_store = SqliteStore::open(dir.join(BATCH_DB))?;
    let mut t = WriteTotals::default();
    for round in 0..WRITE_ROUNDS {
        let budget = Budget {
            duration: s.write_duration / WRITE_ROUNDS,
            events_min: 0,
            events_max: s.events_max.div_ceil(u64::from(WRITE_ROUNDS)),
        };
        let of = format!("round {}/{WRITE_ROUNDS}", round + 1);
        let first_index = u64::from(round) * ROUND_STREAM_STRIDE;
        let first_raw_stream = 1 + first_index as i64;
        let shape = |writers, events_per_append| writes::Shape {
            writers,
            events_per_append,
            stream_len_max: s.stream_len,
            first_stream_index: first_index,
        };
        let raw_shape = |rows_per_tx, streams_per_tx| raw::RawShape {
            rows_per_tx,
            streams_per_tx,
            stream_len_max: s.stream_len,
            first_stream_id: first_raw_stream,
        };

        // The disk's fsync rate, and one writer appending one event at a time (one
        // commit, one fsync per event) beside it and beside raw single-row transactions.
        let fsync = disk::probe(dir, s.fsync_duration / WRITE_ROUNDS).await?;
        t.fsync_per_round.push(fsync.per_second());
        t.fsync = t.fsync.plus(fsync);
        t.one = t.one.plus(
            counted(&format!("1 writer, 1 event/append, {of}"), "events", |c| {
                writes::run(&one_store, shape(1, 1), budget, c)
            })
            .await?,
        );
        t.raw_one = t
            .raw_one
            .plus(raw_run(dir, "raw-1-row-per-tx.db", &of, raw_shape(1, 1), budget).await?);

        // N concurrent writers, one event per append: group commit, beside raw
        // transactions of N rows.
        t.many = t.many.plus(
            counted(
                &format!("{n} writers, 1 event/append, {of}"),
                "events",
                |c| writes::run(&many_store, shape(n, 1), budget, c),
            )
            .await?,
        );
        t.raw_many = t
            .raw_many
            .plus(raw_run(dir, "raw-n-rows-per-tx.db", &of, raw_shape(n, n), budget).await?);

        // One writer, 100 events per append, beside raw transactions of 100 rows. The
        // first round fills at least one whole stream, which the read scenarios read.
        let batch_budget = Budget {
            events_min: if round == 0 { s.stream_len } else { 0 },
            ..budget
        };
        t.batch = t.batch.plus(
            counted(
                &format!("1 writer, 100 events/append, {of}"),
                "events",
                |c| writes::run(&batch_store, shape(1, 100), batch_budget, c),
            )
            .await?,
        );
        t.raw_batch = t.raw_batch.plus(
            raw_run(
                dir,
                "raw-100-rows-per-tx.db",
                &of,
                raw_shape(100, 1),
                batch_budget,
            )
            .await?,
        );
    }
    Ok(t)
}

async fn raw_run(
    dir: &Path,
    file: &str,
    of: &str,
    shape: raw::RawShape,
    budget: Budget,
) -> anyhow::Result<WriteRun> {
    let path = dir.join(file);
    let label = format!("raw rusqlite, {} rows/transaction, {of}", shape.rows_per_tx);
    blocking(&label, "events", move |count| {
        raw::writes(&path, shape, budget, count)
    })
    .await
}

async fn run_scenarios(dir: &Path, s: Settings, args: &BenchStoreArgs) -> anyhow::Result<()> {
    let n = s.writers;
    let mut rows = Vec::new();
    let t = write_rounds(dir, s).await?;

    let fsyncs_per_s = t.fsync.per_second();
    rows.push(Row {
        scenario: "disk: 4 KiB overwrite + fdatasync, serial".into(),
        runnel: "—".into(),
        baseline: rate(fsyncs_per_s, "fsyncs/s"),
        ratio: None,
        target: None,
    });
    let one_rate = t.one.events_per_second();
    let ratio = one_rate / fsyncs_per_s;
    rows.push(Row {
        scenario: format!(
            "1 writer, 1 event/append ({:.1} events/fsync) vs disk fsyncs",
            t.one.events_per_commit()
        ),
        runnel: rate(one_rate, "events/s"),
        baseline: rate(fsyncs_per_s, "fsyncs/s"),
        ratio: Some(ratio),
        target: Some(Target::expected("≈ 1×")),
    });
    rows.push(Row {
        scenario: "1 writer, 1 event/append vs raw 1 row/tx".into(),
        runnel: rate(one_rate, "events/s"),
        baseline: rate(t.raw_one.events_per_second(), "events/s"),
        ratio: Some(one_rate / t.raw_one.events_per_second()),
        target: None,
    });
    let many_rate = t.many.events_per_second();
    let ratio = many_rate / t.raw_many.events_per_second();
    rows.push(Row {
        scenario: format!(
            "{n} writers, 1 event/append ({:.1} events/fsync) vs raw {n} rows/tx",
            t.many.events_per_commit()
        ),
        runnel: rate(many_rate, "events/s"),
        baseline: rate(t.raw_many.events_per_second(), "events/s"),
        ratio: Some(ratio),
        target: Some(Target::at_least(ratio, 0.5)),
    });
    let gain = many_rate / one_rate;
    rows.push(Row {
        scenario: format!("{n} writers vs 1 writer (group commit gain)"),
        runnel: rate(many_rate, "events/s"),
        baseline: rate(one_rate, "events/s"),
        ratio: Some(gain),
        target: Some(Target::at_least(gain, 10.0)),
    });
    let ratio = t.batch.events_per_second() / t.raw_batch.events_per_second();
    rows.push(Row {
        scenario: "1 writer, 100 events/append vs raw 100 rows/tx".into(),
        runnel: rate(t.batch.events_per_second(), "events/s"),
        baseline: rate(t.raw_batch.events_per_second(), "events/s"),
        ratio: Some(ratio),
        target: Some(Target::at_least(ratio, 0.8)),
    });

    // Reads, on the 100-per-append file (its streams hold `stream_len` events each).
    let batch_path = dir.join(BATCH_DB);
    let store = SqliteStore::open(&batch_path)?;
    let total = group_digits(t.batch.events as f64);
    // Runnel and raw alternate in rounds, so a noisy neighbour hits both sides alike.
    let (mut all, mut raw_all) = (ReadRun::default(), ReadRun::default());
    let round = s.read_duration / READ_ROUNDS;
    for _ in 0..READ_ROUNDS {
        all = all.plus(
            counted("read $all", "events", |count| {
                reads::read_all(&store, READ_PAGE, round, count)
            })
            .await?,
        );
        raw_all = raw_all.plus(
            blocking("raw SELECT of $all", "events", {
                let path = batch_path.clone();
                move |count| raw::read_all(&path, READ_PAGE, round, count)
            })
            .await?,
        );
    }
    rows.push(Row {
        scenario: format!("read $all ({total} events), pages of {READ_PAGE}, vs raw SELECT"),
        runnel: rate(all.events_per_second(), "events/s"),
        baseline: rate(raw_all.events_per_second(), "events/s"),
        ratio: Some(all.events_per_second() / raw_all.events_per_second()),
        target: None,
    });
    let long_stream = StreamName::new(workload::stream_name(0, 0))?;
    let (mut one_stream, mut raw_stream) = (ReadRun::default(), ReadRun::default());
    for _ in 0..READ_ROUNDS {
        one_stream = one_stream.plus(
            counted("read one stream", "events", |count| {
                reads::read_stream(&store, &long_stream, READ_PAGE, round, count)
            })
            .await?,
        );
        raw_stream = raw_stream.plus(
            blocking("raw SELECT of one stream", "events", {
                let (path, name) = (batch_path.clone(), long_stream.to_string());
                move |count| raw::read_stream(&path, &name, READ_PAGE, round, count)
            })
            .await?,
        );
    }
    let len = group_digits(s.stream_len as f64);
    rows.push(Row {
        scenario: format!("read one {len}-event stream, pages of {READ_PAGE}, vs raw SELECT"),
        runnel: rate(one_stream.events_per_second(), "events/s"),
        baseline: rate(raw_stream.events_per_second(), "events/s"),
        ratio: Some(one_stream.events_per_second() / raw_stream.events_per_second()),
        target: None,
    });

    // Aggregate load with and without a snapshot.
    let load = counted("load an aggregate", "events", |_count| {
        aggregate::rows(
            &store,
            s.stream_len,
            s.read_duration,
            raw_stream.events_per_second(),
        )
    })
    .await?;
    rows.extend(load);
    drop(store);

    // Output: a header the reader can paste, the table, and the peak memory.
    let mut out = String::new();
    out.push_str(&header(dir, &s, args, &t.fsync_per_round));
    out.push('\n');
    out.push_str(&report::markdown(&rows));
    out.push('\n');
    out.push_str(&format!(
        "Peak RSS of the benchmark process: {}\n",
        match rss::peak_rss_bytes() {
            Some(bytes) => format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0)),
            None => "unknown (no /proc/self/status)".into(),
        }
    ));
    print_line(out.trim_end())
}

/// What was measured where: machine, disk, versions, settings.
fn header(dir: &Path, s: &Settings, args: &BenchStoreArgs, fsync_per_round: &[f64]) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = read_first("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| std::env::consts::OS.into());
    let (fs, device) = filesystem_of(dir).unwrap_or_else(|| ("unknown".into(), "unknown".into()));
    let mut command = String::from("runnel-bench store");
    if args.quick {
        command.push_str(" --quick");
    }
    if let Some(events) = args.events {
        command.push_str(&format!(" --events {events}"));
    }
    let mut out = String::new();
    out.push_str(&format!("Machine: {cores} cores, {cpu}, Linux {kernel}\n"));
    out.push_str(&format!(
        "Disk: {} ({fs} on {device}); one fresh database file per scenario\n",
        dir.parent().unwrap_or(dir).display()
    ));
    let rounds: Vec<String> = fsync_per_round.iter().map(|r| group_digits(*r)).collect();
    out.push_str(&format!(
        "Disk fsync rate per round: {} /s (write scenarios alternate in {WRITE_ROUNDS} rounds)\n",
        rounds.join(", ")
    ));
    out.push_str(&format!(
        "SQLite {}, WAL, synchronous=FULL (Runnel's default durability); writes run {:.1} s each in all, reads {:.2} s; {}{}\n",
        runnel_sqlite::rusqlite::version(),
        s.write_duration.as_secs_f64(),
        s.read_duration.as_secs_f64(),
        command,
        if args.quick { " (smoke test: numbers are not meaningful)" } else { "" }
    ));
    out
}
