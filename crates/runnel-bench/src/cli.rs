//! The command line: the four benchmarks, their flags, and the help text with examples.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::exit::EXIT_CODES_HELP;

const ROOT_AFTER_HELP: &str = "\
Every table is markdown, ready for BENCHMARKS.md, and prints each scenario beside a raw
baseline measured in the same run, on the same disk, as a ratio. Run a release build on a
quiet machine; --quick only checks that every scenario runs.

Examples:
  cargo run --release -p runnel-bench -- store
  runnel-bench bus --seconds 6
  runnel-bench outbox --store postgres://postgres@127.0.0.1/postgres
  runnel-bench saga --store postgres://postgres@127.0.0.1/postgres
  runnel-bench projection --store postgres://postgres@127.0.0.1/postgres
  runnel-bench nexmark --events 1000000
  runnel-bench store --quick
";

/// Runnel's benchmarks: the event store, the embedded bus and consumer router, the outbox
/// relay, sagas and projections, each beside its raw baseline.
#[derive(Debug, Parser)]
#[command(
    name = "runnel-bench",
    version,
    after_help = format!("{ROOT_AFTER_HELP}\n{EXIT_CODES_HELP}"),
    propagate_version = true
)]
pub struct Cli {
    /// A postgres://… URL adds the PostgreSQL scenarios, in fresh schemas on that server
    /// dropped at the end; SQLite is always measured on fresh files under --dir
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,

    /// Ignored with a note: the benchmarks make their own SQLite files under --dir.
    /// Accepted because `runnel --db … bench …` forwards it.
    #[arg(long, global = true, value_name = "PATH", hide = true)]
    pub db: Option<PathBuf>,

    /// JSON instead of the markdown table (bench projection; the other benchmarks print
    /// markdown either way). Also forwarded by `runnel --json bench …`.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Event store throughput beside raw SQLite and the disk's fsync rate
    #[command(after_help = BENCH_STORE_AFTER_HELP)]
    Store(BenchStoreArgs),
    /// Embedded bus and consumer router throughput and latency beside raw SQLite, a bare
    /// tokio channel and a direct handler call
    #[command(after_help = BENCH_BUS_AFTER_HELP)]
    Bus(BenchBusArgs),
    /// Outbox relay throughput (commit to broker ack) and commit-to-publish latency beside
    /// the bus publisher's raw rate
    #[command(after_help = BENCH_OUTBOX_AFTER_HELP)]
    Outbox(BenchOutboxArgs),
    /// Saga instances per second (three local no-op steps) and start-to-completion latency
    /// beside hand-written SQL writing the same rows; with --memory, RSS as finished
    /// instances pile up
    #[command(after_help = BENCH_SAGA_AFTER_HELP)]
    Saga(BenchSagaArgs),
    /// Events per second a projection upserting one row per event applies while it
    /// rebuilds, beside a hand-written loop doing the same work; with --memory, RSS while
    /// rebuilding 100k and 1M events
    #[command(after_help = BENCH_PROJECTION_AFTER_HELP)]
    Projection(BenchProjectionArgs),
    /// The HTTP API of `runnel serve`: appends over HTTP beside the in-process API, and
    /// SSE fan-out to many subscribers beside in-process subscriptions
    #[command(after_help = BENCH_HTTP_AFTER_HELP)]
    Http(BenchHttpArgs),
    /// Stream jobs (`runnel::stream`) on the Nexmark queries q1, q5, q7, q8: events per
    /// second per core in memory and end to end from the event store, beside a plain Rust
    /// loop (q1, q5) and Flink 1.13's published figures
    #[command(after_help = BENCH_NEXMARK_AFTER_HELP)]
    Nexmark(BenchNexmarkArgs),
    /// The append load generator of `http` (started by it; not a benchmark of its own)
    #[command(hide = true)]
    HttpLoad(HttpLoadArgs),
}

const BENCH_NEXMARK_AFTER_HELP: &str = "\
The events: a deterministic Nexmark-style generator, 92% bids, 6% auctions, 2% persons
(46:3:1 per 50 events), 10,000 events per second of event time, each event up to 500 ms
older than the newest before it, hot auctions (1 in 2 bids), hot bidders and hot sellers
(3 in 4) as in the Nexmark generator. JSON payloads, event time in the payload, on streams
of the categories Bid, Auction and Person, which the jobs read (the sources allow 1 s of
out-of-orderness: no event is late).

