//! `runnel`: the command-line interface of the Runnel event-driven toolkit.
//!
//! Every failure ends in one line on stderr (`error: …`) and a documented exit code (see
//! [`exit`]); logs go to stderr through `tracing`, quiet unless `RUST_LOG` asks for more.

mod cli;
mod commands;
mod exit;
mod json_arg;
mod otel;
mod output;
mod progress;
mod time_args;

use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, DlqCommand, EventsCommand, OutboxCommand, StreamsCommand};
use runnel::connect::{
    open_broker, open_bus, open_stores, Bus, OpenMode, Settings, SettingsInputs, Stores,
};

use crate::exit::EXIT_BAD_INPUT;
use crate::output::Printer;

/// The log filter when `RUST_LOG` is unset: only warnings and errors. lapin logs every
/// channel the broker closes as an error, including the expected close after the RabbitMQ
/// transport's passive "does this group exist?" declare; the transport reports real
/// failures itself, as typed errors.
const LOG_FILTER_DEFAULT: &str = "warn,lapin=off";

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    // Commands another binary runs are handed over before anything else starts here.
    let handed_over = match &cli.command {
        Command::Bench(forward) => Some((&commands::forward::BENCH, forward)),
        Command::Demo(forward) => Some((&commands::forward::DEMO, forward)),
        _ => None,
    };
    if let Some((sibling, forward)) = handed_over {
        return match sibling.run(&cli, &forward.args) {
            Ok(code) => code,
            Err(e) => exit::report(&e),
        };
    }
    let _otel = match init_tracing() {
        Ok(guard) => guard,
        Err(e) => return exit::report(&e),
    };
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

/// Logs to stderr by `RUST_LOG`; spans over OTLP too when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is set (see [`otel`]). The two have their own filters: quiet logs do not silence the
/// trace. The guard flushes batched spans when dropped.
fn init_tracing() -> anyhow::Result<Option<otel::OtelGuard>> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(LOG_FILTER_DEFAULT));
    // Colours only on a terminal: logs piped to a file or a collector stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let (guard, spans) = if otel::configured() {
        let (guard, layer) = otel::install()?;
        (Some(guard), Some(layer.with_filter(otel::span_filter())))
    } else {
        (None, None)
    };
    // A second initialisation can only fail in tests that call this twice; ignore it.
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    Ok(guard)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let printer = Printer { json: cli.json };
    match cli.command {
        Command::Streams(StreamsCommand::Append(args)) => {
            // Read and check the input first: refused input changes nothing, not even by
            // creating an empty store file.
            let prepared = commands::streams::prepare_append(args)?;
            let (stores, _) =
                open_configured(cli.store, cli.db, None, OpenMode::CreateIfMissing).await?;
            commands::streams::append(&stores, printer, prepared).await
        }
        Command::Streams(StreamsCommand::Read(args)) => {
            let (stores, _) = open_configured(cli.store, cli.db, None, OpenMode::MustExist).await?;
            commands::streams::read(&stores, printer, args).await
        }
        Command::Streams(StreamsCommand::List(args)) => {
            let (stores, _) = open_configured(cli.store, cli.db, None, OpenMode::MustExist).await?;
            commands::streams::list(&stores, printer, args).await
        }
        Command::Events(EventsCommand::Tail(args)) => {
            // A follower may start before the first event exists.
            let mode = if args.follow {
                OpenMode::CreateIfMissing
            } else {
                OpenMode::MustExist
            };
            let (stores, _) = open_configured(cli.store, cli.db, None, mode).await?;
            commands::events::tail(&stores, printer, args).await
        }
        Command::Bench(_) | Command::Demo(_) => unreachable!("handed over in main"),
        // Files only: no store or bus is opened.
        Command::Schema(command) => commands::schema::run(command),
        Command::Outbox(command) => {
            let settings = settings(cli.store, cli.db, None)?;
            let stores = open_stores(&settings.store, OpenMode::MustExist).await?;
            let outbox = stores.outbox().await?;
            match command {
                OutboxCommand::Status => commands::outbox::status(&*outbox, printer).await,
                OutboxCommand::Retry(args) => {
                    commands::outbox::retry(&*outbox, printer, args).await
                }
            }
        }
        Command::Publish(args) => {
            // As for streams append: the input is read and checked before anything opens.
            let prepared = commands::publish::prepare(&args)?;
            let bus =
                open_configured_bus(cli.store, cli.db, cli.bus, OpenMode::CreateIfMissing).await?;
            commands::publish::publish(bus.publisher, printer, prepared).await
        }
        Command::Consume(args) => {
            // A follower may start before anything was published.
            let mode = if args.follow {
                OpenMode::CreateIfMissing
            } else {
                OpenMode::MustExist
            };
            let bus = open_configured_bus(cli.store, cli.db, cli.bus, mode).await?;
            commands::consume::consume(bus.subscriber, printer, args).await
        }
        Command::Sagas(command) => {
            // As for streams append: the input is checked before anything opens.
            let request = commands::sagas::prepare(command, chrono::Utc::now())?;
            let (stores, _) = open_configured(cli.store, cli.db, None, OpenMode::MustExist).await?;
            commands::sagas::run(&*stores.processors, printer, request).await
        }
        Command::Projections(command) => {
            // As for streams append: the input is checked before anything opens.
            let request = commands::projections::prepare(command)?;
            let (stores, _) = open_configured(cli.store, cli.db, None, OpenMode::MustExist).await?;
            commands::projections::run(&*stores.projections, &*stores.events, printer, request)
                .await
        }
        Command::Processors(command) => {
            // As for streams append: the input is checked before anything opens.
            let request = commands::processors::prepare(command)?;
            let (stores, _) = open_configured(cli.store, cli.db, None, OpenMode::MustExist).await?;
            commands::processors::run(&stores, printer, request).await
        }
        Command::Serve(args) => {
            // Flags and keys are checked before anything opens.
            let prepared = commands::serve::prepare(&args)?;
            let (stores, settings) =
                open_configured(cli.store, cli.db, cli.bus, OpenMode::CreateIfMissing).await?;
            let bus = open_bus(&settings.bus, &stores).await?;
            commands::serve::serve(stores, bus, prepared).await
        }
        Command::Dlq(command) => {
            // Draining may be the first thing a store receives; the rest read what is there.
            let mode = match command {
                DlqCommand::Drain(_) => OpenMode::CreateIfMissing,
                _ => OpenMode::MustExist,
            };
            let (stores, settings) = open_configured(cli.store, cli.db, cli.bus, mode).await?;
            match command {
                DlqCommand::List(args) => commands::dlq::list(&stores, printer, args).await,
                DlqCommand::Show(args) => commands::dlq::show(&stores, printer, args).await,
                DlqCommand::Replay(args) => {
                    let bus: Bus = open_bus(&settings.bus, &stores).await?;
                    commands::dlq::replay(&stores, bus.publisher, printer, args).await
                }
                DlqCommand::Purge(args) => commands::dlq::purge(&stores, printer, args).await,
                DlqCommand::Drain(args) => {
                    let bus = open_bus(&settings.bus, &stores).await?;
                    commands::dlq::drain(&stores, &bus, printer, args).await
                }
            }
        }
    }
}

