//! The scale-out harness, shared by `tests/scale_out.rs` and the `scale_out` example
//! (`scripts/scale-out.sh`): `order-fulfillment run` processes on one PostgreSQL schema
//! and one broker, orders placed with `POST /orders` round-robin across the live
//! processes, a process killed with SIGKILL mid-load and what it held watched until it
//! runs elsewhere, and the end state checked against the event store.
//!
//! Every wait has a deadline; every child is stopped by its own PID when its guard drops.

#![allow(dead_code)] // the test and the example use different parts

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use order_fulfillment::customer::{CustomerCommand, CustomerError};
use order_fulfillment::product::{ProductCommand, ProductError};
use order_fulfillment::read_model::{self, ReadModel};
use order_fulfillment::{
    order_repository, register_catalog, upcasters, Customer, OrderStatus, Product,
};
use runnel::connect::{open_stores, OpenMode, StoreUrl, Stores};
use runnel::core::dead_letter::DeadLetterFilter;
use runnel::core::processor::InstanceStatus;
use runnel::core::{ReadStream, RecordedEvent, StreamName};
use runnel::postgres::sqlx::{self, postgres::PgPoolOptions, AssertSqlSafe, PgPool, Row};
use runnel::{CommandBus, Repository};

/// The bound the scale-out proves: a killed process's work runs again elsewhere this soon.
pub const TAKEOVER_MAX: Duration = Duration::from_secs(10);
/// How long a process may take to start listening (migrations on a fresh schema).
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long the takeover is watched before giving up (above [`TAKEOVER_MAX`], so a slow
/// takeover is measured and reported, not cut off).
pub const WATCH_DEADLINE: Duration = Duration::from_secs(45);
/// How long one order may take to be placed (retried on another process meanwhile).
pub const PLACE_DEADLINE: Duration = Duration::from_secs(30);
/// How long one HTTP request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the store is polled.
pub const POLL: Duration = Duration::from_millis(50);
/// A graceful stop (SIGTERM) gets this long before the child is killed.
pub const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// Lines of a child's stderr kept for failure messages.
pub const LOG_TAIL_LINES: usize = 60;
/// Orders above this many cents are declined (`--decline-above`).
pub const DECLINE_ABOVE_CENTS: i64 = 100_000;
/// Shipping addresses containing this are refused (`--unshippable`).
pub const UNSHIPPABLE: &str = "Atlantis";
/// Handler-bound work: every service waits this long per command (`--service-delay`).
pub const SERVICE_DELAY: &str = "5ms";
/// The saga's processor kind.
pub const SAGA_KIND: &str = "saga:order-fulfillment";
/// The prefix of the schemas the harness creates, `scaleout_` and 12 hex digits (also in
/// `scripts/pg-clean-test-schemas.sh`).
pub const SCHEMA_PREFIX: &str = "scaleout_";

pub const CUSTOMERS: [(&str, &str); 3] = [
    ("so-c-0", "Ada Lovelace"),
    ("so-c-1", "Grace Hopper"),
    ("so-c-2", "Alan Turing"),
];
pub const PRODUCTS: [(&str, &str); 3] = [
    ("so-p-0", "Espresso cup"),
    ("so-p-1", "Teapot"),
    ("so-p-2", "Milk jug"),
];

/// What an order is meant to end as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Reserved, charged, shipped, confirmed.
    Confirmed,
    /// Declined by the payment service: cancelled, never charged.
    Declined,
    /// No carrier: charged, then refunded, cancelled.
    Unshippable,
}

pub fn fate(i: usize) -> Fate {
    match i % 10 {
        3 => Fate::Declined,
        7 => Fate::Unshippable,
        _ => Fate::Confirmed,
    }
}

fn order_body(run: &str, i: usize) -> (String, serde_json::Value) {
    let order_id = format!("so-{run}-{i}");
    let (customer, _) = CUSTOMERS[i % CUSTOMERS.len()];
    let (product, _) = PRODUCTS[i % PRODUCTS.len()];
    let (unit_price_cents, address) = match fate(i) {
        Fate::Confirmed => (1250, "1 Main St".to_string()),
        Fate::Declined => (DECLINE_ABOVE_CENTS + 1, "1 Main St".to_string()),
        Fate::Unshippable => (1250, format!("9 {UNSHIPPABLE} Deep")),
    };
    let body = serde_json::json!({
        "order_id": order_id,
        "customer_id": customer,
        "items": [{"product_id": product, "quantity": 1 + i % 3, "unit_price_cents": unit_price_cents}],
        "shipping_address": address,
    });
    (order_id, body)
}

