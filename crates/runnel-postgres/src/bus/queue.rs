//! The bus's SQL on PostgreSQL. The tables and the functions that need the topic or key
//! locks (publish, subscribe, ack, sweep) are in `migrations/0002_bus.sql`,
//! `migrations/0013_bus_concurrency.sql` and `migrations/0015_bus_head_probe.sql`; the
//! statements that need no lock (claim, nack, extend, release, probes) are here. The
//! design — why only `head` rows are claimed and how the topic lock keeps `head` right — is
//! in the crate's DESIGN.md, "Bus".

use std::sync::Arc;

use chrono::{DateTime, Utc};
use runnel_bus_engine::{decode_message, ClaimedRow, Settle, Settled};
use runnel_core::bus::StartPosition;
use runnel_core::StoreError;
use sqlx::{AssertSqlSafe, PgPool, Row};
use uuid::Uuid;

use super::batch::PublishCall;
use crate::error_map::map_sqlx;

/// Which queue row a delivery holds, and under which lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lease {
    pub topic_id: i64,
    pub group_id: i64,
    pub seq: i64,
    /// The consumer that claimed it.
    pub owner: Uuid,
    /// The delivery attempt the claim made; a later claim of the same row has a higher one,
    /// so a stale delivery can never settle a newer one.
    pub attempt: i32,
}

impl runnel_bus_engine::Lease for Lease {
    fn seq(&self) -> i64 {
        self.seq
    }

    fn attempt(&self) -> u32 {
        u32::try_from(self.attempt).unwrap_or(u32::MAX)
    }
}

/// The statements, formatted once for the schema.
pub(crate) struct Statements {
    schema: String,
    publish: Arc<str>,
    subscribe: Arc<str>,
    claim: Arc<str>,
    next_visible: Arc<str>,
    ack: Arc<str>,
    ack_rows: Arc<str>,
    nack: Arc<str>,
    extend: Arc<str>,
    release: Arc<str>,
    topics: Arc<str>,
    sweep: Arc<str>,
    delete_group: Arc<str>,
    backlog: Arc<str>,
}

