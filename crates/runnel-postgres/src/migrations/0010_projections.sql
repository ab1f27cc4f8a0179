-- Projections: each version of a projection, and each partition's checkpoint and lease.
-- `__SCHEMA__` is the configured schema. See DESIGN.md, "Projections". The read-model
-- tables (`{table}_v{version}`) and their views (`{table}`) are created in the same
-- schema by the projection store, not here.
--
-- Name columns are `COLLATE "C"`: `states` lists by name in byte order, as on SQLite.

-- The versions of a projection: at most one `current` (what the plain table names show,
-- through views), at most one `building` (a rebuild), any number `retired` (tables kept
-- until dropped); the partial unique indexes hold the first two. `tables` are the table
-- names the version owns. `version` is bigint: it holds any u32.
CREATE TABLE __SCHEMA__.projection_versions (
    name        text COLLATE "C" NOT NULL,
    version     bigint           NOT NULL,
    role        text COLLATE "C" NOT NULL
                CHECK (role IN ('building', 'current', 'retired')),
    tables      text[]           NOT NULL,
    partitions  integer          NOT NULL CHECK (partitions > 0),
    created_at  timestamptz      NOT NULL,
    switched_at timestamptz,
    PRIMARY KEY (name, version)
);
CREATE UNIQUE INDEX projection_versions_one_current
    ON __SCHEMA__.projection_versions (name) WHERE role = 'current';
CREATE UNIQUE INDEX projection_versions_one_building
    ON __SCHEMA__.projection_versions (name) WHERE role = 'building';

-- One row per version and partition: the checkpoint (the last `$all` position applied),
-- the status, the event it is faulted on, and the lease of the one runner applying it.
-- A batch's UPDATE of this row (checking lease, checkpoint and status) is the first write
-- of its transaction: the row lock orders committers of one partition.
CREATE TABLE __SCHEMA__.projection_state (
    name            text COLLATE "C" NOT NULL,
    version         bigint           NOT NULL,
    partition       integer          NOT NULL,
    checkpoint      bigint           NOT NULL DEFAULT 0,
    status          text COLLATE "C" NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'paused', 'faulted')),
    last_error      text,
    failed_position bigint,
    events_applied  bigint           NOT NULL DEFAULT 0,
    leased_by       text,
    leased_until    timestamptz,
    updated_at      timestamptz      NOT NULL,
    PRIMARY KEY (name, version, partition),
    CHECK ((leased_by IS NULL) = (leased_until IS NULL))
);
