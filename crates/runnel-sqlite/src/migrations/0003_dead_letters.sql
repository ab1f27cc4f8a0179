-- Dead letters with their failure history.
--
-- id is AUTOINCREMENT so a purged id is never handed out again: ids are what people type
-- into `runnel dlq show/replay`, and paging resumes "after the last id seen".
-- The message is kept as its JSON envelope (payload left out) plus the payload bytes, so
-- replay republishes exactly the bytes that failed.
-- error_search holds every error text lower-cased, joined by U+001E: a case-insensitive
-- "contains" filter is instr() on it, the same rule on every backend.
-- Times are microseconds since the epoch.
CREATE TABLE dead_letters (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    topic            TEXT    NOT NULL,
    group_name       TEXT    NOT NULL,
    message_id       TEXT    NOT NULL,
    envelope         TEXT    NOT NULL,
    payload          BLOB    NOT NULL,
    failures         TEXT    NOT NULL,
    error_search     TEXT    NOT NULL,
    dead_lettered_at INTEGER NOT NULL,
    replay_count     INTEGER NOT NULL DEFAULT 0,
    last_replayed_at INTEGER
);
-- Listing, counting and monitoring by topic and group (pending ones by default).
CREATE INDEX dead_letters_by_topic_group ON dead_letters (topic, group_name, replay_count);
-- Time filters and purging by age.
CREATE INDEX dead_letters_by_time ON dead_letters (dead_lettered_at);