pub fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

/// A NATS bus of the run's own (subjects, streams and group leases), with a short group
/// lease so a killed holder's groups move within the takeover bound.
pub fn nats_bus(url: &str) -> String {
    nats_bus_partitioned(url, 1)
}

/// [`nats_bus`] with each topic split into `partitions` (`partitions=`; 1 leaves it out):
/// a group's partitions are balanced over the processes, so its work spreads.
pub fn nats_bus_partitioned(url: &str, partitions: u32) -> String {
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let tag = &tag[tag.len() - 12..];
    let url = with_param(
        url,
        &format!(
            "subject_prefix=so{tag}&stream_prefix=SO{tag}&lease_bucket=so_leases_{tag}&lease_ttl=2s"
        ),
    );
    if partitions > 1 {
        with_param(&url, &format!("partitions={partitions}"))
    } else {
        url
    }
}

/// Kafka topics and groups of the run's own (`prefix=`: runs on one broker never share
/// a group, so a member killed in an earlier run cannot hold this run's partitions),
/// with a short group session, so a killed member's partitions move within the takeover
/// bound: the broker drops the member once its session expires, and the survivors rejoin
/// (on the tests' tansu, built with scripts/tansu-group-fix.py, a follower waits 500 ms
/// for the leader's sync). 4 s leaves room for a loaded machine's late heartbeats.
pub fn kafka_bus(brokers: &str) -> String {
    kafka_bus_with_session(brokers, "4s")
}

/// [`kafka_bus`] with the given group session timeout. Runs that kill nothing use the
/// client's default, 10 s, so a member slowed down by the load is never dropped.
pub fn kafka_bus_with_session(brokers: &str, session_timeout: &str) -> String {
    let brokers = brokers.strip_prefix("kafka://").unwrap_or(brokers);
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let tag = &tag[tag.len() - 12..];
    format!(
        "kafka://{brokers}?prefix=so{tag}&session_timeout={session_timeout}&heartbeat_interval=500ms"
    )
}

/// One `order-fulfillment run` child, stopped by its own PID when dropped.
pub struct ServiceProcess {
    child: Child,
    pub pid: u32,
    pub base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServiceProcess {
    pub fn spawn(bin: &Path, index: usize, store: &str, bus: &str) -> anyhow::Result<Self> {
        Self::spawn_with(bin, index, store, bus, &[])
    }

    /// [`ServiceProcess::spawn`] with more `run` flags (e.g. `--service-concurrency 1`).
    pub fn spawn_with(
        bin: &Path,
        index: usize,
        store: &str,
        bus: &str,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args([
                "--store",
                store,
                "--bus",
                bus,
                "run",
                "--http",
                "127.0.0.1:0",
            ])
            .args(["--service-delay", SERVICE_DELAY])
            .args(["--decline-above", &DECLINE_ABOVE_CENTS.to_string()])
            .args(["--unshippable", UNSHIPPABLE])
            .args(extra)
            // SCALE_OUT_RUST_LOG: more of the children's logs, for a failure's reasons.
            .env(
                "RUST_LOG",
                std::env::var("SCALE_OUT_RUST_LOG").unwrap_or_else(|_| "warn,lapin=off".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let pid = child.id();
        let stderr = child.stderr.take().context("piped stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = Arc::clone(&log);
        // SCALE_OUT_LOG_DIR: every line of each child's stderr, in `<dir>/<pid>.log`.
        let mut copy = std::env::var_os("SCALE_OUT_LOG_DIR")
            .and_then(|dir| std::fs::File::create(Path::new(&dir).join(format!("{pid}.log"))).ok());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(file) = copy.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(file, "{line}");
                }
                if let Some(at) = line.find("listening on http://") {
                    let url = line[at + "listening on ".len()..].trim().to_string();
                    let _ = tx.send(url);
                }
                let mut kept = lines.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() == LOG_TAIL_LINES {
                    kept.remove(0);
                }
                kept.push(line);
            }
        });
        let mut process = ServiceProcess {
            child,
            pid,
            base: String::new(),
            log,
        };
        match rx.recv_timeout(START_DEADLINE) {
            Ok(base) => process.base = base,
            Err(_) => bail!(
                "process {index} (pid {pid}) did not start listening within {START_DEADLINE:?}:\n{}",
                process.tail()
            ),
        }
        Ok(process)
    }

