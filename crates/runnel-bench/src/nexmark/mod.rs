//! `runnel-bench nexmark`: Runnel's stream jobs on the Nexmark queries q1, q5, q7 and q8,
//! in memory (the engine) and end to end from a SQLite event store, in events per second
//! per core beside a plain Rust loop (q1, q5) and Flink 1.13's published figures.

mod generator;
mod queries;
mod raw;
mod store_tier;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use runnel::core::RecordedEvent;
use runnel::stream::{Output, TestDriver};

use crate::cli::{BenchNexmarkArgs, NexmarkQuery, NexmarkTier};
use crate::output::print_line;
use crate::progress::group_digits;
use crate::{cpu, machine, rss, scenario};

use queries::Target;

/// Flink 1.13's published throughput per core on the Nexmark queries (events/s/core,
/// RocksDB state backend, exactly-once checkpoints): for reading beside Runnel's.
const FLINK_1_13_PER_CORE: [(NexmarkQuery, f64); 4] = [
    (NexmarkQuery::Q1, 157_900.0),
    (NexmarkQuery::Q5, 22_100.0),
    (NexmarkQuery::Q7, 12_300.0),
    (NexmarkQuery::Q8, 146_100.0),
];
/// --quick: events of each tier.
const QUICK_EVENTS: u64 = 20_000;
/// The store tier appends the events in groups of this many (one stream each).
const APPEND_CHUNK: u64 = 1000;

/// What one measured run cost.
#[derive(Clone, Copy, Debug)]
struct Measured {
    events: u64,
    cpu: Duration,
    wall: Duration,
    peak_rss: Option<u64>,
    /// Results of the query's last job (q5: the windows' winners).
    results: u64,
}

impl Measured {
    fn per_core(&self) -> f64 {
        self.events as f64 / self.cpu.as_secs_f64().max(1e-9)
    }
    fn per_wall_second(&self) -> f64 {
        self.events as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

fn flink(query: NexmarkQuery) -> f64 {
    FLINK_1_13_PER_CORE
        .iter()
        .find(|(q, _)| *q == query)
        .map_or(f64::NAN, |(_, f)| *f)
}

fn name(query: NexmarkQuery) -> &'static str {
    match query {
        NexmarkQuery::Q1 => "q1 currency conversion",
        NexmarkQuery::Q5 => "q5 hot items",
        NexmarkQuery::Q7 => "q7 highest bid",
        NexmarkQuery::Q8 => "q8 new users",
    }
}

pub async fn bench(args: BenchNexmarkArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let mut queries = args.queries.clone();
    if queries.is_empty() {
        queries = vec![
            NexmarkQuery::Q1,
            NexmarkQuery::Q5,
            NexmarkQuery::Q7,
            NexmarkQuery::Q8,
        ];
    }
    queries.sort();
    queries.dedup();
    let (events, store_events) = if args.quick {
        (QUICK_EVENTS, QUICK_EVENTS)
    } else {
        (args.events, args.store_events)
    };
    let load_before = machine::load_average();
    let mut rows = Vec::new();
    if matches!(args.tier, NexmarkTier::Engine | NexmarkTier::Both) {
        for &q in &queries {
            let m = scenario::blocking(&format!("{} in memory", name(q)), "events", {
                let batch = args.batch;
                move |count| engine_run(q, events, batch, &count)
            })
            .await?;
            let raw = match q {
                NexmarkQuery::Q1 | NexmarkQuery::Q5 => Some(
                    scenario::blocking(&format!("{} raw loop", name(q)), "events", {
                        let batch = args.batch;
                        move |count| raw_run(q, events, batch, &count)
                    })
                    .await?,
                ),
                _ => None,
            };
            if let Some(raw) = &raw {
                anyhow::ensure!(
                    raw.results == m.results,
                    "{}: Runnel emitted {} results, the raw loop {}",
                    name(q),
                    m.results,
                    raw.results
                );
            }
            rows.push((q, "engine", m, raw));
        }
    }
    if matches!(args.tier, NexmarkTier::Store | NexmarkTier::Both) {
        let dir = args.dir.clone().unwrap_or_else(|| ".".into());
        for (q, m) in store_tier::run(&queries, store_events, args.batch, &dir).await? {
            rows.push((q, "store", m, None));
        }
    }
    let load_after = machine::load_average();
    print_line(&format!(
        "### Stream processing (Nexmark): {} events in memory, {} from the store, batches of {}\n",
        group_digits(events as f64),
        group_digits(store_events as f64),
        args.batch
    ))?;
    print_line(&machine::machine_lines(load_before, load_after))?;
    print_line(&table(&rows))?;
    if args.quick {
        print_line("(--quick: tiny counts, the figures mean nothing)")?;
    }
    Ok(())
}

fn table(rows: &[(NexmarkQuery, &str, Measured, Option<Measured>)]) -> String {
    let mut out = String::from(
        "| query | tier | events | Runnel events/s per core | Runnel events/s wall | peak RSS | raw loop per core | Runnel / raw | Flink 1.13 per core | Runnel / Flink |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (q, tier, m, raw) in rows {
        let (raw_text, ratio_raw) = match raw {
            Some(r) => (
                group_digits(r.per_core()),
                crate::report::ratio(m.per_core() / r.per_core()),
            ),
            None => ("—".into(), "—".into()),
        };
        let flink = flink(*q);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            name(*q),
            tier,
            group_digits(m.events as f64),
            group_digits(m.per_core()),
            group_digits(m.per_wall_second()),
            m.peak_rss.map_or_else(|| "—".into(), rss::mib),
            raw_text,
            ratio_raw,
            group_digits(flink),
            crate::report::ratio(m.per_core() / flink),
        ));
    }
    out
}

