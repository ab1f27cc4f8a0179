//! The stream job that `tests/stream_kill.rs` kills with SIGKILL mid-batch and restarts,
//! on SQLite and on PostgreSQL.
//!
//! Usage: `runnel-stream-crash-child <store> <batch-events>`
//!
//! `<store>` is a store URL (`sqlite:PATH`, or `postgres://…?schema=…`). It runs the job
//! `kill_sums` — the sum of each sensor's readings per 10 s of event time, appended to the
//! stream `KillSums-{sensor}` when the window closes — until it has read everything up to
//! the head and every window has closed (the store then falls idle and the watermark
//! follows the clock past them), then prints `done` and exits 0.

use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use runnel::app::ShutdownTrigger;
use runnel::connect::{open_stores, OpenMode, StoreUrl};
use runnel::core::EventFilter;
use runnel::stream::{job_status, Agg, JobBuilder, RunOptions, Sink, StreamJob, WindowSpec};

const USAGE: &str = "usage: runnel-stream-crash-child <store> <batch-events>";

#[derive(serde::Serialize, serde::Deserialize)]
struct Reading {
    key: String,
    t: i64,
    v: i64,
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("stream crash child: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stream crash child: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, store, batch] = &args[..] else {
        return Err(USAGE.into());
    };
    let batch_events: usize = batch.parse().map_err(|_| USAGE)?;
    let stores = open_stores(&StoreUrl::parse(store)?, OpenMode::MustExist).await?;
    let mut job = JobBuilder::new("kill_sums");
    job.events(EventFilter::categories(["Sensor"]))
        .event_time(|e| {
            let r: Reading = serde_json::from_slice(&e.data).unwrap_or(Reading {
                key: String::new(),
                t: 0,
                v: 0,
            });
            chrono::DateTime::from_timestamp_millis(r.t).unwrap_or_default()
        })
        .out_of_orderness(Duration::from_secs(5))
        .try_map(|e| Ok(serde_json::from_slice::<Reading>(&e.data)?))
        .key_by(|r: &Reading| r.key.clone())
        .window(WindowSpec::tumbling(Duration::from_secs(10)))
        .aggregate(Agg::sum(|r: &Reading| r.v))
        .to(Sink::stream("KillSums", "WindowSummed"));
    let job = Arc::new(StreamJob::on(
        &stores,
        job.build()?,
        RunOptions {
            batch_events,
            lease: Duration::from_secs(1),
            poll: Duration::from_millis(20),
            idle_after: Duration::from_millis(200),
            ..RunOptions::default()
        },
    ));
    let (stop, shutdown) = ShutdownTrigger::new();
    let task = tokio::spawn({
        let job = Arc::clone(&job);
        async move { job.run(shutdown).await }
    });
    let head = stores.events.head_position().await?;
    loop {
        if let Some(s) = job_status(&stores, "kill_sums").await? {
            if s.status != "running" {
                return Err(format!("the job is {}: {:?}", s.status, s.last_error).into());
            }
            if s.position >= head && s.state_rows == 0 && s.records > 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.fire();
    task.await??;
    println!("done");
    Ok(())
}
