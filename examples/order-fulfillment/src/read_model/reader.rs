//! Reading enriched order summaries: one SELECT that joins the three projections' views,
//! run on whichever backend the store is. One statement is one snapshot on both SQLite
//! (a WAL read transaction) and PostgreSQL (`READ COMMITTED` takes one per statement), so
//! an answer never mixes two moments of a table.

use runnel::connect::{StoreBackend, Stores};
use runnel::postgres::sqlx::{self, AssertSqlSafe};
use serde::{Deserialize, Serialize};

use super::fulfillment::FulfillmentProgress;
use super::ReadModelError;
use crate::order::OrderStatus;

/// An order as the read side shows it: the order's own facts with the customer's and each
/// product's *current* names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrichedOrderSummary {
    pub order_id: String,
    pub customer_id: String,
    /// `None` until the `customers` projection knows the customer (an order may be placed
    /// before its customer is registered, or be read before the registration is applied).
    pub customer_name: Option<String>,
    pub status: OrderStatus,
    pub total_cents: i64,
    /// The sum of the lines' quantities.
    pub item_count: i64,
    pub lines: Vec<EnrichedLine>,
    /// The position in `$all` of the last event applied to this order.
    pub last_position: u64,
    /// How far fulfillment got, as the services answered (empty until the first answer).
    #[serde(default)]
    pub fulfillment: FulfillmentProgress,
}

/// One line of an [`EnrichedOrderSummary`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrichedLine {
    pub sku: String,
    /// `None` until the `products` projection knows the product.
    pub product_name: Option<String>,
    pub quantity: i64,
    /// The price the line was ordered at (not the product's list price today).
    pub unit_price_cents: i64,
}

/// Which orders to read.
pub(super) enum Select<'a> {
    /// One order.
    Order(&'a str),
    /// The newest `limit` orders of the customers currently named this.
    CustomerName(&'a str, usize),
}

/// One row of the join: an order and one of its lines.
struct Row {
    order_id: String,
    customer_id: String,
    customer_name: Option<String>,
    status: String,
    total_cents: i64,
    item_count: i64,
    last_position: i64,
    sku: Option<String>,
    product_name: Option<String>,
    quantity: Option<i64>,
    unit_price_cents: Option<i64>,
    progress: [Option<String>; 6],
}

/// `{schema}` is the PostgreSQL schema (quoted, with its dot) or nothing on SQLite.
const COLUMNS: &str = "SELECT o.order_id, o.customer_id, c.name, o.status, o.total_cents, \
     o.item_count, o.last_position, l.sku, pr.name, l.quantity, l.unit_price_cents, \
     f.stage, f.reservation_id, f.payment_id, f.tracking_number, f.failure, f.compensations \
     FROM {schema}enriched_orders o \
     LEFT JOIN {schema}fulfillment_progress f ON f.order_id = o.order_id \
     LEFT JOIN {schema}customers c ON c.customer_id = o.customer_id \
     LEFT JOIN {schema}enriched_order_lines l ON l.order_id = o.order_id \
     LEFT JOIN {schema}products pr ON pr.sku = l.sku";

fn sql(select: &Select<'_>, schema: &str) -> String {
    let filter = match select {
        Select::Order(_) => "WHERE o.order_id = $1 ORDER BY l.line_no".to_string(),
        Select::CustomerName(_, limit) => format!(
            "WHERE o.order_id IN (SELECT o2.order_id FROM {{schema}}enriched_orders o2 \
               JOIN {{schema}}customers c2 ON c2.customer_id = o2.customer_id \
              WHERE c2.name = $1 ORDER BY o2.placed_position DESC LIMIT {limit}) \
             ORDER BY o.placed_position DESC, o.order_id, l.line_no"
        ),
    };
    format!("{COLUMNS} {filter}").replace("{schema}", schema)
}

fn param<'a>(select: &Select<'a>) -> &'a str {
    match select {
        Select::Order(id) => id,
        Select::CustomerName(name, _) => name,
    }
}

