-- Projections: each version of a projection, and each partition's checkpoint and lease.
-- See the framework's DESIGN.md, "Projections". Times are microseconds since the epoch.

-- The versions of a projection: at most one `current` (what the plain table names show,
-- through views), at most one `building` (a rebuild), any number `retired` (tables kept
-- until dropped). `tables` is the JSON array of the table names the version owns.
CREATE TABLE projection_versions (
    name        TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    role        TEXT    NOT NULL,
    tables      TEXT    NOT NULL,
    partitions  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    switched_at INTEGER,
    PRIMARY KEY (name, version)
) WITHOUT ROWID;

-- One row per version and partition: the checkpoint (the last `$all` position applied),
-- the status, the event it is faulted on, and the lease of the one runner applying it.
CREATE TABLE projection_state (
    name            TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    partition       INTEGER NOT NULL,
    checkpoint      INTEGER NOT NULL DEFAULT 0,
    status          TEXT    NOT NULL DEFAULT 'running',
    last_error      TEXT,
    failed_position INTEGER,
    events_applied  INTEGER NOT NULL DEFAULT 0,
    leased_by       TEXT,
    leased_until    INTEGER,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (name, version, partition)
) WITHOUT ROWID;
