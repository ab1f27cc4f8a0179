//! Interoperability tests drive a plain client of a broker — one that knows nothing of
//! Runnel — from a small Python script, with the official CloudEvents SDK. The Python and
//! its packages live in the project's venv, which `scripts/services.sh python` installs
//! on first use (pinned in `scripts/python-requirements.txt`) and prints.
//!
//! ```no_run
//! # async fn demo() {
//! use runnel_testkit::interop::{run_script, venv_python};
//! let Some(python) = venv_python().await else { return }; // SKIPPED
//! let script = std::path::Path::new("tests/interop/nats_cloudevents.py");
//! let stdout = run_script(&python, script, &["consume", "nats://127.0.0.1:4222"]).await;
//! # let _ = stdout;
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::REQUIRE_SERVICES_ENV;

/// Longest an interop script may run (a plain client connecting, publishing or reading a
/// handful of messages).
pub const SCRIPT_DEADLINE: Duration = Duration::from_secs(90);
/// Longest `scripts/services.sh python` may take: the first call builds the venv.
pub const VENV_DEADLINE: Duration = Duration::from_secs(600);

/// The repository's root (where `scripts/` is).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's Python, or `None` after a loud SKIPPED when the project script cannot
/// provide it — a failure instead when `RUNNEL_REQUIRE_SERVICES=1`.
pub async fn venv_python() -> Option<PathBuf> {
    let out = tokio::process::Command::new("bash")
        .arg(workspace_root().join("scripts/services.sh"))
        .arg("python")
        .kill_on_drop(true)
        .output();
    let found = match tokio::time::timeout(VENV_DEADLINE, out).await {
        Ok(Ok(o)) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .map(|l| PathBuf::from(l.trim()))
            .filter(|p| !p.as_os_str().is_empty()),
        _ => None,
    };
    if found.is_none() {
        assert!(
            std::env::var(REQUIRE_SERVICES_ENV).as_deref() != Ok("1"),
            "{REQUIRE_SERVICES_ENV}=1 but the Python venv (scripts/services.sh python) is not available"
        );
        eprintln!("SKIPPED: the Python venv (scripts/services.sh python) is not available");
    }
    found
}

/// Runs `python script args…` within [`SCRIPT_DEADLINE`] and returns what it printed;
/// fails the test, with the script's stderr, if it fails or overruns.
pub async fn run_script(python: &Path, script: &Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new(python)
        .arg(script)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SCRIPT_DEADLINE, out)
        .await
        .unwrap_or_else(|_| panic!("{} overran {SCRIPT_DEADLINE:?}", script.display()))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}): {}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