    pub fn tail(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process's peak resident set (VmHWM), in KiB, while it runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILL, as a crash: nothing is released.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it has not stopped by [`STOP_DEADLINE`].
    pub fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(POLL);
        }
        self.kill();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Service processes on one fresh schema and one broker.
pub struct Cluster {
    pub schema: String,
    pub store: String,
    pub stores: Stores,
    pub pool: PgPool,
    pub processes: Vec<ServiceProcess>,
}

impl Cluster {
    /// Registers the catalog on a fresh `scaleout_…` schema of `pg`, then starts
    /// `processes` service processes of `bin` on it and `bus` (the first alone, as it
    /// migrates the schema).
    pub async fn start(bin: &Path, pg: &str, bus: &str, processes: usize) -> anyhow::Result<Self> {
        Self::start_with(bin, pg, bus, processes, &[]).await
    }

    /// [`Cluster::start`] with more `run` flags for every process.
    pub async fn start_with(
        bin: &Path,
        pg: &str,
        bus: &str,
        processes: usize,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        // Schema names have at most 40 characters: the prefix and the UUID's last 12 hex
        // digits (random in a v7 UUID).
        let uuid = uuid::Uuid::now_v7().simple().to_string();
        let schema = format!("{SCHEMA_PREFIX}{}", &uuid[uuid.len() - 12..]);
        let store = with_param(pg, &format!("schema={schema}"));
        let stores = open_stores(&StoreUrl::parse(&store)?, OpenMode::CreateIfMissing).await?;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(pg)
            .await
            .context("connect to PostgreSQL")?;
        let mut cluster = Cluster {
            schema,
            store,
            stores,
            pool,
            processes: Vec::new(),
        };
        register_catalog_entries(&cluster.stores).await?;
        for index in 0..processes {
            let process = ServiceProcess::spawn_with(bin, index, &cluster.store, bus, extra)?;
            eprintln!("  process {index}: pid {}, {}", process.pid, process.base);
            cluster.processes.push(process);
        }
        Ok(cluster)
    }

