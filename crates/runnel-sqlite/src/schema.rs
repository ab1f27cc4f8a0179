//! The on-disk schema and its migrations. See the crate's DESIGN.md.

use rusqlite::Connection;

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

const V1: &str = r#"
CREATE TABLE streams (
    stream_id     INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    category      TEXT    NOT NULL,
    revision      INTEGER NOT NULL,
    last_position INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX streams_by_category ON streams (category, name);

CREATE TABLE events (
    position       INTEGER PRIMARY KEY,
    event_id       BLOB    NOT NULL UNIQUE,
    stream_id      INTEGER NOT NULL REFERENCES streams (stream_id),
    revision       INTEGER NOT NULL,
    category       TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    content_type   TEXT    NOT NULL,
    data           BLOB    NOT NULL,
    metadata       TEXT,
    recorded_at    INTEGER NOT NULL,
    UNIQUE (stream_id, revision)
);
CREATE INDEX events_by_category ON events (category, position);
CREATE INDEX events_by_type_time ON events (event_type, recorded_at);

CREATE TABLE snapshots (
    stream         TEXT    PRIMARY KEY,
    revision       INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    data           BLOB    NOT NULL,
    taken_at       INTEGER NOT NULL
);

CREATE TABLE checkpoints (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
"#;

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
    if version < 1 {
        tx.execute_batch(V1).map_err(|e| e.to_string())?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}
