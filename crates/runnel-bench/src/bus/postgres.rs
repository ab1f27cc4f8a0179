//! `runnel-bench bus --store postgres://…`: the publish and end-to-end scenarios on the
//! PostgreSQL bus ([`PostgresBus`]), beside raw INSERTs and DELETEs of the same rows
//! through the same driver (sqlx) at the same durability (`synchronous_commit = on`), in
//! fresh schemas that are dropped at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use runnel_core::bus::{Publisher, SubscribeOptions, Subscriber as _};
use runnel_core::{GroupName, TopicName};
use runnel_postgres::bus::BusOptions;
use runnel_postgres::sqlx::{self, Connection as _, PgConnection};
use runnel_postgres::{PostgresBus, PostgresDeadLetters, PostgresOptions, PostgresStore};

use super::end_to_end::{self, Endpoints, IN_FLIGHT};
use super::publish;
use super::workload::{message, Budget, Latency, Run, KEYS, PAYLOAD};
use super::{rate_and_latency, Settings, BATCH, PUBLISHERS, ROUNDS};
use crate::report::Row;
use crate::scenario::counted;

/// Every scenario of a PostgreSQL run, with the server's version.
pub struct Outcome {
    pub server_version: String,
    pub rows: Vec<Row>,
}

/// Runs the scenarios in fresh schemas on the server `url` names and drops them after,
/// also when a scenario failed.
pub async fn run(url: &str, s: Settings) -> anyhow::Result<Outcome> {
    // Schema names are at most 40 characters: keep the UUID's last 24 hex digits (the
    // low timestamp bits and the random part).
    let uuid = runnel_core::uuid::Uuid::now_v7().simple().to_string();
    let suffix = &uuid[uuid.len() - 24..];
    let runnel_schema = format!("bench_bus_{suffix}");
    let raw_schema = format!("bench_bus_raw_{suffix}");
    let options = PostgresOptions::from_url(url)?;
    let base_url = options.url.clone();
    let outcome = scenarios(&base_url, options, &runnel_schema, &raw_schema, s).await;
    let mut conn = PgConnection::connect(&base_url)
        .await
        .context("connect to drop the benchmark schemas")?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {runnel_schema} CASCADE; DROP SCHEMA IF EXISTS {raw_schema} CASCADE"
    )))
    .execute(&mut conn)
    .await
    .context("drop the benchmark schemas")?;
    outcome
}