    pub fn tails(&self) -> String {
        self.processes
            .iter()
            .enumerate()
            .map(|(i, p)| format!("--- process {i} (pid {}):\n{}", p.pid, p.tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops the processes and drops the schema.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        for p in &mut self.processes {
            p.stop();
        }
        sqlx::query(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            self.schema
        )))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Registers the customers and products (through the library's command bus, on the same
/// store; again is harmless): the read model enriches orders with their names.
async fn register_catalog_entries(stores: &Stores) -> anyhow::Result<()> {
    let commands = CommandBus::new();
    register_catalog(
        &commands,
        Repository::<Customer>::new(Arc::clone(&stores.events)),
        Repository::<Product>::new(Arc::clone(&stores.events)),
    )?;
    for (id, name) in CUSTOMERS {
        match commands
            .execute::<Customer>(id, CustomerCommand::Register { name: name.into() })
            .await
        {
            Err(e) if matches!(e.rejected(), Some(CustomerError::AlreadyRegistered { .. })) => {}
            other => {
                other?;
            }
        }
    }
    for (sku, name) in PRODUCTS {
        let add = ProductCommand::Add {
            name: name.into(),
            unit_price_cents: 1250,
        };
        match commands.execute::<Product>(sku, add).await {
            Err(e) if matches!(e.rejected(), Some(ProductError::AlreadyAdded { .. })) => {}
            other => {
                other?;
            }
        }
    }
    Ok(())
}

/// The orders to place, the ones placed, and the processes to send the next to.
pub struct Load {
    run: String,
    total: usize,
    pause: Option<Duration>,
    next: AtomicUsize,
    placed: Mutex<Vec<(usize, String)>>,
    live: Mutex<Vec<String>>,
    turn: AtomicUsize,
}

impl Load {
    /// `total` orders through `bases` in turn; each client pauses `pause` between orders
    /// (`None`: as fast as the processes take them).
    pub fn new(total: usize, bases: Vec<String>, pause: Option<Duration>) -> Arc<Self> {
        let run = uuid::Uuid::now_v7().simple().to_string();
        Arc::new(Load {
            run: run[run.len() - 10..].to_string(),
            total,
            pause,
            next: AtomicUsize::new(0),
            placed: Mutex::new(Vec::new()),
            live: Mutex::new(bases),
            turn: AtomicUsize::new(0),
        })
    }

    pub fn placed_count(&self) -> usize {
        self.placed.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn placed(&self) -> Vec<(usize, String)> {
        self.placed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sends no more orders to `base`.
    pub fn retire(&self, base: &str) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|b| b != base);
    }

    fn target(&self) -> anyhow::Result<String> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        ensure!(!live.is_empty(), "no live process to place orders with");
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        Ok(live[turn % live.len()].clone())
    }

    /// Starts `clients` concurrent clients placing the orders.
    pub fn spawn_clients(
        self: &Arc<Self>,
        clients: usize,
    ) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
        let http = reqwest::Client::new();
        (0..clients)
            .map(|_| tokio::spawn(client(http.clone(), Arc::clone(self))))
            .collect()
    }
}

/// One client: places orders until all are placed, through the live processes in turn; an
/// order whose request failed (its process was killed under it) goes to the next process,
/// where `409 Conflict` means the first request did place it.
async fn client(http: reqwest::Client, load: Arc<Load>) -> anyhow::Result<()> {
    loop {
        let i = load.next.fetch_add(1, Ordering::SeqCst);
        if i >= load.total {
            return Ok(());
        }
        let (order_id, body) = order_body(&load.run, i);
        let deadline = Instant::now() + PLACE_DEADLINE;
        let mut retried = false;
        loop {
            let base = load.target()?;
            let sent = http
                .post(format!("{base}/orders"))
                .json(&body)
                .timeout(REQUEST_TIMEOUT)
                .send()
                .await;
            match sent.as_ref().map(|r| r.status()) {
                Ok(reqwest::StatusCode::ACCEPTED) => break,
                Ok(reqwest::StatusCode::CONFLICT) if retried => break,
                other => {
                    ensure!(
                        Instant::now() < deadline,
                        "order {order_id} could not be placed: {other:?}"
                    );
                    retried = true;
                    tokio::time::sleep(POLL).await;
                }
            }
        }
        load.placed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((i, order_id));
        if let Some(pause) = load.pause {
            tokio::time::sleep(pause).await;
        }
    }
}

/// Waits for every client; the first error wins.
pub async fn join_clients(
    clients: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<()> {
    for c in clients {
        c.await??;
    }
    Ok(())
}

/// What the killed process held when it died.
#[derive(Debug, Default)]
pub struct Held {
    /// (projection, version, partition) → checkpoint at the kill.
    pub projections: BTreeMap<(String, i64, i32), i64>,
    /// Outbox rows leased to its relay, not yet published.
    pub outbox_rows: BTreeSet<i64>,
    /// Saga timers (and queued local steps) leased to it.
    pub timers: BTreeSet<i64>,
    /// Saga instances in flight anywhere: id → version at the kill.
    pub in_flight: BTreeMap<String, i64>,
}

async fn held_by(pool: &PgPool, schema: &str, pid: u32) -> anyhow::Result<Held> {
    let mut held = Held::default();
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT name, version, partition, checkpoint FROM {schema}.projection_state \
         WHERE leased_by LIKE $1"
    )))
    .bind(format!("{pid}-%"))
    .fetch_all(pool)
    .await?;
    for row in rows {
        held.projections.insert(
            (row.get("name"), row.get("version"), row.get("partition")),
            row.get("checkpoint"),
        );
    }
    held.outbox_rows = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT seq FROM {schema}.outbox_messages \
         WHERE published_at IS NULL AND leased_by LIKE $1 AND leased_until > now()"
    )))
    .bind(format!("relay-{pid}-%"))
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    held.timers = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT id FROM {schema}.processor_timers WHERE leased_by LIKE $1"
    )))
    .bind(format!("%-{pid}-%"))
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    held.in_flight = in_flight(pool, schema).await?;
    Ok(held)
}