The queries, as Runnel stream jobs:
  q1  currency conversion: every bid with its price * 0.908 (stateless)
  q5  hot items: bids per auction over hopping windows of 10 s every 2 s, then per window
      the auction(s) with the most bids (a second job over the first one's results)
  q7  highest bid: per tumbling 10 s window the highest price and the bids at it (one
      window aggregation, not Flink's join of bids with the window's maximum)
  q8  new users: persons joined with the auctions they opened in the same tumbling 10 s
      window (both keyed by person id and window start, a windowed inner join)

Tiers:
  engine  --events events fed in memory into the job (TestDriver::send_events, one batch
          per --batch events, outputs discarded like Flink's blackhole sink); the
          generator's time is not counted: CPU is the job thread's CPU time around the
          job's calls
  store   --store-events events appended to a temporary SQLite store first (not timed),
          in groups of 1000, one append per type; then a StreamJob catches up
          (batch_events = --batch): source position, state
          rows and results (the job's results table; q5's first job appends its results
          as events for the second) commit per batch. CPU is the process's CPU time
          while the jobs catch up.

Events per second per core = events / CPU seconds; the wall-clock rate is beside it. The
raw baseline, for q1 and q5 on the engine tier: a hand-written loop over the same events
(decode the JSON, convert / count per auction and window in hash maps, pick the maxima as
the watermark passes) in the same run. Flink 1.13's published per-core figures (RocksDB,
exactly-once checkpoints) are printed for reading, not as targets.

Examples:
  cargo run --release -p runnel-bench -- nexmark
  runnel-bench nexmark --events 1000000 --store-events 100000
  runnel-bench nexmark --tier engine --query q5
  runnel-bench nexmark --quick";

/// Which tier of `bench nexmark` to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NexmarkTier {
    /// Events fed in memory straight into the job.
    Engine,
    /// Events read from a SQLite event store, state and results committed per batch.
    Store,
    /// Both.
    Both,
}

/// A Nexmark query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum NexmarkQuery {
    Q1,
    Q5,
    Q7,
    Q8,
}

#[derive(Debug, Args)]
pub struct BenchNexmarkArgs {
    /// Directory for the temporary database file of the store tier [default: the current
    /// directory]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Events of the engine tier
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    pub events: u64,
    /// Events of the store tier
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub store_events: u64,
    /// Events per batch (the engine tier's send_events, the store tier's batch_events)
    #[arg(long, value_name = "B", default_value_t = 1000)]
    pub batch: usize,
    /// Which tier
    #[arg(long, value_enum, default_value_t = NexmarkTier::Both)]
    pub tier: NexmarkTier,
    /// Only these queries (repeat the flag) [default: q1, q5, q7, q8]
    #[arg(long = "query", value_enum, value_name = "Q")]
    pub queries: Vec<NexmarkQuery>,
    /// Tiny counts: checks that every query runs, measures nothing
    #[arg(long)]
    pub quick: bool,
}

const BENCH_PROJECTION_AFTER_HELP: &str = "\
The scenario: --events events (type Posted, a small JSON payload with an amount) appended
round robin over --streams streams of category Acct, then rebuilt from the start of $all
into a read model of one row per stream (events, summed amount, last position), upserted
by each event: INSERT ... ON CONFLICT (stream) DO UPDATE.

Runnel: a ProjectionRunner running as an application runs it (`run`), batch_events =
--batch; timed from the start of `run` until its checkpoint reaches the head. Each batch
claims the lease, reads a page of $all (EventStore::read_all with a category filter),
calls `apply` per event (decode the JSON, describe the upsert) and commits the upserts and
the checkpoint in one transaction.

