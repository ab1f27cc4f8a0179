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

Bus selection (publish, consume, dlq replay; first match wins):
  1. --bus BUS
  2. $RUNNEL_BUS
  3. bus = \"...\" in ./runnel.toml
  4. embedded (the durable bus inside the store above)
A broker instead of the embedded bus: nats://host:4222, amqp://user:pass@host:5672/%2f,
kafka://host:9092, sqs://REGION?endpoint=URL (each transport's crate documents its
parameters; credentials in the URL are never printed). Publishing and consuming through a
broker need no store: none is opened or created (the broker keeps its own dead letters;
dlq drain moves them into the store).

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to see them.

Examples:
  runnel demo
  runnel streams append Order-1 --type OrderPlaced --data '{\"total\": 42}'
  runnel --json streams read Order-1
  runnel events tail --follow --category Order
  runnel publish orders --type OrderPlaced --data '{\"order\": 1}' --key Order-1
  runnel consume orders --group billing --follow
  runnel dlq list --topic orders
  runnel sagas list --status compensation-failed
  runnel projections status
  runnel processors list
  runnel serve --bind 127.0.0.1:7411
";

/// Runnel: an event store, aggregates and messaging toolkit. This binary inspects and
/// writes event streams, publishes and consumes messages, manages dead letters and saga
/// instances, runs the demo and the benchmarks.
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

    /// Bus: `embedded` (the durable bus in the store) or a broker URL (nats://, amqp://,
    /// kafka://, sqs://) [env: RUNNEL_BUS] [default: embedded]
    #[arg(long, global = true, value_name = "BUS")]
    pub bus: Option<String>,

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
    /// Run the order-fulfillment demo: the whole order flow (HTTP clients, the saga, its
    /// services, injected failures) on a fresh embedded store; runs the order-fulfillment
    /// binary's demo (`runnel demo --help` shows its flags)
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Demo(ForwardArgs),
    /// Benchmarks, each printed beside its raw baseline: runs the runnel-bench binary
    /// (`runnel bench --help` shows its commands)
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Bench(ForwardArgs),
    /// Publish one message to a topic of the configured bus
    #[command(after_help = PUBLISH_AFTER_HELP)]
    Publish(PublishArgs),
    /// Consume a topic as a consumer group, acknowledging each message once printed
    #[command(after_help = CONSUME_AFTER_HELP)]
    Consume(ConsumeArgs),
    /// Dead letters: list, show, replay, purge
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The transactional outbox: backlog status, retry of parked rows
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Saga and process-manager instances: list, show, retry, skip-step, compensate, purge
    #[command(subcommand)]
    Sagas(SagasCommand),
    /// Projections (read models): list, status, rebuild, pause, resume, retry, skip, drop-old
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Stream jobs (windows, joins, watermarks; docs/stream.md): list, status, reset
    #[command(subcommand)]
    Processors(ProcessorsCommand),
    /// Serve the event store over HTTP: appends, reads, live SSE subscriptions, API keys
    /// with roles (docs/server.md)
    #[command(after_help = SERVE_AFTER_HELP)]
    Serve(ServeArgs),
    /// Event schema snapshots and the backward-compatibility check for CI, on catalog
    /// files (docs/catalog.md)
    #[command(subcommand)]
    Schema(SchemaCommand),
}

/// `runnel schema …`: works on files an application wrote (its catalog, the body of
/// `GET /catalog`, or a snapshot), since this binary holds none of the application's types.
#[derive(Debug, Subcommand)]
#[command(after_help = SCHEMA_AFTER_HELP)]
pub enum SchemaCommand {
    /// Write the event schema snapshot of a catalog file (to commit)
    Snapshot(SchemaSnapshotArgs),
    /// Check current event schemas against a committed snapshot; exit 6 and list each
    /// backward-incompatible change (event type, JSON path) if there is one
    Check(SchemaCheckArgs),
    /// Print the AsyncAPI 3.0 document of a catalog file
    Asyncapi(SchemaAsyncapiArgs),
}

