//! Reading the jobs' results tables (`{job}_results`, views on the job's current
//! version), and the two queries that answer from them.

use std::sync::Arc;

use runnel::connect::{StoreBackend, Stores};
use runnel::core::Metadata;
use runnel::postgres::sqlx::{self, AssertSqlSafe};
use runnel::{async_trait, DispatchError, Query, QueryBus, QueryHandler, Upcasters};
use runnel_core::chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::unpaid::PaymentCheck;
use super::{REVENUE_JOB, UNPAID_JOB};
use crate::read_model::ReadModelError;

/// Most rows [`GetRevenuePerProduct`] returns (the newest minutes first).
pub const REVENUE_ROWS_MAX: usize = 1000;
/// Most orders [`ListUnpaidOrders`] returns (the oldest first).
pub const UNPAID_ORDERS_MAX: usize = 1000;

/// A product's net revenue in one minute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductRevenue {
    pub product_id: String,
    /// The minute: `[window_start, window_end)`.
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// Charged less refunded in that minute, in cents.
    pub revenue_cents: i64,
}

/// Revenue per product per minute, newest minutes first, at most [`REVENUE_ROWS_MAX`]
/// rows; only `product_id`'s if given. JSON: `{}` or `{"product_id": "p-1"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetRevenuePerProduct {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<String>,
}

impl Query for GetRevenuePerProduct {
    const NAME: &'static str = "GetRevenuePerProduct";
    type Response = Vec<ProductRevenue>;
}

/// The orders not paid within 15 minutes of being placed, oldest first, at most
/// [`UNPAID_ORDERS_MAX`]. JSON: `{}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListUnpaidOrders {}

impl Query for ListUnpaidOrders {
    const NAME: &'static str = "ListUnpaidOrders";
    type Response = Vec<PaymentCheck>;
}

/// The results of the analytics jobs in one store.
#[derive(Clone)]
pub struct Analytics {
    stores: Stores,
}

/// A row of a results table: key, window start and end (ms), value (JSON text).
type ResultRow = (String, i64, i64, String);

impl Analytics {
    /// The analytics of `stores`, registering the jobs' tables (idempotent) so the
    /// queries work before the jobs' first batch.
    pub async fn open(
        stores: &Stores,
        upcasters: &Arc<Upcasters>,
    ) -> Result<Analytics, Box<dyn std::error::Error + Send + Sync>> {
        super::register_tables(stores, upcasters).await?;
        Ok(Analytics {
            stores: stores.clone(),
        })
    }

    /// Revenue per product per minute (see [`GetRevenuePerProduct`]).
    pub async fn revenue_per_product(
        &self,
        product_id: Option<&str>,
    ) -> Result<Vec<ProductRevenue>, ReadModelError> {
        let filter = match product_id {
            Some(_) => "WHERE kind <> 'retraction' AND k = $1",
            None => "WHERE kind <> 'retraction'",
        };
        let sql = format!(
            "SELECT k, window_start, window_end, value FROM {{schema}}{REVENUE_JOB}_results \
             {filter} ORDER BY window_start DESC, k LIMIT {REVENUE_ROWS_MAX}"
        );
        let rows = self.rows(sql, product_id.map(str::to_string)).await?;
        rows.into_iter()
            .map(|(product_id, start, end, value)| {
                let revenue_cents = value.parse::<i64>().map_err(|_| {
                    ReadModelError::Corrupt(format!(
                        "{REVENUE_JOB} holds {value:?} for {product_id}"
                    ))
                })?;
                Ok(ProductRevenue {
                    window_start: millis(start)?,
                    window_end: millis(end)?,
                    product_id,
                    revenue_cents,
                })
            })
            .collect()
    }

