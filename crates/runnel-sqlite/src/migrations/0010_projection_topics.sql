-- Projections fed from a bus topic (not `$all`). See the framework's DESIGN.md,
-- "Projections". Times are microseconds since the epoch.

-- Which projections read a topic, as which consumer group. A projection named here is
-- never rebuilt (a topic cannot be replayed from its start). `inbox_seq` counts the
-- messages it applied: the number the next inbox row gets.
CREATE TABLE projection_topics (
    name       TEXT    NOT NULL PRIMARY KEY,
    topic      TEXT    NOT NULL,
    grp        TEXT    NOT NULL,
    inbox_seq  INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- The ids of the messages each topic projection applied, written in the transaction of
-- their read-model rows: a redelivered message finds its id and writes nothing. Bounded:
-- each commit deletes the projection's rows older than its newest `inbox_keep`.
CREATE TABLE projection_inbox (
    name        TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (name, message_id)
) WITHOUT ROWID;
CREATE INDEX projection_inbox_by_seq ON projection_inbox (name, seq);