const SCHEMA_AFTER_HELP: &str = "\
Incompatible: an event type removed; a field removed or renamed; a field's type changed; a
required field added (or an optional one made required); an enum value or variant removed;
a schema version lowered, or raised without an upcaster chain from the snapshot's version.
Compatible: a new event type, an optional field added, a version raised with upcasters
covering it. An application dumps its catalog with `GET /catalog` or its own command (the
reference app: `order-fulfillment schema catalog`).";

#[derive(Debug, Args)]
pub struct SchemaSnapshotArgs {
    /// The catalog (JSON of `GET /catalog`) or an existing snapshot
    #[arg(long, value_name = "FILE")]
    pub catalog: PathBuf,
    /// Where to write the snapshot
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct SchemaCheckArgs {
    /// The current schemas: a catalog or a snapshot file
    #[arg(long, value_name = "FILE")]
    pub current: PathBuf,
    /// The committed snapshot (the previous contract)
    #[arg(long, value_name = "FILE")]
    pub snapshot: PathBuf,
}

#[derive(Debug, Args)]
pub struct SchemaAsyncapiArgs {
    /// The catalog (JSON of `GET /catalog`)
    #[arg(long, value_name = "FILE")]
    pub catalog: PathBuf,
    /// The document's title
    #[arg(long, default_value = "Runnel application")]
    pub title: String,
    /// The application's version in the document
    #[arg(long = "app-version", default_value = "0.0.0")]
    pub app_version: String,
}

const SERVE_AFTER_HELP: &str = "\
Serves the configured store (see `runnel --help` for how it is chosen; the embedded default
is created if missing) until SIGTERM or Ctrl-C, then stops accepting, closes live
subscriptions and lets in-flight requests finish (at most --shutdown-grace). The first line
on stdout is `runnel serve: listening on http://ADDR ...` (the actual port with :0).

Routes (each needs a key of at least the role shown, unless no key is configured):
  GET  /healthz, /readyz                    public: alive; store reachable
  GET  /dashboard                           public: the web dashboard (open it in a
                                            browser; it asks for a key once)
  POST /streams/{stream}                    operator: append a JSON array of events
                                            (header Runnel-Expected-Revision: any,
                                            no-stream, stream-exists or a revision)
  GET  /streams/{stream}?from=&limit=&direction=forward|backward     viewer
  GET  /streams?category=&after=&limit=     viewer
  GET  /all?after=&limit=&category=&type=   viewer
  GET  /subscribe/all, /subscribe/streams/{stream}   viewer: SSE, catch-up then live,
                                            resumable with Last-Event-ID
  GET  /metrics                              viewer: Prometheus text format (scrape
                                            with a viewer key as bearer token)

API keys (clients send `Authorization: Bearer KEY`): a TOML file of [[key]] entries with
name, role (viewer, operator, admin) and sha256 (`printf %s \"$KEY\" | sha256sum`), from
--api-keys or $RUNNEL_API_KEYS_FILE, and/or $RUNNEL_API_KEYS=name:role:sha256,...
Without any key the server is open, and only a loopback --bind is accepted.

