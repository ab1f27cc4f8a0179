//! The application runtime's supervisor: a failing or panicking task is restarted with
//! backoff and counted, a finished one is not, and shutdown stops everything within its
//! deadline — aborting, and reporting, a task that ignores it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use runnel::app::{App, AppError, RestartPolicy, METRIC_TASK_RESTARTS};
use runnel::connect::{open_bus, open_stores, BusUrl, OpenMode, StoreUrl};
use runnel::RetryPolicy;
use runnel_testkit::harness::wait_until;

const DEADLINE: Duration = Duration::from_secs(10);

async fn app(dir: &tempfile::TempDir) -> App {
    let stores = open_stores(
        &StoreUrl::sqlite(dir.path().join("app.db")),
        OpenMode::CreateIfMissing,
    )
    .await
    .unwrap();
    let bus = open_bus(&BusUrl::Embedded, &stores).await.unwrap();
    let mut app = App::with(stores, bus);
    app.restart_policy(RestartPolicy {
        backoff: RetryPolicy {
            max_attempts: u32::MAX,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        },
        healthy_after: Duration::from_secs(60),
    });
    app
}

#[tokio::test]
async fn failing_and_panicking_tasks_are_restarted_with_backoff_and_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this binary");

    let dir = tempfile::tempdir().unwrap();
    let mut app = app(&dir).await;
    let starts = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&starts);
    app.task("flaky", move |shutdown| {
        let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            match n {
                1 => Err("the first start fails".into()),
                2 => panic!("the second start panics"),
                _ => {
                    shutdown.requested().await;
                    Ok(())
                }
            }
        }
    });
    let running = app.start().await.unwrap();
    wait_until(DEADLINE, "the third start", || {
        let starts = Arc::clone(&starts);
        async move { starts.load(Ordering::SeqCst) >= 3 }
    })
    .await;
    let report = running.shutdown(DEADLINE).await;

    assert_eq!(starts.load(Ordering::SeqCst), 3, "restarted exactly twice");
    let task = &report.tasks[0];
    assert_eq!(task.name, "flaky");
    assert_eq!(task.restarts, 2);
    assert!(task.stopped_in_time);
    assert!(
        task.last_error
            .as_deref()
            .unwrap_or("")
            .contains("panicked"),
        "{task:?}"
    );
    let restarts: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == METRIC_TASK_RESTARTS)
        .map(|(key, _, _, value)| {
            assert!(key
                .key()
                .labels()
                .any(|l| l.key() == "task" && l.value() == "flaky"));
            match value {
                DebugValue::Counter(n) => n,
                other => panic!("{METRIC_TASK_RESTARTS} is not a counter: {other:?}"),
            }
        })
        .sum();
    assert_eq!(restarts, 2);
}

#[tokio::test]
async fn a_task_that_finishes_its_work_is_not_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app(&dir).await;
    let starts = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&starts);
    app.task("one-off", move |_shutdown| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    });
    let running = app.start().await.unwrap();
    wait_until(DEADLINE, "the one start", || {
        let starts = Arc::clone(&starts);
        async move { starts.load(Ordering::SeqCst) == 1 }
    })
    .await;
    let report = running.shutdown(DEADLINE).await;
    assert_eq!(starts.load(Ordering::SeqCst), 1);
    assert_eq!(report.tasks[0].restarts, 0);
}

#[tokio::test]
async fn shutdown_aborts_and_reports_a_task_that_ignores_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app(&dir).await;
    let started = Arc::new(AtomicU32::new(0));
    let (a, b) = (Arc::clone(&started), Arc::clone(&started));
    app.task("stubborn", move |_shutdown| {
        a.fetch_add(1, Ordering::SeqCst);
        // Never looks at the shutdown signal.
        async {
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    app.task("polite", move |shutdown| {
        b.fetch_add(1, Ordering::SeqCst);
        async move {
            shutdown.requested().await;
            Ok(())
        }
    });
    let running = app.start().await.unwrap();
    wait_until(DEADLINE, "both tasks to start", || {
        let started = Arc::clone(&started);
        async move { started.load(Ordering::SeqCst) == 2 }
    })
    .await;
    let began = std::time::Instant::now();
    let report = running.shutdown(Duration::from_millis(300)).await;
    assert!(began.elapsed() < DEADLINE, "shutdown overran its deadline");
    assert!(!report.all_stopped_in_time());
    let by_name = |n: &str| report.tasks.iter().find(|t| t.name == n).unwrap();
    assert!(!by_name("stubborn").stopped_in_time);
    assert!(by_name("polite").stopped_in_time);
}

#[tokio::test]
async fn two_tasks_cannot_share_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app(&dir).await;
    app.try_task("relay", |_s| async { Ok(()) }).unwrap();
    let err = app.try_task("relay", |_s| async { Ok(()) }).unwrap_err();
    assert!(
        matches!(err, AppError::DuplicateTask(ref n) if n == "relay"),
        "{err}"
    );
    assert_eq!(app.task_names(), ["relay"]);
}

/// A SIGTERM sent the moment `start` returns stops the application: the handlers are
/// installed by `start`, not by the first `wait_for_signal`, so the signal neither kills
/// the process (the default action) nor goes unseen.
#[cfg(unix)]
#[tokio::test]
async fn a_sigterm_right_after_start_is_seen_by_a_later_wait() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app(&dir).await;
    app.task("idle", |shutdown| async move {
        shutdown.requested().await;
        Ok(())
    });
    let running = app.start().await.unwrap();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    tokio::time::timeout(DEADLINE, running.wait_for_signal())
        .await
        .expect("the SIGTERM sent after start is seen");
    let report = running.shutdown(DEADLINE).await;
    assert!(report.all_stopped_in_time());
}
