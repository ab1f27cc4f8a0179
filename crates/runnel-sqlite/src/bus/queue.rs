//! The bus's SQL: each function runs inside a writer job (the batch transaction, under the
//! job's savepoint) or on a read connection. The tables are in `migrations/0002_bus.sql`;
//! the design — why only `head` rows are claimed and why that keeps per-key order — is in
//! the crate's DESIGN.md, "Bus".

use runnel_bus_engine::{decode_message, ClaimedRow, EncodedMessage, Settle, Settled};
use runnel_core::bus::StartPosition;
use runnel_core::uuid::Uuid;
use runnel_core::StoreError;
use rusqlite::{params, Connection, OptionalExtension};

use super::backend::micros;
use crate::error_map::map_sqlite;

/// Which queue row a delivery holds, and under which lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lease {
    pub group_id: i64,
    pub seq: i64,
    /// The consumer that claimed it (stored as its hyphenated text).
    pub owner: Uuid,
    /// The delivery attempt the claim made; a later claim of the same row has a higher one,
    /// so a stale delivery can never settle a newer one.
    pub attempt: i64,
}

impl runnel_bus_engine::Lease for Lease {
    fn seq(&self) -> i64 {
        self.seq
    }

    fn attempt(&self) -> u32 {
        u32::try_from(self.attempt).unwrap_or(u32::MAX)
    }
}

/// A consumer's id as `lease_owner` stores it, formatted without allocating.
fn owner_text<'b>(owner: &Uuid, buf: &'b mut [u8; 45]) -> &'b str {
    owner.hyphenated().encode_lower(buf)
}

/// The topic's id, creating the topic on first use.
fn ensure_topic(conn: &Connection, topic: &str, now_micros: i64) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO bus_topics (name, created_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
    )
    .map_err(map_sqlite)?
    .execute(params![topic, now_micros])
    .map_err(map_sqlite)?;
    conn.prepare_cached("SELECT topic_id FROM bus_topics WHERE name = ?1")
        .map_err(map_sqlite)?
        .query_row([topic], |r| r.get(0))
        .map_err(map_sqlite)
}

/// Appends `messages` to the topic's log and fans each out to every group of the topic.
pub(crate) fn publish_in_tx(
    conn: &Connection,
    topic: &str,
    messages: &[EncodedMessage],
    now_micros: i64,
) -> Result<(), StoreError> {
    let topic_id = ensure_topic(conn, topic, now_micros)?;
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO bus_messages (topic_id, ordering_key, envelope, payload, published_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(map_sqlite)?;
    // A row is its key's head when the group holds no other row of that key: every earlier
    // one has been acknowledged. Rows without a key are always heads.
    let mut fan_out = conn
        .prepare_cached(
            "INSERT INTO bus_queue (seq, group_id, ordering_key, head, visible_at, attempt) \
             SELECT ?1, g.group_id, ?2, \
                    CASE WHEN ?2 IS NULL THEN 1 \
                         WHEN EXISTS (SELECT 1 FROM bus_queue q \
                                      WHERE q.group_id = g.group_id AND q.ordering_key = ?2) THEN 0 \
                         ELSE 1 END, \
                    ?3, 0 \
             FROM bus_groups g WHERE g.topic_id = ?4",
        )
        .map_err(map_sqlite)?;
    for m in messages {
        insert
            .execute(params![
                topic_id,
                m.ordering_key,
                m.envelope,
                m.payload,
                now_micros
            ])
            .map_err(map_sqlite)?;
        let seq = conn.last_insert_rowid();
        fan_out
            .execute(params![seq, m.ordering_key, now_micros, topic_id])
            .map_err(map_sqlite)?;
    }
    Ok(())
}

/// The group's id, creating it (and the topic) on first use. A group created with
/// [`StartPosition::Earliest`] gets a queue row for every message the topic retains.
pub(crate) fn ensure_group(
    conn: &Connection,
    topic: &str,
    group: &str,
    start: StartPosition,
    now_micros: i64,
) -> Result<i64, StoreError> {
    let topic_id = ensure_topic(conn, topic, now_micros)?;
    let created = conn
        .prepare_cached(
            "INSERT INTO bus_groups (topic_id, name, created_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (topic_id, name) DO NOTHING",
        )
        .map_err(map_sqlite)?
        .execute(params![topic_id, group, now_micros])
        .map_err(map_sqlite)?
        == 1;
    let group_id: i64 = conn
        .prepare_cached("SELECT group_id FROM bus_groups WHERE topic_id = ?1 AND name = ?2")
        .map_err(map_sqlite)?
        .query_row(params![topic_id, group], |r| r.get(0))
        .map_err(map_sqlite)?;
    if created && start == StartPosition::Earliest {
        // Within the retained log, a key's head is its earliest message.
        conn.prepare_cached(
            "INSERT INTO bus_queue (seq, group_id, ordering_key, head, visible_at, attempt) \
             SELECT seq, ?1, ordering_key, \
                    CASE WHEN ordering_key IS NULL \
                              OR seq = min(seq) OVER (PARTITION BY ordering_key) THEN 1 \
                         ELSE 0 END, \
                    ?2, 0 \
             FROM bus_messages WHERE topic_id = ?3",
        )
        .map_err(map_sqlite)?
        .execute(params![group_id, now_micros, topic_id])
        .map_err(map_sqlite)?;
    }
    Ok(group_id)
}

/// When the group's next head row becomes claimable (µs), or `None` if it has no rows.
/// Runs on a read connection: a cheap index probe before asking the writer to claim.
pub(crate) fn next_visible(conn: &Connection, group_id: i64) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached("SELECT min(visible_at) FROM bus_queue WHERE group_id = ?1 AND head = 1")
        .map_err(map_sqlite)?
        .query_row([group_id], |r| r.get(0))
        .map_err(map_sqlite)
}