async fn scenarios(
    base_url: &str,
    options: PostgresOptions,
    runnel_schema: &str,
    raw_schema: &str,
    s: Settings,
) -> anyhow::Result<Outcome> {
    let pool_size = usize::try_from(options.pool_size).context("pool size fits usize")?;
    let store = PostgresStore::connect_with(options.schema(runnel_schema)).await?;
    let bus = Arc::new(PostgresBus::new(store.clone(), BusOptions::default()).await?);
    let server_version = create_raw_tables(base_url, raw_schema).await?;
    let group = GroupName::new("bench")?;
    let shapes = [(1usize, 1usize), (PUBLISHERS, 1), (1, BATCH)];
    let mut topics = Vec::with_capacity(shapes.len());
    for (i, _) in shapes.iter().enumerate() {
        topics.push(TopicName::new(format!("bench-publish-{i}"))?);
    }
    let e2e_topic = TopicName::new("bench-end-to-end")?;
    // One group per topic, so every publish writes one queue row; the streams are dropped
    // at once (nothing is claimed).
    for topic in topics.iter().chain([&e2e_topic]) {
        drop(
            bus.subscribe(topic, &group, SubscribeOptions::default())
                .await?,
        );
    }
    let ends = Endpoints {
        publisher: bus.clone(),
        subscriber: bus.clone(),
        dead_letters: Arc::new(PostgresDeadLetters::new(store.clone())),
        topic: e2e_topic,
        group,
    };

    let mut publish_totals = Vec::with_capacity(shapes.len());
    for _ in &shapes {
        publish_totals.push((Run::empty()?, Run::empty()?));
    }
    let (mut e2e, mut e2e_raw) = (Run::empty()?, Run::empty()?);
    let mut raw_concurrent = Run::empty()?;
    let budget = s.round_budget();
    let no_commit_counter = || 0;
    for round in 0..ROUNDS {
        let of = format!("round {}/{ROUNDS}", round + 1);
        for (i, (publishers, per_call)) in shapes.iter().enumerate() {
            let shape = publish::Shape {
                publishers: *publishers,
                messages_per_call: *per_call,
            };
            let publisher: Arc<dyn Publisher> = bus.clone();
            let label = format!("PostgreSQL publish, {publishers} × {per_call} msg/call, {of}");
            let runnel = counted(&label, "messages", |c| {
                publish::run(publisher, &topics[i], shape, budget, c, &no_commit_counter)
            })
            .await?;
            publish_totals[i].0.add(&runnel)?;
            let per_tx = publishers * per_call;
            let raw = counted(
                &format!("raw INSERT, {per_tx} msg/tx, {of}"),
                "messages",
                |c| raw_publish(base_url, raw_schema, per_tx, budget, c),
            )
            .await?;
            publish_totals[i].1.add(&raw)?;
            if *publishers > 1 {
                let raw = counted(
                    &format!("raw INSERT, 1 msg/tx on {pool_size} connections, {of}"),
                    "messages",
                    |c| raw_publish_concurrent(base_url, raw_schema, pool_size, budget, c),
                )
                .await?;
                raw_concurrent.add(&raw)?;
            }
        }
        let run = counted(&format!("PostgreSQL end to end, {of}"), "acked", |c| {
            end_to_end::runnel_round(&ends, budget, c, &no_commit_counter)
        })
        .await?;
        e2e.add(&run)?;
        let run = counted(
            &format!("raw INSERT + SELECT + DELETE, {of}"),
            "acked",
            |c| raw_end_to_end(base_url, raw_schema, IN_FLIGHT, budget, c),
        )
        .await?;
        e2e_raw.add(&run)?;
    }
    drop(ends);
    drop(bus);

    let labels = [
        "PostgreSQL publish, 1 publisher × 1 msg/call",
        "PostgreSQL publish, 64 publishers × 1 msg/call",
        "PostgreSQL publish, 1 publisher × 100 msg/call",
    ];
    let mut rows = Vec::new();
    for (i, (runnel, raw)) in publish_totals.iter().enumerate() {
        let per_tx = shapes[i].0 * shapes[i].1;
        rows.push(Row {
            scenario: format!("{} vs raw INSERT {per_tx} msg/tx, 1 connection", labels[i]),
            runnel: rate_and_latency(runnel),
            baseline: rate_and_latency(raw),
            ratio: Some(runnel.per_second() / raw.per_second().max(1e-9)),
            target: None,
        });
        if shapes[i].0 > 1 {
            rows.push(Row {
                scenario: format!(
                    "{} vs raw INSERT 1 msg/tx on {pool_size} connections (Runnel's pool size)",
                    labels[i]
                ),
                runnel: rate_and_latency(runnel),
                baseline: rate_and_latency(&raw_concurrent),
                ratio: Some(runnel.per_second() / raw_concurrent.per_second().max(1e-9)),
                target: None,
            });
        }
    }
    rows.push(Row {
        scenario: format!(
            "PostgreSQL end to end: publish → router (default layers, no-op handler) → ack, {IN_FLIGHT} in flight, vs raw INSERT + SELECT + DELETE, {IN_FLIGHT} msg/tx"
        ),
        runnel: rate_and_latency(&e2e),
        baseline: rate_and_latency(&e2e_raw),
        ratio: Some(e2e.per_second() / e2e_raw.per_second().max(1e-9)),
        target: None,
    });
    Ok(Outcome {
        server_version,
        rows,
    })
}

