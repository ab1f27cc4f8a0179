//! [`PostgresDeadLetters`]: the [`DeadLetterStore`] in the store's PostgreSQL schema.
//!
//! The table is created by migration `0003_dead_letters.sql`; see the crate's DESIGN.md.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::dead_letter::{
    error_search_text, failure_span, validate_list_limit, DeadLetter, DeadLetterFilter,
    DeadLetterId, DeadLetterStore, FailureRecord, NewDeadLetter,
};
use runnel_core::{GroupName, Message, StoreError, TopicName};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder, Row};

use crate::error_map::map_sqlx;
use crate::store::PostgresStore;

/// Most rows one purge statement deletes. A purge of millions of rows runs as many short
/// transactions, so it never holds locks on the whole table for long.
pub const PURGE_CHUNK_ROWS_MAX: usize = 5_000;

const COLUMNS: &str = "id, topic, group_name, envelope, payload, failures, dead_lettered_at, \
                       replay_count, last_replayed_at";

/// Dead letters in a [`PostgresStore`]'s schema.
///
/// Cheap to clone; shares the store's pool.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use runnel_core::dead_letter::{DeadLetterFilter, DeadLetterStore};
/// use runnel_postgres::{PostgresDeadLetters, PostgresStore};
///
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1/app").await?;
/// let dead_letters = PostgresDeadLetters::new(store.clone());
/// let pending = dead_letters.count(&DeadLetterFilter::pending()).await?;
/// println!("{pending} dead letters wait for a replay");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresDeadLetters {
    store: PostgresStore,
    table: String,
}

impl PostgresDeadLetters {
    /// Dead letters in `store`'s schema.
    pub fn new(store: PostgresStore) -> Self {
        let table = format!("{}.dead_letters", store.schema());
        PostgresDeadLetters { store, table }
    }

    /// The store they live in.
    pub fn store(&self) -> &PostgresStore {
        &self.store
    }

    /// Stores a dead letter inside the caller's transaction, so dead-lettering can commit
    /// together with, say, removing the message from a queue table.
    pub async fn put_in(
        &self,
        tx: &mut sqlx::PgConnection,
        dead_letter: NewDeadLetter,
    ) -> Result<DeadLetterId, StoreError> {
        let dead_letter = dead_letter.normalized()?;
        let mut envelope = dead_letter.message;
        let payload = std::mem::take(&mut envelope.payload);
        let envelope_json = serde_json::to_string(&envelope)
            .map_err(|e| StoreError::Backend(format!("cannot encode the message envelope: {e}")))?;
        let failures_json = serde_json::to_string(&dead_letter.failures)
            .map_err(|e| StoreError::Backend(format!("cannot encode the failures: {e}")))?;
        // PostgreSQL text cannot hold NUL; the JSON columns escape it, the search column
        // simply drops it (nobody searches for NUL).
        let search = error_search_text(&dead_letter.failures).replace('\0', "");
        // Ids are handed out in commit order: the transaction-scoped lock (taken in the
        // same statement, so it holds until the enclosing transaction commits, or until
        // this statement does outside one) makes a second insert wait for the first to
        // commit before it draws an id. Without it, an id drawn early could commit after a
        // higher one, and a reader paging "after the last id seen" would miss it.
        let id: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "WITH ordered AS (SELECT pg_advisory_xact_lock(hashtext($8)) AS locked) \
             INSERT INTO {} (topic, group_name, message_id, envelope, payload, failures, \
             error_search, dead_lettered_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, now() FROM ordered \
             RETURNING id",
            self.table
        )))
        .bind(dead_letter.topic.as_str())
        .bind(dead_letter.group.as_str())
        .bind(envelope.id.replace('\0', ""))
        .bind(envelope_json)
        .bind(payload)
        .bind(failures_json)
        .bind(search)
        .bind(format!("runnel dead-letter ids {}", self.table))
        .fetch_one(&mut *tx)
        .await
        .map_err(store_err)?;
        debug_assert!(id > 0);
        Ok(DeadLetterId(id as u64))
    }
}

fn store_err(e: sqlx::Error) -> StoreError {
    map_sqlx(e)
}

fn id_to_sql(id: DeadLetterId) -> i64 {
    // Ids come from a bigserial, so every real one fits; a larger one matches nothing.
    id.0.min(i64::MAX as u64) as i64
}