/// Leases up to `limit` claimable head rows of the group to `owner` until `lease_until`
/// and returns them with their messages, in publish order.
pub(crate) fn claim(
    conn: &Connection,
    group_id: i64,
    owner: Uuid,
    now_micros: i64,
    lease_until: i64,
    limit: usize,
) -> Result<Vec<ClaimedRow<Lease>>, StoreError> {
    let mut owner_buf = Uuid::encode_buffer();
    let owner_str = owner_text(&owner, &mut owner_buf);
    let mut rows: Vec<(i64, i64)> = {
        let mut stmt = conn
            .prepare_cached(
                "UPDATE bus_queue SET attempt = attempt + 1, lease_owner = ?2, visible_at = ?3 \
                 WHERE group_id = ?1 AND seq IN ( \
                     SELECT seq FROM bus_queue \
                     WHERE group_id = ?1 AND head = 1 AND visible_at <= ?4 \
                     ORDER BY visible_at, seq LIMIT ?5) \
                 RETURNING seq, attempt",
            )
            .map_err(map_sqlite)?;
        let mut out = Vec::with_capacity(limit);
        let mut q = stmt
            .query(params![
                group_id,
                owner_str,
                lease_until,
                now_micros,
                limit as i64
            ])
            .map_err(map_sqlite)?;
        while let Some(r) = q.next().map_err(map_sqlite)? {
            out.push((r.get(0).map_err(map_sqlite)?, r.get(1).map_err(map_sqlite)?));
        }
        out
    };
    debug_assert!(rows.len() <= limit);
    rows.sort_unstable();
    let mut load = conn
        .prepare_cached("SELECT envelope, payload FROM bus_messages WHERE seq = ?1")
        .map_err(map_sqlite)?;
    let mut claimed = Vec::with_capacity(rows.len());
    for (seq, attempt) in rows {
        debug_assert!(attempt >= 1);
        let (envelope, payload): (String, Vec<u8>) = load
            .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(map_sqlite)?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("bus queue row {seq} has no message in the log"))
            })?;
        claimed.push(ClaimedRow {
            lease: Lease {
                group_id,
                seq,
                owner,
                attempt,
            },
            message: decode_message(seq, envelope.as_bytes(), payload)?,
        });
    }
    Ok(claimed)
}

