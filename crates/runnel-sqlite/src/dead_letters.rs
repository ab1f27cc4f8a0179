//! [`SqliteDeadLetters`]: the [`DeadLetterStore`] in the store's SQLite file.
//!
//! Writes go through the store's group-commit writer like every other write (so a dead
//! letter is fsynced before `put` returns); reads use the read pool. The table is created by
//! migration `0003_dead_letters.sql`; see the crate's DESIGN.md.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::dead_letter::{
    error_search_text, failure_span, validate_list_limit, DeadLetter, DeadLetterFilter,
    DeadLetterId, DeadLetterStore, FailureRecord, NewDeadLetter,
};
use runnel_core::{GroupName, Message, StoreError, TopicName};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection};

use crate::error_map::map_sqlite;
use crate::rows::{micros_to_time, time_to_micros};
use crate::store::{keep_all, SqliteStore};

/// Most rows one purge job deletes. A purge of millions of rows runs as many short writer
/// jobs, so appends queued behind it wait for one chunk, never for the whole purge.
pub const PURGE_CHUNK_ROWS_MAX: usize = 5_000;

const COLUMNS: &str = "id, topic, group_name, envelope, payload, failures, dead_lettered_at, \
                       replay_count, last_replayed_at";

/// Dead letters in a [`SqliteStore`]'s file.
///
/// Cheap to clone; shares the store's writer and read pool.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use runnel_core::dead_letter::{DeadLetterFilter, DeadLetterStore, FailureRecord, NewDeadLetter};
/// use runnel_core::{GroupName, Message, TopicName};
/// use runnel_sqlite::{SqliteDeadLetters, SqliteStore};
///
/// let store = SqliteStore::open_temporary()?;
/// let dead_letters = SqliteDeadLetters::new(store.clone());
/// let id = dead_letters
///     .put(NewDeadLetter {
///         topic: TopicName::new("orders")?,
///         group: GroupName::new("billing")?,
///         message: Message::json("OrderPlaced", &serde_json::json!({"order": 1})),
///         failures: vec![FailureRecord {
///             attempt: 1,
///             at: chrono::Utc::now(),
///             error: "card service down".into(),
///             permanent: false,
///         }],
///     })
///     .await?;
/// assert_eq!(dead_letters.count(&DeadLetterFilter::pending()).await?, 1);
/// assert!(dead_letters.get(id).await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteDeadLetters {
    store: SqliteStore,
}

impl SqliteDeadLetters {
    /// Dead letters in `store`'s file.
    pub fn new(store: SqliteStore) -> Self {
        SqliteDeadLetters { store }
    }

    /// The store they live in.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }
}

/// Stores a dead letter inside an open transaction — from a unit of work or another
/// writer job — so dead-lettering can commit together with, say, removing the message from
/// a queue. `now_micros` becomes its `dead_lettered_at`.
pub fn put_dead_letter_in_tx(
    conn: &Connection,
    now_micros: i64,
    dead_letter: NewDeadLetter,
) -> Result<DeadLetterId, StoreError> {
    let dead_letter = dead_letter.normalized()?;
    let mut envelope = dead_letter.message;
    let payload = std::mem::take(&mut envelope.payload);
    let envelope_json = serde_json::to_string(&envelope)
        .map_err(|e| StoreError::Backend(format!("cannot encode the message envelope: {e}")))?;
    let failures_json = serde_json::to_string(&dead_letter.failures)
        .map_err(|e| StoreError::Backend(format!("cannot encode the failures: {e}")))?;
    conn.prepare_cached(
        "INSERT INTO dead_letters (topic, group_name, message_id, envelope, payload, failures, \
         error_search, dead_lettered_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .map_err(map_sqlite)?
    .execute(params![
        dead_letter.topic.as_str(),
        dead_letter.group.as_str(),
        envelope.id,
        envelope_json,
        payload,
        failures_json,
        error_search_text(&dead_letter.failures),
        now_micros,
    ])
    .map_err(map_sqlite)?;
    let id = conn.last_insert_rowid();
    debug_assert!(id > 0);
    Ok(DeadLetterId(id as u64))
}

/// The `AND …` clauses and their arguments for `filter` (after `WHERE 1 = 1`).
fn filter_clauses(filter: &DeadLetterFilter, args: &mut Vec<Value>) -> String {
    let mut sql = String::new();
    if let Some(topic) = &filter.topic {
        sql.push_str(" AND topic = ?");
        args.push(topic.as_str().to_string().into());
    }
    if let Some(group) = &filter.group {
        sql.push_str(" AND group_name = ?");
        args.push(group.as_str().to_string().into());
    }
    if let Some(needle) = filter.error_needle() {
        // Both sides are lower-cased in Rust (Unicode-aware); instr() is a plain substring
        // search, so the rule is exactly DeadLetterFilter::matches.
        sql.push_str(" AND instr(error_search, ?) > 0");
        args.push(needle.into());
    }
    if let Some(since) = filter.since {
        sql.push_str(" AND dead_lettered_at >= ?");
        args.push(time_to_micros(since).into());
    }
    if let Some(until) = filter.until {
        sql.push_str(" AND dead_lettered_at < ?");
        args.push(time_to_micros(until).into());
    }
    if !filter.include_replayed {
        sql.push_str(" AND replay_count = 0");
    }
    sql
}

fn id_to_sql(id: DeadLetterId) -> i64 {
    // Ids come from SQLite rowids, so every real one fits; a larger one matches nothing.
    id.0.min(i64::MAX as u64) as i64
}

fn dead_letter_from_row(row: &rusqlite::Row<'_>) -> Result<DeadLetter, StoreError> {
    let get_err =
        |e: rusqlite::Error| StoreError::Corrupt(format!("unreadable dead-letter row: {e}"));
    let id: i64 = row.get(0).map_err(get_err)?;
    let topic: String = row.get(1).map_err(get_err)?;
    let group: String = row.get(2).map_err(get_err)?;
    let envelope: String = row.get(3).map_err(get_err)?;
    let payload: Vec<u8> = row.get(4).map_err(get_err)?;
    let failures: String = row.get(5).map_err(get_err)?;
    let dead_lettered_at: i64 = row.get(6).map_err(get_err)?;
    let replay_count: i64 = row.get(7).map_err(get_err)?;
    let last_replayed_at: Option<i64> = row.get(8).map_err(get_err)?;

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
        dead_lettered_at: micros_to_time(dead_lettered_at)?,
        replay_count: u32::try_from(replay_count)
            .map_err(|_| corrupt("replay count", replay_count.to_string()))?,
        last_replayed_at: last_replayed_at.map(micros_to_time).transpose()?,
    })
}

