//! Shared by the integration tests: the broker from the environment (skip loudly when
//! unset), fresh names, and the services script's Python.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use runnel_core::{GroupName, TopicName};

/// The environment variable naming the test broker (`host:port`).
pub const BROKERS_ENV: &str = "RUNNEL_TEST_KAFKA_BROKERS";

/// The test broker, or `None` after printing SKIPPED (failing under
/// `RUNNEL_REQUIRE_SERVICES=1`).
pub fn brokers(test: &str) -> Option<String> {
    match std::env::var(BROKERS_ENV) {
        Ok(b) if !b.is_empty() => Some(b),
        _ => {
            runnel_testkit::harness::skip(&format!("{test} ({BROKERS_ENV} is not set)"));
            None
        }
    }
}

pub fn fresh_topic(what: &str) -> TopicName {
    TopicName::new(format!(
        "kafkatest.{what}.{}",
        uuid::Uuid::now_v7().simple()
    ))
    .expect("a valid topic name")
}

pub fn fresh_group(what: &str) -> GroupName {
    GroupName::new(format!("{what}-{}", uuid::Uuid::now_v7().simple())).expect("a valid group")
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every wait on a condition in these tests ends by this deadline (a failure, never a
/// hang).
pub const DEADLINE: Duration = Duration::from_secs(90);
/// How often a polled condition is checked again.
pub const POLL: Duration = Duration::from_millis(50);

/// Waits until `condition` holds, failing after [`DEADLINE`].
pub async fn wait_for<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    runnel_testkit::harness::wait_until(DEADLINE, what, condition).await;
}

/// One row of the `effects` table: a message a handler applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect {
    pub message_id: String,
    pub key: String,
    pub n: i64,
}

/// A SQLite file with the consumer's transactional inbox, the dead-letter store and an
/// `effects` table written through the inbox scope: a row exists exactly when a
/// handler's attempt committed together with the inbox mark (exactly-once effects).
pub struct SqliteSide {
    pub store: runnel::sqlite::SqliteStore,
    pub inbox: std::sync::Arc<runnel::sqlite::SqliteInbox>,
    pub dead_letters: std::sync::Arc<runnel::sqlite::SqliteDeadLetters>,
}

impl SqliteSide {
    pub async fn new() -> SqliteSide {
        let store = runnel::sqlite::SqliteStore::open_temporary().expect("a temporary store");
        store
            .unit_of_work(|uow| {
                uow.connection()
                    .execute(
                        "CREATE TABLE effects (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
                         message_id TEXT NOT NULL, key TEXT NOT NULL, n INTEGER NOT NULL)",
                        [],
                    )
                    .map_err(|e| runnel_core::StoreError::Backend(e.to_string()))
            })
            .await
            .expect("create the effects table");
        SqliteSide {
            inbox: std::sync::Arc::new(runnel::sqlite::SqliteInbox::new(store.clone())),
            dead_letters: std::sync::Arc::new(runnel::sqlite::SqliteDeadLetters::new(
                store.clone(),
            )),
            store,
        }
    }

    /// Records the message of `ctx` as applied, inside the attempt's inbox scope.
    pub async fn write_effect(
        ctx: &runnel::consumer::HandlerContext,
    ) -> Result<(), runnel::consumer::HandlerError> {
        let body: serde_json::Value = ctx.json()?;
        let effect = Effect {
            message_id: ctx.message().id.clone(),
            key: ctx.message().ordering_key().unwrap_or("").to_string(),
            n: body["n"].as_i64().unwrap_or(-1),
        };
        ctx.scope::<runnel::consumer::inbox::SqliteInboxScope>()
            .await?
            .write(move |uow| {
                uow.connection().execute(
                    "INSERT INTO effects (message_id, key, n) VALUES (?1, ?2, ?3)",
                    runnel::sqlite::rusqlite::params![effect.message_id, effect.key, effect.n],
                )?;
                Ok(())
            })
    }

    /// Every committed effect, in commit order.
    pub async fn effects(&self) -> Vec<Effect> {
        self.store
            .unit_of_work(|uow| {
                let backend = |e: runnel::sqlite::rusqlite::Error| {
                    runnel_core::StoreError::Backend(e.to_string())
                };
                let mut stmt = uow
                    .connection()
                    .prepare("SELECT message_id, key, n FROM effects ORDER BY seq")
                    .map_err(backend)?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok(Effect {
                            message_id: r.get(0)?,
                            key: r.get(1)?,
                            n: r.get(2)?,
                        })
                    })
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            })
            .await
            .expect("read the effects")
    }
}
