//! What the CLI test binaries share: a scratch directory and a `runnel` command that sees
//! only what the test gives it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::cargo::cargo_bin;
use assert_cmd::Command;

/// A scratch directory with a store path, and a command builder that only sees what the
/// test gives it (no store or bus configuration leaking in from the environment).
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn db(&self) -> PathBuf {
        self.path().join("test.db")
    }

    /// `runnel` run in the scratch directory with no store or bus configured.
    pub fn runnel_bare(&self) -> Command {
        let mut cmd = Command::new(cargo_bin!("runnel"));
        cmd.current_dir(self.path())
            .env_remove("RUNNEL_STORE")
            .env_remove("RUNNEL_DB")
            .env_remove("RUNNEL_BUS")
            .env_remove("RUST_LOG")
            .timeout(Duration::from_secs(120));
        cmd
    }

    /// `runnel --db <scratch>/test.db`.
    pub fn runnel(&self) -> Command {
        let mut cmd = self.runnel_bare();
        cmd.arg("--db").arg(self.db());
        cmd
    }
}