Examples:
  runnel serve
  runnel --db app.db serve --bind 127.0.0.1:0
  KEY=$(openssl rand -hex 32); echo \"$KEY\"
  RUNNEL_API_KEYS=\"ci:operator:$(printf %s \"$KEY\" | sha256sum | cut -d' ' -f1)\" \\
    runnel --store postgres://localhost/app serve --bind 0.0.0.0:7411
  curl -X POST localhost:7411/streams/Order-1 -H 'Runnel-Expected-Revision: no-stream' \\
    -H 'Content-Type: application/json' -d '[{\"type\":\"OrderPlaced\",\"data\":{\"total\":42}}]'
  curl -N localhost:7411/subscribe/all";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; anything but loopback needs API keys
    #[arg(long, default_value = runnel_server::BIND_DEFAULT, value_name = "ADDR")]
    pub bind: String,
    /// API keys file (TOML) [env: RUNNEL_API_KEYS_FILE]
    #[arg(long, value_name = "PATH")]
    pub api_keys: Option<PathBuf>,
    /// Interval of SSE heartbeat comments
    #[arg(long, default_value = "15s", value_name = "DURATION")]
    pub heartbeat: String,
    /// How long in-flight requests may finish after SIGTERM
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub shutdown_grace: String,
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// One line per projection: its current generation, status, checkpoint and lag
    #[command(after_help = PROJECTIONS_LIST_AFTER_HELP)]
    List,
    /// Every generation of one projection (or all): status, checkpoint, lag in events and
    /// seconds, events/s, lease holders, last error
    #[command(after_help = PROJECTIONS_STATUS_AFTER_HELP)]
    Status(ProjectionsStatusArgs),
    /// Rebuild a projection without downtime: a new generation of its tables fills from
    /// the start of $all beside the current one and replaces it once caught up
    #[command(after_help = PROJECTIONS_REBUILD_AFTER_HELP)]
    Rebuild(ProjectionsRebuildArgs),
    /// Pause a projection: the services running it stop applying events to it
    #[command(after_help = PROJECTIONS_ACTION_AFTER_HELP)]
    Pause(ProjectionNameArg),
    /// Resume a paused projection
    #[command(after_help = PROJECTIONS_ACTION_AFTER_HELP)]
    Resume(ProjectionNameArg),
    /// Apply the event a faulted projection stopped on again
    #[command(after_help = PROJECTIONS_ACTION_AFTER_HELP)]
    Retry(ProjectionNameArg),
    /// Move a faulted projection past the event it stopped on, and resume it (the event
    /// is printed and logged)
    #[command(after_help = PROJECTIONS_ACTION_AFTER_HELP)]
    Skip(ProjectionNameArg),
    /// Drop the tables of a projection's retired generations
    #[command(after_help = PROJECTIONS_ACTION_AFTER_HELP)]
    DropOld(ProjectionNameArg),
}

const PROJECTIONS_LIST_AFTER_HELP: &str = "\
Statuses: running; paused (by an operator); faulted (stopped on an event it could not
apply: `retry` applies it again, `skip` moves past it). A projection whose rebuild is under
way shows `rebuilding` and how far the new generation has got. A stream job runs as the
projection `stream_job_NAME` and is listed here too, marked with its job's name (JSON:
`stream_job`); `runnel processors` shows its watermark, late records and state.

Examples:
  runnel projections list
  runnel --json projections list";

const PROJECTIONS_STATUS_AFTER_HELP: &str = "\
Lag is the number of $all positions not applied yet and the age of the oldest of them; both
are 0 when the projection has caught up. Events/s is measured over --sample (default 1s):
0 disables the measurement.

Examples:
  runnel projections status
  runnel projections status order_summaries
  runnel --json projections status order_summaries --sample 0";

const PROJECTIONS_REBUILD_AFTER_HELP: &str = "\
The services running the projection do the work (the CLI never runs a projection's code):
they fill the new generation and switch queries to it in one transaction once it has caught
up; queries keep reading the current generation meanwhile. This command starts the rebuild
and shows its progress (positions done of the head of $all, rate, ETA) until the switch.

Interrupting it (Ctrl-C) pauses the rebuild where it is; running the command again resumes
it from there. --detach starts (or resumes) it and returns at once. The old generation's
tables stay until `runnel projections drop-old NAME`.

Examples:
  runnel projections rebuild order_summaries
  runnel projections rebuild order_summaries --detach";

const PROJECTIONS_ACTION_AFTER_HELP: &str = "\
An unknown name exits with code 4; a projection not in a state the command applies to
(resume of a running one, skip of one not faulted, drop-old with nothing retired) exits with
code 5. Either way nothing changes.

Examples:
  runnel projections pause order_summaries
  runnel projections resume order_summaries
  runnel projections retry order_summaries
  runnel projections skip order_summaries
  runnel projections drop-old order_summaries";

