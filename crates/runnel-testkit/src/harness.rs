//! The harness every conformance suite runs its checks in: the event-store suite
//! ([`conformance`](crate::conformance)), the transport suite ([`transport`](crate::transport)),
//! the dead-letter-store suite ([`dead_letters`](crate::dead_letters)) and the dedup-store
//! suite ([`dedup`](crate::dedup)).
//!
//! A suite is a list of checks (plain `pub async fn`s taking the thing under test) and a
//! `*_conformance!` macro that turns the list into one `#[test]` per check. The harness
//! supplies what is the same for every suite:
//!
//! * [`run_check`]: each generated test builds its own multi-threaded tokio runtime
//!   ([`RUNTIME_WORKER_THREADS`] workers), makes a fresh subject with the backend's factory
//!   and runs the check as a spawned task under a deadline;
//! * [`skip`]: a factory may return `None` (the backend's service is not configured): the
//!   check says `SKIPPED` loudly and passes, or fails when `RUNNEL_REQUIRE_SERVICES=1`;
//! * [`within_for`]: every wait has a deadline and names what it waited for;
//! * the macros that expand a suite's check list into tests, into a run-everything loop
//!   and into the list of check names (`#[doc(hidden)]`: only the suites use them).

use std::fmt::{Debug, Display};
use std::future::Future;
use std::time::Duration;

/// Worker threads of the runtime each generated test runs on.
pub const RUNTIME_WORKER_THREADS: usize = 4;

/// The environment variable that turns a skipped check into a failed one: set it to `1`
/// where every backend service is expected to be up (CI).
pub const REQUIRE_SERVICES_ENV: &str = "RUNNEL_REQUIRE_SERVICES";

/// Says loudly that `check` was skipped because the factory returned `None` (the backend's
/// service is not configured), or fails it when `RUNNEL_REQUIRE_SERVICES=1`.
pub fn skip(check: &str) {
    if std::env::var(REQUIRE_SERVICES_ENV).as_deref() == Ok("1") {
        panic!(
            "{check}: the store factory returned None (backend service not configured), \
             but RUNNEL_REQUIRE_SERVICES=1 requires it"
        );
    }
    eprintln!("SKIPPED {check}: the store factory returned None (backend service not configured)");
}

/// Awaits `fut`, failing with "timed out after .. waiting for `what`" when it takes longer
/// than `deadline`.
pub async fn within_for<T>(deadline: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(deadline, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {deadline:?} waiting for {what}"),
    }
}

/// How often [`wait_until`] re-checks its condition.
pub const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Re-checks `condition` every [`WAIT_POLL_INTERVAL`] until it holds, failing with "timed
/// out after .. waiting for `what`" once `deadline` has passed: the one way tests wait
/// for something another task or process makes true.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// let done = Arc::new(AtomicBool::new(false));
/// let flag = done.clone();
/// tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
/// runnel_testkit::harness::wait_until(Duration::from_secs(5), "the task", || {
///     let done = done.clone();
///     async move { done.load(Ordering::SeqCst) }
/// })
/// .await;
/// # }
/// ```
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(WAIT_POLL_INTERVAL).await;
    }
}

/// Runs one check in a new multi-threaded runtime: awaits `subject` (the backend's factory
/// and the conversion of its output, `None` to skip), then runs `check` on it as a spawned
/// task that must finish within `deadline`. The body of every test a `*_conformance!`
/// macro generates.
///
/// The check runs on a worker, so its deadline fires even if a backend call never yields
/// (a blocking call or a busy loop inside an async fn); a panic in the check is re-raised
/// as is, so the test reports the check's own message.
#[doc(hidden)]
pub fn run_check<T, Fut, C, CFut>(check_name: &str, deadline: Duration, subject: Fut, check: C)
where
    Fut: Future<Output = Option<T>>,
    C: FnOnce(T) -> CFut,
    CFut: Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_WORKER_THREADS)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{check_name}: cannot start a tokio runtime: {e}"));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            let Some(subject) = subject.await else {
                skip(check_name);
                return;
            };
            let task = tokio::spawn(check(subject));
            match within_for(deadline, check_name, task).await {
                Ok(()) => {}
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("{check_name}: the check's task failed: {e}"),
            }
        })
    }));
    // A failed check may leave a task that never yields; waiting for it would hang the
    // test binary instead of reporting the failure.
    runtime.shutdown_background();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Unwraps a backend call's result, failing the check with what was being done.
pub(crate) trait Must<T> {
    fn must(self, what: &str) -> T;
}

impl<T, E: Display + Debug> Must<T> for Result<T, E> {
    #[track_caller]
    fn must(self, what: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("{what} failed: {e} ({e:?})"),
        }
    }
}

/// The error of a call that must fail.
#[track_caller]
pub(crate) fn expect_err<T: Debug, E>(what: &str, result: Result<T, E>) -> E {
    match result {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e,
    }
}

/// The shared body of the public `*_conformance!` macros: turns the factory the backend
/// passes (an `async` block or a callable returning a future) into a closure and hands it
/// to the suite's check list, which expands [`__suite_tests!`](crate::__suite_tests).
///
/// `$checks` is the suite's check-list macro; `$spec` is
/// `(suite module, conversion fn, check deadline)`.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_conformance {
    ($checks:ident $spec:tt @factory $factory:tt) => {
        $crate::$checks!(__suite_tests ($spec $factory));
    };
    ($checks:ident $spec:tt async move $body:block $(,)?) => {
        $crate::$checks!(__suite_tests ($spec (|| async move $body)));
    };
    ($checks:ident $spec:tt async $body:block $(,)?) => {
        $crate::$checks!(__suite_tests ($spec (|| async $body)));
    };
    ($checks:ident $spec:tt $factory:expr $(,)?) => {
        $crate::$checks!(__suite_tests ($spec ($factory)));
    };
}

/// One `#[test]` per check, each running [`run_check`] on a fresh subject from the
/// factory.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_tests {
    ((($suite:ident, $into:path, $deadline:path) $factory:tt); $($check:ident),+ $(,)?) => {
        $(
            #[test]
            fn $check() {
                $crate::harness::run_check(
                    ::core::stringify!($check),
                    $deadline,
                    async { $into(($factory)().await) },
                    $crate::$suite::$check,
                );
            }
        )+
    };
}

/// Runs every check in turn, each on a fresh subject from `$make`, in the caller's runtime
/// (the body of the suites' `run_*_suite` functions).
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_run_all {
    (($label:literal, $suite:ident, $into:path, $deadline:path, $make:expr); $($check:ident),+ $(,)?) => {
        $(
            match $into(($make)().await) {
                None => $crate::harness::skip(::core::stringify!($check)),
                Some(subject) => {
                    eprintln!(::core::concat!($label, ": {} ..."), ::core::stringify!($check));
                    $crate::harness::within_for(
                        $deadline,
                        ::core::stringify!($check),
                        $crate::$suite::$check(subject),
                    )
                    .await;
                }
            }
        )+
    };
}

/// The names of a suite's checks, in order.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_check_names {
    (($($unused:tt)*); $($check:ident),+ $(,)?) => {
        &[$(::core::stringify!($check)),+]
    };
}
