//! The projection runner that `tests/projection_kill.rs` kills with SIGKILL mid-batch and
//! restarts, on SQLite and on PostgreSQL.
//!
//! Usage: `runnel-projection-crash-child <store> <batch-events>`
//!
//! `<store>` is a store URL (`sqlite:PATH`, or `postgres://…?schema=…` for the test's own
//! schema) or a bare SQLite file path. It runs the projection `stream_counts` (one row per
//! stream counting its events, and one row per applied position in `applied`, whose
//! primary key makes a second application of an event fail) until it has applied
//! everything up to the head, then prints `done` and exits 0. The test checks the read
//! model.

use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use runnel::app::ShutdownTrigger;
use runnel::connect::{open_stores, OpenMode, StoreUrl};
use runnel::core::projection::{Dialect, ProjectionStatus};
use runnel::core::{EventFilter, RecordedEvent};
use runnel::projection::{Projection, ProjectionError, ProjectionRunner, RunnerOptions, Writes};

const USAGE: &str = "usage: runnel-projection-crash-child <store> <batch-events>";

struct Counting;

impl Projection for Counting {
    fn name(&self) -> &str {
        "stream_counts"
    }
    fn tables(&self) -> Vec<String> {
        vec!["counts".into(), "applied".into()]
    }
    fn schema(&self, _: Dialect) -> Vec<String> {
        vec![
            "CREATE TABLE {counts} (stream TEXT PRIMARY KEY, n BIGINT NOT NULL)".into(),
            "CREATE TABLE {applied} (position BIGINT PRIMARY KEY)".into(),
        ]
    }
    fn filter(&self) -> EventFilter {
        EventFilter::categories(["Acct"])
    }
    fn apply(&self, event: &RecordedEvent, out: &mut Writes) -> Result<(), ProjectionError> {
        out.execute(
            "INSERT INTO {counts} (stream, n) VALUES ($1, 1) \
             ON CONFLICT (stream) DO UPDATE SET n = {counts}.n + 1",
            vec![event.stream.to_string().into()],
        );
        out.execute(
            "INSERT INTO {applied} (position) VALUES ($1)",
            vec![(event.position.get() as i64).into()],
        );
        Ok(())
    }
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("projection crash child: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("projection crash child: {e}");
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
    let url = if store.starts_with("sqlite:") || store.starts_with("postgres") {
        StoreUrl::parse(store)?
    } else {
        StoreUrl::sqlite(store)
    };
    let stores = open_stores(&url, OpenMode::MustExist).await?;
    let projections = Arc::clone(&stores.projections);
    let runner = Arc::new(ProjectionRunner::new(
        Arc::new(Counting),
        Arc::clone(&projections),
        Arc::clone(&stores.events),
        RunnerOptions {
            batch_events,
            lease: Duration::from_secs(1),
            poll: Duration::from_millis(20),
            ..RunnerOptions::default()
        },
    ));
    let (stop, shutdown) = ShutdownTrigger::new();
    let task = tokio::spawn({
        let runner = Arc::clone(&runner);
        async move { runner.run(shutdown).await }
    });
    let head = stores.events.head_position().await?;
    loop {
        let states = projections.states(Some("stream_counts")).await?;
        if let Some(s) = states.first() {
            if s.status != ProjectionStatus::Running {
                return Err(format!(
                    "the projection is {}: {:?}",
                    s.status.as_str(),
                    s.last_error
                )
                .into());
            }
            if s.checkpoint >= head {
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
