//! Topic projections on PostgreSQL (migration 12): which projections read a topic, and
//! their inbox of applied message ids. A message's commit is one transaction: the bump of
//! the projection's `inbox_seq` (first: its row lock orders the commits of one
//! projection), the inbox row (`ON CONFLICT DO NOTHING`: a duplicate rolls back having
//! written nothing), the generation's counter, the outbox rows, the statements, and the
//! trim of the inbox to its newest `inbox_keep` ids.

use runnel_core::message::MESSAGE_PAYLOAD_MAX_DEFAULT;
use runnel_core::outbox::validate_enqueue;
use runnel_core::projection::{
    cut_error, validate_message_commit, validate_topic_source, Batch, MessageCommit,
    MessageOutcome, TopicSource, VersionRole,
};
use runnel_core::{Position, StoreError};
use sqlx::{AssertSqlSafe, PgConnection};

use super::{big, run_statements, set_search_path, PostgresProjectionStore};
use crate::error_map::map_sqlx;
use crate::outbox::insert_rows;

impl PostgresProjectionStore {
    fn topics_table(&self) -> String {
        format!("{}.projection_topics", self.names.schema)
    }

    fn inbox_table(&self) -> String {
        format!("{}.projection_inbox", self.names.schema)
    }

    /// The topic source of `name`, if it reads a topic (in the caller's transaction).
    pub(super) async fn source_in(
        &self,
        conn: &mut PgConnection,
        name: &str,
    ) -> Result<Option<TopicSource>, StoreError> {
        let row: Option<(String, String, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT name, topic, grp FROM {} WHERE name = $1",
            self.topics_table()
        )))
        .bind(name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        Ok(row.map(|(name, topic, group)| TopicSource { name, topic, group }))
    }

    pub(super) async fn set_topic_source_impl(
        &self,
        source: &TopicSource,
    ) -> Result<(), StoreError> {
        validate_topic_source(source)?;
        let mut tx = self.store.pool().begin().await.map_err(map_sqlx)?;
        // The lock `register` takes: a registration of the same name as a projection of
        // `$all` cannot slip between the check and the insert.
        self.lock(&mut tx, &source.name).await?;
        if self.source_in(&mut tx, &source.name).await?.is_none() {
            let registered: bool = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE name = $1)",
                self.names.versions
            )))
            .bind(&source.name)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_sqlx)?;
            if registered {
                return Err(StoreError::InvalidArgument(format!(
                    "projection {} is registered as a projection of $all; a topic projection \
                     needs a name of its own",
                    source.name
                )));
            }
        }
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {t} AS t (name, topic, grp, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (name) DO UPDATE SET topic = excluded.topic, grp = excluded.grp, \
               updated_at = excluded.updated_at \
             WHERE t.topic <> excluded.topic OR t.grp <> excluded.grp",
            t = self.topics_table()
        )))
        .bind(&source.name)
        .bind(&source.topic)
        .bind(&source.group)
        .bind(self.clock.now())
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)?;
        Ok(())
    }

    pub(super) async fn topic_sources_impl(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<TopicSource>, StoreError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT name, topic, grp FROM {} WHERE $1::text IS NULL OR name = $1 ORDER BY name",
            self.topics_table()
        )))
        .bind(name)
        .fetch_all(self.store.pool())
        .await
        .map_err(map_sqlx)?;
        Ok(rows
            .into_iter()
            .map(|(name, topic, group)| TopicSource { name, topic, group })
            .collect())
    }

    pub(super) async fn commit_message_impl(
        &self,
        commit: MessageCommit,
    ) -> Result<MessageOutcome, StoreError> {
        validate_message_commit(&commit)?;
        validate_enqueue(&commit.outbox, MESSAGE_PAYLOAD_MAX_DEFAULT)?;
        if commit.message_id.contains('\0') {
            return Err(StoreError::InvalidArgument(
                "a message id cannot hold NUL".into(),
            ));
        }
        let now = self.clock.now();
        let names = &*self.names;
        let mut tx = self.store.pool().begin().await.map_err(map_sqlx)?;
        // First, and one round trip: the bump whose row lock orders this projection's
        // commits, and the search_path for the statements. Any error below drops `tx`,
        // which rolls back.
        let seq: Option<(i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "WITH bumped AS ( \
                UPDATE {topics} SET inbox_seq = inbox_seq + 1 WHERE name = $1 \
                RETURNING inbox_seq) \
             SELECT inbox_seq, {search_path} FROM bumped",
            topics = self.topics_table(),
            search_path = set_search_path(2),
        )))
        .bind(&commit.name)
        .bind(format!("\"{}\"", names.schema))
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        let Some((seq, _)) = seq else {
            return Err(StoreError::InvalidArgument(format!(
                "projection {} does not read a topic (no topic source is recorded)",
                commit.name
            )));
        };
        let recorded = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (name, message_id, seq, received_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name, message_id) DO NOTHING",
            self.inbox_table()
        )))
        .bind(&commit.name)
        .bind(&commit.message_id)
        .bind(seq)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        if recorded.rows_affected() == 0 {
            if let Err(e) = tx.rollback().await {
                tracing::debug!(error = %e, "rollback of a duplicate message failed");
            }
            return Ok(MessageOutcome::Duplicate);
        }
        let tables: Option<(Vec<String>, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE {state} s SET events_applied = s.events_applied + 1, updated_at = $3 \
             FROM {versions} v \
             WHERE s.name = $1 AND s.version = $2 AND s.partition = 0 \
               AND v.name = s.name AND v.version = s.version \
             RETURNING v.tables, v.role",
            state = names.state,
            versions = names.versions,
        )))
        .bind(&commit.name)
        .bind(big(commit.version))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        let tables = match tables {
            Some((_, role)) if role == VersionRole::Retired.as_str() => {
                if let Err(e) = tx.rollback().await {
                    tracing::debug!(error = %e, "rollback of a message for a retired generation failed");
                }
                return Ok(MessageOutcome::Retired);
            }
            Some((tables, _)) => tables,
            None => {
                return Err(StoreError::InvalidArgument(format!(
                    "projection {} has no generation {}",
                    commit.name, commit.version
                )))
            }
        };
        insert_rows(
            &mut tx,
            &names.outbox,
            &names.outbox_channel,
            now,
            &commit.outbox,
        )
        .await?;
        let oldest_kept = seq.saturating_sub(commit.inbox_keep.min(i64::MAX as u64) as i64);
        // The statements run as a batch's do (same binding, same prepared-statement keys).
        let batch = Batch {
            name: commit.name,
            version: commit.version,
            partition: 0,
            owner: String::new(),
            from: Position::START,
            to: Position::START,
            events: 1,
            statements: commit.statements,
            outbox: Vec::new(),
        };
        if let Some((index, error)) = run_statements(&mut tx, &batch, &tables).await? {
            if let Err(e) = tx.rollback().await {
                tracing::debug!(error = %e, "rollback of a failed message failed");
            }
            return Ok(MessageOutcome::StatementFailed {
                index,
                error: cut_error(&error),
            });
        }
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE name = $1 AND seq <= $2",
            self.inbox_table()
        )))
        .bind(&batch.name)
        .bind(oldest_kept)
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)?;
        Ok(MessageOutcome::Committed)
    }
}
