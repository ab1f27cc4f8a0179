-- The outbox's message bodies move out of `outbox_messages` into a table of their own, so
-- the row the relay updates (lease, mark, failure) is narrow: a mark of 1,000 rows then
-- rewrites a few dozen pages of `outbox_messages`, not every page holding their payloads.
-- A body is written once at enqueue and deleted with its row by the purge. See DESIGN.md,
-- "Outbox".
CREATE TABLE outbox_bodies (
    seq      INTEGER PRIMARY KEY,  -- outbox_messages.seq
    envelope TEXT    NOT NULL,     -- the Message as JSON, payload left out
    payload  BLOB    NOT NULL
);
INSERT INTO outbox_bodies (seq, envelope, payload)
    SELECT seq, envelope, payload FROM outbox_messages;
ALTER TABLE outbox_messages DROP COLUMN envelope;
ALTER TABLE outbox_messages DROP COLUMN payload;
