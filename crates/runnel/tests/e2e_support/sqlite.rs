//! The embedded backend: one temporary SQLite file holding the bus, the inbox, the dead
//! letters and the application's `effects` table.

use std::sync::Arc;

use runnel::async_trait;
use runnel::consumer::inbox::SqliteInboxScope;
use runnel::consumer::{ConsumerBuilder, HandlerContext, HandlerError};
use runnel::core::bus::{Publisher, Subscriber};
use runnel::core::dead_letter::DeadLetterStore;
use runnel::core::{GroupName, StoreError, TopicName};
use runnel::sqlite::bus::{BusOptions, SqliteBus};
use runnel::sqlite::rusqlite::params;
use runnel::sqlite::{SqliteDeadLetters, SqliteInbox, SqliteStore};

use super::{Backend, Effect, BUS_POLL_INTERVAL};

pub struct SqliteBackend {
    pub store: SqliteStore,
    pub bus: SqliteBus,
    dead_letters: Arc<SqliteDeadLetters>,
    inbox: Arc<SqliteInbox>,
}

fn backend_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteBackend {
    /// A fresh file (deleted when the last handle is dropped) with the `effects` table.
    pub async fn new() -> Arc<SqliteBackend> {
        let store = SqliteStore::open_temporary().unwrap();
        store
            .unit_of_work(|uow| {
                uow.connection()
                    .execute(
                        "CREATE TABLE effects (\
                           seq INTEGER PRIMARY KEY AUTOINCREMENT, \
                           consumer TEXT NOT NULL, \
                           message_id TEXT NOT NULL, \
                           key TEXT NOT NULL, \
                           n INTEGER NOT NULL)",
                        [],
                    )
                    .map_err(backend_error)
            })
            .await
            .unwrap();
        let bus = SqliteBus::new(
            store.clone(),
            BusOptions::default().poll_interval(BUS_POLL_INTERVAL),
        )
        .unwrap();
        Arc::new(SqliteBackend {
            dead_letters: Arc::new(SqliteDeadLetters::new(store.clone())),
            inbox: Arc::new(SqliteInbox::new(store.clone())),
            bus,
            store,
        })
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
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
        ctx.scope::<SqliteInboxScope>().await?.write(move |uow| {
            uow.connection().execute(
                "INSERT INTO effects (consumer, message_id, key, n) VALUES (?1, ?2, ?3, ?4)",
                params![effect.consumer, effect.message_id, effect.key, effect.n],
            )?;
            Ok(())
        })
    }

    async fn effects(&self) -> Vec<Effect> {
        self.store
            .unit_of_work(|uow| {
                let mut stmt = uow
                    .connection()
                    .prepare("SELECT consumer, message_id, key, n FROM effects ORDER BY seq")
                    .map_err(backend_error)?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok(Effect {
                            consumer: r.get(0)?,
                            message_id: r.get(1)?,
                            key: r.get(2)?,
                            n: r.get(3)?,
                        })
                    })
                    .map_err(backend_error)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend_error)
            })
            .await
            .unwrap()
    }

    async fn pending(&self, topic: &TopicName, group: &GroupName) -> u64 {
        self.bus
            .group_backlog(topic, group)
            .await
            .unwrap()
            .map_or(0, |b| b.pending)
    }
}