Baseline: a hand-written loop doing the same work on its own connection to the same
database, at the same durability: SELECT a page of --batch events (position, stream name,
payload) straight from the store's events and streams tables, decode the same JSON, run the
same upsert per event (one prepared statement), UPDATE its checkpoint row, COMMIT — one
transaction per page.
  - SQLite: rusqlite on the store's file (WAL, synchronous=FULL, as the store opens it)
  - PostgreSQL (with --store postgres://...): one sqlx connection in the store's schema,
    synchronous_commit=on; the schema is fresh and dropped at the end
Target: Runnel >= 0.8x the loop. Each side rebuilds 3 times into fresh tables, the sides
taking turns at going first; every table is checked against the expected rows and sums.
Peak RSS is measured per side.

--memory instead: appends over --memory-streams streams up to 100,000 events and rebuilds
(Runnel, then the loop), then up to --memory-events and rebuilds again; the peak RSS of the
last rebuild must not exceed the first's (the read model has the same rows at both, only
the history grows). On SQLite, then PostgreSQL with --store.

Examples:
  cargo run --release -p runnel-bench -- projection
  runnel-bench projection --store postgres://postgres@127.0.0.1:5432/postgres
  runnel-bench projection --events 1000000 --streams 100000      # the 1M / 100k rebuild
  runnel-bench projection --memory                               # RSS at 100k and 1M events
  runnel-bench projection --memory --store postgres://127.0.0.1/postgres --json
  runnel-bench projection --quick";

#[derive(Debug, Args)]
pub struct BenchProjectionArgs {
    /// Directory for the temporary database file (same disk as what you want measured)
    /// [default: the current directory]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Events in $all, each rebuild applies them all
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub events: u64,
    /// Streams the events are spread over (rows of the read model)
    #[arg(long, value_name = "M", default_value_t = 10_000)]
    pub streams: u64,
    /// Events per transaction: Runnel's batch_events and the loop's page
    #[arg(long, value_name = "B", default_value_t = runnel::projection::BATCH_EVENTS_DEFAULT)]
    pub batch: usize,
    /// Runnel's side only, no baseline (to profile it, e.g. under `perf record`)
    #[arg(long)]
    pub runnel_only: bool,
    /// Measure memory instead: RSS rebuilding 100,000 events and rebuilding --memory-events
    #[arg(long)]
    pub memory: bool,
    /// Events in $all at the end of the --memory run
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub memory_events: u64,
    /// Streams of the --memory run (rows of its read model)
    #[arg(long, value_name = "M", default_value_t = 100_000)]
    pub memory_streams: u64,
    /// Tiny counts: checks that every scenario runs, measures nothing
    #[arg(long)]
    pub quick: bool,
}

const BENCH_SAGA_AFTER_HELP: &str = "\
The scenario: the order saga, three local steps that do nothing (reserve-stock,
charge-payment, ship-order), each with a compensation that does nothing. Each instance is
four commits of the processor store: the start (instance row, run timer, history), then
one per step outcome (instance row at the next version, the old run timer deleted and the
next one written, history; the last also writes the SagaCompleted outbox row).

Runnel: a SagaRuntime with retention off and max_concurrency = --clients, driven by one
`run` task (--runtimes R: R runtimes sharing the store, as R processes would). Each of the
--clients clients starts an instance and waits until the commit that makes it Completed
has returned, then starts the next (C instances in flight). Throughput is completed
instances per second; latency is from start() to that commit (p50, p99). Below the table:
write transactions and CPU time per instance, and the store calls Runnel made per instance.