/// The summaries `select` names, in the order the SELECT returns them.
pub(super) async fn read(
    stores: &Stores,
    select: Select<'_>,
) -> Result<Vec<EnrichedOrderSummary>, ReadModelError> {
    let value = param(&select).to_string();
    let rows = match stores.backend() {
        StoreBackend::Sqlite(store) => {
            let sql = sql(&select, "");
            store
                .read_with(move |conn| -> Result<Vec<Row>, ReadModelError> {
                    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
                    let rows = stmt
                        .query_map([&value], |r| {
                            Ok(Row {
                                order_id: r.get(0)?,
                                customer_id: r.get(1)?,
                                customer_name: r.get(2)?,
                                status: r.get(3)?,
                                total_cents: r.get(4)?,
                                item_count: r.get(5)?,
                                last_position: r.get(6)?,
                                sku: r.get(7)?,
                                product_name: r.get(8)?,
                                quantity: r.get(9)?,
                                unit_price_cents: r.get(10)?,
                                progress: [
                                    r.get(11)?,
                                    r.get(12)?,
                                    r.get(13)?,
                                    r.get(14)?,
                                    r.get(15)?,
                                    r.get(16)?,
                                ],
                            })
                        })
                        .map_err(backend)?;
                    rows.collect::<Result<Vec<Row>, _>>().map_err(backend)
                })
                .await?
        }
        StoreBackend::Postgres(store) => {
            use sqlx::Row as _;
            let schema = format!("\"{}\".", store.schema().replace('"', "\"\""));
            let rows = sqlx::query(AssertSqlSafe(sql(&select, &schema)))
                .bind(value)
                .fetch_all(store.pool())
                .await
                .map_err(backend)?;
            rows.iter()
                .map(|r| {
                    Ok(Row {
                        order_id: r.try_get(0)?,
                        customer_id: r.try_get(1)?,
                        customer_name: r.try_get(2)?,
                        status: r.try_get(3)?,
                        total_cents: r.try_get(4)?,
                        item_count: r.try_get(5)?,
                        last_position: r.try_get(6)?,
                        sku: r.try_get(7)?,
                        product_name: r.try_get(8)?,
                        quantity: r.try_get(9)?,
                        unit_price_cents: r.try_get(10)?,
                        progress: [
                            r.try_get(11)?,
                            r.try_get(12)?,
                            r.try_get(13)?,
                            r.try_get(14)?,
                            r.try_get(15)?,
                            r.try_get(16)?,
                        ],
                    })
                })
                .collect::<Result<Vec<Row>, sqlx::Error>>()
                .map_err(backend)?
        }
        #[allow(unreachable_patterns)]
        _ => return Err(ReadModelError::Unsupported),
    };
    group(rows)
}

/// Folds the join's rows (an order's rows are adjacent) into summaries.
fn group(rows: Vec<Row>) -> Result<Vec<EnrichedOrderSummary>, ReadModelError> {
    let mut out: Vec<EnrichedOrderSummary> = Vec::new();
    for row in rows {
        if out.last().map(|s| &s.order_id) != Some(&row.order_id) {
            let status = OrderStatus::parse(&row.status).ok_or_else(|| {
                ReadModelError::Corrupt(format!(
                    "order {} has status {:?}",
                    row.order_id, row.status
                ))
            })?;
            let last_position = u64::try_from(row.last_position).map_err(|_| {
                ReadModelError::Corrupt(format!(
                    "order {} has position {}",
                    row.order_id, row.last_position
                ))
            })?;
            let [stage, reservation, payment, tracking, failure, compensations] = row.progress;
            out.push(EnrichedOrderSummary {
                order_id: row.order_id.clone(),
                customer_id: row.customer_id,
                customer_name: row.customer_name,
                status,
                total_cents: row.total_cents,
                item_count: row.item_count,
                lines: Vec::new(),
                last_position,
                fulfillment: FulfillmentProgress::from_columns(
                    stage,
                    reservation,
                    payment,
                    tracking,
                    failure,
                    compensations,
                ),
            });
        }
        if let (Some(sku), Some(quantity), Some(unit_price_cents)) =
            (row.sku, row.quantity, row.unit_price_cents)
        {
            let summary = out.last_mut().expect("pushed above");
            summary.lines.push(EnrichedLine {
                sku,
                product_name: row.product_name,
                quantity,
                unit_price_cents,
            });
        }
    }
    Ok(out)
}

fn backend(e: impl std::fmt::Display) -> ReadModelError {
    ReadModelError::Store(runnel::core::StoreError::Backend(e.to_string()))
}