    /// The orders not paid in time (see [`ListUnpaidOrders`]).
    pub async fn unpaid_orders(&self) -> Result<Vec<PaymentCheck>, ReadModelError> {
        let unpaid = match self.stores.backend() {
            StoreBackend::Postgres(_) => "(value::jsonb ->> 'paid') = 'false'",
            _ => "json_extract(value, '$.paid') = 0",
        };
        // Every order has a row; the unpaid ones are few, and `seq` is the order the job
        // found them in (oldest deadline first).
        let sql = format!(
            "SELECT k, window_start, window_end, value FROM {{schema}}{UNPAID_JOB}_results \
             WHERE {unpaid} ORDER BY seq LIMIT {UNPAID_ORDERS_MAX}"
        );
        self.rows(sql, None)
            .await?
            .into_iter()
            .map(|(order_id, _, _, value)| {
                serde_json::from_str::<PaymentCheck>(&value).map_err(|e| {
                    ReadModelError::Corrupt(format!(
                        "{UNPAID_JOB} holds {value:?} for {order_id}: {e}"
                    ))
                })
            })
            .collect()
    }

    /// Runs `sql` (`{schema}` standing for the PostgreSQL schema) with at most one text
    /// parameter.
    async fn rows(
        &self,
        sql: String,
        param: Option<String>,
    ) -> Result<Vec<ResultRow>, ReadModelError> {
        match self.stores.backend() {
            StoreBackend::Sqlite(store) => {
                let sql = sql.replace("{schema}", "");
                store
                    .read_with(move |conn| -> Result<Vec<ResultRow>, ReadModelError> {
                        let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
                        let params: Vec<&dyn runnel::sqlite::rusqlite::ToSql> = match &param {
                            Some(p) => vec![p],
                            None => Vec::new(),
                        };
                        let rows = stmt
                            .query_map(params.as_slice(), |r| {
                                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                            })
                            .map_err(backend)?;
                        rows.collect::<Result<Vec<ResultRow>, _>>().map_err(backend)
                    })
                    .await
            }
            StoreBackend::Postgres(store) => {
                use sqlx::Row as _;
                let schema = format!("\"{}\".", store.schema().replace('"', "\"\""));
                let sql = sql.replace("{schema}", &schema);
                let mut query = sqlx::query(AssertSqlSafe(sql));
                if let Some(p) = param {
                    query = query.bind(p);
                }
                let rows = query.fetch_all(store.pool()).await.map_err(backend)?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
                    .collect::<Result<Vec<ResultRow>, sqlx::Error>>()
                    .map_err(backend)
            }
            #[allow(unreachable_patterns)]
            _ => Err(ReadModelError::Unsupported),
        }
    }
}

fn millis(ms: i64) -> Result<DateTime<Utc>, ReadModelError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| ReadModelError::Corrupt(format!("a window bound of {ms} ms")))
}

fn backend(e: impl std::fmt::Display) -> ReadModelError {
    ReadModelError::Store(runnel::core::StoreError::Backend(e.to_string()))
}

#[async_trait]
impl QueryHandler<GetRevenuePerProduct> for Analytics {
    type Error = ReadModelError;

    async fn handle(
        &self,
        query: GetRevenuePerProduct,
        _metadata: Metadata,
    ) -> Result<Vec<ProductRevenue>, ReadModelError> {
        self.revenue_per_product(query.product_id.as_deref()).await
    }
}

#[async_trait]
impl QueryHandler<ListUnpaidOrders> for Analytics {
    type Error = ReadModelError;

    async fn handle(
        &self,
        _query: ListUnpaidOrders,
        _metadata: Metadata,
    ) -> Result<Vec<PaymentCheck>, ReadModelError> {
        self.unpaid_orders().await
    }
}

/// Registers [`GetRevenuePerProduct`] and [`ListUnpaidOrders`] on `queries`.
pub(super) fn register_queries(
    queries: &QueryBus,
    analytics: Analytics,
) -> Result<(), DispatchError> {
    queries.register::<GetRevenuePerProduct, _>(analytics.clone())?;
    queries.register::<ListUnpaidOrders, _>(analytics)
}
