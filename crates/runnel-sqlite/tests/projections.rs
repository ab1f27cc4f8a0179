//! The SQLite projection store: the shared conformance suite, each check on a fresh
//! temporary file, reading the read model through the store's reader connections.

use std::sync::Arc;

use runnel_core::projection::SqlValue;
use runnel_core::StoreError;
use runnel_sqlite::rusqlite::types::ValueRef;
use runnel_sqlite::rusqlite::Connection;
use runnel_sqlite::{SqliteProjectionStore, SqliteStore};
use runnel_testkit::projections::{ReadModel, Rows};

/// The rows of `sql` on `store`'s file, each column as the [`SqlValue`] SQLite holds.
async fn select(store: SqliteStore, sql: String) -> Result<Rows, String> {
    let rows = store
        .read_with(move |conn| Ok::<_, StoreError>(select_on(conn, &sql)))
        .await;
    rows.map_err(|e| e.to_string())?
}

fn select_on(conn: &Connection, sql: &str) -> Result<Rows, String> {
    let mut stmt = conn.prepare(sql).map_err(|e| e.to_string())?;
    let columns = stmt.column_count();
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let mut values = Vec::with_capacity(columns);
        for i in 0..columns {
            values.push(match row.get_ref(i).map_err(|e| e.to_string())? {
                ValueRef::Null => SqlValue::Null,
                ValueRef::Integer(v) => SqlValue::Int(v),
                ValueRef::Real(v) => SqlValue::Real(v),
                ValueRef::Text(v) => SqlValue::Text(String::from_utf8_lossy(v).into()),
                ValueRef::Blob(v) => SqlValue::Blob(v.to_vec()),
            });
        }
        out.push(values);
    }
    Ok(out)
}

runnel_testkit::projection_store_conformance!(async {
    let store = SqliteStore::open_temporary().expect("a temporary store");
    let reads = store.clone();
    let read_model = ReadModel::new(move |sql| select(reads.clone(), sql));
    (Arc::new(SqliteProjectionStore::new(store)), read_model)
});
