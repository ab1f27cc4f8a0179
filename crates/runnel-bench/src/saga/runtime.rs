//! Runnel's side: [`SagaRuntime`]s with retention off on the store (wrapped in
//! [`Observed`]), each driven by one `run` task (one runtime unless `--runtimes` says
//! more: processes sharing the store), and C clients that each start an instance and wait
//! for it to complete before starting the next (a closed loop: C instances in flight, as
//! in the baselines). Client `i` starts its instances on runtime `i mod runtimes`, which
//! runs their steps (a runtime leases the local work of its own commits to itself).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use runnel::app::Shutdown;
use runnel::saga::{SagaError, SagaOptions, SagaRuntime, Started};
use runnel_core::processor::{InstanceStatus, ProcessorStore};
use runnel_core::SystemClock;

use super::observed::{Calls, Observed};
use super::workload::{definition, instance_id, kind, Latencies, Order, INSTANCE_DEADLINE};

/// How long the instance table may take to show every completed instance after the last
/// completion was observed (it shows them at once: the commit has returned).
const VERIFY_DEADLINE: Duration = Duration::from_secs(30);
/// Between two looks at the instance counts while verifying.
const VERIFY_POLL: Duration = Duration::from_millis(20);

/// The runtimes and their `run` tasks, for one stretch of instances.
pub struct Driver {
    observed: Arc<Observed>,
    runtimes: Vec<SagaRuntime<Order>>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), SagaError>>>,
}

impl Driver {
    /// `runtimes` runtimes on `store` running up to `concurrency` steps at once in all,
    /// retention off (the finished instances stay), their `run` tasks started.
    pub fn start(
        store: Arc<dyn ProcessorStore>,
        runtimes: usize,
        concurrency: usize,
    ) -> anyhow::Result<Driver> {
        let observed = Arc::new(Observed::new(store));
        let runtimes = runtimes.max(1);
        let mut driver = Driver {
            observed,
            runtimes: Vec::with_capacity(runtimes),
            tasks: Vec::with_capacity(runtimes),
        };
        for _ in 0..runtimes {
            let runtime = SagaRuntime::with_options(
                definition()?,
                Arc::clone(&driver.observed) as Arc<dyn ProcessorStore>,
                Arc::new(SystemClock),
                SagaOptions {
                    retention: None,
                    max_concurrency: concurrency.div_ceil(runtimes).max(1),
                    ..SagaOptions::default()
                },
            );
            // `run` stops on a `Shutdown` only an `App` can fire; the driver aborts the
            // task instead, once every instance it was given has completed (nothing is in
            // flight then).
            driver.tasks.push(tokio::spawn({
                let runtime = runtime.clone();
                async move { runtime.run(Shutdown::never()).await }
            }));
            driver.runtimes.push(runtime);
        }
        Ok(driver)
    }

    /// Completes instances `from..to` (ids `{prefix}-{n}`) from `clients` concurrent
    /// clients. Returns the time from the first start to the last completion and every
    /// instance's start-to-completion latency: from just before `start()` to the return
    /// of the commit that made it `Completed`.
    pub async fn complete(
        &self,
        prefix: &str,
        from: u64,
        to: u64,
        clients: usize,
        done: Arc<AtomicU64>,
    ) -> anyhow::Result<(Duration, Latencies)> {
        let next = Arc::new(AtomicU64::new(from));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..clients {
            let observed = Arc::clone(&self.observed);
            let runtime = self.runtimes[client % self.runtimes.len()].clone();
            let (next, done, prefix) = (Arc::clone(&next), Arc::clone(&done), prefix.to_string());
            tasks.spawn(async move {
                let mut latencies = Latencies::new()?;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= to {
                        return anyhow::Ok(latencies);
                    }
                    let id = instance_id(&prefix, n);
                    let completed = observed.completion_of(&id);
                    let start = Instant::now();
                    match runtime.start(&id, Order::new(n)).await {
                        Ok(Started::New { .. }) => {}
                        Ok(Started::Existing { .. }) => {
                            observed.forget(&id);
                            anyhow::bail!("instance {id} existed before the benchmark started it");
                        }
                        Err(e) => {
                            observed.forget(&id);
                            return Err(anyhow::Error::new(e).context(format!("start {id}")));
                        }
                    }
                    let at = tokio::time::timeout(INSTANCE_DEADLINE, completed)
                        .await
                        .with_context(|| {
                            format!("instance {id} did not complete within {INSTANCE_DEADLINE:?}")
                        })?
                        .context("the completion signal was dropped")?;
                    latencies.record(at.saturating_duration_since(start))?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let mut all = Latencies::new()?;
        while let Some(joined) = tasks.join_next().await {
            all.add(&joined.context("a benchmark client panicked")??)?;
        }
        Ok((started.elapsed(), all))
    }

    /// The store calls the runtime (and the clients' starts) made so far.
    pub fn calls(&self) -> Calls {
        self.observed.calls()
    }

    /// Stops the `run` tasks. A task that had ended by itself (an error) is reported.
    pub async fn stop(self) -> anyhow::Result<()> {
        let mut outcome = Ok(());
        for task in self.tasks {
            if task.is_finished() {
                let ended = match task.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(anyhow::Error::new(e).context("a saga runtime stopped")),
                    Err(e) => Err(anyhow::Error::new(e).context("a saga runtime panicked")),
                };
                outcome = outcome.and(ended);
            } else {
                task.abort();
                let _ = task.await;
            }
        }
        outcome
    }
}

/// Waits until the store counts `expected` completed instances of the saga and none in
/// any other status (`count_by_status`, polled with a deadline).
pub async fn verify_completed(store: &dyn ProcessorStore, expected: u64) -> anyhow::Result<()> {
    let kind = kind();
    let deadline = Instant::now() + VERIFY_DEADLINE;
    loop {
        let counts = store.count_by_status().await?;
        let (mut completed, mut others) = (0, 0);
        for c in counts.iter().filter(|c| c.kind == kind) {
            if c.status == InstanceStatus::Completed {
                completed += c.count;
            } else {
                others += c.count;
            }
        }
        if completed == expected && others == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline && completed <= expected,
            "the store counts {completed} completed instances and {others} others, \
             expected {expected} completed"
        );
        tokio::time::sleep(VERIFY_POLL).await;
    }
}
