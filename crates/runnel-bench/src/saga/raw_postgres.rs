//! The hand-written baseline on PostgreSQL: tables shaped like Runnel's instance, timer,
//! history and outbox tables (same columns, same indexes, `COLLATE "C"` keys) in a schema
//! of their own, written through sqlx at `synchronous_commit = on`, one connection per
//! client and one transaction per transition (PostgreSQL's WAL flush groups concurrent
//! commits by itself).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use runnel_postgres::sqlx::{self, AssertSqlSafe, Connection as _, PgConnection};

use super::workload::{
    events_topic, instance_id, kind, raw_transition, Latencies, Order, RAW_LEASE, RAW_OWNER,
    TRANSITIONS_PER_INSTANCE,
};

/// Creates `schema` with the baseline's tables (Runnel's migrations 5 and 9, renamed).
pub async fn create_schema(url: &str, schema: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("connect for the baseline")?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        r#"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
        CREATE TABLE {schema}.bench_instances (
            kind text COLLATE "C" NOT NULL, id text COLLATE "C" NOT NULL,
            definition_version bigint NOT NULL, correlation text COLLATE "C",
            state text NOT NULL, status text COLLATE "C" NOT NULL, progress bytea NOT NULL,
            data bytea NOT NULL, version bigint NOT NULL, last_error text,
            created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
            finished_at timestamptz, PRIMARY KEY (kind, id));
        CREATE UNIQUE INDEX ON {schema}.bench_instances (kind, correlation)
            WHERE correlation IS NOT NULL;
        CREATE INDEX ON {schema}.bench_instances (status, kind, id);
        CREATE INDEX ON {schema}.bench_instances (finished_at) WHERE finished_at IS NOT NULL;
        CREATE TABLE {schema}.bench_timers (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            kind text COLLATE "C" NOT NULL, instance text COLLATE "C" NOT NULL,
            name text COLLATE "C" NOT NULL, due_at timestamptz NOT NULL, payload bytea NOT NULL,
            leased_by text, leased_until timestamptz,
            UNIQUE (kind, instance, name),
            CHECK ((leased_by IS NULL) = (leased_until IS NULL)));
        CREATE INDEX ON {schema}.bench_timers (kind, due_at, id);
        CREATE TABLE {schema}.bench_history (
            kind text COLLATE "C" NOT NULL, instance text COLLATE "C" NOT NULL,
            seq bigint NOT NULL, at timestamptz NOT NULL, step text, what text NOT NULL,
            detail text, PRIMARY KEY (kind, instance, seq));
        CREATE TABLE {schema}.bench_outbox (
            seq bigserial PRIMARY KEY, message_id text NOT NULL, topic text NOT NULL,
            ordering_key text, envelope text NOT NULL, payload bytea NOT NULL,
            created_at timestamptz NOT NULL, attempts integer NOT NULL DEFAULT 0,
            last_error text, next_attempt_at timestamptz NOT NULL DEFAULT '-infinity',
            parked boolean NOT NULL DEFAULT false, leased_by text, leased_until timestamptz,
            published_at timestamptz);
        CREATE INDEX ON {schema}.bench_outbox (seq) WHERE published_at IS NULL;
        CREATE INDEX ON {schema}.bench_outbox (ordering_key, seq)
            WHERE published_at IS NULL AND ordering_key IS NOT NULL;
        CREATE INDEX ON {schema}.bench_outbox (published_at) WHERE published_at IS NOT NULL;"#
    )))
    .execute(&mut conn)
    .await
    .context("create the baseline tables")?;
    Ok(())
}

/// The baseline's statements, qualified with its schema.
struct Sql {
    insert: String,
    update: String,
    delete_timers: String,
    insert_timer: String,
    insert_history: String,
    insert_outbox: String,
    count_completed: String,
}

impl Sql {
    fn new(schema: &str) -> Sql {
        Sql {
            insert: format!(
                "INSERT INTO {schema}.bench_instances (kind, id, definition_version, \
                 correlation, state, status, progress, data, version, last_error, created_at, \
                 updated_at, finished_at) VALUES ($1, $2, 1, NULL, $3, $4, $5, $6, 1, NULL, $7, \
                 $7, $8)"
            ),
            update: format!(
                "UPDATE {schema}.bench_instances SET definition_version = 1, state = $3, \
                 status = $4, progress = $5, data = $6, version = version + 1, \
                 last_error = NULL, updated_at = $7, finished_at = $8 \
                 WHERE kind = $1 AND id = $2 AND version = $9"
            ),
            delete_timers: format!(
                "DELETE FROM {schema}.bench_timers WHERE kind = $1 AND instance = $2"
            ),
            insert_timer: format!(
                "INSERT INTO {schema}.bench_timers (kind, instance, name, due_at, payload, \
                 leased_by, leased_until) VALUES ($1, $2, 'run', $3, $4, $5, $6)"
            ),
            insert_history: format!(
                "INSERT INTO {schema}.bench_history (kind, instance, seq, at, step, what, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7), ($1, $2, $3 + 1, $4, $8, $9, $10)"
            ),
            insert_outbox: format!(
                "INSERT INTO {schema}.bench_outbox (message_id, topic, ordering_key, envelope, \
                 payload, created_at) VALUES ($1, $2, $3, $4, $5, $6)"
            ),
            count_completed: format!(
                "SELECT COUNT(*) FROM {schema}.bench_instances WHERE status = 'completed'"
            ),
        }
    }
}