/// The bus's tables (runnel-postgres's `migrations/0002_bus.sql`) in `schema`, with one
/// topic; returns the server's version.
async fn create_raw_tables(url: &str, schema: &str) -> anyhow::Result<String> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("connect for the raw baseline")?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
         CREATE TABLE {schema}.bus_topics (
            topic_id bigserial PRIMARY KEY, name text NOT NULL UNIQUE,
            created_at timestamptz NOT NULL);
         CREATE TABLE {schema}.bus_messages (
            seq bigserial PRIMARY KEY,
            topic_id bigint NOT NULL REFERENCES {schema}.bus_topics (topic_id),
            ordering_key bytea, envelope bytea NOT NULL, payload bytea NOT NULL,
            published_at timestamptz NOT NULL);
         CREATE INDEX ON {schema}.bus_messages (topic_id, seq);
         CREATE INDEX ON {schema}.bus_messages (published_at);
         CREATE TABLE {schema}.bus_queue (
            group_id bigint NOT NULL, seq bigint NOT NULL, ordering_key bytea,
            head boolean NOT NULL, visible_at timestamptz NOT NULL, attempt integer NOT NULL,
            lease_owner uuid, PRIMARY KEY (group_id, seq));
         CREATE INDEX ON {schema}.bus_queue (group_id, visible_at, seq) WHERE head;
         CREATE INDEX ON {schema}.bus_queue (group_id, ordering_key, seq)
            WHERE ordering_key IS NOT NULL;
         CREATE INDEX ON {schema}.bus_queue (seq);
         INSERT INTO {schema}.bus_topics (topic_id, name, created_at) VALUES (1, 'bench', now());"
    )))
    .execute(&mut conn)
    .await
    .context("create the raw baseline tables")?;
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut conn)
        .await
        .context("read the server version")?;
    Ok(version)
}

/// One connection at full durability.
async fn durable_connection(url: &str) -> anyhow::Result<PgConnection> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("connect for the raw baseline")?;
    sqlx::query("SET synchronous_commit = on")
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// Inserts a batch of messages (log row + queue row each) in one statement, hence one
/// transaction.
struct RawInsert {
    sql: String,
    envelope: Vec<u8>,
    next_key: u64,
}

impl RawInsert {
    fn new(schema: &str) -> anyhow::Result<Self> {
        let mut m = message(0);
        m.payload.clear();
        Ok(RawInsert {
            sql: format!(
                "WITH m AS (
                    INSERT INTO {schema}.bus_messages (topic_id, ordering_key, envelope, payload, published_at)
                    SELECT 1, u.k, u.e, u.p, now()
                    FROM unnest($1::bytea[], $2::bytea[], $3::bytea[]) AS u(k, e, p)
                    RETURNING seq, ordering_key)
                 INSERT INTO {schema}.bus_queue (group_id, seq, ordering_key, head, visible_at, attempt)
                 SELECT 1, m.seq, m.ordering_key, true, now(), 0 FROM m"
            ),
            envelope: serde_json::to_vec(&m).context("cannot encode the baseline envelope")?,
            next_key: 0,
        })
    }

    async fn execute(&mut self, conn: &mut PgConnection, n: usize) -> anyhow::Result<()> {
        let keys: Vec<Vec<u8>> = (0..n as u64)
            .map(|i| format!("Order-{}", (self.next_key + i) % KEYS).into_bytes())
            .collect();
        self.next_key += n as u64;
        let envelopes = vec![self.envelope.clone(); n];
        let payloads = vec![PAYLOAD.to_vec(); n];
        sqlx::query(sqlx::AssertSqlSafe(self.sql.as_str()))
            .bind(&keys)
            .bind(&envelopes)
            .bind(&payloads)
            .execute(conn)
            .await
            .context("raw INSERT failed")?;
        Ok(())
    }
}