#[derive(Debug, Args)]
pub struct ProjectionNameArg {
    /// The projection's name
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ProjectionsStatusArgs {
    /// Only this projection
    pub name: Option<String>,
    /// How long to watch the counters to measure events/s (`500ms`, `2s`; `0`: do not)
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    pub sample: String,
}

#[derive(Debug, Args)]
pub struct ProjectionsRebuildArgs {
    /// The projection's name
    pub name: String,
    /// Start (or resume) the rebuild and return without watching it
    #[arg(long)]
    pub detach: bool,
    /// Give up watching (and pause the rebuild) if no service has moved it for this long
    /// (`30s`, `5m`)
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub stall_timeout: String,
}

/// `runnel processors …`: stream jobs (`runnel::stream`), each running as the projection
/// `stream_job_{job}`.
#[derive(Debug, Subcommand)]
pub enum ProcessorsCommand {
    /// One line per stream job: status, position and lag, watermark, late records, state rows
    #[command(after_help = PROCESSORS_LIST_AFTER_HELP)]
    List,
    /// Everything one stream job reports: generation, status, position of the head of
    /// $all, watermark and each source's latest event time, records, outputs, late
    /// records, state size in rows and bytes, lease holder, last error
    #[command(after_help = PROCESSORS_STATUS_AFTER_HELP)]
    Status(ProcessorNameArg),
    /// Start a stream job over: a new generation with empty state processes $all from the
    /// start beside the current one and replaces it once caught up (its results are
    /// emitted again)
    #[command(after_help = PROCESSORS_RESET_AFTER_HELP)]
    Reset(ProcessorNameArg),
}

const PROCESSORS_LIST_AFTER_HELP: &str = "\
Statuses: running; paused; faulted (stopped on an error, shown at the end of the line).
Lag is the number of $all positions the job has not processed yet. The watermark (RFC
3339, UTC) is the event time up to which the job considers its input complete: windows
ending before it, plus their grace, are closed; `-` until every source has seen an event.
Late counts the records that arrived for closed windows and went to the late output.
Stream jobs also appear in `runnel projections list` as `stream_job_NAME`.

Examples:
  runnel processors list
  runnel --json processors list";

const PROCESSORS_STATUS_AFTER_HELP: &str = "\
Times are RFC 3339 in UTC (with --json also as milliseconds since the epoch: watermark_ms,
source_times_ms). Counters (records, outputs, late) count since the generation started.
State is the job's state table: open windows, join buffers, tables, results waiting to be
appended. An unknown name exits with code 4.

Examples:
  runnel processors status revenue_per_minute
  runnel --json processors status revenue_per_minute";

const PROCESSORS_RESET_AFTER_HELP: &str = "\
The services running the job do the work (the CLI never runs a job's code): they process
$all from the start into the new generation at once and switch queries to it once it has
caught up (the old generation's results table stays readable until then, no longer
advancing). Every result is emitted again (to its
stream, topic or results table), so consumers of a stream or topic sink see them twice
unless they drop duplicates. Running it while a reset is under way reports that reset.
An unknown name exits with code 4 and changes nothing.

Examples:
  runnel processors reset revenue_per_minute
  runnel --json processors reset revenue_per_minute";

