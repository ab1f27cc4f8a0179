//! The store tier: the events appended to a temporary SQLite store first (not timed), then
//! each query's jobs catch up from the start of `$all` as `StreamJob`s, committing the
//! source position, the state rows and the results per batch. Only the catching up is
//! timed.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use runnel::connect::{open_stores, OpenMode, StoreUrl, Stores};
use runnel::core::{ExpectedRevision, NewEvent, StreamName};
use runnel::stream::{RunOptions, StreamJob};

use super::queries::{self, Target};
use super::{generator, name, Measured, APPEND_CHUNK};
use crate::cli::NexmarkQuery;
use crate::progress::CountSpinner;
use crate::{cpu, rss, scenario};

pub async fn run(
    queries: &[NexmarkQuery],
    events: u64,
    batch: usize,
    dir: &Path,
) -> anyhow::Result<Vec<(NexmarkQuery, Measured)>> {
    let tmp = tempfile::tempdir_in(dir)
        .with_context(|| format!("cannot make a temporary directory in {}", dir.display()))?;
    let url = StoreUrl::sqlite(tmp.path().join("nexmark.db"));
    let stores = open_stores(&url, OpenMode::CreateIfMissing).await?;
    scenario::counted("appending the events (not timed)", "events", |count| {
        let stores = &stores;
        async move {
            let mut from = 0;
            while from < events {
                let to = (from + APPEND_CHUNK).min(events);
                // One append per type, to the type's category (`Bid-7`): the group's events
                // reorder by type, within the jobs' out-of-orderness.
                let mut by_type: [(&str, Vec<NewEvent>); 3] = [
                    ("Person", Vec::new()),
                    ("Auction", Vec::new()),
                    ("Bid", Vec::new()),
                ];
                for n in from..to {
                    let e = generator::event(n);
                    let ty = e.event_type();
                    let event = NewEvent::bytes(ty, "application/json", e.to_json());
                    if let Some((_, group)) = by_type.iter_mut().find(|(t, _)| *t == ty) {
                        group.push(event);
                    }
                }
                for (ty, group) in by_type {
                    if group.is_empty() {
                        continue;
                    }
                    let stream = StreamName::new(format!("{ty}-{}", from / APPEND_CHUNK))?;
                    stores
                        .events
                        .append(&stream, ExpectedRevision::Any, group)
                        .await?;
                }
                from = to;
                count.store(from, Ordering::Relaxed);
            }
            Ok(())
        }
    })
    .await?;
    let mut out = Vec::new();
    for &q in queries {
        let m = measure(&stores, q, events, batch).await?;
        out.push((q, m));
    }
    Ok(out)
}

async fn measure(
    stores: &Stores,
    query: NexmarkQuery,
    events: u64,
    batch: usize,
) -> anyhow::Result<Measured> {
    let jobs = queries::jobs(query, Target::Store)?;
    let options = RunOptions {
        batch_events: batch,
        ..RunOptions::default()
    };
    let jobs: Vec<StreamJob> = jobs
        .into_iter()
        .map(|j| StreamJob::on(stores, j, options.clone()))
        .collect();
    // Registering makes the tables; it is not part of the work per event.
    for j in &jobs {
        j.register().await?;
    }
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let spinner = CountSpinner::start(
        format!("{} from the store", name(query)),
        "events",
        std::sync::Arc::clone(&count),
    );
    rss::reset_peak();
    let cpu0 = cpu::process_cpu().unwrap_or_default();
    let wall0 = Instant::now();
    let mut applied = 0;
    for j in &jobs {
        applied += j
            .catch_up()
            .await
            .with_context(|| format!("{} from the store", name(query)))?;
        count.store(applied, Ordering::Relaxed);
    }
    let wall = wall0.elapsed();
    let cpu = cpu::process_cpu()
        .unwrap_or_default()
        .saturating_sub(cpu0)
        .max(Duration::from_millis(10));
    spinner.finish();
    let last = jobs.last().expect("a query has a job").job().name();
    let status = runnel::stream::job_status(stores, last).await?;
    Ok(Measured {
        events,
        cpu,
        wall,
        peak_rss: rss::peak_rss_bytes(),
        results: status.map_or(0, |s| s.outputs),
    })
}
