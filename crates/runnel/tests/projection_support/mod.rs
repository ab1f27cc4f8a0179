//! Projection fixtures: a counting projection, and each backend's stores with a way to
//! query the read model.

#![allow(dead_code)] // each test binary uses a different part

#[path = "../pg_schema/mod.rs"]
mod super_pg;

pub mod scenarios;

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use runnel::core::dead_letter::DeadLetterStore;
use runnel::core::projection::{Dialect, InlineProjection, ProjectionStore};
use runnel::core::{EventFilter, EventStore, RecordedEvent};
use runnel::projection::{Projection, ProjectionError, Writes};

/// Runs a query returning rows of (text, bigint).
pub type Query = Arc<dyn Fn(String) -> BoxFuture<'static, Vec<(String, i64)>> + Send + Sync>;

/// A backend's stores.
pub struct Stores {
    pub projections: Arc<dyn ProjectionStore>,
    pub events: Arc<dyn EventStore>,
    pub dead_letters: Arc<dyn DeadLetterStore>,
    pub query: Query,
    /// Counts outbox rows.
    pub outbox_rows: Arc<dyn Fn() -> BoxFuture<'static, i64> + Send + Sync>,
    /// Installs an inline projection in the event store's appends.
    pub add_inline: Arc<dyn Fn(Arc<dyn InlineProjection>) + Send + Sync>,
    pub guard: Box<dyn std::any::Any + Send + Sync>,
}

/// Counts events per stream (`counts`) and records every applied position (`applied`,
/// whose primary key makes a second application of one event fail loudly). Version 2
/// counts double, so a rebuild's rows differ from the current version's.
pub struct Counting {
    pub version: u32,
    /// Event types that fail (poison).
    pub poison: Arc<Mutex<Vec<String>>>,
    /// What `send` answered, when `send_each` is on.
    pub sends: Arc<Mutex<Vec<Result<(), String>>>>,
    pub send_each: bool,
    pub partitions: u32,
    /// Declared inline ([`Projection::inline`]).
    pub inline: bool,
}

impl Counting {
    pub fn new(version: u32) -> Self {
        Counting {
            version,
            poison: Arc::new(Mutex::new(Vec::new())),
            sends: Arc::new(Mutex::new(Vec::new())),
            send_each: false,
            partitions: 1,
            inline: false,
        }
    }
}

pub const NAME: &str = "stream_counts";

impl Projection for Counting {
    fn name(&self) -> &str {
        NAME
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn tables(&self) -> Vec<String> {
        vec!["counts".into(), "applied".into()]
    }
    fn schema(&self, _: Dialect) -> Vec<String> {
        vec![
            "CREATE TABLE {counts} (stream TEXT PRIMARY KEY, n BIGINT NOT NULL)".into(),
            "CREATE TABLE {applied} (position BIGINT PRIMARY KEY, stream TEXT NOT NULL)".into(),
        ]
    }
    fn filter(&self) -> EventFilter {
        EventFilter::categories(["Acct"])
    }
    fn partitions(&self) -> u32 {
        self.partitions
    }
    fn inline(&self) -> bool {
        self.inline
    }
    fn apply(&self, event: &RecordedEvent, out: &mut Writes) -> Result<(), ProjectionError> {
        if self.poison.lock().unwrap().contains(&event.event_type) {
            return Err(ProjectionError::Failed(format!(
                "cannot apply {}",
                event.event_type
            )));
        }
        if self.send_each {
            let sent = out
                .send(
                    runnel::core::TopicName::new("notifications").unwrap(),
                    runnel::core::Message::json(
                        "Counted",
                        &serde_json::json!({"stream": event.stream.as_str()}),
                    ),
                )
                .map_err(|e| e.to_string());
            self.sends.lock().unwrap().push(sent);
        }
        let step = i64::from(self.version);
        out.execute(
            "INSERT INTO {counts} (stream, n) VALUES ($1, $2) \
             ON CONFLICT (stream) DO UPDATE SET n = {counts}.n + $2",
            vec![event.stream.to_string().into(), step.into()],
        );
        let copies = if event.event_type == "Doubled" { 2 } else { 1 };
        for _ in 0..copies {
            // "Doubled": a handler bug writing the same row twice breaks the key at commit.
            out.execute(
                "INSERT INTO {applied} (position, stream) VALUES ($1, $2)",
                vec![
                    (event.position.get() as i64).into(),
                    event.stream.to_string().into(),
                ],
            );
        }
        Ok(())
    }
}

/// SQLite stores on a fresh temporary file.
pub fn sqlite() -> Stores {
    let store = runnel::sqlite::SqliteStore::open_temporary().expect("a temporary store");
    let q = store.clone();
    let o = store.clone();
    let i = store.clone();
    Stores {
        add_inline: Arc::new(move |p| i.add_inline_projection(p)),
        projections: Arc::new(runnel::sqlite::SqliteProjectionStore::new(store.clone())),
        events: Arc::new(store.clone()),
        dead_letters: Arc::new(runnel::sqlite::SqliteDeadLetters::new(store.clone())),
        query: Arc::new(move |sql: String| {
            let store = q.clone();
            Box::pin(async move {
                store
                    .read_with(move |conn| {
                        let mut stmt = conn
                            .prepare(&sql)
                            .map_err(|e| runnel::core::StoreError::Backend(e.to_string()))?;
                        let rows = stmt
                            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                            .map_err(|e| runnel::core::StoreError::Backend(e.to_string()))?
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| runnel::core::StoreError::Backend(e.to_string()))?;
                        Ok::<_, runnel::core::StoreError>(rows)
                    })
                    .await
                    .expect("query")
            })
        }),
        outbox_rows: Arc::new(move || {
            let store = o.clone();
            Box::pin(async move {
                store
                    .read_with(|conn| {
                        conn.query_row("SELECT count(*) FROM outbox_messages", [], |r| {
                            r.get::<_, i64>(0)
                        })
                        .map_err(|e| runnel::core::StoreError::Backend(e.to_string()))
                    })
                    .await
                    .expect("count")
            })
        }),
        guard: Box::new(store),
    }
}

pub async fn postgres() -> Option<Stores> {
    use runnel::postgres::sqlx::{self, Row};
    let (store, guard) = super_pg::fresh_store("proj", 8).await?;
    let schema = guard.schema.clone();
    let (q, o, i) = (store.clone(), store.clone(), store.clone());
    let (qs, os) = (schema.clone(), schema.clone());
    Some(Stores {
        add_inline: Arc::new(move |p| i.add_inline_projection(p)),
        projections: Arc::new(runnel::postgres::PostgresProjectionStore::new(
            store.clone(),
        )),
        events: Arc::new(store.clone()),
        dead_letters: Arc::new(runnel::postgres::PostgresDeadLetters::new(store.clone())),
        query: Arc::new(move |sql: String| {
            let (store, schema) = (q.clone(), qs.clone());
            Box::pin(async move {
                let mut tx = store.pool().begin().await.expect("begin");
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SET LOCAL search_path = {schema}"
                )))
                .execute(&mut *tx)
                .await
                .expect("search path");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&mut *tx)
                    .await
                    .expect("query");
                rows.iter()
                    .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
                    .collect()
            })
        }),
        outbox_rows: Arc::new(move || {
            let (store, schema) = (o.clone(), os.clone());
            Box::pin(async move {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM {schema}.outbox_messages"
                )))
                .fetch_one(store.pool())
                .await
                .expect("count")
                .get::<i64, _>(0)
            })
        }),
        guard: Box::new((guard, store)),
    })
}
