//! Running one scenario under a spinner that shows its live count, with its label on the
//! error if it fails.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::Context as _;

use crate::progress::CountSpinner;

/// Runs an async scenario under a spinner showing its count.
pub async fn counted<T, F, Fut>(label: &str, unit: &'static str, f: F) -> anyhow::Result<T>
where
    F: FnOnce(Arc<AtomicU64>) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let count = Arc::new(AtomicU64::new(0));
    let spinner = CountSpinner::start(label, unit, Arc::clone(&count));
    let result = f(count).await;
    spinner.finish();
    result.with_context(|| format!("benchmark scenario {label:?} failed"))
}

/// Runs a blocking scenario (raw SQLite, fsync loop) on the blocking pool under a spinner.
pub async fn blocking<T, F>(label: &str, unit: &'static str, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(Arc<AtomicU64>) -> anyhow::Result<T> + Send + 'static,
{
    counted(label, unit, |count| async move {
        tokio::task::spawn_blocking(move || f(count))
            .await
            .context("the benchmark thread panicked")?
    })
    .await
}