/// Transition `k` of instance `id`, in one transaction on `conn`.
async fn transition(
    conn: &mut PgConnection,
    sql: &Sql,
    id: &str,
    data: &[u8],
    k: usize,
) -> anyhow::Result<()> {
    let kind = kind();
    let t = raw_transition(id, k)?;
    let now = Utc::now();
    let finished = t.finished.then_some(now);
    let mut tx = conn.begin().await?;
    if t.version == 1 {
        sqlx::query(AssertSqlSafe(sql.insert.as_str()))
            .bind(&kind)
            .bind(id)
            .bind(&t.state)
            .bind(t.status)
            .bind(&t.progress)
            .bind(data)
            .bind(now)
            .bind(finished)
            .execute(&mut *tx)
            .await?;
    } else {
        let changed = sqlx::query(AssertSqlSafe(sql.update.as_str()))
            .bind(&kind)
            .bind(id)
            .bind(&t.state)
            .bind(t.status)
            .bind(&t.progress)
            .bind(data)
            .bind(now)
            .bind(finished)
            .bind(t.version - 1)
            .execute(&mut *tx)
            .await?;
        anyhow::ensure!(
            changed.rows_affected() == 1,
            "baseline instance {id} was not at version {}",
            t.version - 1
        );
    }
    if t.deletes_timer {
        sqlx::query(AssertSqlSafe(sql.delete_timers.as_str()))
            .bind(&kind)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(payload) = &t.timer {
        let until = now + chrono::Duration::from_std(RAW_LEASE)?;
        sqlx::query(AssertSqlSafe(sql.insert_timer.as_str()))
            .bind(&kind)
            .bind(id)
            .bind(now)
            .bind(payload)
            .bind(RAW_OWNER)
            .bind(until)
            .execute(&mut *tx)
            .await?;
    }
    let [(s1, w1, d1), (s2, w2, d2)] = t.history;
    sqlx::query(AssertSqlSafe(sql.insert_history.as_str()))
        .bind(&kind)
        .bind(id)
        .bind((t.version - 1) * 2 + 1)
        .bind(now)
        .bind(s1)
        .bind(w1)
        .bind(d1)
        .bind(s2)
        .bind(w2)
        .bind(d2)
        .execute(&mut *tx)
        .await?;
    if let Some((message_id, envelope, payload)) = &t.outbox {
        sqlx::query(AssertSqlSafe(sql.insert_outbox.as_str()))
            .bind(message_id)
            .bind(events_topic())
            .bind(id)
            .bind(envelope)
            .bind(payload)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The baseline's connections, opened before anything is timed (as Runnel's pool is).
pub struct RawPostgres {
    conns: Vec<PgConnection>,
    sql: Arc<Sql>,
}

impl RawPostgres {
    /// `clients` connections to `url`, `synchronous_commit = on`, writing in `schema`.
    pub async fn connect(url: &str, schema: &str, clients: usize) -> anyhow::Result<RawPostgres> {
        let mut conns = Vec::with_capacity(clients);
        for _ in 0..clients {
            let mut conn = PgConnection::connect(url)
                .await
                .context("connect for the baseline")?;
            sqlx::query("SET synchronous_commit = on")
                .execute(&mut conn)
                .await?;
            conns.push(conn);
        }
        Ok(RawPostgres {
            conns,
            sql: Arc::new(Sql::new(schema)),
        })
    }

    /// Completes instances `from..to`, one client per connection. Returns the elapsed
    /// time and the start-to-completion latencies.
    pub async fn complete(
        &mut self,
        prefix: &str,
        from: u64,
        to: u64,
        done: Arc<AtomicU64>,
    ) -> anyhow::Result<(Duration, Latencies)> {
        let next = Arc::new(AtomicU64::new(from));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for mut conn in self.conns.drain(..) {
            let (next, done, sql) = (Arc::clone(&next), Arc::clone(&done), Arc::clone(&self.sql));
            let prefix = prefix.to_string();
            tasks.spawn(async move {
                let mut latencies = Latencies::new()?;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= to {
                        return anyhow::Ok((conn, latencies));
                    }
                    let id = instance_id(&prefix, n);
                    let start = Instant::now();
                    for k in 0..TRANSITIONS_PER_INSTANCE {
                        // The data is serialised per transition, as Runnel does.
                        let data = serde_json::to_vec(&Order::new(n))?;
                        transition(&mut conn, &sql, &id, &data, k)
                            .await
                            .with_context(|| format!("baseline transition {k} of {id}"))?;
                    }
                    latencies.record(start.elapsed())?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let mut all = Latencies::new()?;
        while let Some(joined) = tasks.join_next().await {
            let (conn, latencies) = joined.context("a baseline client panicked")??;
            all.add(&latencies)?;
            self.conns.push(conn);
        }
        Ok((started.elapsed(), all))
    }

    /// Completed instances in the baseline's tables.
    pub async fn count_completed(&mut self) -> anyhow::Result<u64> {
        let conn = self.conns.first_mut().context("no baseline connection")?;
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(self.sql.count_completed.as_str()))
            .fetch_one(conn)
            .await?;
        Ok(n as u64)
    }

    /// Closes the connections.
    pub async fn close(self) {
        for conn in self.conns {
            let _ = conn.close().await;
        }
    }
}
