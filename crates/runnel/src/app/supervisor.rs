//! The supervisor: runs every task of an application on its own tokio task, restarts one
//! that fails (an error or a panic) with backoff, and stops them all within a deadline.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use tokio::task::JoinHandle;

use super::restart::{RestartBook, RestartPolicy};
use super::shutdown::{Shutdown, ShutdownTrigger};
use crate::bus::BoxError;
use crate::retry::{FullJitter, Jitter};

/// Metric: restarts of a supervised task after a failure (label `task`).
pub const METRIC_TASK_RESTARTS: &str = "runnel_app_task_restarts_total";
/// Metric: supervised tasks running now (gauge).
pub const METRIC_TASKS_RUNNING: &str = "runnel_app_tasks_running";

/// A task body: called once per (re)start with the shutdown signal; returns when shutdown
/// is asked (`Ok`) or when it fails (`Err`, restarted with backoff).
pub(crate) type TaskFn =
    Arc<dyn Fn(Shutdown) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// A task registered with the supervisor.
pub(crate) struct TaskSpec {
    pub(crate) name: String,
    pub(crate) run: TaskFn,
}

/// How one task ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskReport {
    /// The task's name.
    pub name: String,
    /// How often it was restarted after a failure.
    pub restarts: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Whether it stopped by the shutdown deadline (`false`: it was aborted).
    pub stopped_in_time: bool,
}

/// What the application's tasks did, returned by shutdown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppReport {
    pub tasks: Vec<TaskReport>,
}

impl AppReport {
    /// Whether every task stopped by the deadline.
    pub fn all_stopped_in_time(&self) -> bool {
        self.tasks.iter().all(|t| t.stopped_in_time)
    }

    /// Restarts across every task.
    pub fn restarts(&self) -> u64 {
        self.tasks.iter().map(|t| t.restarts).sum()
    }
}

/// The running tasks.
pub(crate) struct Supervisor {
    trigger: ShutdownTrigger,
    shutdown: Shutdown,
    tasks: Vec<(String, JoinHandle<TaskReport>)>,
}

impl Supervisor {
    /// Starts every task.
    pub(crate) fn start(specs: Vec<TaskSpec>, policy: RestartPolicy) -> Supervisor {
        let (trigger, shutdown) = ShutdownTrigger::new();
        let tasks = specs
            .into_iter()
            .map(|spec| {
                let name = spec.name.clone();
                let handle = tokio::spawn(supervise(spec, policy, shutdown.clone()));
                (name, handle)
            })
            .collect();
        Supervisor {
            trigger,
            shutdown,
            tasks,
        }
    }

    /// The signal the tasks watch.
    pub(crate) fn shutdown_signal(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Asks every task to stop and waits up to `deadline` for them; tasks still running
    /// then are aborted and reported as such.
    pub(crate) async fn shutdown(self, deadline: Duration) -> AppReport {
        self.trigger.fire();
        let until = tokio::time::Instant::now() + deadline;
        let mut report = AppReport::default();
        for (name, mut handle) in self.tasks {
            match tokio::time::timeout_at(until, &mut handle).await {
                Ok(Ok(task)) => report.tasks.push(task),
                Ok(Err(join)) => report.tasks.push(TaskReport {
                    name,
                    restarts: 0,
                    last_error: Some(format!("the supervisor of the task failed: {join}")),
                    stopped_in_time: true,
                }),
                Err(_) => {
                    handle.abort();
                    tracing::error!(
                        task = %name,
                        deadline_ms = deadline.as_millis() as u64,
                        "task did not stop by the shutdown deadline; aborted"
                    );
                    report.tasks.push(TaskReport {
                        name,
                        restarts: 0,
                        last_error: None,
                        stopped_in_time: false,
                    });
                }
            }
        }
        report
    }
}

/// Runs one task until shutdown, restarting it after each failure.
async fn supervise(spec: TaskSpec, policy: RestartPolicy, shutdown: Shutdown) -> TaskReport {
    let jitter: &dyn Jitter = &FullJitter;
    let mut book = RestartBook::default();
    let mut last_error = None;
    let running = metrics::gauge!(METRIC_TASKS_RUNNING);
    loop {
        let started = Instant::now();
        tracing::info!(task = %spec.name, "task started");
        running.increment(1.0);
        let outcome = AssertUnwindSafe((spec.run)(shutdown.clone()))
            .catch_unwind()
            .await;
        running.decrement(1.0);
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(panic) => Some(format!(
                "panicked: {}",
                crate::consumer::panic_message(panic.as_ref())
            )),
        };
        if shutdown.is_requested() {
            if let Some(e) = &error {
                tracing::warn!(task = %spec.name, error = %e, "task failed while stopping");
                last_error = Some(e.clone());
            }
            tracing::info!(task = %spec.name, "task stopped");
            break;
        }
        let Some(error) = error else {
            // Finished its work by itself (a one-off job): nothing to restart.
            tracing::info!(task = %spec.name, "task finished");
            break;
        };
        let delay = book.failed(started.elapsed(), &policy, jitter);
        metrics::counter!(METRIC_TASK_RESTARTS, "task" => spec.name.clone()).increment(1);
        tracing::error!(
            task = %spec.name,
            error = %error,
            restarts = book.total(),
            retry_in_ms = delay.as_millis() as u64,
            "task failed; restarting after backoff"
        );
        last_error = Some(error);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.requested() => break,
        }
    }
    TaskReport {
        name: spec.name,
        restarts: book.total(),
        last_error,
        stopped_in_time: true,
    }
}
