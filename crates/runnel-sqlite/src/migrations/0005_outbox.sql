-- The transactional outbox: messages enqueued in the application's own unit of work, then
-- published by a relay. See DESIGN.md, "Outbox". Times are microseconds since the epoch.

-- One row per enqueued message. `ordering_key` NULL = unordered (every such row is its
-- own head). A row is pending while `published_at` is NULL; only a key's earliest pending
-- row (its head) is claimable, which is what keeps per-key order. `leased_by` /
-- `leased_until`: the relay publishing it now; `next_attempt_at`: not claimed before
-- (backoff after a failure); `parked` = 1: stopped after repeated failures until retried.
CREATE TABLE outbox_messages (
    seq             INTEGER PRIMARY KEY,
    message_id      TEXT    NOT NULL,
    topic           TEXT    NOT NULL,
    ordering_key    TEXT,
    envelope        TEXT    NOT NULL,  -- the Message as JSON, payload left out
    payload         BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    parked          INTEGER NOT NULL DEFAULT 0,
    leased_by       TEXT,
    leased_until    INTEGER,
    published_at    INTEGER
);
-- The claim scan: pending rows in enqueue order.
CREATE INDEX outbox_pending ON outbox_messages (seq) WHERE published_at IS NULL;
-- Whether a key has an earlier pending row, and a head's followers.
CREATE INDEX outbox_pending_by_key ON outbox_messages (ordering_key, seq)
    WHERE published_at IS NULL AND ordering_key IS NOT NULL;
-- The retention purge: published rows, oldest first.
CREATE INDEX outbox_published ON outbox_messages (published_at)
    WHERE published_at IS NOT NULL;
