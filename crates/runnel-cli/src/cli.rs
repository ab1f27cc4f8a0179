//! The command line: every command, its flags, and the help text with an example each.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::exit::EXIT_CODES_HELP;

const ROOT_AFTER_HELP: &str = "\
Store selection (first match wins):
  1. --store URL or --db PATH
  2. $RUNNEL_STORE (a URL) or $RUNNEL_DB (a SQLite file)
  3. store = \"...\" in ./runnel.toml
  4. sqlite:runnel.db

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to see them.

Examples:
  runnel demo
  runnel streams append Order-1 --type OrderPlaced --data '{\"total\": 42}'
  runnel --json streams read Order-1
  runnel events tail --follow --category Order
";

/// Runnel: an event store, aggregates and messaging toolkit. This binary inspects and
/// writes event streams, runs the demo and the benchmarks.
#[derive(Debug, Parser)]
#[command(
    name = "runnel",
    version,
    about,
    after_help = format!("{ROOT_AFTER_HELP}\n{EXIT_CODES_HELP}"),
    propagate_version = true
)]
pub struct Cli {
    /// Store URL: sqlite:PATH or postgres://… [env: RUNNEL_STORE] [default: sqlite:runnel.db]
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,

    /// SQLite file, shorthand for --store sqlite:PATH [env: RUNNEL_DB]
    #[arg(long, global = true, value_name = "PATH")]
    pub db: Option<PathBuf>,

    /// Print listings as JSON, one object per line
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Append to, read and list event streams
    #[command(subcommand)]
    Streams(StreamsCommand),
    /// Read the global event log ($all)
    #[command(subcommand)]
    Events(EventsCommand),
    /// Run the order-fulfillment demo: many concurrent clients on a fresh embedded store
    #[command(after_help = DEMO_AFTER_HELP)]
    Demo(DemoArgs),
    /// Benchmarks, each printed beside its raw baseline
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum StreamsCommand {
    /// Append one event to a stream, with an optional optimistic-concurrency check
    #[command(after_help = APPEND_AFTER_HELP)]
    Append(AppendArgs),
    /// Print the events of one stream, oldest first (or newest first with --backward)
    #[command(after_help = READ_AFTER_HELP)]
    Read(ReadArgs),
    /// List streams in name order with their revision and last position
    #[command(after_help = LIST_AFTER_HELP)]
    List(ListArgs),
}

const APPEND_AFTER_HELP: &str = "\
Stream names are {Category}-{id}, e.g. Order-1 (category: letters, digits, _; id: letters,
digits and - _ . : @). The event is durable (fsynced) when the command returns.

Examples:
  runnel streams append Order-1 --type OrderPlaced --data '{\"total\": 42}' --expected no-stream
  runnel streams append Order-1 --type OrderConfirmed --data '{}' --expected 1 \\
      --metadata '{\"correlation_id\": \"c-1\", \"user_id\": \"alice\"}'

Exit code 3 with a one-line message if the stream is not at --expected; nothing is written.";

#[derive(Debug, Args)]
pub struct AppendArgs {
    /// The stream, e.g. Order-1
    pub stream: String,
    /// The event type, past tense, e.g. OrderPlaced
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: String,
    /// The payload, a JSON value
    #[arg(long, value_name = "JSON")]
    pub data: String,
    /// Where the stream must be: a revision N, `any`, `no-stream` or `exists`
    #[arg(long, value_name = "N|any|no-stream|exists", default_value = "any")]
    pub expected: String,
    /// Metadata JSON: correlation_id, causation_id, user_id, traceparent, headers {…}
    #[arg(long, value_name = "JSON")]
    pub metadata: Option<String>,
    /// The event id (a UUID); appending the same id again is a no-op [default: a new UUIDv7]
    #[arg(long, value_name = "UUID")]
    pub id: Option<String>,
}

const READ_AFTER_HELP: &str = "\
Examples:
  runnel streams read Order-1
  runnel streams read Order-1 --backward --limit 1      # the last event
  runnel --json streams read Order-1 --from 3          # revisions 3, 4, ...";

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// The stream, e.g. Order-1
    pub stream: String,
    /// Newest first
    #[arg(long)]
    pub backward: bool,
    /// First revision to print (inclusive) [default: the first, or the last with --backward]
    #[arg(long, value_name = "REV")]
    pub from: Option<u64>,
    /// Most events to print [default: all]
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

