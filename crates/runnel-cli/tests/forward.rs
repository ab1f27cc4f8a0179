//! `runnel bench …` and `runnel demo …` run the `runnel-bench` and `order-fulfillment`
//! binaries with the rest of the command line: a stand-in script shows what they receive,
//! and a missing binary is a clear usage error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::cargo::cargo_bin;
use assert_cmd::Command;

const EXIT_BAD_INPUT: i32 = 2;
/// Longest one `runnel` run may take.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// `program` (a `runnel`) run in `dir`, with no store, bus or binary overrides from the
/// environment.
fn runnel_in(program: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir)
        .env_remove("RUNNEL_STORE")
        .env_remove("RUNNEL_DB")
        .env_remove("RUNNEL_BUS")
        .env_remove("RUNNEL_BENCH_BIN")
        .env_remove("RUNNEL_DEMO_BIN")
        .timeout(RUN_DEADLINE);
    cmd
}

/// A stand-in binary in `dir`: prints each argument on its own line and exits 3.
fn args_printer(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("print-args");
    std::fs::write(
        &path,
        "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn lines(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bench_passes_its_arguments_through_and_exits_with_the_binarys_code() {
    let dir = tempfile::tempdir().unwrap();
    let printer = args_printer(dir.path());
    let run = |args: &[&str]| {
        let out = runnel_in(cargo_bin!("runnel"), dir.path())
            .env("RUNNEL_BENCH_BIN", &printer)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines(&out.stdout)
    };
    assert_eq!(run(&["bench", "store", "--quick"]), ["store", "--quick"]);
    // Help is the other binary's, and so are its flags, whatever they look like.
    assert_eq!(run(&["bench", "--help"]), ["--help"]);
    assert_eq!(
        run(&["bench", "bus", "--help", "-x", "--seconds=2"]),
        ["bus", "--help", "-x", "--seconds=2"]
    );
    // Global flags given to runnel before the command go along.
    assert_eq!(
        run(&[
            "--store",
            "postgres://h/db",
            "--json",
            "bench",
            "outbox",
            "--quick"
        ]),
        ["--store", "postgres://h/db", "--json", "outbox", "--quick"]
    );
}

#[test]
fn demo_passes_its_arguments_through_and_exits_with_the_binarys_code() {
    let dir = tempfile::tempdir().unwrap();
    let printer = args_printer(dir.path());
    let run = |args: &[&str]| {
        let out = runnel_in(cargo_bin!("runnel"), dir.path())
            .env("RUNNEL_DEMO_BIN", &printer)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines(&out.stdout)
    };
    assert_eq!(run(&["demo", "--orders", "5"]), ["demo", "--orders", "5"]);
    assert_eq!(run(&["demo", "--help"]), ["demo", "--help"]);
    assert_eq!(
        run(&["--db", "d.db", "--json", "demo", "--clients", "2"]),
        ["demo", "--db", "d.db", "--json", "--clients", "2"]
    );
}

#[test]
fn bench_and_demo_without_their_binary_say_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    // A copy of runnel alone in a directory, with nothing on PATH: neither runnel-bench nor
    // order-fulfillment anywhere.
    let lonely = dir.path().join("runnel");
    std::fs::copy(cargo_bin!("runnel"), &lonely).unwrap();
    let out = runnel_in(&lonely, dir.path())
        .args(["bench", "store", "--quick"])
        .env("PATH", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains("cargo build --release -p runnel-bench"),
        "{stderr}"
    );
    assert!(stderr.contains("RUNNEL_BENCH_BIN"), "{stderr}");
    assert!(out.stdout.is_empty());
    let out = runnel_in(&lonely, dir.path())
        .args(["demo", "--orders", "5"])
        .env("PATH", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cargo build --release -p order-fulfillment"),
        "{stderr}"
    );
    assert!(stderr.contains("RUNNEL_DEMO_BIN"), "{stderr}");

    // The override names a file that is not there: the same error, naming that file.
    let out = runnel_in(cargo_bin!("runnel"), dir.path())
        .env("RUNNEL_BENCH_BIN", dir.path().join("no-such-bench"))
        .args(["bench", "store"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-bench does not exist"), "{stderr}");
    assert!(
        stderr.contains("cargo build --release -p runnel-bench"),
        "{stderr}"
    );
}
