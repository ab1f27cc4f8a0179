//! `projection_applies_each_event_exactly_once_across_kill_9`, on SQLite and on PostgreSQL:
//! the projection runner (`src/bin/projection_crash_child.rs`, a process of its own) is
//! SIGKILLed mid-batch again and again; at the end every event was applied exactly once —
//! the `applied` table's primary key would have failed (and faulted the projection) on a
//! second application, and each stream's count equals its length.

#[path = "pg_schema/mod.rs"]
mod pg_schema;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use rand::RngExt;
use runnel::core::{EventStore, ExpectedRevision, NewEvent, StreamName};

const STREAMS: usize = 30;
const PER_STREAM: usize = 100;
const CYCLES: usize = 5;
/// Events the child applies in one batch (one transaction): small, so a kill lands
/// between, inside and right after many commits.
const BATCH_EVENTS: &str = "25";
/// Each kill comes after this many more applied events (at random) than the cycle started
/// with.
const KILL_AFTER_APPLIED: std::ops::RangeInclusive<i64> = 50..=400;
const CYCLE_DEADLINE: Duration = Duration::from_secs(60);
const FINAL_DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(5);

/// Runs a `SELECT count(*) …` on the read model; 0 while its table does not exist yet (the
/// first child has not registered the projection).
type Count = Arc<dyn Fn(String) -> BoxFuture<'static, i64> + Send + Sync>;

/// One backend under test: its event store, what the child is given to open it, and a way
/// to count rows of the read model.
struct Target {
    events: Arc<dyn EventStore>,
    /// The child's `<store>` argument.
    store_arg: String,
    count: Count,
    _guard: Box<dyn std::any::Any + Send>,
}

fn spawn_child(store: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_runnel-projection-crash-child"))
        .arg(store)
        .arg(BATCH_EVENTS)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the projection crash child")
}

async fn seed(events: &dyn EventStore) {
    for round in 0..PER_STREAM / 10 {
        for s in 0..STREAMS {
            let batch = (0..10)
                .map(|i| NewEvent::json("Posted", &serde_json::json!({"i": round * 10 + i})))
                .collect();
            events
                .append(
                    &StreamName::new(format!("Acct-{s}")).unwrap(),
                    ExpectedRevision::Any,
                    batch,
                )
                .await
                .unwrap();
        }
    }
}

/// Waits until `child` exits, failing after `deadline`.
async fn wait_for_exit(child: &mut Child, deadline: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the last child did not finish within {deadline:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn exactly_once_across_kill_9(target: Target) {
    seed(&*target.events).await;
    let applied = || (target.count)("SELECT count(*) FROM applied".into());
    let total = (STREAMS * PER_STREAM) as i64;
    for cycle in 0..CYCLES {
        let target_applied = applied().await + rand::rng().random_range(KILL_AFTER_APPLIED);
        let mut child = spawn_child(&target.store_arg);
        let deadline = Instant::now() + CYCLE_DEADLINE;
        loop {
            if applied().await >= target_applied.min(total) {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "cycle {cycle}: the child failed: {status}"
                );
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("cycle {cycle}: no progress within {CYCLE_DEADLINE:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        let _ = child.kill(); // SIGKILL, to this child's own PID
        child.wait().unwrap();
    }
    let mut last = spawn_child(&target.store_arg);
    let status = wait_for_exit(&mut last, FINAL_DEADLINE).await;
    assert!(
        status.success(),
        "the last child failed (a faulted projection?): {status}"
    );
    assert_eq!(applied().await, total, "every event applied, once");
    let wrong = (target.count)(format!(
        "SELECT count(*) FROM counts WHERE n <> {PER_STREAM}"
    ))
    .await;
    assert_eq!(wrong, 0, "every stream counted exactly once per event");
    let streams = (target.count)("SELECT count(*) FROM counts".into()).await;
    assert_eq!(streams, STREAMS as i64, "every stream has its row");
}

mod sqlite {
    use super::*;
    use runnel::sqlite::rusqlite::{Connection, OpenFlags};
    use runnel::sqlite::SqliteStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn projection_applies_each_event_exactly_once_across_kill_9() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("projection.db");
        let store = SqliteStore::open(&db).unwrap();
        let path = db.clone();
        let count: Count = Arc::new(move |sql: String| {
            let path = path.clone();
            Box::pin(async move {
                tokio::task::spawn_blocking(move || {
                    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
                        .expect("open the file read-only");
                    conn.busy_timeout(Duration::from_secs(5)).unwrap();
                    match conn.query_row(&sql, [], |r| r.get(0)) {
                        Ok(n) => n,
                        Err(e) if e.to_string().contains("no such table") => 0,
                        Err(e) => panic!("{sql}: {e}"),
                    }
                })
                .await
                .expect("the count thread")
            })
        });
        exactly_once_across_kill_9(Target {
            events: Arc::new(store.clone()),
            store_arg: db.display().to_string(),
            count,
            _guard: Box::new((store, dir)),
        })
        .await;
    }
}

mod postgres {
    use super::*;
    use runnel::postgres::sqlx;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn projection_applies_each_event_exactly_once_across_kill_9() {
        let Some((store, guard)) = pg_schema::fresh_store("proj", 4).await else {
            return;
        };
        let url = std::env::var("RUNNEL_TEST_POSTGRES_URL").expect("checked by fresh_store");
        let schema = guard.schema.clone();
        let separator = if url.contains('?') { '&' } else { '?' };
        let store_arg = format!("{url}{separator}schema={schema}&pool_size=4");
        let pool = store.pool().clone();
        let count: Count = Arc::new(move |sql: String| {
            let (pool, schema) = (pool.clone(), schema.clone());
            Box::pin(async move {
                let mut tx = pool.begin().await.expect("begin");
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SET LOCAL search_path = {schema}"
                )))
                .execute(&mut *tx)
                .await
                .expect("search path");
                match sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.clone()))
                    .fetch_one(&mut *tx)
                    .await
                {
                    Ok(n) => n,
                    Err(e) if e.to_string().contains("does not exist") => 0,
                    Err(e) => panic!("{sql}: {e}"),
                }
            })
        });
        exactly_once_across_kill_9(Target {
            events: Arc::new(store.clone()),
            store_arg,
            count,
            // Drops the test's schema at the end.
            _guard: Box::new((guard, store)),
        })
        .await;
    }
}