const LIST_AFTER_HELP: &str = "\
Examples:
  runnel streams list
  runnel --json streams list --category Order --limit 20";

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only streams of this category (the part of the name before the first '-')
    #[arg(long, value_name = "C")]
    pub category: Option<String>,
    /// Most streams to print [default: all]
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print events of $all from a position; with --follow, keep printing new ones live
    #[command(after_help = TAIL_AFTER_HELP)]
    Tail(TailArgs),
}

const TAIL_AFTER_HELP: &str = "\
Events are printed in global position order. With --follow the command catches up, then
waits for new events (also those appended by other processes) until Ctrl-C; it never
skips or repeats an event.

Examples:
  runnel events tail
  runnel events tail --from 1200 --type OrderPlaced --type OrderShipped
  runnel --json events tail --from end --follow --category Order";

#[derive(Debug, Args)]
pub struct TailArgs {
    /// First position to print (inclusive), or `end` for only events appended from now on
    #[arg(long, value_name = "POS|end", default_value = "1")]
    pub from: String,
    /// Keep running and print new events as they are appended, until Ctrl-C
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only events of this type (repeatable)
    #[arg(long = "type", value_name = "T")]
    pub event_types: Vec<String>,
    /// Only events of streams in this category (repeatable)
    #[arg(long = "category", value_name = "C")]
    pub categories: Vec<String>,
    /// Stop after this many events
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

const DEMO_AFTER_HELP: &str = "\
Clients place orders, then confirm, ship or cancel them. Some clients deliberately act on
the same orders at the same time: their optimistic-concurrency conflicts are retried by the
repository, and commands the Order aggregate refuses (shipping a cancelled order, ...) are
counted. A summary follows: orders, events, commands, conflicts retried, rejections,
throughput, p50/p99 command latency and the writer's events per commit.

The demo uses --store / --db, else $RUNNEL_STORE / $RUNNEL_DB, adding orders to that
store; otherwise it recreates runnel-demo.db in the current directory. runnel.toml is
ignored, so the demo never writes into a project's configured store by accident.

Examples:
  runnel demo
  runnel demo --orders 10000 --clients 64
  runnel demo --db /tmp/demo.db --orders 50 --clients 4
  RUNNEL_STORE=postgres://postgres@127.0.0.1/postgres?schema=demo runnel demo";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Orders to place
    #[arg(long, value_name = "N", default_value_t = 5000)]
    pub orders: u64,
    /// Concurrent clients
    #[arg(long, value_name = "C", default_value_t = 32)]
    pub clients: u64,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Event store throughput beside raw SQLite and the disk's fsync rate
    #[command(after_help = BENCH_STORE_AFTER_HELP)]
    Store(BenchStoreArgs),
}

const BENCH_STORE_AFTER_HELP: &str = "\
Scenarios (each on a fresh database file in one temporary directory, full durability):
  - the disk's fsync rate: 4 KiB write + fdatasync in a loop (the limit for serial commits)
  - 1 writer, 1 event per append, beside the fsync rate
  - 64 concurrent writers, 1 event per append, beside raw rusqlite inserting the same rows
    64 per transaction (synchronous=FULL, WAL, same table and constraints), and beside the
    1-writer rate; with the writer's events per commit (= per fsync)
  - 1 writer, 100 events per append, beside raw rusqlite 100 rows per transaction
  - reading $all (pages of 1000) and one 10,000-event stream, beside raw SELECTs
  - loading an aggregate of 10,000 events with and without a snapshot
Peak RSS is printed at the end. The table is markdown, ready for BENCHMARKS.md.

Examples:
  cargo run --release -p runnel-cli -- bench store
  runnel bench store --dir /mnt/ssd --seconds 5
  runnel bench store --quick            # a few hundred milliseconds, for smoke tests";

#[derive(Debug, Args)]
pub struct BenchStoreArgs {
    /// Directory for the temporary database files (same disk as what you want measured)
    /// [default: the current directory]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Seconds each timed scenario runs
    #[arg(long, value_name = "S", default_value_t = 3.0)]
    pub seconds: f64,
    /// Stop each write scenario after this many events (whichever comes first with --seconds)
    #[arg(long, value_name = "N")]
    pub events: Option<u64>,
    /// Concurrent writers in the group-commit scenario
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub writers: u64,
    /// Tiny durations and counts: checks that every scenario runs, measures nothing
    #[arg(long)]
    pub quick: bool,
    /// Keep the database files instead of deleting them
    #[arg(long)]
    pub keep: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
