-- Idempotency: the transactional inbox and the dedup window. Times are microseconds since
-- the epoch (the writer's batch time), like every other table in the file.

-- Processed message ids per handler. A row is written in the same transaction as the
-- handler's own writes, so "handled" and "marked" commit together or not at all.
CREATE TABLE inbox (
    handler      TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    processed_at INTEGER NOT NULL,
    PRIMARY KEY (handler, message_id)
) WITHOUT ROWID;
-- Retention (`purge_older_than`) walks this index.
CREATE INDEX inbox_by_processed_at ON inbox (processed_at);

-- The dedup window for handlers with external side effects. A row is either a lock
-- (`result` NULL, `token` set) or a completed key (`result` set, `token` NULL); in both
-- cases `expires_at` is when it stops counting: an expired lock may be claimed again,
-- an expired result is forgotten.
CREATE TABLE dedup_keys (
    key        TEXT    NOT NULL PRIMARY KEY,
    token      TEXT,
    result     BLOB,
    expires_at INTEGER NOT NULL,
    CHECK ((token IS NULL) <> (result IS NULL))
) WITHOUT ROWID;
CREATE INDEX dedup_keys_by_expiry ON dedup_keys (expires_at);
