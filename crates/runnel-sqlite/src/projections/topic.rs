//! Topic projections on the SQLite file (migration 10): which projections read a topic,
//! and their inbox of applied message ids. A message's commit is one job of the writer's
//! batch under its own savepoint: the inbox row, the read-model statements, the outbox
//! rows, the counters and the inbox trim commit together, or (a duplicate, a failing
//! statement) the savepoint rolls back and nothing of it stays.

use rusqlite::{params, Connection, OptionalExtension};

use runnel_core::projection::{
    cut_error, resolve_tables, validate_message_commit, validate_topic_source, MessageCommit,
    MessageOutcome, TopicSource, VersionRole,
};
use runnel_core::StoreError;

use super::{bind, tables_of, SqliteProjectionStore};
use crate::error_map::map_sqlite;
use crate::store::keep_all;

fn set_source_in(conn: &Connection, now: i64, source: &TopicSource) -> Result<(), StoreError> {
    let known: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM projection_topics WHERE name = ?1)")
        .map_err(map_sqlite)?
        .query_row(params![source.name], |r| r.get(0))
        .map_err(map_sqlite)?;
    if !known {
        let registered: bool = conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM projection_versions WHERE name = ?1)")
            .map_err(map_sqlite)?
            .query_row(params![source.name], |r| r.get(0))
            .map_err(map_sqlite)?;
        if registered {
            return Err(StoreError::InvalidArgument(format!(
                "projection {} is registered as a projection of $all; a topic projection needs \
                 a name of its own",
                source.name
            )));
        }
    }
    conn.prepare_cached(
        "INSERT INTO projection_topics (name, topic, grp, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?4) \
         ON CONFLICT (name) DO UPDATE SET topic = excluded.topic, grp = excluded.grp, \
           updated_at = excluded.updated_at \
         WHERE topic <> excluded.topic OR grp <> excluded.grp",
    )
    .map_err(map_sqlite)?
    .execute(params![source.name, source.topic, source.group, now])
    .map_err(map_sqlite)?;
    Ok(())
}

/// The topic source of `name`, if it reads a topic.
pub(super) fn source_of(conn: &Connection, name: &str) -> Result<Option<TopicSource>, StoreError> {
    conn.prepare_cached("SELECT name, topic, grp FROM projection_topics WHERE name = ?1")
        .map_err(map_sqlite)?
        .query_row(params![name], |r| {
            Ok(TopicSource {
                name: r.get(0)?,
                topic: r.get(1)?,
                group: r.get(2)?,
            })
        })
        .optional()
        .map_err(map_sqlite)
}

fn commit_message_in(
    conn: &Connection,
    now: i64,
    commit: &MessageCommit,
) -> Result<MessageOutcome, StoreError> {
    let seq: Option<i64> = conn
        .prepare_cached(
            "UPDATE projection_topics SET inbox_seq = inbox_seq + 1 WHERE name = ?1 \
             RETURNING inbox_seq",
        )
        .map_err(map_sqlite)?
        .query_row(params![commit.name], |r| r.get(0))
        .optional()
        .map_err(map_sqlite)?;
    let Some(seq) = seq else {
        return Err(StoreError::InvalidArgument(format!(
            "projection {} does not read a topic (no topic source is recorded)",
            commit.name
        )));
    };
    let recorded = conn
        .prepare_cached(
            "INSERT INTO projection_inbox (name, message_id, seq, received_at) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name, message_id) DO NOTHING",
        )
        .map_err(map_sqlite)?
        .execute(params![commit.name, commit.message_id, seq, now])
        .map_err(map_sqlite)?;
    if recorded == 0 {
        return Ok(MessageOutcome::Duplicate);
    }
    let counted = conn
        .prepare_cached(
            "UPDATE projection_state SET events_applied = events_applied + 1, updated_at = ?3 \
             WHERE name = ?1 AND version = ?2 AND partition = 0",
        )
        .map_err(map_sqlite)?
        .execute(params![commit.name, commit.version, now])
        .map_err(map_sqlite)?;
    let tables = match tables_of(conn, &commit.name, commit.version)? {
        Some((_, VersionRole::Retired)) => return Ok(MessageOutcome::Retired),
        Some((tables, _)) if counted == 1 => tables,
        _ => {
            return Err(StoreError::InvalidArgument(format!(
                "projection {} has no generation {}",
                commit.name, commit.version
            )))
        }
    };
    if !commit.outbox.is_empty() {
        crate::outbox::insert_rows(conn, now, &commit.outbox)?;
    }
    for (index, statement) in commit.statements.iter().enumerate() {
        let sql = resolve_tables(&statement.sql, &tables, commit.version)?;
        let failed = |error: String| MessageOutcome::StatementFailed {
            index,
            error: cut_error(&error),
        };
        let mut stmt = match conn.prepare_cached(&sql) {
            Ok(s) => s,
            Err(e) => return Ok(failed(e.to_string())),
        };
        if let Err(error) = bind(&mut stmt, &statement.params) {
            return Ok(failed(error));
        }
        if let Err(e) = stmt.raw_execute() {
            return Ok(failed(e.to_string()));
        }
    }
    let oldest_kept = seq.saturating_sub(commit.inbox_keep.min(i64::MAX as u64) as i64);
    conn.prepare_cached("DELETE FROM projection_inbox WHERE name = ?1 AND seq <= ?2")
        .map_err(map_sqlite)?
        .execute(params![commit.name, oldest_kept])
        .map_err(map_sqlite)?;
    Ok(MessageOutcome::Committed)
}

impl SqliteProjectionStore {
    pub(super) async fn set_topic_source_impl(
        &self,
        source: &TopicSource,
    ) -> Result<(), StoreError> {
        validate_topic_source(source)?;
        let source = source.clone();
        self.store
            .submit(0, keep_all, move |conn, ctx| {
                set_source_in(conn, ctx.now_micros, &source)
            })
            .await
    }

    pub(super) async fn topic_sources_impl(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<TopicSource>, StoreError> {
        let name = name.map(str::to_string);
        self.store
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT name, topic, grp FROM projection_topics \
                         WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
                    )
                    .map_err(map_sqlite)?;
                let rows = stmt
                    .query_map(params![name], |r| {
                        Ok(TopicSource {
                            name: r.get(0)?,
                            topic: r.get(1)?,
                            group: r.get(2)?,
                        })
                    })
                    .map_err(map_sqlite)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(map_sqlite)
            })
            .await
    }

    pub(super) async fn commit_message_impl(
        &self,
        commit: MessageCommit,
    ) -> Result<MessageOutcome, StoreError> {
        validate_message_commit(&commit)?;
        runnel_core::outbox::validate_enqueue(
            &commit.outbox,
            runnel_core::message::MESSAGE_PAYLOAD_MAX_DEFAULT,
        )?;
        let sends = !commit.outbox.is_empty();
        let outcome = self
            .store
            .submit(
                0,
                |o: &MessageOutcome| *o == MessageOutcome::Committed,
                move |conn, ctx| commit_message_in(conn, ctx.now_micros, &commit),
            )
            .await?;
        if sends && outcome == MessageOutcome::Committed {
            self.wake.wake_relays();
        }
        Ok(outcome)
    }
}