async fn in_flight(pool: &PgPool, schema: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    Ok(sqlx::query(AssertSqlSafe(format!(
        "SELECT id, version FROM {schema}.processor_instances \
         WHERE kind = $1 AND status IN ('running', 'compensating')"
    )))
    .bind(SAGA_KIND)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| (r.get("id"), r.get("version")))
    .collect())
}

/// The pid whose runner holds the order summaries' projection lease, if one does.
async fn projection_holder(pool: &PgPool, schema: &str) -> anyhow::Result<Option<u32>> {
    let owner: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT leased_by FROM {schema}.projection_state \
         WHERE name = $1 AND leased_by IS NOT NULL AND leased_until > now() LIMIT 1"
    )))
    .bind(read_model::ENRICHED_ORDERS)
    .fetch_optional(pool)
    .await?;
    Ok(owner.and_then(|o| o.split('-').next()?.parse().ok()))
}

/// How long after the kill each kind of held work was running again elsewhere.
#[derive(Debug, Default)]
pub struct Takeover {
    /// Every projection partition it held: leased by another process and past its
    /// checkpoint at the kill.
    pub projections: Option<Duration>,
    /// Every outbox row its relay had claimed: published.
    pub outbox: Option<Duration>,
    /// Every saga timer it had leased: fired or leased elsewhere.
    pub timers: Option<Duration>,
    /// Every saga in flight at the kill (anywhere): a step further, or finished. Covers
    /// the deliveries its consumers held (they come back to the group) and its groups'
    /// broker leases.
    pub sagas: Option<Duration>,
}

impl Takeover {
    /// When everything was running again.
    pub fn done(&self) -> Option<Duration> {
        Some(
            self.projections?
                .max(self.outbox?)
                .max(self.timers?)
                .max(self.sagas?),
        )
    }
}

/// The kill: the process holding the order summaries' projection lease (else the second)
/// stops getting orders and is SIGKILLed; then what it held is watched until it runs
/// elsewhere. Returns the victim's index, what it held and the takeover times.
pub async fn kill_and_watch(
    cluster: &mut Cluster,
    load: &Load,
) -> anyhow::Result<(usize, Held, Takeover)> {
    let holder = projection_holder(&cluster.pool, &cluster.schema).await?;
    let victim = cluster
        .processes
        .iter()
        .position(|p| Some(p.pid) == holder)
        .unwrap_or(1.min(cluster.processes.len() - 1));
    let pid = cluster.processes[victim].pid;
    load.retire(&cluster.processes[victim].base);
    let held = held_by(&cluster.pool, &cluster.schema, pid).await?;
    cluster.processes[victim].kill();
    let killed_at = Instant::now();
    eprintln!(
        "  killed process {victim} (pid {pid}{}) with SIGKILL after {} orders; it held {} projection partitions, {} outbox rows, {} saga timers; {} sagas in flight",
        if holder == Some(pid) { ", the order summaries' runner" } else { "" },
        load.placed_count(),
        held.projections.len(),
        held.outbox_rows.len(),
        held.timers.len(),
        held.in_flight.len()
    );
    let takeover = watch_takeover(&cluster.pool, &cluster.schema, pid, &held, killed_at).await?;
    Ok((victim, held, takeover))
}

