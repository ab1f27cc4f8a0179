//! `runnel bench …` and `runnel demo …`: each runs another binary of the workspace with
//! the rest of the command line, so the benchmarks (`runnel-bench`) and the demo (the
//! `order-fulfillment` example's `demo` command) stay out of this binary's dependencies.
//!
//! The binary is found through an environment variable, else next to `runnel`, else on
//! `PATH`. On Unix `runnel` execs it: the binary takes over this process, so its output,
//! its exit code and Ctrl-C are exactly its own, and there is no child process to watch
//! or stop.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::Cli;

/// A binary `runnel` hands a command over to.
pub struct Sibling {
    /// The `runnel` command that runs it.
    pub command: &'static str,
    /// Its file name (without the platform's executable suffix).
    pub binary: &'static str,
    /// The workspace package that builds it.
    pub package: &'static str,
    /// The environment variable that overrides where it is.
    pub env: &'static str,
    /// Arguments put before the forwarded ones (the binary's own subcommand).
    pub leading_args: &'static [&'static str],
}

/// `runnel bench …` → `runnel-bench …`.
pub const BENCH: Sibling = Sibling {
    command: "runnel bench",
    binary: "runnel-bench",
    package: "runnel-bench",
    env: "RUNNEL_BENCH_BIN",
    leading_args: &[],
};

/// `runnel demo …` → `order-fulfillment demo …`.
pub const DEMO: Sibling = Sibling {
    command: "runnel demo",
    binary: "order-fulfillment",
    package: "order-fulfillment",
    env: "RUNNEL_DEMO_BIN",
    leading_args: &["demo"],
};

/// The binary a command needs is not built (or not where it was looked for). Exit code 2.
#[derive(Debug)]
pub struct MissingBinary {
    command: &'static str,
    binary: &'static str,
    package: &'static str,
    env: &'static str,
    /// Where it was looked for, for the message.
    looked: String,
}

impl std::fmt::Display for MissingBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let MissingBinary {
            command,
            binary,
            package,
            env,
            looked,
        } = self;
        write!(
            f,
            "{command} runs the {binary} binary, which was not found ({looked}); build it with \
             `cargo build --release -p {package}` (without --release beside a debug build of \
             runnel), or set {env} to its path"
        )
    }
}

impl std::error::Error for MissingBinary {}

impl Sibling {
    /// Runs the binary with the global flags given to `runnel` and then `args`, and ends
    /// with its exit code. Returns only if it could not be started.
    pub fn run(&self, cli: &Cli, args: &[OsString]) -> anyhow::Result<ExitCode> {
        let program = self.locate()?;
        let mut command = std::process::Command::new(&program);
        command
            .args(self.leading_args)
            .args(forwarded_globals(cli))
            .args(args);
        self.start(command, &program)
    }

    #[cfg(unix)]
    fn start(
        &self,
        mut command: std::process::Command,
        program: &Path,
    ) -> anyhow::Result<ExitCode> {
        use std::os::unix::process::CommandExt as _;
        // exec returns only on failure.
        let e = command.exec();
        Err(self.not_started(program, e))
    }

    #[cfg(not(unix))]
    fn start(
        &self,
        mut command: std::process::Command,
        program: &Path,
    ) -> anyhow::Result<ExitCode> {
        // No exec: wait for the child; Ctrl-C reaches it through the shared console.
        let status = command.status().map_err(|e| self.not_started(program, e))?;
        let code = status
            .code()
            .unwrap_or(i32::from(crate::exit::EXIT_FAILURE));
        Ok(ExitCode::from(code.clamp(0, 255) as u8))
    }

    fn not_started(&self, program: &Path, e: std::io::Error) -> anyhow::Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            self.missing(format!("{} does not exist", program.display()))
                .into()
        } else {
            anyhow::Error::new(e).context(format!("cannot run {}", program.display()))
        }
    }

    fn missing(&self, looked: String) -> MissingBinary {
        MissingBinary {
            command: self.command,
            binary: self.binary,
            package: self.package,
            env: self.env,
            looked,
        }
    }

    /// `$ENV` if set, else the binary next to the running `runnel`, else the first on
    /// `PATH`.
    fn locate(&self) -> Result<PathBuf, MissingBinary> {
        if let Some(path) = std::env::var_os(self.env).filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(path));
        }
        let file = format!("{}{}", self.binary, std::env::consts::EXE_SUFFIX);
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf));
        let path = std::env::var_os("PATH").unwrap_or_default();
        beside
            .iter()
            .cloned()
            .chain(std::env::split_paths(&path))
            .map(|dir| dir.join(&file))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| {
                let beside = beside.map_or("?".into(), |dir| dir.display().to_string());
                self.missing(format!("not in {beside}, not on PATH, {} unset", self.env))
            })
    }
}

/// `--store`, `--db` and `--json` as given to `runnel` before the command, for the other
/// binary (which takes the same flags).
fn forwarded_globals(cli: &Cli) -> Vec<OsString> {
    let mut args = Vec::new();
    if let Some(store) = &cli.store {
        args.extend(["--store".into(), store.into()]);
    }
    if let Some(db) = &cli.db {
        args.extend(["--db".into(), db.into()]);
    }
    if cli.json {
        args.push("--json".into());
    }
    args
}