#[derive(Debug, Args)]
pub struct ProcessorNameArg {
    /// The stream job's name (as in `runnel processors list`)
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum SagasCommand {
    /// List instances in (kind, id) order, with a count per kind and status at the end
    #[command(after_help = SAGAS_LIST_AFTER_HELP)]
    List(SagasListArgs),
    /// Show one instance: its data, status, step history and pending timers
    #[command(after_help = SAGAS_SHOW_AFTER_HELP)]
    Show(SagasShowArgs),
    /// Ask the service running the saga to run a parked step or compensation again
    #[command(after_help = SAGAS_RETRY_AFTER_HELP)]
    Retry(SagasActionArgs),
    /// Ask the service running the saga to count a parked step (or its compensation) as
    /// done and go on
    #[command(after_help = SAGAS_SKIP_AFTER_HELP)]
    SkipStep(SagasActionArgs),
    /// Ask the service running the saga to compensate a running or parked instance
    #[command(after_help = SAGAS_COMPENSATE_AFTER_HELP)]
    Compensate(SagasActionArgs),
    /// Delete finished instances (completed or compensated) with their history and timers
    #[command(after_help = SAGAS_PURGE_AFTER_HELP)]
    Purge(SagasPurgeArgs),
}

const SAGAS_LIST_AFTER_HELP: &str = "\
Each instance is one line: id, kind, status, state, version, last change, last error.
Process managers are listed too (kind process:NAME). Without filters a count per kind and
status follows on stderr.

Statuses: running, compensating, completed, compensated, compensation-failed (parked: a
compensation kept failing), needs-attention (parked: an outcome stayed unknown, or a step
past the pivot failed). Parked instances wait for `runnel sagas retry` or `skip-step`.

Examples:
  runnel sagas list
  runnel sagas list --type checkout --status needs-attention
  runnel sagas list --type process:shipping --limit 20
  runnel --json sagas list --status compensation-failed";

#[derive(Debug, Args)]
pub struct SagasListArgs {
    /// Only instances of this saga (kind saga:NAME), or of this full kind (process:NAME)
    #[arg(long = "type", value_name = "T")]
    pub kind: Option<String>,
    /// Only instances in this status: running, compensating, completed, compensated,
    /// compensation-failed or needs-attention
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    /// Most instances to print [default: all]
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

const SAGAS_SHOW_AFTER_HELP: &str = "\
Without --type the id is looked up in every kind; pass --type when two kinds have an
instance with that id. Exit code 4 if there is no instance with that id.

Examples:
  runnel sagas show order-1
  runnel sagas show order-1 --type checkout
  runnel --json sagas show order-1 --type process:shipping";

#[derive(Debug, Args)]
pub struct SagasShowArgs {
    /// The instance id (from `runnel sagas list`)
    pub id: String,
    /// The saga (kind saga:NAME) or full kind (process:NAME) [default: whichever has the id]
    #[arg(long = "type", value_name = "T")]
    pub kind: Option<String>,
}

/// How long `--wait` waits when given without a duration.
pub const SAGAS_WAIT_DEFAULT: &str = "30s";

/// The arguments of `sagas retry | skip-step | compensate`.
#[derive(Debug, Args)]
pub struct SagasActionArgs {
    /// The instance id (from `runnel sagas list`)
    pub id: String,
    /// The saga (kind saga:NAME) [default: whichever saga has the id]
    #[arg(long = "type", value_name = "T")]
    pub kind: Option<String>,
    /// Then wait until the service running the saga took the request, and print the
    /// instance's new status (an error if it did not within DURATION)
    #[arg(
        long,
        value_name = "DURATION",
        num_args = 0..=1,
        default_missing_value = SAGAS_WAIT_DEFAULT,
    )]
    pub wait: Option<String>,
}

/// What `sagas retry | skip-step | compensate` do, shared by their help texts.
macro_rules! sagas_action_note {
    () => {
        "The command records the request (a history line and an `operator` timer on the
instance) and returns; the service running that saga claims the timer and applies the
request with the saga's own definition and code. --wait waits until it did (30s, or the
duration given) and prints the new status; if nothing took the request by then, the
service running the saga may be down (the request stays recorded and is applied once it
runs). An action that does not apply to the instance's status is refused with exit code 2
and changes nothing; exit code 4 if there is no instance with that id. Operator actions
apply to sagas only (kind saga:NAME), not to process managers."
    };
}

const SAGAS_RETRY_AFTER_HELP: &str = concat!(
    "Runs the parked step (needs-attention) or compensation (compensation-failed) again.\n\n",
    sagas_action_note!(),
    "\n
Examples:
  runnel sagas retry order-1
  runnel sagas retry order-1 --type checkout --wait
  runnel sagas retry order-1 --wait 2m"
);

const SAGAS_SKIP_AFTER_HELP: &str = concat!(
    "Counts the parked step as done (needs-attention) or its compensation as compensated
(compensation-failed), and the saga goes on from there. Use it once you did by hand what
the step should have done.\n\n",
    sagas_action_note!(),
    "\n
Examples:
  runnel sagas skip-step order-1
  runnel sagas skip-step order-1 --type checkout --wait 10s"
);

const SAGAS_COMPENSATE_AFTER_HELP: &str = concat!(
    "Undoes the completed steps, newest first, of a running or needs-attention instance.\n\n",
    sagas_action_note!(),
    "\n
Examples:
  runnel sagas compensate order-1
  runnel sagas compensate order-1 --type checkout --wait"
);

const SAGAS_PURGE_AFTER_HELP: &str = "\
Deletes instances that finished (completed or compensated) before TIME, with their history
and timers, in batches; running and parked instances are never purged. A service running a
saga purges its finished instances after its retention on its own (7 days by default);
this is for stores no service purges, or for sooner.