/// The store and the bus: flags > environment > runnel.toml (in the current directory) >
/// the embedded default.
fn settings(
    flag_store: Option<String>,
    flag_db: Option<std::path::PathBuf>,
    flag_bus: Option<String>,
) -> anyhow::Result<Settings> {
    let cwd = std::env::current_dir()?;
    let settings = SettingsInputs::gather(&cwd)?
        .store("--store", flag_store)
        .db("--db", flag_db)
        .bus("--bus", flag_bus)
        .resolve()?;
    tracing::debug!(
        store = %settings.store, store_from = %settings.store_origin,
        bus = %settings.bus, bus_from = %settings.bus_origin,
        "backends selected"
    );
    Ok(settings)
}

async fn open_configured(
    flag_store: Option<String>,
    flag_db: Option<std::path::PathBuf>,
    flag_bus: Option<String>,
    mode: OpenMode,
) -> anyhow::Result<(Stores, Settings)> {
    let settings = settings(flag_store, flag_db, flag_bus)?;
    let stores = open_stores(&settings.store, mode).await?;
    Ok((stores, settings))
}

/// The bus of `publish` and `consume`: a broker on its own, or the embedded bus in the
/// configured store (opened in `mode`). A broker needs no store for either command: it
/// holds the messages, `consume` acks what it prints, and what it cannot read (a message
/// that is not a CloudEvent) ends in the broker's own dead-letter queue, at once or after
/// the broker's redeliveries (`runnel dlq drain` moves those into a store, on demand). So
/// no store is opened or created, and a broker consumer works on a machine that has none.
async fn open_configured_bus(
    flag_store: Option<String>,
    flag_db: Option<std::path::PathBuf>,
    flag_bus: Option<String>,
    mode: OpenMode,
) -> anyhow::Result<Bus> {
    let settings = settings(flag_store, flag_db, flag_bus)?;
    if let Some(bus) = open_broker(&settings.bus).await? {
        return Ok(bus);
    }
    let stores = open_stores(&settings.store, mode).await?;
    Ok(open_bus(&settings.bus, &stores).await?)
}

/// Help and version go to stdout as clap prints them; usage errors become one line.
fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(e.exit_code().clamp(0, 255) as u8)
        }
        _ => {
            eprintln!("error: {}", one_line_usage_error(&e.render().to_string()));
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// Clap's message (its first paragraph, on one line) plus where to find help.
fn one_line_usage_error(rendered: &str) -> String {
    let message = rendered
        .split("\n\n")
        .next()
        .unwrap_or(rendered)
        .trim()
        .trim_start_matches("error:")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let command: Vec<&str> = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage:"))
        .map(|usage| {
            usage
                .split_whitespace()
                .take_while(|w| !w.starts_with(['[', '<', '-']))
                .collect()
        })
        .unwrap_or_default();
    if command.is_empty() {
        message
    } else {
        format!("{message} (try '{} --help')", command.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_fit_on_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  --type <TYPE>\n\nUsage: runnel streams append --type <TYPE> <STREAM>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line_usage_error(rendered),
            "the following required arguments were not provided: --type <TYPE> (try 'runnel streams append --help')"
        );
    }
}
