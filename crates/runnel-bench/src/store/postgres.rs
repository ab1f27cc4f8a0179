//! The PostgreSQL scenarios of `runnel-bench store --store postgres://…`: Runnel's appends
//! beside raw INSERTs of the same rows through the same driver (sqlx), at the same
//! durability (`synchronous_commit = on`), one transaction per append.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use runnel_core::{
    EventFilter, EventStore, ExpectedRevision, NewEvent, Position, StreamName, CONTENT_TYPE_JSON,
};
use runnel_postgres::sqlx::{self, Connection as _, PgConnection};
use runnel_postgres::PostgresStore;

use super::workload::{stream_name, Budget, ReadRun, WriteRun, CATEGORY, EVENT_TYPE, PAYLOAD};

/// The shape of a write scenario.
#[derive(Clone, Copy, Debug)]
struct Shape {
    pub writers: usize,
    pub events_per_append: usize,
    pub stream_len_max: u64,
}

/// Runnel appends through `store` (its batcher combines concurrent appends).
async fn runnel_writes_from(
    store: &PostgresStore,
    shape: Shape,
    budget: Budget,
    written: Arc<AtomicU64>,
    first_index: u64,
) -> anyhow::Result<WriteRun> {
    let before = store.batch_stats();
    let reserved = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(shape.writers);
    for writer in 0..shape.writers {
        let store = store.clone();
        let (reserved, written) = (Arc::clone(&reserved), Arc::clone(&written));
        tasks.push(tokio::spawn(async move {
            let per_append = shape.events_per_append as u64;
            let mut index = first_index;
            let mut stream = StreamName::new(stream_name(writer, index))?;
            let mut revision = 0u64;
            loop {
                if !keep_going(&budget, start, &reserved, &written, per_append) {
                    return anyhow::Ok(());
                }
                if revision + per_append > shape.stream_len_max {
                    index += 1;
                    stream = StreamName::new(stream_name(writer, index))?;
                    revision = 0;
                }
                let events: Vec<NewEvent> = (0..shape.events_per_append)
                    .map(|_| NewEvent::bytes(EVENT_TYPE, CONTENT_TYPE_JSON, PAYLOAD.to_vec()))
                    .collect();
                let expected = ExpectedRevision::from_current((revision > 0).then_some(revision));
                let r = store
                    .append(&stream, expected, events)
                    .await
                    .with_context(|| format!("benchmark append to {stream} failed"))?;
                revision = r.next_expected_revision;
                written.fetch_add(per_append, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.context("a benchmark writer panicked")??;
    }
    let after = store.batch_stats();
    Ok(WriteRun {
        events: written.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        commits: after.round_trips - before.round_trips,
    })
}

fn keep_going(
    budget: &Budget,
    start: Instant,
    reserved: &AtomicU64,
    written: &AtomicU64,
    per_append: u64,
) -> bool {
    if start.elapsed() >= budget.duration && written.load(Ordering::Relaxed) >= budget.events_min {
        return false;
    }
    reserved.fetch_add(per_append, Ordering::Relaxed) + per_append <= budget.events_max
}

/// The raw baseline's table: the same columns and unique constraints as Runnel's events.
async fn create_raw_table(url: &str, schema: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("connect for the raw baseline")?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
         CREATE TABLE {schema}.raw_events (
            position bigserial PRIMARY KEY, event_id uuid NOT NULL UNIQUE,
            stream text NOT NULL, revision bigint NOT NULL, category text NOT NULL,
            event_type text NOT NULL, data bytea NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (stream, revision));
         CREATE INDEX ON {schema}.raw_events (category, position);
         CREATE INDEX ON {schema}.raw_events (event_type, position);
         CREATE INDEX ON {schema}.raw_events USING brin (recorded_at)"
    )))
    .execute(&mut conn)
    .await
    .context("create the raw baseline table")?;
    Ok(())
}

/// The raw baseline's connections, opened once before anything is timed (as Runnel's pool
/// is), `synchronous_commit = on`.
async fn raw_connections(url: &str, count: usize) -> anyhow::Result<Vec<PgConnection>> {
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        let mut conn = PgConnection::connect(url)
            .await
            .context("connect for the raw baseline")?;
        sqlx::query("SET synchronous_commit = on")
            .execute(&mut conn)
            .await?;
        conns.push(conn);
    }
    Ok(conns)
}

/// Raw INSERTs: each writer on its own connection (taken from `conns` and put back), one
/// transaction per append of `events_per_append` rows (one multi-row INSERT).
async fn raw_writes_from(
    conns: &mut Vec<PgConnection>,
    schema: &str,
    shape: Shape,
    budget: Budget,
    written: Arc<AtomicU64>,
    first_index: u64,
) -> anyhow::Result<WriteRun> {
    anyhow::ensure!(
        conns.len() >= shape.writers,
        "the raw baseline has {} connections for {} writers",
        conns.len(),
        shape.writers
    );
    let reserved = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let commits = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(shape.writers);
    for writer in 0..shape.writers {
        let mut conn = conns.pop().context("a raw connection")?;
        let sql = format!(
            "INSERT INTO {schema}.raw_events (event_id, stream, revision, category, event_type, data) \
             SELECT u.id, u.stream, u.revision, '{CATEGORY}', u.event_type, u.data \
             FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::bytea[]) \
             AS u(id, stream, revision, event_type, data)"
        );
        let (reserved, written, commits) = (
            Arc::clone(&reserved),
            Arc::clone(&written),
            Arc::clone(&commits),
        );
        tasks.push(tokio::spawn(async move {
            let per_append = shape.events_per_append as u64;
            let mut index = first_index;
            let mut revision = 0u64;
            loop {
                if !keep_going(&budget, start, &reserved, &written, per_append) {
                    return anyhow::Ok(conn);
                }
                if revision + per_append > shape.stream_len_max {
                    index += 1;
                    revision = 0;
                }
                let stream = stream_name(writer, index);
                let n = shape.events_per_append;
                let ids: Vec<runnel_core::uuid::Uuid> =
                    (0..n).map(|_| runnel_core::uuid::Uuid::now_v7()).collect();
                let streams = vec![stream; n];
                let revisions: Vec<i64> = (1..=n as i64).map(|k| revision as i64 + k).collect();
                let types = vec![EVENT_TYPE.to_string(); n];
                let datas = vec![PAYLOAD.to_vec(); n];
                let mut tx = conn.begin().await?;
                sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(&ids)
                    .bind(&streams)
                    .bind(&revisions)
                    .bind(&types)
                    .bind(&datas)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                commits.fetch_add(1, Ordering::Relaxed);
                revision += per_append;
                written.fetch_add(per_append, Ordering::Relaxed);
            }
        }));
    }
    let mut ended = Vec::with_capacity(tasks.len());
    for t in tasks {
        ended.push(t.await.context("a raw writer panicked")?);
    }
    let elapsed = start.elapsed();
    for conn in ended {
        conns.push(conn?);
    }
    Ok(WriteRun {
        events: written.load(Ordering::Relaxed),
        elapsed,
        commits: commits.load(Ordering::Relaxed),
    })
}

/// Reads all of `$all` in pages of 1,000.
async fn read_all(store: &PostgresStore, read: Arc<AtomicU64>) -> anyhow::Result<ReadRun> {
    let start = Instant::now();
    let mut after = Position::START;
    let filter = EventFilter::categories([CATEGORY]);
    loop {
        let page = store.read_all(after, &filter, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        read.fetch_add(page.len() as u64, Ordering::Relaxed);
    }
    Ok(ReadRun {
        events: read.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    })
}

/// Writers of the command scenario where all work on one aggregate.
const EXEC_HOT_WRITERS: usize = 16;
/// Aggregates the state cache holds in the cached command scenarios.
const EXEC_STATE_CACHE_ENTRIES: usize = 1024;

/// The command rows: `Repository::execute` without and with the aggregate-state cache
/// beside one raw `INSERT … SELECT` per command, for 1 writer, `writers` writers on their
/// own aggregates and [`EXEC_HOT_WRITERS`] on one, the three sides in a rotating order every round.
async fn execute_rows(
    options: &runnel_postgres::PostgresOptions,
    raw_url: &str,
    raw_schema: &str,
    write_duration: std::time::Duration,
    writers: usize,
) -> anyhow::Result<Vec<crate::report::Row>> {
    use super::pg_execute::{raw_execute, repository, runnel_execute, ExecRun, ExecShape};
    use crate::report::{rate, Row, Target};
    use crate::scenario::counted;

    let shapes = [
        (
            ExecShape {
                writers: 1,
                hot: false,
            },
            0.8,
        ),
        (
            ExecShape {
                writers,
                hot: false,
            },
            0.8,
        ),
        (
            ExecShape {
                writers: EXEC_HOT_WRITERS,
                hot: true,
            },
            0.7,
        ),
    ];
    // (uncached, cached, raw) per shape.
    let mut totals = [(ExecRun::default(), ExecRun::default(), ExecRun::default()); 3];
    let slice = write_duration / PG_ROUNDS;
    for round in 0..PG_ROUNDS {
        for (i, (shape, _)) in shapes.iter().enumerate() {
            let label = format!(
                "execute, {} writer(s){}, round {}",
                shape.writers,
                if shape.hot { " on one aggregate" } else { "" },
                round + 1
            );
            for k in 0..3 {
                let side = (k + round as usize) % 3;
                let tag = format!("r{round}s{i}x{side}");
                match side {
                    0 | 1 => {
                        let cache = (side == 1).then_some(EXEC_STATE_CACHE_ENTRIES);
                        let store = warm_store(options, shape.writers).await?;
                        let repo = repository(&store, cache);
                        let label = if side == 1 {
                            format!("{label}, state cache")
                        } else {
                            label.clone()
                        };
                        let r = counted(&label, "commands", |c| {
                            runnel_execute(&repo, *shape, slice, tag, c)
                        })
                        .await?;
                        store.pool().close().await;
                        if side == 0 {
                            totals[i].0 = totals[i].0.plus(r);
                        } else {
                            totals[i].1 = totals[i].1.plus(r);
                        }
                    }
                    _ => {
                        let mut conns = raw_connections(raw_url, shape.writers).await?;
                        let r = counted(
                            &format!("raw INSERT … SELECT, {label}"),
                            "commands",
                            |c| raw_execute(&mut conns, raw_schema, *shape, slice, tag, c),
                        )
                        .await?;
                        drop(conns);
                        totals[i].2 = totals[i].2.plus(r);
                    }
                }
            }
        }
    }
    let mut rows = Vec::new();
    for (i, (shape, target)) in shapes.iter().enumerate() {
        let (plain, cached, raw) = totals[i];
        let who = if shape.hot {
            format!("{} writers on one aggregate", shape.writers)
        } else if shape.writers == 1 {
            "1 writer".to_string()
        } else {
            format!("{} writers, each on its own aggregate", shape.writers)
        };
        for (name, run) in [("", plain), (", state cache", cached)] {
            let ratio = run.per_second() / raw.per_second().max(1e-9);
            rows.push(Row {
                scenario: format!(
                    "`Repository::execute`{name}, {who}, 1 event/command ({} conflicts vs raw {}) vs raw INSERT … SELECT, {} conn",
                    run.conflicts, raw.conflicts, shape.writers
                ),
                runnel: rate(run.per_second(), "commands/s"),
                baseline: rate(raw.per_second(), "commands/s"),
                ratio: Some(ratio),
                target: Some(Target::at_least(ratio, *target)),
            });
        }
    }
    Ok(rows)
}

/// A store whose pool holds `connections` open connections (at least the 2 a store needs)
/// and whose appender is connected, before anything is timed (as the raw side's
/// connections are).
async fn warm_store(
    options: &runnel_postgres::PostgresOptions,
    connections: usize,
) -> anyhow::Result<PostgresStore> {
    let connections = connections.max(2);
    let store = PostgresStore::connect_with(
        options
            .clone()
            .pool_size(u32::try_from(connections).unwrap_or(u32::MAX)),
    )
    .await?;
    let mut held = Vec::with_capacity(connections);
    for _ in 0..connections {
        held.push(store.pool().acquire().await?);
    }
    drop(held);
    let warm = StreamName::new(format!(
        "BenchWarm-{}",
        runnel_core::uuid::Uuid::now_v7().simple()
    ))?;
    store
        .append(
            &warm,
            ExpectedRevision::NoStream,
            vec![NewEvent::bytes(
                EVENT_TYPE,
                CONTENT_TYPE_JSON,
                PAYLOAD.to_vec(),
            )],
        )
        .await?;
    Ok(store)
}

/// Write scenarios alternate Runnel and raw this many times, in short slices and with the
/// order flipped every round: the VM's fsync latency drifts by up to 10x within seconds,
/// and long blocks (or always running one side first) turned that drift into a bias.
const PG_ROUNDS: u32 = 12;

/// `runnel-bench store --store postgres://…`: every scenario in fresh schemas that are
/// dropped at the end.
pub async fn run(
    url: &str,
    shown_url: &str,
    write_duration: std::time::Duration,
    events_max: u64,
    writers: usize,
    commands_only: bool,
) -> anyhow::Result<String> {
    use crate::report::markdown;

    let suffix = runnel_core::uuid::Uuid::now_v7().simple().to_string();
    let runnel_schema = format!("bench_{suffix}");
    let raw_schema = format!("bench_raw_{suffix}");
    let options = runnel_postgres::PostgresOptions::from_url(url)?;
    let base_url = options.url.clone();
    let store = PostgresStore::connect_with(options.clone().schema(&runnel_schema)).await?;
    create_raw_table(&base_url, &raw_schema).await?;
    let mut rows = Vec::new();
    if !commands_only {
        let mut raw_conns = raw_connections(&base_url, writers.max(1)).await?;
        rows.extend(
            append_rows(
                &store,
                &mut raw_conns,
                &raw_schema,
                write_duration,
                events_max,
                writers,
            )
            .await?,
        );
    }
    // The command scenarios open their own connections (PostgreSQL's default
    // max_connections, 100, does not hold both sides' 64 at once).
    drop(store);
    rows.extend(
        execute_rows(
            &options.schema(&runnel_schema),
            &base_url,
            &raw_schema,
            write_duration,
            writers,
        )
        .await?,
    );

    // Leave nothing behind.
    let mut conn = PgConnection::connect(&base_url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {runnel_schema} CASCADE; DROP SCHEMA IF EXISTS {raw_schema} CASCADE"
    )))
    .execute(&mut conn)
    .await?;

    Ok(format!(
        "PostgreSQL {shown_url}, synchronous_commit=on, {PG_ROUNDS} rounds of {:.2} s per scenario and side, Runnel and raw alternating which goes first\n\n{}",
        (write_duration / PG_ROUNDS).as_secs_f64(),
        markdown(&rows)
    ))
}

