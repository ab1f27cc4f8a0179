-- Stateful processors (sagas, process managers): instances, their timers and history.
-- `__SCHEMA__` is the configured schema. See DESIGN.md, "Processors".
--
-- Key columns are `COLLATE "C"`: `list` pages by `(kind, id)` in byte order, as on
-- SQLite, whatever the database's collation, and the primary key index serves it.

-- One row per instance. `version` is the optimistic-concurrency check of every
-- transition (its row lock also serialises the transition's timer and history writes);
-- `correlation` is unique per kind so two start messages make one instance.
-- `definition_version` is bigint: it holds any u32.
CREATE TABLE __SCHEMA__.processor_instances (
    kind               text COLLATE "C" NOT NULL,
    id                 text COLLATE "C" NOT NULL,
    definition_version bigint           NOT NULL,
    correlation        text COLLATE "C",
    state              text             NOT NULL,
    status             text COLLATE "C" NOT NULL,
    progress           bytea            NOT NULL,
    data               bytea            NOT NULL,
    version            bigint           NOT NULL,
    last_error         text,
    created_at         timestamptz      NOT NULL,
    updated_at         timestamptz      NOT NULL,
    finished_at        timestamptz,
    PRIMARY KEY (kind, id)
);
CREATE UNIQUE INDEX processor_instances_by_correlation
    ON __SCHEMA__.processor_instances (kind, correlation) WHERE correlation IS NOT NULL;
CREATE INDEX processor_instances_by_status
    ON __SCHEMA__.processor_instances (status, kind, id);
-- The retention purge: finished instances, oldest first.
CREATE INDEX processor_instances_finished ON __SCHEMA__.processor_instances (finished_at)
    WHERE finished_at IS NOT NULL;

-- Durable timers, and the work queue: a local step about to run is a timer due now,
-- leased to the process running it. `(kind, instance, name)` is unique, so scheduling a
-- timer again replaces it. Claims lock rows with FOR UPDATE SKIP LOCKED, so concurrent
-- claimers never lease the same timer.
CREATE TABLE __SCHEMA__.processor_timers (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text COLLATE "C" NOT NULL,
    instance     text COLLATE "C" NOT NULL,
    name         text COLLATE "C" NOT NULL,
    due_at       timestamptz      NOT NULL,
    payload      bytea            NOT NULL,
    leased_by    text,
    leased_until timestamptz,
    UNIQUE (kind, instance, name),
    CHECK ((leased_by IS NULL) = (leased_until IS NULL))
);
-- The claim scan and `next_due`: a kind's timers, soonest first.
CREATE INDEX processor_timers_by_due ON __SCHEMA__.processor_timers (kind, due_at, id);

-- What happened to each instance, in order; purged with the instance.
CREATE TABLE __SCHEMA__.processor_history (
    kind     text COLLATE "C" NOT NULL,
    instance text COLLATE "C" NOT NULL,
    seq      bigint           NOT NULL,
    at       timestamptz      NOT NULL,
    step     text,
    what     text             NOT NULL,
    detail   text,
    PRIMARY KEY (kind, instance, seq)
);