/// Appends `AND …` clauses for `filter` to a query that already has a `WHERE`.
fn push_filter(q: &mut QueryBuilder<Postgres>, filter: &DeadLetterFilter) {
    if let Some(topic) = &filter.topic {
        q.push(" AND topic = ")
            .push_bind(topic.as_str().to_string());
    }
    if let Some(group) = &filter.group {
        q.push(" AND group_name = ")
            .push_bind(group.as_str().to_string());
    }
    if let Some(needle) = filter.error_needle() {
        // Both sides are lower-cased in Rust (Unicode-aware, independent of the database
        // collation); strpos() is a plain substring search, so the rule is exactly
        // DeadLetterFilter::matches.
        q.push(" AND strpos(error_search, ")
            .push_bind(needle.replace('\0', ""))
            .push(") > 0");
    }
    if let Some(since) = filter.since {
        q.push(" AND dead_lettered_at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        q.push(" AND dead_lettered_at < ").push_bind(until);
    }
    if !filter.include_replayed {
        q.push(" AND replay_count = 0");
    }
}

fn dead_letter_from_row(row: &PgRow) -> Result<DeadLetter, StoreError> {
    let get_err = |e: sqlx::Error| StoreError::Corrupt(format!("unreadable dead-letter row: {e}"));
    let id: i64 = row.try_get(0).map_err(get_err)?;
    let topic: String = row.try_get(1).map_err(get_err)?;
    let group: String = row.try_get(2).map_err(get_err)?;
    let envelope: String = row.try_get(3).map_err(get_err)?;
    let payload: Vec<u8> = row.try_get(4).map_err(get_err)?;
    let failures: String = row.try_get(5).map_err(get_err)?;
    let dead_lettered_at: DateTime<Utc> = row.try_get(6).map_err(get_err)?;
    let replay_count: i32 = row.try_get(7).map_err(get_err)?;
    let last_replayed_at: Option<DateTime<Utc>> = row.try_get(8).map_err(get_err)?;

    let corrupt =
        |what: &str, e: String| StoreError::Corrupt(format!("dead letter {id}: {what}: {e}"));
    let mut message: Message =
        serde_json::from_str(&envelope).map_err(|e| corrupt("message envelope", e.to_string()))?;
    message.payload = payload;
    let failures: Vec<FailureRecord> =
        serde_json::from_str(&failures).map_err(|e| corrupt("failures", e.to_string()))?;
    let (first_failed_at, last_failed_at) =
        failure_span(&failures).ok_or_else(|| corrupt("failures", "none stored".into()))?;
    Ok(DeadLetter {
        id: DeadLetterId(id as u64),
        topic: TopicName::new(topic).map_err(|e| corrupt("topic", e.to_string()))?,
        group: GroupName::new(group).map_err(|e| corrupt("group", e.to_string()))?,
        message,
        failures,
        first_failed_at,
        last_failed_at,
        dead_lettered_at,
        replay_count: u32::try_from(replay_count)
            .map_err(|_| corrupt("replay count", replay_count.to_string()))?,
        last_replayed_at,
    })
}

#[async_trait]
impl DeadLetterStore for PostgresDeadLetters {
    async fn put(&self, dead_letter: NewDeadLetter) -> Result<DeadLetterId, StoreError> {
        let mut conn = self.store.pool().acquire().await.map_err(store_err)?;
        // One statement: autocommit makes it atomic and durable on its own.
        self.put_in(&mut conn, dead_letter).await
    }

    async fn list(
        &self,
        filter: &DeadLetterFilter,
        after: Option<DeadLetterId>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        validate_list_limit(limit)?;
        filter.validate()?;
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {COLUMNS} FROM {} WHERE id > ",
            self.table
        ));
        q.push_bind(after.map_or(0, id_to_sql));
        push_filter(&mut q, filter);
        q.push(" ORDER BY id LIMIT ").push_bind(limit as i64);
        let rows = q
            .build()
            .fetch_all(self.store.pool())
            .await
            .map_err(store_err)?;
        debug_assert!(rows.len() <= limit);
        rows.iter().map(dead_letter_from_row).collect()
    }

    async fn get(&self, id: DeadLetterId) -> Result<Option<DeadLetter>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM {} WHERE id = $1",
            self.table
        )))
        .bind(id_to_sql(id))
        .fetch_optional(self.store.pool())
        .await
        .map_err(store_err)?;
        row.as_ref().map(dead_letter_from_row).transpose()
    }

    async fn count(&self, filter: &DeadLetterFilter) -> Result<u64, StoreError> {
        filter.validate()?;
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT count(*) FROM {} WHERE true",
            self.table
        ));
        push_filter(&mut q, filter);
        let n: i64 = q
            .build()
            .fetch_one(self.store.pool())
            .await
            .and_then(|row| row.try_get(0))
            .map_err(store_err)?;
        Ok(n as u64)
    }

    async fn mark_replayed(&self, id: DeadLetterId, at: DateTime<Utc>) -> Result<(), StoreError> {
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {} SET replay_count = replay_count + 1, last_replayed_at = $2 WHERE id = $1",
            self.table
        )))
        .bind(id_to_sql(id))
        .bind(at)
        .execute(self.store.pool())
        .await
        .map_err(store_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::InvalidArgument(format!(
                "dead letter {id} does not exist (purged?)"
            )));
        }
        Ok(())
    }

    async fn purge(
        &self,
        filter: &DeadLetterFilter,
        older_than: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        filter.validate()?;
        let mut total = 0u64;
        loop {
            let mut q = QueryBuilder::<Postgres>::new(format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE dead_lettered_at < ",
                t = self.table
            ));
            q.push_bind(older_than);
            push_filter(&mut q, filter);
            q.push(" ORDER BY id LIMIT ")
                .push_bind(PURGE_CHUNK_ROWS_MAX as i64)
                .push(")");
            let deleted = q
                .build()
                .execute(self.store.pool())
                .await
                .map_err(store_err)?
                .rows_affected();
            debug_assert!(deleted <= PURGE_CHUNK_ROWS_MAX as u64);
            total += deleted;
            if deleted < PURGE_CHUNK_ROWS_MAX as u64 {
                return Ok(total);
            }
        }
    }
}
