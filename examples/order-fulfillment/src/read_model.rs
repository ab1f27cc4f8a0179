//! The `order_summaries` read model: one row per order, kept up to date from the order
//! events by a consumer whose writes commit together with its inbox mark (each event takes
//! effect once, even when redelivered), in the same database as the events.
//!
//! The same application code runs on SQLite and PostgreSQL; only the SQL dialect and the
//! inbox scope (a SQLite unit of work, a PostgreSQL transaction) differ, here.

use runnel::connect::{StoreBackend, Stores};
use runnel::consumer::inbox::SqliteInboxScope;
use runnel::consumer::{HandlerContext, HandlerError};
use runnel::core::StoreError;
use runnel::postgres::sqlx::AssertSqlSafe;
use runnel::postgres::InboxTransaction;
use serde::{Deserialize, Serialize};

use crate::order::{OrderEvent, OrderLine};

/// One order as the read side sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRow {
    pub order_id: String,
    pub customer_id: String,
    /// `placed`, `confirmed`, `cancelled`, `shipped` or `delivered`.
    pub status: String,
    pub total_cents: i64,
    pub item_count: i64,
    /// The id of the last event applied (the inbox key).
    pub last_event_id: String,
}

/// The change one order event makes to its row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowChange {
    /// A new order.
    Insert {
        customer_id: String,
        total_cents: i64,
        item_count: i64,
    },
    /// The order moved to `status`.
    Status(&'static str),
}

impl RowChange {
    /// What `event` changes.
    pub fn of(event: &OrderEvent) -> RowChange {
        match event {
            OrderEvent::OrderPlaced {
                customer_id, items, ..
            } => RowChange::Insert {
                customer_id: customer_id.clone(),
                total_cents: items.iter().filter_map(OrderLine::total_cents).sum(),
                item_count: items.iter().map(|l| i64::from(l.quantity)).sum(),
            },
            OrderEvent::OrderConfirmed => RowChange::Status("confirmed"),
            OrderEvent::OrderCancelled { .. } => RowChange::Status("cancelled"),
            OrderEvent::OrderShipped { .. } => RowChange::Status("shipped"),
            OrderEvent::OrderDelivered => RowChange::Status("delivered"),
        }
    }
}

/// The read model's table in one store.
#[derive(Clone)]
pub struct OrderReadModel {
    stores: Stores,
}

