//! The PostgreSQL backend: a fresh schema per test holding the bus, the inbox, the dead
//! letters and the application's `effects` table. The server comes from
//! `RUNNEL_TEST_POSTGRES_URL`; unset, the test says "skipped" loudly — or fails, with
//! `RUNNEL_REQUIRE_SERVICES=1`.

use std::sync::Arc;

use runnel::async_trait;
use runnel::consumer::{ConsumerBuilder, HandlerContext, HandlerError};
use runnel::core::bus::{Publisher, Subscriber};
use runnel::core::dead_letter::DeadLetterStore;
use runnel::core::{GroupName, TopicName};
use runnel::postgres::bus::{BusOptions, PostgresBus};
use runnel::postgres::sqlx::{self, AssertSqlSafe, Row};
use runnel::postgres::{
    InboxTransaction, PostgresDeadLetters, PostgresInbox, PostgresOptions, PostgresStore,
};

use super::{Backend, Effect, BUS_POLL_INTERVAL};

/// Connections per test store: above the scenarios' concurrency (each inbox attempt holds
/// one from begin to commit) plus the bus's claims and acks, and small enough that two
/// tests at once stay far below the server's connection limit.
const POOL_SIZE: u32 = 24;

pub struct PostgresBackend {
    pub store: PostgresStore,
    pub bus: PostgresBus,
    schema: String,
    dead_letters: Arc<PostgresDeadLetters>,
    inbox: Arc<PostgresInbox>,
}

/// The test server's URL, or `None` (skipped) — a failure under `RUNNEL_REQUIRE_SERVICES=1`.
pub fn postgres_url() -> Option<String> {
    match std::env::var("RUNNEL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "RUNNEL_TEST_POSTGRES_URL is not set but RUNNEL_REQUIRE_SERVICES=1"
            );
            eprintln!("SKIPPED: RUNNEL_TEST_POSTGRES_URL is not set");
            None
        }
    }
}

impl PostgresBackend {
    /// A backend in a fresh schema, or `None` when no server is configured.
    pub async fn new() -> Option<Arc<PostgresBackend>> {
        let url = postgres_url()?;
        let schema = format!("e2e_{}", runnel::core::uuid::Uuid::now_v7().simple());
        let store = PostgresStore::connect_with(
            PostgresOptions::new(url)
                .schema(schema.clone())
                .pool_size(POOL_SIZE),
        )
        .await
        .expect("connect to the test PostgreSQL");
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE {schema}.effects (\
               seq bigserial PRIMARY KEY, \
               consumer text NOT NULL, \
               message_id text NOT NULL, \
               key text NOT NULL, \
               n bigint NOT NULL)"
        )))
        .execute(store.pool())
        .await
        .unwrap();
        let bus = PostgresBus::new(
            store.clone(),
            BusOptions::default().poll_interval(BUS_POLL_INTERVAL),
        )
        .await
        .unwrap();
        Some(Arc::new(PostgresBackend {
            dead_letters: Arc::new(PostgresDeadLetters::new(store.clone())),
            inbox: Arc::new(PostgresInbox::new(&store)),
            bus,
            store,
            schema,
        }))
    }

    /// Drops the test's schema (called at the end of a passing test; a failing one leaves
    /// it for inspection).
    pub async fn drop_schema(&self) {
        sqlx::query(AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.schema
        )))
        .execute(self.store.pool())
        .await
        .unwrap();
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        Arc::new(self.bus.clone())
    }

    fn subscriber(&self) -> Arc<dyn Subscriber> {
        Arc::new(self.bus.clone())
    }

    fn dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        self.dead_letters.clone()
    }

    fn with_inbox(&self, builder: ConsumerBuilder) -> ConsumerBuilder {
        builder.inbox(Arc::clone(&self.inbox))
    }

    async fn write_effect(&self, ctx: &HandlerContext, effect: Effect) -> Result<(), HandlerError> {
        let mut tx = ctx.scope::<InboxTransaction>().await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {}.effects (consumer, message_id, key, n) VALUES ($1, $2, $3, $4)",
            self.schema
        )))
        .bind(effect.consumer)
        .bind(effect.message_id)
        .bind(effect.key)
        .bind(effect.n)
        .execute(tx.connection())
        .await
        .map_err(HandlerError::retryable)?;
        Ok(())
    }

    async fn effects(&self) -> Vec<Effect> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT consumer, message_id, key, n FROM {}.effects ORDER BY seq",
            self.schema
        )))
        .fetch_all(self.store.pool())
        .await
        .unwrap()
        .into_iter()
        .map(|r| Effect {
            consumer: r.get(0),
            message_id: r.get(1),
            key: r.get(2),
            n: r.get(3),
        })
        .collect()
    }

    async fn pending(&self, topic: &TopicName, group: &GroupName) -> u64 {
        self.bus
            .group_backlog(topic, group)
            .await
            .unwrap()
            .map_or(0, |b| b.pending)
    }
}
