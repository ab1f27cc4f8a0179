//! The on-disk schema and its migrations. See the crate's DESIGN.md.

use rusqlite::Connection;

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 14;

/// Every migration in order: (version, name, SQL). Each runs once, in one transaction.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "event_store",
        include_str!("migrations/0001_event_store.sql"),
    ),
    (2, "bus", include_str!("migrations/0002_bus.sql")),
    (
        3,
        "dead_letters",
        include_str!("migrations/0003_dead_letters.sql"),
    ),
    (
        4,
        "idempotency",
        include_str!("migrations/0004_idempotency.sql"),
    ),
    (5, "outbox", include_str!("migrations/0005_outbox.sql")),
    (6, "blobs", include_str!("migrations/0006_blobs.sql")),
    (
        7,
        "processors",
        include_str!("migrations/0007_processors.sql"),
    ),
    (
        8,
        "projections",
        include_str!("migrations/0008_projections.sql"),
    ),
    (
        9,
        "projection_generations",
        include_str!("migrations/0009_projection_generations.sql"),
    ),
    (
        10,
        "projection_topics",
        include_str!("migrations/0010_projection_topics.sql"),
    ),
    (
        11,
        "events_by_type",
        include_str!("migrations/0011_events_by_type.sql"),
    ),
    (
        12,
        "drop_events_by_type_time",
        include_str!("migrations/0012_drop_events_by_type_time.sql"),
    ),
    (
        13,
        "outbox_unkeyed",
        include_str!("migrations/0013_outbox_unkeyed.sql"),
    ),
    (
        14,
        "outbox_bodies",
        include_str!("migrations/0014_outbox_bodies.sql"),
    ),
];

/// Brings a freshly opened write connection's schema up to [`SCHEMA_VERSION`].
pub fn migrate(conn: &mut Connection) -> Result<(), String> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "the database file has schema version {version}, newer than this build's \
             {SCHEMA_VERSION}; upgrade runnel"
        ));
    }
    for (v, name, sql) in MIGRATIONS {
        if *v > version {
            tx.execute_batch(sql)
                .map_err(|e| format!("migration {v} ({name}) failed: {e}"))?;
        }
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Migration 14 moves every outbox row's envelope and payload into `outbox_bodies`
    /// (pending rows of a file written by an older build are relayed intact) and drops
    /// them from `outbox_messages`.
    #[test]
    fn migration_14_moves_outbox_bodies_out_of_their_rows() {
        let mut conn = Connection::open_in_memory().expect("a database");
        for (_, _, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v <= 13) {
            conn.execute_batch(sql).expect("migrations up to 13");
        }
        conn.pragma_update(None, "user_version", 13)
            .expect("version 13");
        conn.execute(
            "INSERT INTO outbox_messages \
             (message_id, topic, ordering_key, envelope, payload, created_at) \
             VALUES ('m1', 't', 'k', '{\"id\":\"m1\"}', x'0102', 7)",
            [],
        )
        .expect("a pending row in the old layout");
        migrate(&mut conn).expect("migrate");
        let body: (String, Vec<u8>) = conn
            .query_row(
                "SELECT b.envelope, b.payload FROM outbox_messages m \
                 JOIN outbox_bodies b ON b.seq = m.seq WHERE m.message_id = 'm1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("the row's body");
        assert_eq!(body, ("{\"id\":\"m1\"}".to_string(), vec![1, 2]));
        assert!(
            conn.prepare("SELECT envelope FROM outbox_messages")
                .is_err()
                && conn.prepare("SELECT payload FROM outbox_messages").is_err(),
            "the body's columns are gone from outbox_messages"
        );
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert!(version >= 14);
    }
}