/// Events `from..to` of the generator as recorded events.
fn chunk(from: u64, to: u64) -> Vec<RecordedEvent> {
    generator::recorded(from, to)
}

/// Times `f` on this thread: (CPU, wall).
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let cpu0 = cpu::thread_cpu().unwrap_or_default();
    let wall0 = Instant::now();
    let out = f();
    let wall = wall0.elapsed();
    let cpu = cpu::thread_cpu().unwrap_or_default().saturating_sub(cpu0);
    (out, cpu, wall)
}

/// A query's jobs in test drivers, each one's results fed to the next.
struct Pipeline {
    query: NexmarkQuery,
    drivers: Vec<TestDriver>,
    names: Vec<String>,
    /// Positions of the events fed to the second job.
    fed: u64,
    results: u64,
}

impl Pipeline {
    fn new(query: NexmarkQuery) -> anyhow::Result<Pipeline> {
        let jobs = queries::jobs(query, Target::Memory)?;
        Ok(Pipeline {
            query,
            names: jobs.iter().map(|j| j.name().to_string()).collect(),
            drivers: jobs.into_iter().map(TestDriver::new).collect(),
            fed: 0,
            results: 0,
        })
    }

    /// One batch through every job.
    fn send(&mut self, events: Vec<RecordedEvent>) -> anyhow::Result<()> {
        self.drivers[0].send_events(events)?;
        self.forward(0)
    }

    /// Job `i`'s results into job `i + 1`, or counted if it is the last.
    fn forward(&mut self, i: usize) -> anyhow::Result<()> {
        let out = self.drivers[i].take_outputs();
        if i + 1 == self.drivers.len() {
            self.results += match self.query {
                NexmarkQuery::Q5 => winners(&out),
                _ => out.len() as u64,
            };
            return Ok(());
        }
        let events = queries::counts_as_events(&self.names[i], &out, self.fed + 1);
        self.fed += events.len() as u64;
        self.drivers[i + 1].send_events(events)?;
        self.forward(i + 1)
    }

    /// The sources fall idle: every window closes, in order down the pipeline.
    fn finish(&mut self, by: Duration) -> anyhow::Result<()> {
        for i in 0..self.drivers.len() {
            self.drivers[i].advance_clock(by);
            self.forward(i)?;
        }
        Ok(())
    }
}

/// q5's results as the raw loop counts them: the windows' winners, one per auction.
fn winners(out: &[Output]) -> u64 {
    out.iter()
        .map(|o| {
            o.value
                .get("auctions")
                .and_then(|a| a.as_array())
                .map_or(0, |a| a.len() as u64)
        })
        .sum()
}

/// How far to move the clock at the end: past the last event by a day.
fn beyond(events: u64) -> Duration {
    let span_ms = events as i64 * generator::EVENT_SPACING_US / 1000;
    Duration::from_millis(span_ms.max(0) as u64) + Duration::from_secs(24 * 3600)
}

fn engine_run(
    query: NexmarkQuery,
    events: u64,
    batch: usize,
    count: &AtomicU64,
) -> anyhow::Result<Measured> {
    rss::reset_peak();
    let mut p = Pipeline::new(query)?;
    let (mut cpu_total, mut wall_total) = (Duration::ZERO, Duration::ZERO);
    let mut from = 0;
    while from < events {
        let to = (from + batch as u64).min(events);
        let events = chunk(from, to);
        let (r, cpu, wall) = timed(|| p.send(events));
        r.with_context(|| format!("{} at event {from}", name(query)))?;
        cpu_total += cpu;
        wall_total += wall;
        from = to;
        count.store(from, Ordering::Relaxed);
    }
    let (r, cpu, wall) = timed(|| p.finish(beyond(events)));
    r?;
    cpu_total += cpu;
    wall_total += wall;
    Ok(Measured {
        events,
        cpu: cpu_total,
        wall: wall_total,
        peak_rss: rss::peak_rss_bytes(),
        results: p.results,
    })
}

fn raw_run(
    query: NexmarkQuery,
    events: u64,
    batch: usize,
    count: &AtomicU64,
) -> anyhow::Result<Measured> {
    rss::reset_peak();
    let mut q1 = raw::RawQ1::default();
    let mut q5 = raw::RawQ5::default();
    let (mut cpu_total, mut wall_total) = (Duration::ZERO, Duration::ZERO);
    let mut from = 0;
    while from < events {
        let to = (from + batch as u64).min(events);
        let events = chunk(from, to);
        // The batch is dropped inside the timing, as the engine drops the events it took.
        let (r, cpu, wall) = timed(|| {
            let r = match query {
                NexmarkQuery::Q5 => q5.batch(&events),
                _ => q1.batch(&events),
            };
            drop(events);
            r
        });
        r?;
        cpu_total += cpu;
        wall_total += wall;
        from = to;
        count.store(from, Ordering::Relaxed);
    }
    let ((), cpu, wall) = timed(|| q5.close(i64::MAX));
    cpu_total += cpu;
    wall_total += wall;
    Ok(Measured {
        events,
        cpu: cpu_total,
        wall: wall_total,
        peak_rss: rss::peak_rss_bytes(),
        results: match query {
            NexmarkQuery::Q5 => q5.results,
            _ => q1.results,
        },
    })
}