impl Statements {
    pub fn new(schema: &str) -> Self {
        let s = schema;
        let settle_where = "WHERE group_id = $1 AND seq = $2 AND lease_owner = $3 AND attempt = $4";
        Statements {
            schema: s.to_string(),
            // No channel: the notifier wakes other processes after the commit.
            publish: format!("SELECT {s}.bus_publish($1, NULL, $2, $3, $4, $5)").into(),
            subscribe: format!(
                "SELECT o_topic_id, o_group_id FROM {s}.bus_subscribe($1, $2, $3, $4)"
            )
            .into(),
            // Ready heads of the group, oldest first; rows another consumer is claiming
            // right now are skipped, not waited for. The claim's commit does not wait for
            // its WAL flush (`synchronous_commit` off for this statement's transaction, set
            // on every row returned, so whenever the claim wrote anything): a lease only
            // says who handles the row for a while, and a claim lost with a server crash
            // leaves the row as it was before, claimable again, so at-least-once delivery
            // holds. The ack that follows is durable, and its flush carries the claim's WAL
            // with it. What a crash can cost is one delivery attempt in the row's count.
            claim: format!(
                "WITH ready AS ( \
                     SELECT q.group_id, q.seq FROM {s}.bus_queue q \
                     WHERE q.group_id = $1 AND q.head AND q.visible_at <= $2 \
                     ORDER BY q.visible_at, q.seq LIMIT $3 \
                     FOR UPDATE SKIP LOCKED), \
                 claimed AS ( \
                     UPDATE {s}.bus_queue q \
                     SET attempt = q.attempt + 1, lease_owner = $4, visible_at = $5 \
                     FROM ready WHERE q.group_id = ready.group_id AND q.seq = ready.seq \
                     RETURNING q.seq, q.attempt) \
                 SELECT c.seq, c.attempt, m.envelope, m.payload \
                 FROM claimed c JOIN {s}.bus_messages m ON m.seq = c.seq \
                 WHERE set_config('synchronous_commit', 'off', true) IS NOT NULL \
                 ORDER BY c.seq"
            )
            .into(),
            next_visible: format!(
                "SELECT min(visible_at) FROM {s}.bus_queue WHERE group_id = $1 AND head"
            )
            .into(),
            ack: format!("SELECT {s}.bus_ack_row($1, $2, $3, $4, $5)").into(),
            ack_rows: format!("SELECT {s}.bus_ack_rows($1, $2, $3, $4, $5)").into(),
            nack: format!(
                "UPDATE {s}.bus_queue SET visible_at = $5, lease_owner = NULL {settle_where}"
            )
            .into(),
            extend: format!("UPDATE {s}.bus_queue SET visible_at = $5 {settle_where}").into(),
            release: format!(
                "UPDATE {s}.bus_queue SET visible_at = $5, lease_owner = NULL, \
                 attempt = attempt - 1 {settle_where}"
            )
            .into(),
            topics: format!("SELECT topic_id FROM {s}.bus_topics ORDER BY topic_id").into(),
            sweep: format!("SELECT {s}.bus_sweep($1, $2, $3)").into(),
            delete_group: format!("SELECT {s}.bus_delete_group($1, $2)").into(),
            backlog: format!(
                "SELECT count(q.seq), \
                        count(q.seq) FILTER (WHERE q.lease_owner IS NOT NULL AND q.visible_at > $3) \
                 FROM {s}.bus_groups g JOIN {s}.bus_topics t ON t.topic_id = g.topic_id \
                 LEFT JOIN {s}.bus_queue q ON q.group_id = g.group_id \
                 WHERE t.name = $1 AND g.name = $2 GROUP BY g.group_id"
            )
            .into(),
        }
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Writes the calls of `batch` (all of one topic) in one transaction.
    pub async fn publish(
        &self,
        pool: &PgPool,
        batch: &[PublishCall],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        debug_assert!(batch.iter().all(|p| p.topic == first.topic));
        let n: usize = batch.iter().map(|p| p.messages.len()).sum();
        let mut keys: Vec<Option<&[u8]>> = Vec::with_capacity(n);
        let mut envelopes: Vec<&[u8]> = Vec::with_capacity(n);
        let mut payloads: Vec<&[u8]> = Vec::with_capacity(n);
        for m in batch.iter().flat_map(|p| &p.messages) {
            keys.push(m.ordering_key.as_deref());
            envelopes.push(m.envelope.as_bytes());
            payloads.push(&m.payload);
        }
        let written: i32 = sqlx::query_scalar(AssertSqlSafe(self.publish.clone()))
            .bind(first.topic.as_str())
            .bind(keys)
            .bind(envelopes)
            .bind(payloads)
            .bind(now)
            .fetch_one(pool)
            .await
            .map_err(map_sqlx)?;
        debug_assert_eq!(usize::try_from(written).ok(), Some(n));
        Ok(())
    }

    /// `(topic_id, group_id)`, creating the group (and topic) on first use.
    pub async fn subscribe(
        &self,
        pool: &PgPool,
        topic: &str,
        group: &str,
        start: StartPosition,
        now: DateTime<Utc>,
    ) -> Result<(i64, i64), StoreError> {
        let row = sqlx::query(AssertSqlSafe(self.subscribe.clone()))
            .bind(topic)
            .bind(group)
            .bind(start == StartPosition::Earliest)
            .bind(now)
            .fetch_one(pool)
            .await
            .map_err(map_sqlx)?;
        let topic_id: i64 = row.try_get(0).map_err(map_sqlx)?;
        let group_id: i64 = row.try_get(1).map_err(map_sqlx)?;
        Ok((topic_id, group_id))
    }

    /// Leases up to `limit` claimable head rows of the group to `owner` until
    /// `lease_until`, and returns them with their messages in publish order.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim(
        &self,
        pool: &PgPool,
        topic_id: i64,
        group_id: i64,
        owner: Uuid,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<ClaimedRow<Lease>>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(self.claim.clone()))
            .bind(group_id)
            .bind(now)
            .bind(limit as i64)
            .bind(owner)
            .bind(lease_until)
            .fetch_all(pool)
            .await
            .map_err(map_sqlx)?;
        debug_assert!(rows.len() <= limit);
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let corrupt = |e: sqlx::Error| StoreError::Corrupt(format!("unreadable bus row: {e}"));
            let seq: i64 = row.try_get(0).map_err(corrupt)?;
            let attempt: i32 = row.try_get(1).map_err(corrupt)?;
            let envelope: Vec<u8> = row.try_get(2).map_err(corrupt)?;
            let payload: Vec<u8> = row.try_get(3).map_err(corrupt)?;
            debug_assert!(attempt >= 1);
            claimed.push(ClaimedRow {
                lease: Lease {
                    topic_id,
                    group_id,
                    seq,
                    owner,
                    attempt,
                },
                message: decode_message(seq, &envelope, payload)?,
            });
        }
        Ok(claimed)
    }

    /// When the group's next head row becomes claimable, or `None` if it has no rows.
    pub async fn next_visible(
        &self,
        pool: &PgPool,
        group_id: i64,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        sqlx::query_scalar(AssertSqlSafe(self.next_visible.clone()))
            .bind(group_id)
            .fetch_one(pool)
            .await
            .map_err(map_sqlx)
    }

    /// Settles one leased row. Only the lease that claimed it (same owner, same attempt)
    /// can. `wake`: a row of the group may have become claimable now (the caller tells
    /// consumers, here and elsewhere).
    pub async fn settle(
        &self,
        pool: &PgPool,
        lease: &Lease,
        how: Settle,
        now: DateTime<Utc>,
    ) -> Result<Settled, StoreError> {
        let (sql, visible_at) = match how {
            Settle::Ack => {
                let outcome = self.ack_many(pool, std::slice::from_ref(lease)).await?;
                // 0: lease lost; 1: acknowledged; 2: and the key's next row is the head.
                return Ok(Settled {
                    held: outcome[0] > 0,
                    wake: outcome[0] == 2,
                });
            }
            Settle::Nack { visible_at } => (&self.nack, visible_at),
            Settle::Extend { visible_at } => (&self.extend, visible_at),
            Settle::Release { visible_at } => (&self.release, visible_at),
        };
        let held = sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(lease.group_id)
            .bind(lease.seq)
            .bind(lease.owner)
            .bind(lease.attempt)
            .bind(visible_at)
            .execute(pool)
            .await
            .map_err(map_sqlx)?
            .rows_affected()
            > 0;
        let wake = held && !matches!(how, Settle::Extend { .. }) && visible_at <= now;
        Ok(Settled { held, wake })
    }

    /// Acknowledges `leases` in one transaction; one outcome per lease, in order: 0 the
    /// lease was lost, 1 acknowledged, 2 acknowledged and the key's next row became the
    /// head.
    pub async fn ack_many(&self, pool: &PgPool, leases: &[Lease]) -> Result<Vec<i32>, StoreError> {
        if let [lease] = leases {
            return Ok(vec![sqlx::query_scalar(AssertSqlSafe(self.ack.clone()))
                .bind(lease.topic_id)
                .bind(lease.group_id)
                .bind(lease.seq)
                .bind(lease.owner)
                .bind(lease.attempt)
                .fetch_one(pool)
                .await
                .map_err(map_sqlx)?]);
        }
        let topic_ids: Vec<i64> = leases.iter().map(|l| l.topic_id).collect();
        let group_ids: Vec<i64> = leases.iter().map(|l| l.group_id).collect();
        let seqs: Vec<i64> = leases.iter().map(|l| l.seq).collect();
        let owners: Vec<Uuid> = leases.iter().map(|l| l.owner).collect();
        let attempts: Vec<i32> = leases.iter().map(|l| l.attempt).collect();
        let outcomes: Vec<i32> = sqlx::query_scalar(AssertSqlSafe(self.ack_rows.clone()))
            .bind(topic_ids)
            .bind(group_ids)
            .bind(seqs)
            .bind(owners)
            .bind(attempts)
            .fetch_one(pool)
            .await
            .map_err(map_sqlx)?;
        if outcomes.len() != leases.len() {
            return Err(StoreError::Corrupt(format!(
                "bus_ack_rows answered {} outcomes for {} acks",
                outcomes.len(),
                leases.len()
            )));
        }
        Ok(outcomes)
    }

    /// Deletes log rows published before `cutoff` that no group needs, `limit` per topic
    /// and transaction at a time. Returns how many were deleted.
    pub async fn sweep(
        &self,
        pool: &PgPool,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let topics: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(self.topics.clone()))
            .fetch_all(pool)
            .await
            .map_err(map_sqlx)?;
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let mut total = 0usize;
        for topic_id in topics {
            loop {
                let deleted: i32 = sqlx::query_scalar(AssertSqlSafe(self.sweep.clone()))
                    .bind(topic_id)
                    .bind(cutoff)
                    .bind(limit)
                    .fetch_one(pool)
                    .await
                    .map_err(map_sqlx)?;
                total += deleted.max(0) as usize;
                if deleted < limit {
                    break;
                }
            }
        }
        Ok(total)
    }

    pub async fn delete_group(
        &self,
        pool: &PgPool,
        topic: &str,
        group: &str,
    ) -> Result<bool, StoreError> {
        sqlx::query_scalar(AssertSqlSafe(self.delete_group.clone()))
            .bind(topic)
            .bind(group)
            .fetch_one(pool)
            .await
            .map_err(map_sqlx)
    }

    /// `(pending, in_flight)` of the group, or `None` if it does not exist.
    pub async fn backlog(
        &self,
        pool: &PgPool,
        topic: &str,
        group: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(self.backlog.clone()))
            .bind(topic)
            .bind(group)
            .bind(now)
            .fetch_optional(pool)
            .await
            .map_err(map_sqlx)?;
        row.map(|r| {
            let pending: i64 = r.try_get(0).map_err(map_sqlx)?;
            let in_flight: i64 = r.try_get(1).map_err(map_sqlx)?;
            Ok((pending as u64, in_flight as u64))
        })
        .transpose()
    }
}