/// Settles one leased row. Only the lease that claimed it (same owner, same attempt) can.
pub(crate) fn settle(
    conn: &Connection,
    lease: &Lease,
    how: Settle,
    now_micros: i64,
) -> Result<Settled, StoreError> {
    let mut owner_buf = Uuid::encode_buffer();
    let owner = owner_text(&lease.owner, &mut owner_buf);
    let key = params![lease.seq, lease.group_id, owner, lease.attempt];
    match how {
        Settle::Ack => {
            let deleted: Option<Option<Vec<u8>>> = conn
                .prepare_cached(
                    "DELETE FROM bus_queue WHERE seq = ?1 AND group_id = ?2 \
                     AND lease_owner = ?3 AND attempt = ?4 RETURNING ordering_key",
                )
                .map_err(map_sqlite)?
                .query_row(key, |r| r.get(0))
                .optional()
                .map_err(map_sqlite)?;
            let Some(ordering_key) = deleted else {
                return Ok(Settled::LOST);
            };
            let mut wake = false;
            if let Some(k) = ordering_key {
                // The acknowledged row was its key's head (only heads are claimed): the
                // key's next row, if any, takes its place.
                wake = conn
                    .prepare_cached(
                        "UPDATE bus_queue SET head = 1 WHERE group_id = ?1 AND seq = ( \
                             SELECT min(seq) FROM bus_queue \
                             WHERE group_id = ?1 AND ordering_key = ?2)",
                    )
                    .map_err(map_sqlite)?
                    .execute(params![lease.group_id, k])
                    .map_err(map_sqlite)?
                    > 0;
            }
            Ok(Settled { held: true, wake })
        }
        Settle::Nack { visible_at } => {
            let held = conn
                .prepare_cached(
                    "UPDATE bus_queue SET visible_at = ?5, lease_owner = NULL \
                     WHERE seq = ?1 AND group_id = ?2 AND lease_owner = ?3 AND attempt = ?4",
                )
                .map_err(map_sqlite)?
                .execute(params![
                    lease.seq,
                    lease.group_id,
                    owner,
                    lease.attempt,
                    micros(visible_at)
                ])
                .map_err(map_sqlite)?
                > 0;
            Ok(Settled {
                held,
                wake: held && micros(visible_at) <= now_micros,
            })
        }
        Settle::Extend { visible_at } => {
            let held = conn
                .prepare_cached(
                    "UPDATE bus_queue SET visible_at = ?5 \
                     WHERE seq = ?1 AND group_id = ?2 AND lease_owner = ?3 AND attempt = ?4",
                )
                .map_err(map_sqlite)?
                .execute(params![
                    lease.seq,
                    lease.group_id,
                    owner,
                    lease.attempt,
                    micros(visible_at)
                ])
                .map_err(map_sqlite)?
                > 0;
            Ok(Settled { held, wake: false })
        }
        Settle::Release { visible_at } => {
            let held = conn
                .prepare_cached(
                    "UPDATE bus_queue SET visible_at = ?5, lease_owner = NULL, attempt = attempt - 1 \
                     WHERE seq = ?1 AND group_id = ?2 AND lease_owner = ?3 AND attempt = ?4",
                )
                .map_err(map_sqlite)?
                .execute(params![
                    lease.seq,
                    lease.group_id,
                    owner,
                    lease.attempt,
                    micros(visible_at)
                ])
                .map_err(map_sqlite)?
                > 0;
            Ok(Settled { held, wake: held })
        }
    }
}

/// Deletes up to `limit` log rows published before `cutoff_micros` that no group's queue
/// holds any more. Returns how many were deleted.
pub(crate) fn sweep(
    conn: &Connection,
    cutoff_micros: i64,
    limit: usize,
) -> Result<usize, StoreError> {
    conn.prepare_cached(
        "DELETE FROM bus_messages WHERE seq IN ( \
             SELECT m.seq FROM bus_messages m \
             WHERE m.published_at < ?1 \
               AND NOT EXISTS (SELECT 1 FROM bus_queue q WHERE q.seq = m.seq) \
             ORDER BY m.published_at LIMIT ?2)",
    )
    .map_err(map_sqlite)?
    .execute(params![cutoff_micros, limit as i64])
    .map_err(map_sqlite)
}

/// Removes a group and everything it still had to consume. Returns whether it existed.
pub(crate) fn delete_group(
    conn: &Connection,
    topic: &str,
    group: &str,
) -> Result<bool, StoreError> {
    let group_id: Option<i64> = conn
        .prepare_cached(
            "SELECT g.group_id FROM bus_groups g JOIN bus_topics t ON t.topic_id = g.topic_id \
             WHERE t.name = ?1 AND g.name = ?2",
        )
        .map_err(map_sqlite)?
        .query_row(params![topic, group], |r| r.get(0))
        .optional()
        .map_err(map_sqlite)?;
    let Some(group_id) = group_id else {
        return Ok(false);
    };
    conn.prepare_cached("DELETE FROM bus_queue WHERE group_id = ?1")
        .map_err(map_sqlite)?
        .execute([group_id])
        .map_err(map_sqlite)?;
    conn.prepare_cached("DELETE FROM bus_groups WHERE group_id = ?1")
        .map_err(map_sqlite)?
        .execute([group_id])
        .map_err(map_sqlite)?;
    Ok(true)
}

/// What a group still has to consume.
pub(crate) fn group_backlog(
    conn: &Connection,
    topic: &str,
    group: &str,
    now_micros: i64,
) -> Result<Option<(u64, u64)>, StoreError> {
    let group_id: Option<i64> = conn
        .prepare_cached(
            "SELECT g.group_id FROM bus_groups g JOIN bus_topics t ON t.topic_id = g.topic_id \
             WHERE t.name = ?1 AND g.name = ?2",
        )
        .map_err(map_sqlite)?
        .query_row(params![topic, group], |r| r.get(0))
        .optional()
        .map_err(map_sqlite)?;
    let Some(group_id) = group_id else {
        return Ok(None);
    };
    let (pending, in_flight): (i64, i64) = conn
        .prepare_cached(
            "SELECT count(*), coalesce(sum(lease_owner IS NOT NULL AND visible_at > ?2), 0) \
             FROM bus_queue WHERE group_id = ?1",
        )
        .map_err(map_sqlite)?
        .query_row(params![group_id, now_micros], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(map_sqlite)?;
    Ok(Some((pending as u64, in_flight as u64)))
}