/// Polls until everything `held` is running again in a live process, or
/// [`WATCH_DEADLINE`].
async fn watch_takeover(
    pool: &PgPool,
    schema: &str,
    pid: u32,
    held: &Held,
    killed_at: Instant,
) -> anyhow::Result<Takeover> {
    let mut takeover = Takeover::default();
    let deadline = killed_at + WATCH_DEADLINE;
    let mut waiting_sagas = held.in_flight.clone();
    let victim_owner = format!("{pid}-");
    let outbox_rows: Vec<i64> = held.outbox_rows.iter().copied().collect();
    let timers: Vec<i64> = held.timers.iter().copied().collect();
    let mut described_late_sagas = false;
    loop {
        let now = killed_at.elapsed();
        if !described_late_sagas && now >= TAKEOVER_MAX && takeover.sagas.is_none() {
            described_late_sagas = true;
            let waiting: Vec<String> = waiting_sagas.keys().cloned().collect();
            eprintln!(
                "  after {now:?}, {} sagas have not moved:\n{}",
                waiting.len(),
                describe_sagas(pool, schema, &waiting).await?
            );
        }
        if takeover.projections.is_none() {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT name, version, partition, checkpoint, leased_by, \
                 coalesce(leased_until > now(), false) AS live FROM {schema}.projection_state"
            )))
            .fetch_all(pool)
            .await?;
            let moved = held.projections.iter().all(|(key, checkpoint)| {
                rows.iter().any(|r| {
                    let row_key: (String, i64, i32) =
                        (r.get("name"), r.get("version"), r.get("partition"));
                    let owner: Option<String> = r.get("leased_by");
                    row_key == *key
                        && r.get::<i64, _>("checkpoint") > *checkpoint
                        && owner.is_some_and(|o| !o.starts_with(&victim_owner))
                        && r.get::<bool, _>("live")
                })
            });
            if moved {
                takeover.projections = Some(now);
            }
        }
        if takeover.outbox.is_none() {
            let pending: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT count(*) FROM {schema}.outbox_messages \
                 WHERE seq = ANY($1) AND published_at IS NULL"
            )))
            .bind(&outbox_rows)
            .fetch_one(pool)
            .await?;
            if pending == 0 {
                takeover.outbox = Some(now);
            }
        }
        if takeover.timers.is_none() {
            let still: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT count(*) FROM {schema}.processor_timers \
                 WHERE id = ANY($1) AND leased_by LIKE $2"
            )))
            .bind(&timers)
            .bind(format!("%-{pid}-%"))
            .fetch_one(pool)
            .await?;
            if still == 0 {
                takeover.timers = Some(now);
            }
        }
        if takeover.sagas.is_none() {
            let current = in_flight(pool, schema).await?;
            // Finished (no longer in flight) or a version further: it moved.
            waiting_sagas.retain(|id, version| current.get(id).is_some_and(|v| v <= version));
            if waiting_sagas.is_empty() {
                takeover.sagas = Some(now);
            }
        }
        if takeover.done().is_some() {
            return Ok(takeover);
        }
        if Instant::now() >= deadline {
            eprintln!(
                "  not taken over after {WATCH_DEADLINE:?}: {takeover:?}; sagas that did not move: {:?}",
                waiting_sagas.keys().take(10).collect::<Vec<_>>()
            );
            return Ok(takeover);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What a late takeover's diagnosis needs: each waiting saga's state, and the outbox rows
/// not yet published, by topic.
async fn describe_sagas(pool: &PgPool, schema: &str, ids: &[String]) -> anyhow::Result<String> {
    let mut out = String::new();
    let sagas = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, status, version, state, updated_at::text AS updated_at \
         FROM {schema}.processor_instances WHERE kind = $1 AND id = ANY($2) ORDER BY id LIMIT 10"
    )))
    .bind(SAGA_KIND)
    .bind(ids)
    .fetch_all(pool)
    .await?;
    for r in sagas {
        let state: String = r.get("state");
        out.push_str(&format!(
            "    saga {} {} v{} updated {}: {}\n",
            r.get::<String, _>("id"),
            r.get::<String, _>("status"),
            r.get::<i64, _>("version"),
            r.get::<String, _>("updated_at"),
            state.chars().take(300).collect::<String>()
        ));
    }
    let outbox = sqlx::query(AssertSqlSafe(format!(
        "SELECT topic, count(*) AS n, coalesce(max(leased_by), '') AS leased_by, \
                min(created_at)::text AS oldest \
         FROM {schema}.outbox_messages WHERE published_at IS NULL GROUP BY topic"
    )))
    .fetch_all(pool)
    .await?;
    for r in outbox {
        out.push_str(&format!(
            "    unpublished outbox rows on {}: {} (oldest {}, leased by {:?})\n",
            r.get::<String, _>("topic"),
            r.get::<i64, _>("n"),
            r.get::<String, _>("oldest"),
            r.get::<String, _>("leased_by")
        ));
    }
    Ok(out)
}

/// Orders whose saga has finished (completed or compensated).
pub async fn finished_count(cluster: &Cluster) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.processor_instances \
         WHERE kind = $1 AND status IN ('completed', 'compensated')",
        cluster.schema
    )))
    .bind(SAGA_KIND)
    .fetch_one(&cluster.pool)
    .await?)
}