#[async_trait]
impl DeadLetterStore for SqliteDeadLetters {
    async fn put(&self, dead_letter: NewDeadLetter) -> Result<DeadLetterId, StoreError> {
        // Normalize (and refuse bad input) before queueing, so a refused call never
        // reaches the writer.
        let dead_letter = dead_letter.normalized()?;
        self.store
            .submit(0, keep_all, move |conn, ctx| {
                put_dead_letter_in_tx(conn, ctx.now_micros, dead_letter)
            })
            .await
    }

    async fn list(
        &self,
        filter: &DeadLetterFilter,
        after: Option<DeadLetterId>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        validate_list_limit(limit)?;
        filter.validate()?;
        let filter = filter.clone();
        self.store
            .read(move |conn| {
                let mut args: Vec<Value> = vec![after.map_or(0, id_to_sql).into()];
                let mut sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id > ?");
                sql.push_str(&filter_clauses(&filter, &mut args));
                sql.push_str(" ORDER BY id LIMIT ?");
                args.push((limit as i64).into());
                let mut stmt = conn.prepare_cached(&sql).map_err(map_sqlite)?;
                let mut rows = stmt.query(params_from_iter(args)).map_err(map_sqlite)?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(map_sqlite)? {
                    out.push(dead_letter_from_row(row)?);
                }
                debug_assert!(out.len() <= limit);
                Ok(out)
            })
            .await
    }

    async fn get(&self, id: DeadLetterId) -> Result<Option<DeadLetter>, StoreError> {
        self.store
            .read(move |conn| {
                let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = ?1");
                let mut stmt = conn.prepare_cached(&sql).map_err(map_sqlite)?;
                let mut rows = stmt.query([id_to_sql(id)]).map_err(map_sqlite)?;
                match rows.next().map_err(map_sqlite)? {
                    Some(row) => dead_letter_from_row(row).map(Some),
                    None => Ok(None),
                }
            })
            .await
    }

    async fn count(&self, filter: &DeadLetterFilter) -> Result<u64, StoreError> {
        filter.validate()?;
        let filter = filter.clone();
        self.store
            .read(move |conn| {
                let mut args = Vec::new();
                let sql = format!(
                    "SELECT count(*) FROM dead_letters WHERE 1 = 1{}",
                    filter_clauses(&filter, &mut args)
                );
                conn.prepare_cached(&sql)
                    .map_err(map_sqlite)?
                    .query_row(params_from_iter(args), |r| r.get::<_, i64>(0))
                    .map(|n| n as u64)
                    .map_err(map_sqlite)
            })
            .await
    }

    async fn mark_replayed(&self, id: DeadLetterId, at: DateTime<Utc>) -> Result<(), StoreError> {
        let changed = self
            .store
            .submit(0, keep_all, move |conn, _ctx| {
                conn.prepare_cached(
                    "UPDATE dead_letters SET replay_count = replay_count + 1, \
                     last_replayed_at = ?2 WHERE id = ?1",
                )
                .map_err(map_sqlite)?
                .execute(params![id_to_sql(id), time_to_micros(at)])
                .map_err(map_sqlite)
            })
            .await?;
        if changed == 0 {
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
            let filter = filter.clone();
            let deleted = self
                .store
                .submit(0, keep_all, move |conn, _ctx| {
                    let mut args: Vec<Value> = vec![time_to_micros(older_than).into()];
                    let mut inner =
                        "SELECT id FROM dead_letters WHERE dead_lettered_at < ?".to_string();
                    inner.push_str(&filter_clauses(&filter, &mut args));
                    inner.push_str(" ORDER BY id LIMIT ?");
                    args.push((PURGE_CHUNK_ROWS_MAX as i64).into());
                    let sql = format!("DELETE FROM dead_letters WHERE id IN ({inner})");
                    conn.prepare_cached(&sql)
                        .map_err(map_sqlite)?
                        .execute(params_from_iter(args))
                        .map_err(map_sqlite)
                })
                .await?;
            debug_assert!(deleted <= PURGE_CHUNK_ROWS_MAX);
            total += deleted as u64;
            if deleted < PURGE_CHUNK_ROWS_MAX {
                return Ok(total);
            }
        }
    }
}
