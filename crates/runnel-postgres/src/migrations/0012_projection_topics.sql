-- Projections fed from a bus topic (not `$all`). `__SCHEMA__` is the configured schema.
-- See DESIGN.md, "Projections".

-- Which projections read a topic, as which consumer group. A projection named here is
-- never rebuilt (a topic cannot be replayed from its start). `inbox_seq` counts the
-- messages it applied (the number the next inbox row gets); the UPDATE that bumps it is
-- the first write of a message's transaction, so its row lock orders the commits of one
-- projection and a concurrent duplicate finds the first one's inbox row committed.
CREATE TABLE __SCHEMA__.projection_topics (
    name       text COLLATE "C" NOT NULL PRIMARY KEY,
    topic      text             NOT NULL,
    grp        text             NOT NULL,
    inbox_seq  bigint           NOT NULL DEFAULT 0,
    created_at timestamptz      NOT NULL,
    updated_at timestamptz      NOT NULL
);

-- The ids of the messages each topic projection applied, written in the transaction of
-- their read-model rows: a redelivered message finds its id and writes nothing. Bounded:
-- each commit deletes the projection's rows older than its newest `inbox_keep`.
CREATE TABLE __SCHEMA__.projection_inbox (
    name        text COLLATE "C" NOT NULL,
    message_id  text COLLATE "C" NOT NULL,
    seq         bigint           NOT NULL,
    received_at timestamptz      NOT NULL,
    PRIMARY KEY (name, message_id)
);
CREATE INDEX projection_inbox_by_seq ON __SCHEMA__.projection_inbox (name, seq);
