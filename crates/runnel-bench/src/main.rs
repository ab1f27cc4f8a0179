//! `runnel-bench`: Runnel's benchmarks, each scenario printed beside a raw baseline
//! measured in the same run, as a markdown table ready for BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p runnel-bench -- store          # the event store on SQLite
//! cargo run --release -p runnel-bench -- bus            # the embedded bus and the router
//! cargo run --release -p runnel-bench -- outbox         # the outbox relay
//! cargo run --release -p runnel-bench -- saga           # sagas (--memory: RSS over 1M)
//! cargo run --release -p runnel-bench -- projection     # projections (--memory: 1M rebuild)
//! cargo run --release -p runnel-bench -- http           # the HTTP API and SSE fan-out
//! cargo run --release -p runnel-bench -- nexmark        # stream jobs on Nexmark q1 q5 q7 q8
//! runnel-bench bus --store postgres://postgres@127.0.0.1/postgres   # + PostgreSQL
//! ```
//!
//! A binary of its own, so the `runnel` CLI carries none of this code or its dependencies;
//! `runnel bench …` runs this binary.

mod bus;
mod cli;
mod cpu;
mod disk;
mod exit;
mod http;
mod machine;
mod nexmark;
mod outbox;
mod output;
mod progress;
mod projection;
mod report;
mod rss;
mod saga;
mod scenario;
mod store;

use std::process::ExitCode;

use clap::Parser as _;
use runnel::connect::StoreUrl;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
use crate::exit::EXIT_BAD_INPUT;

/// The log filter when `RUST_LOG` is unset: only warnings and errors.
const LOG_FILTER_DEFAULT: &str = "warn";

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout; a usage error is exit code 2, as in `runnel`.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_BAD_INPUT)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(LOG_FILTER_DEFAULT));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return exit::report(&anyhow::Error::new(e).context("cannot start tokio")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::report(&e),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let store = cli.store.as_deref().map(StoreUrl::parse).transpose()?;
    match cli.command {
        Command::Store(args) => {
            // A PostgreSQL --store is benchmarked in fresh schemas on that server; SQLite is
            // always measured on fresh files under --dir.
            let store = sqlite_ignored("store", store, cli.db.is_some());
            store::store(args, store).await
        }
        Command::Bus(args) => {
            let store = sqlite_ignored("bus", store, cli.db.is_some());
            bus::bus(args, store).await
        }
        Command::Outbox(args) => {
            // A PostgreSQL --store adds the PostgreSQL scenarios; SQLite is always measured
            // on a fresh file under --dir.
            let postgres = match store {
                Some(StoreUrl::Postgres(url)) => Some(url),
                _ => None,
            };
            outbox::bench(args, postgres).await
        }
        Command::Saga(args) => {
            // As for the outbox: SQLite always, on fresh files under --dir; PostgreSQL with
            // a postgres:// --store.
            let postgres = match store {
                Some(StoreUrl::Postgres(url)) => Some(url),
                Some(_) => {
                    eprintln!(
                        "note: bench saga measures fresh SQLite files under --dir; --store is ignored"
                    );
                    None
                }
                None => None,
            };
            saga::bench(args, postgres).await
        }
        Command::Projection(args) => {
            // As for sagas: SQLite always, on a fresh file under --dir; PostgreSQL with a
            // postgres:// --store.
            let postgres = match store {
                Some(StoreUrl::Postgres(url)) => Some(url),
                Some(_) => {
                    eprintln!(
                        "note: bench projection measures a fresh SQLite file under --dir; --store is ignored"
                    );
                    None
                }
                None => None,
            };
            projection::bench(args, postgres, cli.json).await
        }
        Command::Http(args) => {
            let postgres = match store {
                Some(StoreUrl::Postgres(url)) => Some(url),
                Some(_) => {
                    eprintln!(
                        "note: bench http measures a fresh SQLite file under --dir; --store is ignored"
                    );
                    None
                }
                None => None,
            };
            http::bench(args, postgres).await
        }
        Command::Nexmark(args) => {
            if store.is_some() {
                eprintln!(
                    "note: bench nexmark measures a fresh SQLite file under --dir; --store is ignored"
                );
            }
            nexmark::bench(args).await
        }
        Command::HttpLoad(args) => {
            http::load(&args.url, args.appends, args.clients, args.floor).await
        }
    }
}

/// The store to benchmark besides fresh SQLite files: a PostgreSQL URL, or nothing (with a
/// note on stderr when a SQLite --store or a --db was given, which the benchmark ignores).
fn sqlite_ignored(bench: &str, store: Option<StoreUrl>, db_given: bool) -> Option<StoreUrl> {
    match store {
        Some(url @ StoreUrl::Postgres(_)) => Some(url),
        Some(_) => {
            eprintln!(
                "note: bench {bench} measures fresh SQLite files under --dir; --store is ignored"
            );
            None
        }
        None => {
            if db_given {
                eprintln!(
                    "note: bench {bench} measures fresh SQLite files under --dir; --db is ignored"
                );
            }
            None
        }
    }
}