Examples:
  runnel sagas purge --finished-before 30d
  runnel sagas purge --finished-before 2026-05-01T00:00:00Z --type checkout
  runnel --json sagas purge --finished-before 0s       # every finished instance";

#[derive(Debug, Args)]
pub struct SagasPurgeArgs {
    /// Delete instances that finished before TIME: RFC 3339 (2026-05-01T12:00:00Z) or an
    /// age (12h, 7d, 2w)
    #[arg(long, value_name = "TIME")]
    pub finished_before: String,
    /// Only instances of this saga (kind saga:NAME), or of this full kind (process:NAME)
    #[arg(long = "type", value_name = "T")]
    pub kind: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Pending rows, the oldest pending row's age, parked rows; per topic
    #[command(after_help = OUTBOX_STATUS_AFTER_HELP)]
    Status,
    /// Make rows parked after repeated publish failures claimable again
    #[command(after_help = OUTBOX_RETRY_AFTER_HELP)]
    Retry(OutboxRetryArgs),
}

const OUTBOX_STATUS_AFTER_HELP: &str = "\
Pending rows wait for a relay to publish them (a broker outage only delays them). Parked
rows failed to publish repeatedly for a reason other than an outage (the broker refused
them); they block their key until `runnel outbox retry`.

Examples:
  runnel outbox status
  runnel --json outbox status
  runnel --store 'postgres://postgres@127.0.0.1/app?schema=orders' outbox status";

const OUTBOX_RETRY_AFTER_HELP: &str = "\
Examples:
  runnel outbox retry                  # every parked row
  runnel outbox retry --topic orders   # only this topic's";

#[derive(Debug, Args)]
pub struct OutboxRetryArgs {
    /// Only rows of this topic
    #[arg(long, value_name = "TOPIC")]
    pub topic: Option<String>,
}

const PUBLISH_AFTER_HELP: &str = "\
The message is a CloudEvents 1.0 event (id, type, source, time) with a JSON payload; it is
durably accepted by the bus when the command returns. Every consumer group of the topic
receives it.

--data takes the JSON inline, from a file (@FILE) or from standard input (-), as curl does;
a file or stdin has no argument-length limit (128 KiB on Linux), only the bus's payload limit.

Examples:
  runnel publish orders --type OrderPlaced --data '{\"order\": 1}'
  runnel publish orders --type OrderPlaced --data @order.json --key Order-1
  generate-order | runnel publish orders --type OrderPlaced --data -
  runnel publish orders --type OrderPlaced --data '{\"order\": 1}' --key Order-1 \\
      --header tenant=acme --header correlationid=c-42
  runnel --json publish orders --type Ping --data null --id 0190-fixed   # idempotent re-send";

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The topic, e.g. orders
    pub topic: String,
    /// The message type, e.g. OrderPlaced
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: String,
    /// The payload, a JSON value: inline, @FILE (the file's contents) or - (standard
    /// input). A JSON string starting with @ is quoted: --data '"@home"'
    #[arg(long, value_name = "JSON|@FILE|-")]
    pub data: String,
    /// Ordering key: messages with the same key are consumed in order
    #[arg(long, value_name = "K")]
    pub key: Option<String>,
    /// A header `name=value` (repeatable); correlationid, causationid, traceparent and
    /// tracestate set those attributes
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// The message id; consumers use it to drop duplicates [default: a new UUIDv7]
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
}

const CONSUME_AFTER_HELP: &str = "\
Each message is printed, then acknowledged for the group: the group will not get it again.
A group created by this command starts at the earliest message the bus still holds
(--from latest: only messages published from now on); an existing group continues where it
is. A bus that keeps no history for a new group (SQS without SNS message replay, e.g. a
local emulator, or retention=off) refuses --from earliest: pass --from latest there. Without --follow the command stops after --count messages or once no message arrived
for --wait; with --follow it runs until Ctrl-C (or --count). Messages replayed from the
dead-letter queue for another group are acknowledged without being printed.

