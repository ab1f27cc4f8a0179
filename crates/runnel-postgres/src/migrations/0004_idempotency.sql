-- Idempotency: the transactional inbox and the dedup window. `__SCHEMA__` is the
-- configured schema.

-- Processed message ids per handler. A row is inserted in the same transaction as the
-- handler's own writes; a concurrent duplicate's insert waits on the uncommitted row and
-- then finds it (commit) or takes its place (rollback).
CREATE TABLE __SCHEMA__.inbox (
    handler      text        NOT NULL,
    message_id   text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (handler, message_id)
);
-- Retention (`purge_older_than`) walks this index.
CREATE INDEX inbox_by_processed_at ON __SCHEMA__.inbox (processed_at);

-- The dedup window for handlers with external side effects. A row is either a lock
-- (`result` NULL, `token` set) or a completed key (`result` set, `token` NULL); in both
-- cases `expires_at` is when it stops counting: an expired lock may be claimed again,
-- an expired result is forgotten. Times come from the database clock, shared by every
-- process using the schema.
CREATE TABLE __SCHEMA__.dedup_keys (
    key        text        PRIMARY KEY,
    token      text,
    result     bytea,
    expires_at timestamptz NOT NULL,
    CHECK ((token IS NULL) <> (result IS NULL))
);
CREATE INDEX dedup_keys_by_expiry ON __SCHEMA__.dedup_keys (expires_at);
