-- Stateful processors (sagas, process managers): instances, their timers and history.
-- See DESIGN.md, "Stateful processors". Times are microseconds since the epoch.

-- One row per instance. `version` is the optimistic-concurrency check of every
-- transition; `correlation` is unique per kind so two start messages make one instance.
CREATE TABLE processor_instances (
    kind               TEXT    NOT NULL,
    id                 TEXT    NOT NULL,
    definition_version INTEGER NOT NULL,
    correlation        TEXT,
    state              TEXT    NOT NULL,
    status             TEXT    NOT NULL,
    progress           BLOB    NOT NULL,
    data               BLOB    NOT NULL,
    version            INTEGER NOT NULL,
    last_error         TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    finished_at        INTEGER,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX processor_instances_by_correlation
    ON processor_instances (kind, correlation) WHERE correlation IS NOT NULL;
CREATE INDEX processor_instances_by_status ON processor_instances (status, kind, id);
-- The retention purge: finished instances, oldest first.
CREATE INDEX processor_instances_finished ON processor_instances (finished_at)
    WHERE finished_at IS NOT NULL;

-- Durable timers, and the work queue: a local step about to run is a timer due now,
-- leased to the process running it. `(kind, instance, name)` is unique, so scheduling a
-- timer again replaces it.
-- AUTOINCREMENT: an id is never reused, so a process holding a fired timer's id can never
-- act on a later timer that took the same row number.
CREATE TABLE processor_timers (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT    NOT NULL,
    instance     TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    due_at       INTEGER NOT NULL,
    payload      BLOB    NOT NULL,
    leased_by    TEXT,
    leased_until INTEGER
);
CREATE UNIQUE INDEX processor_timers_by_instance ON processor_timers (kind, instance, name);
CREATE INDEX processor_timers_by_due ON processor_timers (kind, due_at);

-- What happened to each instance, in order; purged with the instance.
CREATE TABLE processor_history (
    kind     TEXT    NOT NULL,
    instance TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    step     TEXT,
    what     TEXT    NOT NULL,
    detail   TEXT,
    PRIMARY KEY (kind, instance, seq)
) WITHOUT ROWID;