Examples:
  runnel consume orders --group billing
  runnel consume orders --group billing --count 10
  runnel --json consume orders --group audit --follow";

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The topic, e.g. orders
    pub topic: String,
    /// The consumer group
    #[arg(long, value_name = "G")]
    pub group: String,
    /// Stop after this many messages
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Keep running and print new messages as they arrive, until Ctrl-C
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Without --follow: stop once no message arrived for this long (e.g. 500ms, 5s)
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    pub wait: String,
    /// Where a group created now starts: `earliest` or `latest`
    #[arg(long, value_name = "earliest|latest", default_value = "earliest")]
    pub from: String,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters (pending ones unless --include-replayed), oldest first
    #[command(after_help = DLQ_LIST_AFTER_HELP)]
    List(DlqListArgs),
    /// Show one dead letter: the message and every failure
    #[command(after_help = DLQ_SHOW_AFTER_HELP)]
    Show(DlqShowArgs),
    /// Publish dead letters again (same message id) and mark them replayed
    #[command(after_help = DLQ_REPLAY_AFTER_HELP)]
    Replay(DlqReplayArgs),
    /// Delete dead letters older than a duration
    #[command(after_help = DLQ_PURGE_AFTER_HELP)]
    Purge(DlqPurgeArgs),
    /// Move what a broker dead-lettered by itself into the store's dead letters
    #[command(after_help = DLQ_DRAIN_AFTER_HELP)]
    Drain(DlqDrainArgs),
}

/// Filters shared by the dlq commands.
#[derive(Debug, Args, Clone, Default)]
pub struct DlqFilterArgs {
    /// Only dead letters of this topic
    #[arg(long, value_name = "T")]
    pub topic: Option<String>,
    /// Only dead letters of this consumer group
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// Only those with a failure whose error contains TEXT (case-insensitive)
    #[arg(long = "error", value_name = "TEXT")]
    pub error: Option<String>,
    /// Only those dead-lettered at or after TIME: RFC 3339 (2026-05-01T12:00:00Z) or an
    /// age (30m, 2h, 7d)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only those dead-lettered before TIME (same forms as --since)
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
}

const DLQ_LIST_AFTER_HELP: &str = "\
Examples:
  runnel dlq list
  runnel dlq list --topic orders --group billing --since 2h
  runnel dlq list --error timeout --include-replayed
  runnel --json dlq list --since 2026-05-01T00:00:00Z";

