//! The saga service that `tests/saga_kill.rs` kills with SIGKILL mid-saga and restarts.
//!
//! Usage: `runnel-saga-crash-child <db> <instances> <step-delay-ms>`
//!
//! On the SQLite file `<db>` it starts instances `i-0` … `i-<instances - 1>` of a saga of
//! three local steps (starting an existing one has no effect), then runs them with
//! [`SagaRuntime::run`] until every one has completed, prints `done` and exits 0. Each step
//! waits up to `<step-delay-ms>` (so a kill lands while steps are running) and then
//! records its side effect in its own table `saga_effects` — one row per idempotency key,
//! counting the runs — in a transaction of its own, before the saga commits the step's
//! outcome: exactly the window where a crash makes a step run again under the same key.
//!
//! The test, not this program, checks the outcome: every instance completed, every step's
//! effect present, none run more often than the kills allow, one `SagaCompleted` each.

use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use runnel::app::ShutdownTrigger;
use runnel::core::processor::{InstanceStatus, ProcessorStore};
use runnel::core::SystemClock;
use runnel::saga::{SagaDefinition, SagaOptions, SagaRuntime, StepContext, StepError};
use runnel::sqlite::rusqlite::params;
use runnel::sqlite::{SqliteProcessorStore, SqliteStore};

/// Short, so a restarted child takes a killed one's running steps over quickly.
const LEASE: Duration = Duration::from_secs(1);
/// How often the child looks for due work and whether it is done.
const POLL: Duration = Duration::from_millis(50);
const USAGE: &str = "usage: runnel-saga-crash-child <db> <instances> <step-delay-ms>";

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Data {
    steps: u32,
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("saga crash child: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("saga crash child: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn effect(store: &SqliteStore, key: String, delay_ms: u64) -> Result<(), StepError> {
    if delay_ms > 0 {
        let wait = rand_ms(delay_ms);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    store
        .unit_of_work(move |uow| {
            uow.connection()
                .execute(
                    "INSERT INTO saga_effects (key, runs) VALUES (?1, 1) \
                     ON CONFLICT (key) DO UPDATE SET runs = runs + 1",
                    params![key],
                )
                .map_err(|e| runnel::core::StoreError::Backend(e.to_string()))?;
            Ok::<_, runnel::core::StoreError>(())
        })
        .await
        .map_err(StepError::unknown)
}

fn rand_ms(max: u64) -> u64 {
    // A cheap spread of delays; the test needs variety, not quality.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    nanos % (max + 1)
}

fn definition(store: SqliteStore, delay_ms: u64) -> SagaDefinition<Data> {
    let mut builder = SagaDefinition::builder("crash-test", 1);
    for step in ["reserve", "charge", "ship"] {
        let forward = store.clone();
        let undo = store.clone();
        builder = builder
            .local(step, move |mut ctx: StepContext<Data>| {
                let store = forward.clone();
                async move {
                    effect(&store, ctx.key.clone(), delay_ms).await?;
                    ctx.data.steps += 1;
                    Ok(ctx.data)
                }
            })
            .compensate_local(move |ctx: StepContext<Data>| {
                let store = undo.clone();
                async move {
                    effect(&store, ctx.key.clone(), 0).await?;
                    Ok(ctx.data)
                }
            });
    }
    builder.build().expect("a valid saga")
}

async fn run() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, db, instances, delay] = &args[..] else {
        return Err(USAGE.into());
    };
    let instances: u32 = instances.parse().map_err(|_| USAGE)?;
    let delay_ms: u64 = delay.parse().map_err(|_| USAGE)?;
    let store = SqliteStore::open(db)?;
    store
        .unit_of_work(|uow| {
            uow.connection()
                .execute_batch(
                    "CREATE TABLE IF NOT EXISTS saga_effects (key TEXT PRIMARY KEY, runs INTEGER NOT NULL)",
                )
                .map_err(|e| runnel::core::StoreError::Backend(e.to_string()))?;
            Ok::<_, runnel::core::StoreError>(())
        })
        .await?;
    let processors: Arc<dyn ProcessorStore> = Arc::new(SqliteProcessorStore::new(store.clone()));
    let saga = SagaRuntime::with_options(
        definition(store.clone(), delay_ms),
        Arc::clone(&processors),
        Arc::new(SystemClock),
        SagaOptions {
            lease: LEASE,
            poll_interval: POLL,
            max_concurrency: 16,
            retention: None,
            ..SagaOptions::default()
        },
    );
    let (stop, shutdown) = ShutdownTrigger::new();
    let runner = tokio::spawn({
        let saga = saga.clone();
        async move { saga.run(shutdown).await }
    });
    for n in 0..instances {
        saga.start(&format!("i-{n}"), Data { steps: 0 }).await?;
    }
    loop {
        let counts = processors.count_by_status().await?;
        let completed: u64 = counts
            .iter()
            .filter(|c| c.status == InstanceStatus::Completed)
            .map(|c| c.count)
            .sum();
        if completed == u64::from(instances) {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    stop.fire();
    runner.await??;
    println!("done");
    Ok(())
}