/// Raw publishes: one connection, transactions of `per_tx` messages.
async fn raw_publish(
    url: &str,
    schema: &str,
    per_tx: usize,
    budget: Budget,
    published: Arc<AtomicU64>,
) -> anyhow::Result<Run> {
    let mut conn = durable_connection(url).await?;
    let mut insert = RawInsert::new(schema)?;
    let mut latency = Latency::new()?;
    let (mut messages, mut commits) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < budget.duration && messages + per_tx as u64 <= budget.messages_max {
        let began = Instant::now();
        insert.execute(&mut conn, per_tx).await?;
        latency.record(began.elapsed());
        commits += 1;
        messages += per_tx as u64;
        published.store(messages, Ordering::Relaxed);
    }
    Ok(Run {
        messages,
        elapsed: start.elapsed(),
        commits,
        latency,
    })
}

/// Raw publishes of one message per transaction on `connections` connections at once:
/// what PostgreSQL's own WAL group commit gives concurrent single-message transactions.
async fn raw_publish_concurrent(
    url: &str,
    schema: &str,
    connections: usize,
    budget: Budget,
    published: Arc<AtomicU64>,
) -> anyhow::Result<Run> {
    let reserved = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (url, schema) = (url.to_string(), schema.to_string());
        let (reserved, published) = (Arc::clone(&reserved), Arc::clone(&published));
        tasks.push(tokio::spawn(async move {
            let mut conn = durable_connection(&url).await?;
            let mut insert = RawInsert::new(&schema)?;
            let mut latency = Latency::new()?;
            let mut commits = 0u64;
            while start.elapsed() < budget.duration
                && reserved.fetch_add(1, Ordering::Relaxed) < budget.messages_max
            {
                let began = Instant::now();
                insert.execute(&mut conn, 1).await?;
                latency.record(began.elapsed());
                commits += 1;
                published.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((latency, commits))
        }));
    }
    let mut latency = Latency::new()?;
    let mut commits = 0;
    for task in tasks {
        let (l, c) = task.await.context("a raw publisher panicked")??;
        latency.add(&l)?;
        commits += c;
    }
    Ok(Run {
        messages: published.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        commits,
        latency,
    })
}

/// A hand-written queue on one connection, in batches of `batch`: INSERT the batch, SELECT
/// the ready queue rows with their messages, DELETE them (the ack). Latency per message:
/// its batch's INSERT start → DELETE commit. No lease, no SKIP LOCKED: one consumer.
async fn raw_end_to_end(
    url: &str,
    schema: &str,
    batch: usize,
    budget: Budget,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<Run> {
    let mut conn = durable_connection(url).await?;
    let mut insert = RawInsert::new(schema)?;
    let select = format!(
        "SELECT q.seq, m.envelope, m.payload FROM {schema}.bus_queue q
         JOIN {schema}.bus_messages m ON m.seq = q.seq
         WHERE q.group_id = 1 AND q.head AND q.visible_at <= now()
         ORDER BY q.visible_at, q.seq LIMIT $1"
    );
    let delete = format!("DELETE FROM {schema}.bus_queue WHERE group_id = 1 AND seq = ANY($1)");
    let mut latency = Latency::new()?;
    let (mut messages, mut commits) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < budget.duration && messages + batch as u64 <= budget.messages_max {
        let began = Instant::now();
        insert.execute(&mut conn, batch).await?;
        let ready: Vec<(i64, Vec<u8>, Vec<u8>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(select.as_str()))
                .bind(batch as i64)
                .fetch_all(&mut conn)
                .await
                .context("raw SELECT failed")?;
        anyhow::ensure!(
            ready.len() == batch,
            "the raw queue returned {} of {batch} rows",
            ready.len()
        );
        std::hint::black_box(&ready);
        let seqs: Vec<i64> = ready.iter().map(|r| r.0).collect();
        sqlx::query(sqlx::AssertSqlSafe(delete.as_str()))
            .bind(&seqs)
            .execute(&mut conn)
            .await
            .context("raw DELETE failed")?;
        latency.record_n(began.elapsed(), batch as u64);
        commits += 2;
        messages += batch as u64;
        acked.store(messages, Ordering::Relaxed);
    }
    Ok(Run {
        messages,
        elapsed: start.elapsed(),
        commits,
        latency,
    })
}
