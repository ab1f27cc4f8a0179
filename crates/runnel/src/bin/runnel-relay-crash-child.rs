//! The outbox relay that `tests/outbox_crash.rs` kills with SIGKILL between publish and
//! mark, and then runs again.
//!
//! Usage: `runnel-relay-crash-child <db> crash|drain`
//!
//! It relays the outbox of the SQLite file `<db>` to the embedded bus on the same file.
//! * `crash`: after the publisher confirmed the first batch, and before the rows are
//!   marked published, it prints `published <seq> ...` and stops dead (it waits to be
//!   killed) — the window in which a crash must lead to a republish.
//! * `drain`: it relays until nothing is pending, shuts down gracefully and prints
//!   `done published=<n>`.

use std::error::Error;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use runnel::core::outbox::OutboxStore;
use runnel::outbox::{Relay, RelayOptions};
use runnel::sqlite::bus::{BusOptions, SqliteBus};
use runnel::sqlite::{SqliteOutbox, SqliteStore};

const USAGE: &str = "usage: runnel-relay-crash-child <db> crash|drain";
/// How often `drain` looks whether the outbox is empty, and the relay's polling interval.
const POLL: Duration = Duration::from_millis(20);
/// The relay's lease: short, so the restarted relay takes over the killed one's keys
/// quickly (it must wait the lease out — the killed relay cannot release it).
const LEASE: Duration = Duration::from_secs(2);
/// Longest `drain` runs before giving up.
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);
/// How long `crash` waits for its kill before exiting on its own (the test kills it long
/// before; this only keeps an orphan from living forever).
const KILL_WAIT_MAX: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("relay crash child: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay crash child: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, mode] = args.as_slice() else {
        return Err(USAGE.into());
    };
    let store = SqliteStore::open(db)?;
    let bus = SqliteBus::new(store.clone(), BusOptions::default())?;
    // The relay publishes to the bus on this same file (claims without their own fsync).
    let outbox = Arc::new(SqliteOutbox::new(store).with_publisher_in_this_file());
    let mut options = RelayOptions::default()
        .name(format!("crash-child-{}", std::process::id()))
        .poll_interval(POLL)
        .lease(LEASE);
    match mode.as_str() {
        "crash" => {
            options = options.after_publish(Arc::new(|seqs: &[u64]| {
                let list: Vec<String> = seqs.iter().map(u64::to_string).collect();
                println!("published {}", list.join(" "));
                let _ = std::io::stdout().flush();
                // Stop dead between "confirmed" and "marked": block this worker until the
                // test's SIGKILL arrives.
                std::thread::sleep(KILL_WAIT_MAX);
                std::process::abort();
            }));
            let handle = Relay::new(outbox, Arc::new(bus), options)?.start();
            tokio::time::sleep(KILL_WAIT_MAX).await;
            handle.abort();
            Err("crash mode was not killed in time".into())
        }
        "drain" => {
            let handle = Relay::new(outbox.clone(), Arc::new(bus), options)?.start();
            let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
            loop {
                if outbox.status().await?.pending == 0 {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err("the outbox did not drain in time".into());
                }
                tokio::time::sleep(POLL).await;
            }
            let report = handle.shutdown().await?;
            println!("done published={}", report.published);
            Ok(())
        }
        _ => Err(USAGE.into()),
    }
}