impl OrderReadModel {
    /// Creates the table if missing.
    pub async fn open(stores: &Stores) -> Result<OrderReadModel, StoreError> {
        match stores.backend() {
            StoreBackend::Sqlite(store) => {
                store
                    .unit_of_work(|uow| {
                        uow.connection()
                            .execute_batch(
                                "CREATE TABLE IF NOT EXISTS order_summaries (
                                    order_id TEXT PRIMARY KEY,
                                    customer_id TEXT NOT NULL,
                                    status TEXT NOT NULL,
                                    total_cents INTEGER NOT NULL,
                                    item_count INTEGER NOT NULL,
                                    last_event_id TEXT NOT NULL
                                 )",
                            )
                            .map_err(|e| StoreError::Backend(e.to_string()))
                    })
                    .await?;
            }
            StoreBackend::Postgres(store) => {
                let sql = format!(
                    "CREATE TABLE IF NOT EXISTS {}.order_summaries (
                        order_id TEXT PRIMARY KEY,
                        customer_id TEXT NOT NULL,
                        status TEXT NOT NULL,
                        total_cents BIGINT NOT NULL,
                        item_count BIGINT NOT NULL,
                        last_event_id TEXT NOT NULL
                     )",
                    store.schema()
                );
                runnel::postgres::sqlx::query(AssertSqlSafe(sql))
                    .execute(store.pool())
                    .await
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
            }
            _ => return Err(StoreError::Backend("unsupported store backend".into())),
        }
        Ok(OrderReadModel {
            stores: stores.clone(),
        })
    }

    /// The row of `order_id`, if the read side has seen the order.
    pub async fn get(&self, order_id: &str) -> Result<Option<OrderRow>, StoreError> {
        let order_id = order_id.to_string();
        match self.stores.backend() {
            StoreBackend::Sqlite(store) => {
                store
                    .read_with(move |conn| {
                        let mut stmt = conn
                            .prepare_cached(
                                "SELECT order_id, customer_id, status, total_cents, item_count,
                                        last_event_id
                                   FROM order_summaries WHERE order_id = ?1",
                            )
                            .map_err(backend)?;
                        let mut rows = stmt.query([&order_id]).map_err(backend)?;
                        let Some(row) = rows.next().map_err(backend)? else {
                            return Ok(None);
                        };
                        Ok(Some(OrderRow {
                            order_id: row.get(0).map_err(backend)?,
                            customer_id: row.get(1).map_err(backend)?,
                            status: row.get(2).map_err(backend)?,
                            total_cents: row.get(3).map_err(backend)?,
                            item_count: row.get(4).map_err(backend)?,
                            last_event_id: row.get(5).map_err(backend)?,
                        }))
                    })
                    .await
            }
            StoreBackend::Postgres(store) => {
                use runnel::postgres::sqlx::Row as _;
                let sql = format!(
                    "SELECT order_id, customer_id, status, total_cents, item_count, last_event_id
                       FROM {}.order_summaries WHERE order_id = $1",
                    store.schema()
                );
                let row = runnel::postgres::sqlx::query(AssertSqlSafe(sql))
                    .bind(&order_id)
                    .fetch_optional(store.pool())
                    .await
                    .map_err(backend)?;
                row.map(|row| {
                    Ok(OrderRow {
                        order_id: row.try_get(0).map_err(backend)?,
                        customer_id: row.try_get(1).map_err(backend)?,
                        status: row.try_get(2).map_err(backend)?,
                        total_cents: row.try_get(3).map_err(backend)?,
                        item_count: row.try_get(4).map_err(backend)?,
                        last_event_id: row.try_get(5).map_err(backend)?,
                    })
                })
                .transpose()
            }
            _ => Err(StoreError::Backend("unsupported store backend".into())),
        }
    }

    /// Applies `change` to `order_id`'s row inside the attempt's inbox scope, so it
    /// commits together with the processed mark of message `event_id`.
    pub async fn apply_in(
        &self,
        ctx: &HandlerContext,
        order_id: String,
        event_id: String,
        change: RowChange,
    ) -> Result<(), HandlerError> {
        match self.stores.backend() {
            StoreBackend::Sqlite(_) => {
                let mut scope = ctx.scope::<SqliteInboxScope>().await?;
                scope.write(move |uow| {
                    let conn = uow.connection();
                    match change {
                        RowChange::Insert {
                            customer_id,
                            total_cents,
                            item_count,
                        } => conn.execute(
                            "INSERT INTO order_summaries
                                 (order_id, customer_id, status, total_cents, item_count, last_event_id)
                             VALUES (?1, ?2, 'placed', ?3, ?4, ?5)
                             ON CONFLICT (order_id) DO NOTHING",
                            rusqlite_params(&order_id, &customer_id, total_cents, item_count, &event_id),
                        )?,
                        RowChange::Status(status) => conn.execute(
                            "UPDATE order_summaries SET status = ?2, last_event_id = ?3
                              WHERE order_id = ?1",
                            runnel::sqlite::rusqlite::params![order_id, status, event_id],
                        )?,
                    };
                    Ok(())
                })
            }
            StoreBackend::Postgres(store) => {
                let table = format!("{}.order_summaries", store.schema());
                let mut tx = ctx.scope::<InboxTransaction>().await?;
                let query = match &change {
                    RowChange::Insert { .. } => format!(
                        "INSERT INTO {table}
                             (order_id, customer_id, status, total_cents, item_count, last_event_id)
                         VALUES ($1, $2, 'placed', $3, $4, $5)
                         ON CONFLICT (order_id) DO NOTHING"
                    ),
                    RowChange::Status(_) => format!(
                        "UPDATE {table} SET status = $2, last_event_id = $3 WHERE order_id = $1"
                    ),
                };
                let query = runnel::postgres::sqlx::query(AssertSqlSafe(query)).bind(order_id);
                let query = match change {
                    RowChange::Insert {
                        customer_id,
                        total_cents,
                        item_count,
                    } => query
                        .bind(customer_id)
                        .bind(total_cents)
                        .bind(item_count)
                        .bind(event_id),
                    RowChange::Status(status) => query.bind(status).bind(event_id),
                };
                query
                    .execute(tx.connection())
                    .await
                    .map_err(HandlerError::retryable)?;
                Ok(())
            }
            _ => Err(HandlerError::permanent(StoreError::Backend(
                "unsupported store backend".into(),
            ))),
        }
    }
}

fn rusqlite_params<'a>(
    order_id: &'a str,
    customer_id: &'a str,
    total_cents: i64,
    item_count: i64,
    event_id: &'a str,
) -> impl runnel::sqlite::rusqlite::Params + 'a {
    (order_id, customer_id, total_cents, item_count, event_id)
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}