/// Waits until every order's saga has finished and the order has its final event
/// (confirmed, or cancelled after its saga compensated), up to `deadline` from now;
/// `progress` is called about every second with the count of finished sagas. Fails
/// naming a few unfinished orders.
pub async fn settle(
    cluster: &Cluster,
    orders: &[(usize, String)],
    deadline: Duration,
    mut progress: impl FnMut(i64),
) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    let mut reported = Instant::now();
    loop {
        let finished = finished_count(cluster).await?;
        if finished >= orders.len() as i64 {
            break;
        }
        if reported.elapsed() >= Duration::from_secs(1) {
            progress(finished);
            reported = Instant::now();
        }
        if Instant::now() >= until {
            let mut open = Vec::new();
            for (_, id) in orders {
                let record = cluster.stores.processors.load(SAGA_KIND, id).await?;
                if !record.as_ref().is_some_and(|r| {
                    matches!(
                        r.status,
                        InstanceStatus::Completed | InstanceStatus::Compensated
                    )
                }) {
                    open.push((
                        id.clone(),
                        record.map(|r| (r.status, r.state, r.last_error)),
                    ));
                }
            }
            bail!(
                "{} of {} orders have no finished saga after {deadline:?}, e.g. {:?}",
                open.len(),
                orders.len(),
                &open[..open.len().min(5)]
            );
        }
        tokio::time::sleep(POLL * 2).await;
    }
    // A compensated saga's order is cancelled afterwards, by the consumer of its
    // `SagaCompensated` event: wait for every order's own final event too.
    let mut open: Vec<&String> = orders.iter().map(|(_, id)| id).collect();
    loop {
        let mut still = Vec::new();
        for id in open {
            let events = stream(&cluster.stores, &format!("Order-{id}")).await?;
            let last = events.last().map(|e| e.event_type.as_str());
            if !matches!(last, Some("OrderConfirmed" | "OrderCancelled")) {
                still.push(id);
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() >= until {
            bail!(
                "{} of {} orders have finished sagas but no final event after {deadline:?}, e.g. {:?}",
                still.len(),
                orders.len(),
                &still[..still.len().min(5)]
            );
        }
        open = still;
        tokio::time::sleep(POLL * 2).await;
    }
}

async fn stream(stores: &Stores, name: &str) -> anyhow::Result<Vec<RecordedEvent>> {
    Ok(stores
        .events
        .read_stream(&StreamName::new(name)?, ReadStream::forward(1000))
        .await?)
}

fn types(events: &[RecordedEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

/// What [`verify`] found.
#[derive(Debug, Default)]
pub struct Verified {
    pub confirmed: usize,
    pub cancelled: usize,
    pub charged: usize,
    pub refunded: usize,
    /// Saga steps whose reply deadline fired: a command or its reply that was not
    /// delivered in time (the saga then sent the command again). None of the harness's
    /// services is slow enough to miss the 30 s deadline, so any is a delivery that went
    /// missing (also one the step's retry then made good).
    pub deadlines_fired: usize,
}

/// Every invariant of the end state, order by order: the order's events follow its life
/// with one final event (per-key order, exactly once), its saga finished the same way, the
/// ledger charged it at most once and refunded it iff it was cancelled after the charge,
/// and the read model equals a recomputation from the event store. No dead letters.
pub async fn verify(cluster: &Cluster, orders: &[(usize, String)]) -> anyhow::Result<Verified> {
    let stores = &cluster.stores;
    let upcasters = Arc::new(upcasters()?);
    let repository = order_repository(Arc::clone(&stores.events), None, Arc::clone(&upcasters));
    let model = ReadModel::open(stores, &read_model::projections(&upcasters)).await?;
    let mut streams = Vec::with_capacity(orders.len());
    for (_, id) in orders {
        streams.push(stream(stores, &format!("Order-{id}")).await?);
    }
    // The read model first catches up with every order's last event.
    let head = streams
        .iter()
        .filter_map(|events| events.last().map(|e| e.position))
        .max()
        .context("no order events")?;
    model.wait_for(head).await?;
    let names: BTreeMap<&str, &str> = CUSTOMERS.into_iter().chain(PRODUCTS).collect();
    let mut verified = Verified::default();
    for ((i, id), events) in orders.iter().zip(streams) {
        let fate = fate(*i);
        let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
        ensure!(
            revisions == (1..=events.len() as u64).collect::<Vec<_>>(),
            "order {id}: revisions {revisions:?}"
        );
        let want = match fate {
            Fate::Confirmed => ["OrderPlaced", "OrderConfirmed"],
            Fate::Declined | Fate::Unshippable => ["OrderPlaced", "OrderCancelled"],
        };
        ensure!(
            types(&events) == want,
            "order {id} ({fate:?}): events {:?}",
            types(&events)
        );

        let saga = stores
            .processors
            .load(SAGA_KIND, id)
            .await?
            .ok_or_else(|| anyhow!("order {id} has no saga"))?;
        let saga_status = match fate {
            Fate::Confirmed => InstanceStatus::Completed,
            _ => InstanceStatus::Compensated,
        };
        ensure!(
            saga.status == saga_status,
            "saga of {id}: {} ({:?}), wanted {saga_status}",
            saga.status,
            saga.last_error
        );

        let ledger = stream(stores, &format!("Payment-{id}")).await?;
        let want: &[&str] = match fate {
            Fate::Confirmed => &["PaymentCharged"],
            Fate::Declined => &[],
            Fate::Unshippable => &["PaymentCharged", "PaymentRefunded"],
        };
        ensure!(
            types(&ledger) == want,
            "ledger of {id} ({fate:?}): {:?}",
            types(&ledger)
        );
        verified.charged += ledger
            .iter()
            .filter(|e| e.event_type == "PaymentCharged")
            .count();
        verified.refunded += ledger
            .iter()
            .filter(|e| e.event_type == "PaymentRefunded")
            .count();

        // The read model against a recomputation from the order's events.
        let order = repository.load(id).await?.state;
        let summary = model
            .order_summary(id)
            .await?
            .ok_or_else(|| anyhow!("order {id} is not in the read model"))?;
        let status = order.status().context("a placed order has a status")?;
        match status {
            OrderStatus::Confirmed => verified.confirmed += 1,
            OrderStatus::Cancelled => verified.cancelled += 1,
            other => bail!("order {id} ended {other}"),
        }
        let lines: Vec<(String, Option<String>, i64, i64)> = summary
            .lines
            .iter()
            .map(|l| {
                (
                    l.sku.clone(),
                    l.product_name.clone(),
                    l.quantity,
                    l.unit_price_cents,
                )
            })
            .collect();
        let recomputed: Vec<(String, Option<String>, i64, i64)> = order
            .items()
            .iter()
            .map(|l| {
                (
                    l.product_id.clone(),
                    names.get(l.product_id.as_str()).map(|n| n.to_string()),
                    i64::from(l.quantity),
                    l.unit_price_cents,
                )
            })
            .collect();
        let last_position = events.last().map(|e| e.position.get());
        ensure!(
            summary.status == status
                && summary.customer_id == order.customer_id()
                && summary.customer_name.as_deref() == names.get(order.customer_id()).copied()
                && summary.total_cents == order.total_cents()
                && summary.item_count
                    == order.items().iter().map(|l| i64::from(l.quantity)).sum::<i64>()
                && lines == recomputed
                && Some(summary.last_position) == last_position,
            "read model of {id} differs from its events: {summary:?} vs {status}, {lines:?} vs {recomputed:?}, last position {last_position:?}"
        );
    }
    let dead = stores
        .dead_letters
        .count(&DeadLetterFilter::default())
        .await?;
    ensure!(dead == 0, "{dead} messages were dead-lettered");
    let fired: Vec<(String, String, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT instance, coalesce(step, ''), at::text FROM {}.processor_history \
         WHERE kind = $1 AND what = 'deadline-fired' ORDER BY at",
        cluster.schema
    )))
    .bind(SAGA_KIND)
    .fetch_all(&cluster.pool)
    .await?;
    verified.deadlines_fired = fired.len();
    for (instance, step, at) in fired.iter().take(10) {
        eprintln!("WARNING: saga {instance}: the reply deadline of step {step} fired at {at} (a command or its reply went missing)");
    }
    Ok(verified)
}

/// The `order-fulfillment` binary next to the running executable (`target/<profile>/`),
/// for the example (the test has `CARGO_BIN_EXE_order-fulfillment`).
pub fn sibling_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/scale_out → target/<profile>/order-fulfillment
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the executable has no parent directory")?;
    Ok(dir.join("order-fulfillment"))
}
