//! The web dashboard in headless Chromium against the real service: starts
//! `order-fulfillment run --http 127.0.0.1:0` with API keys, then runs
//! `tests/browser/dashboard.mjs` (playwright-core driving Debian's Chromium): orders placed
//! through the API complete on the sagas page, a poisoned shipping address is
//! dead-lettered and shown, and after the fault is cleared a click on Replay takes the
//! order to confirmed. Also the viewer role and a phone-sized viewport.
//!
//! Screenshots go to `$CARGO_TARGET_DIR/browser-screenshots/` (or `target/…`): one per
//! page on success, the page as it was on failure; their paths are printed.
//! Without node or Chromium (and no way to install them: scripts/browser-tools.sh) the test
//! prints SKIPPED, unless `RUNNEL_REQUIRE_SERVICES=1` (CI), where that fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long installing Chromium and playwright-core may take on a first run.
const INSTALL_DEADLINE: Duration = Duration::from_secs(900);
/// How long the service may take to print its listening line.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// How long the whole browser scenario may take (each of its waits has its own, shorter
/// deadline; this one only bounds a hung node).
const SCENARIO_DEADLINE: Duration = Duration::from_secs(420);
/// How long a stopped child gets to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(15);
/// How often a child is checked while it is awaited.
const POLL: Duration = Duration::from_millis(100);

/// A child process stopped by its PID when dropped: SIGTERM, then SIGKILL after
/// [`STOP_DEADLINE`]. Also on a failed assertion, so no service outlives the test.
struct Stopped(Option<Child>);

impl Stopped {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child is running")
    }

    /// Stops the child (see the type) and returns its exit status.
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.0.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let until = Instant::now() + STOP_DEADLINE;
        while Instant::now() < until {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(POLL);
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.stop();
    }
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn required() -> bool {
    std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() == Ok("1")
}

/// Waits for `child` until `deadline`; `None` if it is still running then.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("waiting on a child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// `scripts/browser-tools.sh install`: the npm prefix holding playwright-core, or why not.
fn browser_tools(log: &Path) -> Result<PathBuf, String> {
    let script = workspace_dir().join("scripts/browser-tools.sh");
    let out = std::fs::File::create(log).expect("the install log");
    let mut child = Stopped(Some(
        Command::new("bash")
            .arg(&script)
            .arg("install")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(out)
            .spawn()
            .map_err(|e| format!("bash {}: {e}", script.display()))?,
    ));
    let mut stdout = child.child().stdout.take().expect("piped stdout");
    let status = wait_until(child.child(), Instant::now() + INSTALL_DEADLINE);
    let mut printed = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut printed).ok();
    let why = std::fs::read_to_string(log).unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(PathBuf::from(printed.trim())),
        Some(s) => Err(format!("browser-tools.sh install exited {s}: {why}")),
        None => Err(format!(
            "browser-tools.sh install took over {}s: {why}",
            INSTALL_DEADLINE.as_secs()
        )),
    }
}

fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"))
        .join("browser-screenshots")
}

/// The service on 127.0.0.1:0, its base URL and the lines its stderr printed so far.
struct Service {
    process: Stopped,
    base: String,
    stderr: mpsc::Receiver<String>,
}

impl Service {
    fn start(dir: &Path, keys: &Path) -> Service {
        let mut process = Stopped(Some(
            Command::new(env!("CARGO_BIN_EXE_order-fulfillment"))
                .arg("--db")
                .arg(dir.join("x.db"))
                .args(["run", "--http", "127.0.0.1:0", "--api-keys"])
                .arg(keys)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("order-fulfillment starts"),
        ));
        // A thread drains stderr for the whole run (a full pipe would block the service).
        let stderr = process.child().stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let until = Instant::now() + STARTUP_DEADLINE;
        let mut seen = Vec::new();
        let base = loop {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.split("listening on ").nth(1) {
                        break url.trim().to_string();
                    }
                    seen.push(line);
                }
                Err(e) => panic!(
                    "order-fulfillment printed no listening line within {}s ({e}):\n{}",
                    STARTUP_DEADLINE.as_secs(),
                    seen.join("\n")
                ),
            }
        };
        Service {
            process,
            base,
            stderr: rx,
        }
    }

    /// Stops the service and returns what it printed since it started listening.
    fn stop(mut self) -> String {
        self.process.stop();
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }
}

fn keys_file(dir: &Path, admin: &str, viewer: &str) -> PathBuf {
    let path = dir.join("keys.toml");
    let entry = |name: &str, role: &str, secret: &str| {
        format!(
            "[[key]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
            runnel_server::auth::hash_secret(secret)
        )
    };
    std::fs::write(
        &path,
        entry("browser-admin", "admin", admin) + &entry("browser-viewer", "viewer", viewer),
    )
    .expect("the keys file");
    path
}

#[test]
fn dashboard_shows_a_dead_letter_replayed_from_the_page_until_the_order_confirms() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let tools = match browser_tools(&dir.path().join("browser-tools.log")) {
        Ok(prefix) => prefix,
        Err(why) => {
            assert!(
                !required(),
                "node and Chromium are required (RUNNEL_REQUIRE_SERVICES=1): {why}"
            );
            eprintln!("SKIPPED: no browser here: {why}");
            return;
        }
    };
    let admin = "browser-admin-0123456789abcdef0123456789abcdef";
    let viewer = "browser-viewer-0123456789abcdef0123456789abcdef";
    let keys = keys_file(dir.path(), admin, viewer);
    let service = Service::start(dir.path(), &keys);

    let shots = screenshot_dir();
    let log = dir.path().join("browser.log");
    let out = std::fs::File::create(&log).expect("the browser log");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.mjs");
    let mut node = Stopped(Some(
        Command::new("node")
            .arg(&script)
            .env("DASHBOARD_BASE", &service.base)
            .env("ADMIN_KEY", admin)
            .env("VIEWER_KEY", viewer)
            .env("PLAYWRIGHT_PREFIX", &tools)
            .env("CHROMIUM", "/usr/bin/chromium")
            .env("SCREENSHOT_DIR", &shots)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("the log again"))
            .stderr(out)
            .spawn()
            .expect("node runs the browser scenario"),
    ));
    let status = wait_until(node.child(), Instant::now() + SCENARIO_DEADLINE);
    if status.is_none() {
        node.stop();
    }
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let service_log = service.stop();
    println!("{output}");
    let screenshots: Vec<&str> = output
        .lines()
        .filter_map(|l| l.strip_prefix("screenshot: "))
        .collect();
    assert!(
        status.is_some_and(|s| s.success()),
        "the browser scenario failed ({}):\n{output}\nscreenshots: {screenshots:?}\n--- service stderr ---\n{service_log}",
        match status {
            Some(s) => format!("node exited {s}"),
            None => format!("node ran over {}s", SCENARIO_DEADLINE.as_secs()),
        }
    );
    assert!(
        screenshots.len() >= 10,
        "one screenshot per main page: {screenshots:?}"
    );
}
