//! `runnel-bench outbox`: the relay's throughput from commit to broker ack and its
//! commit-to-publish latency on the embedded bus, beside the bus publisher's own raw rate
//! measured in the same run, on SQLite (and PostgreSQL with a `--store` URL).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use runnel::async_trait;
use runnel::outbox::{Relay, RelayOptions};
use runnel_core::bus::Publisher;
use runnel_core::outbox::{OutboxMessage, OutboxStore};
use runnel_core::{BusError, Message, TopicName};
use runnel_postgres::{PostgresOptions, PostgresOutbox, PostgresStore};
use runnel_sqlite::{SqliteOutbox, SqliteStore};

use crate::cli::BenchOutboxArgs;
use crate::exit::BadInput;
use crate::output::print_line;

/// Messages per transaction when the outbox is filled for the drain scenario.
const FILL_PER_TX: usize = 100;
/// Concurrent producers in the latency scenario, each committing one message per unit of
/// work.
const PRODUCERS: usize = 8;
/// Payload of every benchmark message, in bytes (JSON).
const PAYLOAD_BYTES: usize = 200;
/// Distinct ordering keys.
const KEYS: usize = 100;
/// Rows per relay claim, and messages per raw publish call (the same batches).
const BATCH: usize = 1000;
/// Longest a drain may take before the benchmark gives up.
const DRAIN_DEADLINE: Duration = Duration::from_secs(600);

struct Measured {
    rate: f64,
    /// Writer commits and fsynced commits during the scenario (SQLite).
    commits: Option<(u64, u64)>,
    p50: Option<Duration>,
    p99: Option<Duration>,
}

/// A publisher that records when each message was acknowledged by the bus.
struct AckClock {
    inner: Arc<dyn Publisher>,
    acked: Mutex<HashMap<String, Instant>>,
}

#[async_trait]
impl Publisher for AckClock {
    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        let ids: Vec<String> = messages.iter().map(|m| m.id.clone()).collect();
        self.inner.publish(topic, messages).await?;
        let now = Instant::now();
        let mut acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            acked.entry(id).or_insert(now);
        }
        Ok(())
    }
}

fn bench_message(topic: &TopicName, n: usize) -> OutboxMessage {
    let pad = "x".repeat(PAYLOAD_BYTES.saturating_sub(40));
    OutboxMessage::new(
        topic.clone(),
        Message::json("Benched", &serde_json::json!({ "n": n, "pad": pad }))
            .with_key(format!("k{}", n % KEYS)),
    )
}

/// How one backend writes to its outbox.
#[async_trait]
trait Backend: Send + Sync {
    async fn enqueue_tx(&self, messages: Vec<OutboxMessage>) -> anyhow::Result<()>;
    fn outbox(&self) -> Arc<dyn OutboxStore>;
    fn bus(&self) -> Arc<dyn Publisher>;
    /// The SQLite writer's (commits, fsynced commits) so far; `None` elsewhere.
    fn writer_commits(&self) -> Option<(u64, u64)> {
        None
    }
}

struct SqliteBackend {
    outbox: SqliteOutbox,
    bus: Arc<runnel_sqlite::bus::SqliteBus>,
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn enqueue_tx(&self, messages: Vec<OutboxMessage>) -> anyhow::Result<()> {
        let inner = self.outbox.clone();
        self.outbox
            .unit_of_work(move |uow| inner.enqueue_in(uow, &messages))
            .await?;
        Ok(())
    }
    fn outbox(&self) -> Arc<dyn OutboxStore> {
        Arc::new(self.outbox.clone())
    }
    fn bus(&self) -> Arc<dyn Publisher> {
        self.bus.clone()
    }
    fn writer_commits(&self) -> Option<(u64, u64)> {
        let stats = self.outbox.store().writer_stats();
        Some((stats.commits, stats.synced_commits))
    }
}

struct PostgresBackend {
    outbox: PostgresOutbox,
    bus: Arc<runnel_postgres::bus::PostgresBus>,
}

#[async_trait]
impl Backend for PostgresBackend {
    async fn enqueue_tx(&self, messages: Vec<OutboxMessage>) -> anyhow::Result<()> {
        let mut tx = self.outbox.store().pool().begin().await?;
        self.outbox.enqueue_in(&mut tx, &messages).await?;
        tx.commit().await?;
        Ok(())
    }
    fn outbox(&self) -> Arc<dyn OutboxStore> {
        Arc::new(self.outbox.clone())
    }
    fn bus(&self) -> Arc<dyn Publisher> {
        self.bus.clone()
    }
}