Baseline: hand-written SQL on the same database writing the same rows into tables shaped
like Runnel's (same columns and indexes), one transaction per transition, C clients:
  - SQLite: one writer thread (SQLite's single-writer model) committing each transition
    on its own (an fsync each); a second baseline commits everything queued in one
    transaction (group commit, as Runnel's writer does), shown for reading
  - PostgreSQL (with --store postgres://...): one connection per client, in a fresh
    schema; Runnel's pool has C connections, in a fresh schema; both dropped at the end
Target: Runnel >= 0.7x the one-transaction-per-transition baseline. Sides alternate in 3
rounds, each round after a short untimed warm-up. Peak RSS is measured per side.

--memory instead: the runtime completes 10,000 instances, stops, and RSS is read; then
100,000, ..., up to --memory-instances finished instances (they stay in the store); the
last RSS must not exceed the first. On SQLite, then PostgreSQL with --store.

Examples:
  cargo run --release -p runnel-bench -- saga
  runnel-bench saga --store postgres://postgres@127.0.0.1:5432/postgres
  runnel-bench saga --instances 30000 --clients 32
  runnel-bench saga --memory                       # 1,000,000 instances on SQLite
  runnel-bench saga --memory --memory-instances 100000 --store postgres://127.0.0.1/postgres
  runnel-bench saga --quick";

#[derive(Debug, Args)]
pub struct BenchSagaArgs {
    /// Directory for the temporary database files (same disk as what you want measured)
    /// [default: the current directory]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Timed instances each side completes, over all rounds
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub instances: u64,
    /// Concurrent clients, each starting its next instance when its last one completed
    #[arg(long, value_name = "C", default_value_t = 64)]
    pub clients: usize,
    /// Saga runtimes sharing the store on Runnel's side (as processes would), each with
    /// its own `run` task; client i starts its instances on runtime i mod R
    #[arg(long, value_name = "R", default_value_t = 1)]
    pub runtimes: usize,
    /// Runnel's side only, no baselines (to profile it, e.g. under `perf record`)
    #[arg(long)]
    pub runnel_only: bool,
    /// Measure memory instead of throughput: RSS after 10,000 finished instances and after
    /// --memory-instances
    #[arg(long)]
    pub memory: bool,
    /// Finished instances at the end of the --memory run
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub memory_instances: u64,
    /// Tiny counts: checks that every scenario runs, measures nothing
    #[arg(long)]
    pub quick: bool,
}

const BENCH_OUTBOX_AFTER_HELP: &str = "\
Scenarios, on a fresh SQLite file under --dir (and, with --store postgres://…, in a fresh
schema on that server, dropped afterwards), relaying to the store's embedded bus:
  - raw: the bus's own publish() in batches of 1000 (the relay's batch), one caller
  - drain: N rows committed first (100 per transaction), then one relay publishes them all
  - live: 8 producers commit one message per transaction for --seconds while a relay runs;
    latency = broker ack minus commit returned (p50, p99)
Peak RSS is printed at the end. The table is markdown, ready for BENCHMARKS.md.

Examples:
  cargo run --release -p runnel-bench -- outbox
  runnel-bench outbox --store postgres://postgres@127.0.0.1/postgres --messages 20000
  runnel-bench outbox --quick";

#[derive(Debug, Args)]
pub struct BenchOutboxArgs {
    /// Directory for the temporary database file [default: the current directory]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Seconds the live scenario runs
    #[arg(long, value_name = "S", default_value_t = 3.0)]
    pub seconds: f64,
    /// Rows in the drain scenario (and messages in the raw one)
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    pub messages: usize,
    /// Tiny sizes: checks that every scenario runs, measures nothing
    #[arg(long)]
    pub quick: bool,
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
With --store postgres://...: the append scenarios beside raw INSERTs through sqlx, and the
command scenarios: Repository::execute (load, handle, append; no snapshots, retries off)
with and without the aggregate-state cache, 1 writer, --writers on their own aggregates
and 16 writers on one (conflicts expected), aggregates of up to 100 events, beside one raw
INSERT ... SELECT per command on as many connections (--commands-only: just these).
Peak RSS is printed at the end. The table is markdown, ready for BENCHMARKS.md.

Examples:
  cargo run --release -p runnel-bench -- store
  runnel-bench store --dir /mnt/ssd --seconds 5
  runnel-bench store --store postgres://postgres@127.0.0.1/postgres --seconds 6
  runnel-bench store --quick            # a few hundred milliseconds, for smoke tests";

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
    /// Concurrent writers in the group-commit scenario (and, on PostgreSQL, in the command
    /// scenario where each writer has its own aggregate)
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub writers: u64,
    /// Tiny durations and counts: checks that every scenario runs, measures nothing
    #[arg(long)]
    pub quick: bool,
    /// Keep the database files instead of deleting them
    #[arg(long)]
    pub keep: bool,
    /// With --store postgres://…: run only the command scenarios (`Repository::execute`
    /// beside raw `INSERT … SELECT`), not the append and read ones
    #[arg(long)]
    pub commands_only: bool,
}

const BENCH_BUS_AFTER_HELP: &str = "\
Scenarios (fresh SQLite files in one temporary directory, WAL, synchronous=FULL, 256-byte
JSON payloads, one consumer group; each alternates with its baseline in 3 rounds):
  - publish on the embedded bus: 1 publisher x 1 message per call, 64 concurrent
    publishers x 1, 1 publisher x 100 per call; beside raw rusqlite inserting the same rows
    (log row + queue row) 1, 64 and 100 messages per transaction
  - end to end: publish -> consumer router (every default layer, no-op handler) -> ack,
    64 messages in flight, messages/s and p50/p99 publish-to-ack latency; beside a bare
    tokio mpsc pipeline (the in-process ceiling) and beside raw SQLite insert + select +
    delete, 64 messages per transaction
  - router overhead in memory: a no-op handler called directly vs through the default
    layers, and vs a whole consumer fed by an in-memory subscriber (ns per message)
