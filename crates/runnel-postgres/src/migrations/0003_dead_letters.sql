-- Dead letters with their failure history. `__SCHEMA__` is the configured schema.
--
-- id comes from a sequence, so a purged id is never handed out again: ids are what people
-- type into `runnel dlq show/replay`, and paging resumes "after the last id seen".
-- The message is kept as its JSON envelope (payload left out; `text`, not jsonb, so it
-- reads back byte for byte) plus the payload bytes, so replay republishes exactly what
-- failed. error_search holds every error text lower-cased (in Rust, the same rule on every
-- backend), joined by U+001E: a case-insensitive "contains" filter is strpos() on it.
CREATE TABLE __SCHEMA__.dead_letters (
    id               bigserial   PRIMARY KEY,
    topic            text        NOT NULL,
    group_name       text        NOT NULL,
    message_id       text        NOT NULL,
    envelope         text        NOT NULL,
    payload          bytea       NOT NULL,
    failures         text        NOT NULL,
    error_search     text        NOT NULL,
    dead_lettered_at timestamptz NOT NULL,
    replay_count     integer     NOT NULL DEFAULT 0,
    last_replayed_at timestamptz
);
-- Listing, counting and monitoring by topic and group (pending ones by default).
CREATE INDEX dead_letters_by_topic_group
    ON __SCHEMA__.dead_letters (topic, group_name, replay_count);
-- Time filters and purging by age.
CREATE INDEX dead_letters_by_time ON __SCHEMA__.dead_letters (dead_lettered_at);
