-- The embedded durable bus: topics, a message log, consumer groups and one queue row per
-- (group, message) not yet acknowledged. See DESIGN.md, "Bus".

CREATE TABLE bus_topics (
    topic_id   INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

-- The log: every published message, in publish (= commit) order. A row is deleted by the
-- retention sweep once no group's queue still holds it and it is older than the retention.
CREATE TABLE bus_messages (
    seq          INTEGER PRIMARY KEY,
    topic_id     INTEGER NOT NULL REFERENCES bus_topics (topic_id),
    ordering_key BLOB,              -- Message::ordering_key(); NULL = unordered
    envelope     TEXT    NOT NULL,  -- the Message as JSON, payload left out
    payload      BLOB    NOT NULL,
    published_at INTEGER NOT NULL   -- µs since the epoch, from the bus clock
);
CREATE INDEX bus_messages_by_topic ON bus_messages (topic_id, seq);
-- The retention sweep: oldest first.
CREATE INDEX bus_messages_by_time ON bus_messages (published_at);

CREATE TABLE bus_groups (
    group_id   INTEGER PRIMARY KEY,
    topic_id   INTEGER NOT NULL REFERENCES bus_topics (topic_id),
    name       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (topic_id, name)
);

-- What each group still has to consume. `head` = 1 marks the earliest row of its ordering
-- key in the group (always 1 without a key): only head rows are ever claimed, which is
-- what keeps per-key order. `visible_at` is when the row may be claimed: the publish time,
-- a nack's delay, or the end of the current lease. `attempt` counts deliveries so far;
-- `lease_owner` names the consumer holding it (NULL when free).
CREATE TABLE bus_queue (
    seq          INTEGER NOT NULL,
    group_id     INTEGER NOT NULL,
    ordering_key BLOB,
    head         INTEGER NOT NULL,
    visible_at   INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    lease_owner  TEXT,
    PRIMARY KEY (seq, group_id)
) WITHOUT ROWID;
-- The claim query: ready head rows of one group, oldest first.
CREATE INDEX bus_queue_ready ON bus_queue (group_id, visible_at, seq) WHERE head = 1;
-- Finding a key's next row when its head is acknowledged, and whether a key has rows.
CREATE INDEX bus_queue_by_key ON bus_queue (group_id, ordering_key, seq)
    WHERE ordering_key IS NOT NULL;