/// The append rows: 1 writer × 1 event, `writers` × 1 event, 1 writer × 100 events, each
/// beside raw INSERTs, then reading `$all`.
async fn append_rows(
    store: &PostgresStore,
    raw_conns: &mut Vec<PgConnection>,
    raw_schema: &str,
    write_duration: std::time::Duration,
    events_max: u64,
    writers: usize,
) -> anyhow::Result<Vec<crate::report::Row>> {
    use super::ROUND_STREAM_STRIDE;
    use crate::report::{rate, Row, Target};
    use crate::scenario::counted;

    let mut rows = Vec::new();
    let mut totals = [(WriteRun::default(), WriteRun::default()); 3];
    let shapes = [(1usize, 1usize), (writers, 1), (1, 100)];
    for round in 0..PG_ROUNDS {
        let budget = Budget {
            duration: write_duration / PG_ROUNDS,
            events_min: 0,
            events_max: events_max.div_ceil(u64::from(PG_ROUNDS)),
        };
        for (i, (w, k)) in shapes.iter().enumerate() {
            // Rounds and scenarios never share streams.
            let stride = (u64::from(round) * 3 + i as u64) * ROUND_STREAM_STRIDE;
            let shape = Shape {
                writers: *w,
                events_per_append: *k,
                stream_len_max: 10_000,
            };
            let label = format!("{w} writer(s), {k} event(s)/append, round {}", round + 1);
            let runnel_first = round % 2 == 0;
            let mut r = WriteRun::default();
            let mut raw = WriteRun::default();
            for side in 0..2 {
                if (side == 0) == runnel_first {
                    r = counted(&label, "events", |c| {
                        runnel_writes_from(store, shape, budget, c, stride)
                    })
                    .await?;
                } else {
                    raw = counted(&format!("raw INSERT, {label}"), "events", |c| {
                        raw_writes_from(raw_conns, raw_schema, shape, budget, c, stride)
                    })
                    .await?;
                }
            }
            totals[i].0 = totals[i].0.plus(r);
            totals[i].1 = totals[i].1.plus(raw);
        }
    }
    let read = counted("read $all", "events", |c| read_all(store, c)).await?;

    let labels = [
        ("1 writer, 1 event/append", 0.8),
        ("", 2.0),
        ("1 writer, 100 events/append", 0.8),
    ];
    for (i, (label, target)) in labels.iter().enumerate() {
        let (r, raw) = totals[i];
        let ratio = r.events_per_second() / raw.events_per_second().max(1e-9);
        let label = if label.is_empty() {
            format!("{writers} writers, 1 event/append")
        } else {
            label.to_string()
        };
        rows.push(Row {
            scenario: format!(
                "{label} ({:.1} events/commit) vs raw INSERT, 1 tx per append, {} conn",
                r.events_per_commit(),
                shapes[i].0
            ),
            runnel: rate(r.events_per_second(), "events/s"),
            baseline: rate(raw.events_per_second(), "events/s"),
            ratio: Some(ratio),
            target: Some(Target::at_least(ratio, *target)),
        });
    }
    rows.push(Row {
        scenario: format!("read $all ({} events), pages of 1000", read.events),
        runnel: rate(read.events_per_second(), "events/s"),
        baseline: "—".into(),
        ratio: None,
        target: None,
    });

    Ok(rows)
}
