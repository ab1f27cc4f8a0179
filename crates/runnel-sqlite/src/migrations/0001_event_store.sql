-- Events, streams, snapshots, checkpoints.
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
    -- No foreign key: the writer maintains both tables in one savepoint, and a key check
    -- per inserted event costs more than it protects.
    stream_id      INTEGER NOT NULL,
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