/// The bus publisher's own rate: `total` messages in calls of [`BATCH`], one caller.
async fn raw_publish(bus: &dyn Publisher, total: usize) -> anyhow::Result<f64> {
    let topic = TopicName::new("bench.raw")?;
    let messages: Vec<Message> = (0..total)
        .map(|n| bench_message(&topic, n).message)
        .collect();
    let started = Instant::now();
    for chunk in messages.chunks(BATCH) {
        bus.publish(&topic, chunk.to_vec()).await?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// A publisher that counts the messages the bus acknowledged, so the drain's end is
/// noticed without querying the outbox while the relay works.
struct AckCount {
    inner: Arc<dyn Publisher>,
    acked: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

#[async_trait]
impl Publisher for AckCount {
    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        let n = messages.len();
        self.inner.publish(topic, messages).await?;
        self.acked.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_one();
        Ok(())
    }
}

/// Fill `total` committed rows, then time a relay draining them (commit → broker ack,
/// until every row is marked published).
async fn drain(backend: &dyn Backend, total: usize) -> anyhow::Result<Measured> {
    let topic = TopicName::new("bench.drain")?;
    let mut n = 0;
    while n < total {
        let batch: Vec<OutboxMessage> = (n..(n + FILL_PER_TX).min(total))
            .map(|i| bench_message(&topic, i))
            .collect();
        n += batch.len();
        backend.enqueue_tx(batch).await?;
    }
    let outbox = backend.outbox();
    let acks = Arc::new(AckCount {
        inner: backend.bus(),
        acked: Default::default(),
        changed: Default::default(),
    });
    let commits_before = backend.writer_commits();
    let started = Instant::now();
    let relay = Relay::new(
        Arc::clone(&outbox),
        acks.clone(),
        RelayOptions::default()
            .batch_size(BATCH)
            .poll_interval(Duration::from_millis(10)),
    )?
    .start();
    // Every message acknowledged (the relay's own status queries are left out of the
    // way), then the last marks.
    while acks.acked.load(std::sync::atomic::Ordering::SeqCst) < total {
        anyhow::ensure!(
            started.elapsed() < DRAIN_DEADLINE,
            "the drain took too long"
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), acks.changed.notified()).await;
    }
    loop {
        if outbox.status().await?.pending == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < DRAIN_DEADLINE,
            "the drain took too long"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    relay.shutdown().await?;
    let commits = match (commits_before, backend.writer_commits()) {
        (Some((c0, s0)), Some((c1, s1))) => Some((c1 - c0, s1 - s0)),
        _ => None,
    };
    Ok(Measured {
        rate: total as f64 / elapsed.as_secs_f64(),
        commits,
        p50: None,
        p99: None,
    })
}

/// Producers commit one message per transaction for `duration` while a relay publishes;
/// latency = broker ack − commit returned.
async fn live(backend: Arc<dyn Backend>, duration: Duration) -> anyhow::Result<Measured> {
    let topic = TopicName::new("bench.live")?;
    let acks = Arc::new(AckClock {
        inner: backend.bus(),
        acked: Mutex::default(),
    });
    let relay = Relay::new(
        backend.outbox(),
        acks.clone(),
        RelayOptions::default()
            .batch_size(BATCH)
            .poll_interval(Duration::from_millis(100)),
    )?
    .start();
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();
    let mut producers = tokio::task::JoinSet::new();
    for p in 0..PRODUCERS {
        let (backend, topic, committed) =
            (Arc::clone(&backend), topic.clone(), Arc::clone(&committed));
        producers.spawn(async move {
            let mut i = p;
            while started.elapsed() < duration {
                let m = bench_message(&topic, i);
                let id = m.message.id.clone();
                backend.enqueue_tx(vec![m]).await?;
                committed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, Instant::now());
                i += PRODUCERS;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = producers.join_next().await {
        r??;
    }
    let total = committed.lock().unwrap_or_else(|p| p.into_inner()).len();
    let outbox = backend.outbox();
    let deadline = Instant::now() + DRAIN_DEADLINE;
    while outbox.status().await?.pending > 0 {
        anyhow::ensure!(Instant::now() < deadline, "the relay did not catch up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    relay.shutdown().await?;
    let committed = committed.lock().unwrap_or_else(|p| p.into_inner());
    let acked = acks.acked.lock().unwrap_or_else(|p| p.into_inner());
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    for (id, at) in committed.iter() {
        if let Some(ack) = acked.get(id) {
            // An ack before the producer noted its commit counts as zero.
            hist.record(ack.saturating_duration_since(*at).as_micros() as u64)?;
        }
    }
    Ok(Measured {
        rate: total as f64 / elapsed.as_secs_f64(),
        commits: None,
        p50: Some(Duration::from_micros(hist.value_at_quantile(0.50))),
        p99: Some(Duration::from_micros(hist.value_at_quantile(0.99))),
    })
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("–".into(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    })
}

async fn bench_backend(
    name: &str,
    backend: Arc<dyn Backend>,
    total: usize,
    duration: Duration,
) -> anyhow::Result<()> {
    let raw = raw_publish(&*backend.bus(), total).await?;
    let drained = drain(&*backend, total).await?;
    let live = live(Arc::clone(&backend), duration).await?;
    for (scenario, m) in [
        (format!("drain {total} committed rows"), drained),
        (
            format!("{PRODUCERS} producers, 1 message per commit, live"),
            live,
        ),
    ] {
        // The writer's commits (and fsyncs) the drain took, where the store counts them.
        let scenario = match m.commits {
            Some((commits, fsyncs)) => {
                format!("{scenario} ({commits} commits, {fsyncs} fsynced)")
            }
            None => scenario,
        };
        print_line(&format!(
            "| {name} | {scenario} | {:.0} | {raw:.0} | {:.2} | {} | {} |",
            m.rate,
            m.rate / raw,
            ms(m.p50),
            ms(m.p99)
        ))?;
    }
    Ok(())
}

/// `runnel-bench outbox`.
pub async fn bench(args: BenchOutboxArgs, postgres: Option<String>) -> anyhow::Result<()> {
    if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 600.0) {
        return Err(BadInput("--seconds must be in (0, 600]".into()).into());
    }
    let (total, duration) = if args.quick {
        (500, Duration::from_millis(300))
    } else {
        (args.messages, Duration::from_secs_f64(args.seconds))
    };
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::current_dir()?,
    };
    print_line(&format!(
        "outbox relay: {PAYLOAD_BYTES}-byte messages over {KEYS} keys, relay batches of {BATCH}, \
         embedded bus; raw = the same bus's publish() in batches of {BATCH}, one caller"
    ))?;
    print_line("| store | scenario | relay msg/s (commit → broker ack) | raw publish msg/s | ratio | commit→publish p50 | p99 |")?;
    print_line("|---|---|---|---|---|---|---|")?;
    {
        let tmp = tempfile::Builder::new()
            .prefix("runnel-bench-outbox-")
            .tempdir_in(&dir)
            .with_context(|| format!("cannot create a directory in {}", dir.display()))?;
        let store = SqliteStore::open(tmp.path().join("outbox.db"))?;
        let bus = runnel_sqlite::bus::SqliteBus::new(store.clone(), Default::default())?;
        let backend = Arc::new(SqliteBackend {
            // The relay publishes to the bus on this same file.
            outbox: SqliteOutbox::new(store).with_publisher_in_this_file(),
            bus: Arc::new(bus),
        });
        bench_backend("SQLite", backend, total, duration).await?;
    }
    if let Some(url) = postgres {
        let schema = format!("bo_{}", uuid::Uuid::now_v7().simple());
        let options = PostgresOptions::from_url(&url)
            .map_err(|e| BadInput(e.to_string()))?
            .schema(schema.clone())
            .pool_size(32);
        let store = PostgresStore::connect_with(options).await?;
        let bus = runnel_postgres::bus::PostgresBus::new(store.clone(), Default::default()).await?;
        let backend = Arc::new(PostgresBackend {
            outbox: PostgresOutbox::new(store.clone()).await?,
            bus: Arc::new(bus),
        });
        let result = bench_backend("PostgreSQL", backend, total, duration).await;
        runnel_postgres::sqlx::query(runnel_postgres::sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {schema} CASCADE"
        )))
        .execute(store.pool())
        .await?;
        result?;
    }
    if let Some(bytes) = crate::rss::peak_rss_bytes() {
        let rss = bytes as f64 / (1024.0 * 1024.0);
        print_line(&format!("peak RSS: {rss:.0} MiB"))?;
    }
    Ok(())
}