#[derive(Debug, Args)]
pub struct DlqListArgs {
    #[command(flatten)]
    pub filter: DlqFilterArgs,
    /// Also list dead letters that were replayed already
    #[arg(long)]
    pub include_replayed: bool,
    /// Most dead letters to print [default: all]
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

const DLQ_SHOW_AFTER_HELP: &str = "\
Exit code 4 if there is no dead letter with that id.

Examples:
  runnel dlq show 42
  runnel --json dlq show 42";

#[derive(Debug, Args)]
pub struct DlqShowArgs {
    /// The dead letter's id (from `runnel dlq list`)
    pub id: u64,
}

const DLQ_REPLAY_AFTER_HELP: &str = "\
Replayed messages keep their id, so consumers that drop duplicates (the inbox) apply each
one once. By default a message goes back to its original topic, where every consumer group
receives it; --to-group sends it to one group only (other groups' routers skip it), and
--to-own-group to the group that dead-lettered it. A bulk replay shows a progress bar and
ends with the replayed and skipped counts; it only replays dead letters that existed when
it started. Messages the bus refuses (too large, invalid) are skipped and stay pending.
If the bus fails part-way, the command stops with exit code 1 and the counts so far;
running it again is safe.

Examples:
  runnel dlq replay 42
  runnel dlq replay --all
  runnel dlq replay --topic orders --error timeout --to-own-group
  runnel dlq replay --group billing --since 1h --to-group billing";

#[derive(Debug, Args)]
pub struct DlqReplayArgs {
    /// Replay this one dead letter (even if it was replayed before)
    #[arg(conflicts_with_all = ["all", "include_replayed", "topic", "group", "error", "since", "until"])]
    pub id: Option<u64>,
    /// Replay every pending dead letter
    #[arg(long, conflicts_with_all = ["topic", "group", "error", "since", "until"])]
    pub all: bool,
    #[command(flatten)]
    pub filter: DlqFilterArgs,
    /// With filters: also replay dead letters that were replayed before
    #[arg(long)]
    pub include_replayed: bool,
    /// Deliver to this consumer group only
    #[arg(long, value_name = "G", conflicts_with = "to_own_group")]
    pub to_group: Option<String>,
    /// Deliver each message to the group that dead-lettered it only
    #[arg(long)]
    pub to_own_group: bool,
}

const DLQ_PURGE_AFTER_HELP: &str = "\
Deletes pending and replayed dead letters alike (--pending-only keeps replayed ones out of
it); the filters narrow it further. --dry-run only counts.

Examples:
  runnel dlq purge --older-than 30d
  runnel dlq purge --older-than 7d --topic orders --dry-run
  runnel dlq purge --older-than 0s --group billing     # everything of one group";

const DLQ_DRAIN_AFTER_HELP: &str = "\
A broker moves a message to its own dead-letter queue after its delivery limit (the
backstop behind the router's retries, e.g. when a consumer crashes on it every time). This
moves those messages into the store's dead letters, where list, show, replay and purge work
on them. Each message leaves the broker only after the store has it. Needs a broker bus
(--bus, $RUNNEL_BUS or runnel.toml); the embedded bus dead-letters into the store directly.

Examples:
  runnel dlq drain --bus nats://127.0.0.1:4222 --topic orders --group billing
  runnel dlq drain --bus amqp://guest:guest@127.0.0.1:5672/%2f --topic orders --group billing --max 100";

/// Most messages one `dlq drain` moves by default.
pub const DLQ_DRAIN_MAX_DEFAULT: usize = 1000;

#[derive(Debug, Args)]
pub struct DlqDrainArgs {
    /// The topic whose dead-lettered messages to move
    #[arg(long, value_name = "T")]
    pub topic: String,
    /// The consumer group that dead-lettered them
    #[arg(long, value_name = "G")]
    pub group: String,
    /// Move at most this many
    #[arg(long, value_name = "N", default_value_t = DLQ_DRAIN_MAX_DEFAULT)]
    pub max: usize,
}

#[derive(Debug, Args)]
pub struct DlqPurgeArgs {
    /// Delete dead letters dead-lettered longer ago than this (e.g. 90m, 12h, 30d, 2w)
    #[arg(long, value_name = "DURATION")]
    pub older_than: String,
    #[command(flatten)]
    pub filter: DlqFilterArgs,
    /// Only pending dead letters (not those replayed already)
    #[arg(long)]
    pub pending_only: bool,
    /// Count what would be deleted, delete nothing
    #[arg(long)]
    pub dry_run: bool,
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

--data and --metadata take the JSON inline, from a file (@FILE) or from standard input (-,
for one of them), as curl does; a file or stdin has no argument-length limit (128 KiB on
Linux), only the store's payload limit (1 MiB by default). A JSON string starting with @ is
quoted, so it stays inline: --data '\"@home\"'.

Examples:
  runnel streams append Order-1 --type OrderPlaced --data '{\"total\": 42}' --expected no-stream
  runnel streams append Order-1 --type OrderPlaced --data @order.json
  generate-order | runnel streams append Order-1 --type OrderPlaced --data -
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
    /// The payload, a JSON value: inline, @FILE (the file's contents) or - (standard
    /// input). A JSON string starting with @ is quoted: --data '"@home"'
    #[arg(long, value_name = "JSON|@FILE|-")]
    pub data: String,
    /// Where the stream must be: a revision N, `any`, `no-stream` or `exists`
    #[arg(long, value_name = "N|any|no-stream|exists", default_value = "any")]
    pub expected: String,
    /// Metadata JSON (inline, @FILE or -): correlation_id, causation_id, user_id,
    /// traceparent, tracestate, headers {…}
    #[arg(long, value_name = "JSON|@FILE|-")]
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

/// The arguments of a command that runs another binary (`runnel bench`, `runnel demo`):
/// everything after the command name, `--help` included, passed through unchanged.
#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// Arguments for that binary, passed through unchanged (`--help` lists them)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<std::ffi::OsString>,
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