With --store postgres://...: the publish and end-to-end scenarios on the PostgreSQL bus,
in fresh schemas dropped at the end, beside raw INSERT / SELECT / DELETE of the same rows
through sqlx (synchronous_commit=on).
Peak RSS is printed at the end. The table is markdown, ready for BENCHMARKS.md.

Examples:
  cargo run --release -p runnel-bench -- bus
  runnel-bench bus --dir /mnt/ssd --seconds 6
  runnel-bench bus --store postgres://postgres@localhost/postgres
  runnel-bench bus --quick              # well under a second per scenario, for smoke tests";

#[derive(Debug, Args)]
pub struct BenchBusArgs {
    /// Directory for the temporary database files (same disk as what you want measured)
    /// [default: the current directory]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Seconds each bus scenario runs (over all rounds)
    #[arg(long, value_name = "S", default_value_t = 3.0)]
    pub seconds: f64,
    /// Stop each bus scenario after this many messages (whichever comes first with
    /// --seconds)
    #[arg(long, value_name = "N")]
    pub messages: Option<u64>,
    /// Tiny durations: checks that every scenario runs, measures nothing
    #[arg(long)]
    pub quick: bool,
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

const BENCH_HTTP_AFTER_HELP: &str = "\
Scenarios, on a fresh SQLite file under --dir (and, with --store postgres://…, in a fresh
schema on that server, dropped afterwards), with the server in this process on 127.0.0.1:
  - appends: --clients keep-alive HTTP clients append one event per request (N in all),
    beside the same clients calling EventStore::append in process (half before, half
    after the HTTP run); target: HTTP at least 0.6x in-process
  - SSE fan-out: --subscribers clients on /subscribe/all plus one that never reads, while
    --writers tasks append --events events in process; deliveries/s and p50/p99 from the
    writer building an event to a subscriber parsing it, beside as many in-process
    subscribe_all streams; peak RSS of each
The table is markdown, ready for BENCHMARKS.md.

Examples:
  cargo run --release -p runnel-bench -- http
  cargo run --release -p runnel-bench -- --store postgres://postgres@127.0.0.1/postgres http";

/// `runnel-bench http`.
#[derive(Debug, Args)]
pub struct BenchHttpArgs {
    /// Directory for the temporary database file [default: the current directory]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Events appended over HTTP (and as many in process, in two halves)
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    pub appends: u64,
    /// Concurrent appending clients
    #[arg(long, value_name = "C", default_value_t = 64)]
    pub clients: usize,
    /// SSE subscribers reading every event
    #[arg(long, value_name = "S", default_value_t = 100)]
    pub subscribers: usize,
    /// Writers appending while the subscribers read
    #[arg(long, value_name = "W", default_value_t = 64)]
    pub writers: usize,
    /// Events the writers append in the fan-out
    #[arg(long, value_name = "N", default_value_t = 5_000)]
    pub events: u64,
    /// Tiny counts: checks that every scenario runs, measures nothing
    #[arg(long)]
    pub quick: bool,
    /// Run the append clients in this process, on the server's cores (by default, with 2
    /// or more cores and `taskset`, they run in a process of their own on the last core)
    #[arg(long)]
    pub same_process: bool,
}

/// The append load generator `runnel-bench http` starts on a core of its own.
#[derive(Debug, clap::Args)]
pub struct HttpLoadArgs {
    /// The server's base URL (`http://127.0.0.1:PORT`)
    #[arg(long)]
    pub url: String,
    /// Events to append, one per request
    #[arg(long)]
    pub appends: u64,
    /// Concurrent keep-alive clients
    #[arg(long)]
    pub clients: usize,
    /// Send `GET /healthz` instead of appends: what a request costs the server with no
    /// store work (the HTTP floor)
    #[arg(long)]
    pub floor: bool,
}
