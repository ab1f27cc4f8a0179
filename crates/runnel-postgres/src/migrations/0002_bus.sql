-- The embedded durable bus on PostgreSQL: a table queue claimed with FOR UPDATE SKIP LOCKED,
-- shared safely by several processes. `__SCHEMA__` is the configured schema. See DESIGN.md,
-- "Bus", for why per-key order holds.

CREATE TABLE __SCHEMA__.bus_topics (
    topic_id   bigserial   PRIMARY KEY,
    name       text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);

-- The log, in publish order per topic: `seq` is taken while the topic's publish lock is
-- held, so within a topic it increases in commit order.
CREATE TABLE __SCHEMA__.bus_messages (
    seq          bigserial   PRIMARY KEY,
    topic_id     bigint      NOT NULL REFERENCES __SCHEMA__.bus_topics (topic_id),
    ordering_key bytea,                -- Message::ordering_key(); NULL = unordered
    envelope     bytea       NOT NULL, -- the Message as JSON, payload left out
    payload      bytea       NOT NULL,
    published_at timestamptz NOT NULL
);
CREATE INDEX bus_messages_by_topic ON __SCHEMA__.bus_messages (topic_id, seq);
CREATE INDEX bus_messages_by_time ON __SCHEMA__.bus_messages (published_at);

CREATE TABLE __SCHEMA__.bus_groups (
    group_id   bigserial   PRIMARY KEY,
    topic_id   bigint      NOT NULL REFERENCES __SCHEMA__.bus_topics (topic_id),
    name       text        NOT NULL,
    created_at timestamptz NOT NULL,
    UNIQUE (topic_id, name)
);

-- One row per (group, message) not yet acknowledged. `head` marks the earliest row of its
-- ordering key in the group (always true without a key); only heads are claimed.
-- `visible_at`: when the row may be claimed (publish time, nack delay, or lease end).
CREATE TABLE __SCHEMA__.bus_queue (
    group_id     bigint      NOT NULL,
    seq          bigint      NOT NULL,
    ordering_key bytea,
    head         boolean     NOT NULL,
    visible_at   timestamptz NOT NULL,
    attempt      integer     NOT NULL,
    lease_owner  uuid,
    PRIMARY KEY (group_id, seq)
);
CREATE INDEX bus_queue_ready ON __SCHEMA__.bus_queue (group_id, visible_at, seq) WHERE head;
CREATE INDEX bus_queue_by_key ON __SCHEMA__.bus_queue (group_id, ordering_key, seq)
    WHERE ordering_key IS NOT NULL;
CREATE INDEX bus_queue_by_seq ON __SCHEMA__.bus_queue (seq);

-- The topic's lock key. Publishes and group creation take it exclusively; acks take it
-- shared, so a publish never decides a key's head while an ack of that key is committing
-- (and the other way round).
CREATE FUNCTION __SCHEMA__.bus_topic_lock_key(p_topic_id bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT hashtextextended('runnel/__SCHEMA__/bus/' || p_topic_id::text, 0)
$fn$;

CREATE FUNCTION __SCHEMA__.bus_topic_id(p_topic text, p_now timestamptz) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    tid bigint;
BEGIN
    INSERT INTO __SCHEMA__.bus_topics (name, created_at) VALUES (p_topic, p_now)
    ON CONFLICT (name) DO NOTHING;
    SELECT t.topic_id INTO tid FROM __SCHEMA__.bus_topics t WHERE t.name = p_topic;
    RETURN tid;
END
$fn$;

-- Appends messages i = 1..n to the topic's log and fans each out to every group of the
-- topic, in one transaction. Notifies `p_channel` with the topic name at commit.
CREATE FUNCTION __SCHEMA__.bus_publish(
    p_topic     text,
    p_channel   text,
    p_keys      bytea[],
    p_envelopes bytea[],
    p_payloads  bytea[],
    p_now       timestamptz
) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    tid bigint;
    n   integer := coalesce(array_length(p_envelopes, 1), 0);
    i   integer;
    s   bigint;
BEGIN
    tid := __SCHEMA__.bus_topic_id(p_topic, p_now);
    PERFORM pg_advisory_xact_lock(__SCHEMA__.bus_topic_lock_key(tid));
    FOR i IN 1 .. n LOOP
        INSERT INTO __SCHEMA__.bus_messages (topic_id, ordering_key, envelope, payload, published_at)
        VALUES (tid, p_keys[i], p_envelopes[i], p_payloads[i], p_now)
        RETURNING seq INTO s;
        -- A row is its key's head when the group holds no other row of that key.
        INSERT INTO __SCHEMA__.bus_queue (group_id, seq, ordering_key, head, visible_at, attempt)
        SELECT g.group_id, s, p_keys[i],
               p_keys[i] IS NULL OR NOT EXISTS (
                   SELECT 1 FROM __SCHEMA__.bus_queue q
                    WHERE q.group_id = g.group_id AND q.ordering_key = p_keys[i]),
               p_now, 0
          FROM __SCHEMA__.bus_groups g
         WHERE g.topic_id = tid;
    END LOOP;
    IF n > 0 THEN
        PERFORM pg_notify(p_channel, p_topic);
    END IF;
    RETURN n;
END
$fn$;

-- The topic's and the group's ids, creating them on first use. A group created with
-- p_earliest gets a queue row for every message the topic retains.
CREATE FUNCTION __SCHEMA__.bus_subscribe(
    p_topic    text,
    p_group    text,
    p_earliest boolean,
    p_now      timestamptz,
    OUT o_topic_id bigint,
    OUT o_group_id bigint
)
LANGUAGE plpgsql AS $fn$
BEGIN
    o_topic_id := __SCHEMA__.bus_topic_id(p_topic, p_now);
    SELECT g.group_id INTO o_group_id FROM __SCHEMA__.bus_groups g
     WHERE g.topic_id = o_topic_id AND g.name = p_group;
    IF FOUND THEN
        RETURN;
    END IF;
    -- Exclusive: no publish of this topic is half-way while the group appears, so each
    -- message is queued for the group either by this copy or by its publish, never both
    -- and never neither.
    PERFORM pg_advisory_xact_lock(__SCHEMA__.bus_topic_lock_key(o_topic_id));
    INSERT INTO __SCHEMA__.bus_groups (topic_id, name, created_at)
    VALUES (o_topic_id, p_group, p_now)
    ON CONFLICT (topic_id, name) DO NOTHING
    RETURNING group_id INTO o_group_id;
    IF NOT FOUND THEN
        SELECT g.group_id INTO o_group_id FROM __SCHEMA__.bus_groups g
         WHERE g.topic_id = o_topic_id AND g.name = p_group;
        RETURN;
    END IF;
    IF p_earliest THEN
        INSERT INTO __SCHEMA__.bus_queue (group_id, seq, ordering_key, head, visible_at, attempt)
        SELECT o_group_id, m.seq, m.ordering_key,
               m.ordering_key IS NULL OR m.seq = min(m.seq) OVER (PARTITION BY m.ordering_key),
               p_now, 0
          FROM __SCHEMA__.bus_messages m
         WHERE m.topic_id = o_topic_id;
    END IF;
END
$fn$;

-- Removes a group and its queue. Under the topic lock, so no publish half-way queues a
-- row for the group after it is gone.
CREATE FUNCTION __SCHEMA__.bus_delete_group(p_topic text, p_group text) RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    tid bigint;
    gid bigint;
BEGIN
    SELECT t.topic_id INTO tid FROM __SCHEMA__.bus_topics t WHERE t.name = p_topic;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(__SCHEMA__.bus_topic_lock_key(tid));
    DELETE FROM __SCHEMA__.bus_groups g WHERE g.topic_id = tid AND g.name = p_group
    RETURNING g.group_id INTO gid;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM __SCHEMA__.bus_queue q WHERE q.group_id = gid;
    RETURN true;
END
$fn$;

-- Acknowledges one leased row (only the lease that claimed it can) and makes the key's
-- next row the head. Returns whether the lease was still held.
CREATE FUNCTION __SCHEMA__.bus_ack(
    p_topic_id bigint,
    p_group_id bigint,
    p_seq      bigint,
    p_owner    uuid,
    p_attempt  integer,
    p_channel  text,
    p_topic    text
) RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    k bytea;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(__SCHEMA__.bus_topic_lock_key(p_topic_id));
    DELETE FROM __SCHEMA__.bus_queue q
     WHERE q.group_id = p_group_id AND q.seq = p_seq
       AND q.lease_owner = p_owner AND q.attempt = p_attempt
    RETURNING q.ordering_key INTO k;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF k IS NOT NULL THEN
        UPDATE __SCHEMA__.bus_queue q SET head = true
         WHERE q.group_id = p_group_id
           AND q.seq = (SELECT min(q2.seq) FROM __SCHEMA__.bus_queue q2
                         WHERE q2.group_id = p_group_id AND q2.ordering_key = k);
        IF FOUND THEN
            PERFORM pg_notify(p_channel, p_topic);
        END IF;
    END IF;
    RETURN true;
END
$fn$;

-- Deletes up to p_limit of the topic's log rows published before p_cutoff that no group's
-- queue holds. Under the topic lock, so a group being created with Earliest never copies a
-- row this deletes.
CREATE FUNCTION __SCHEMA__.bus_sweep(
    p_topic_id bigint,
    p_cutoff   timestamptz,
    p_limit    integer
) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    n integer;
BEGIN
    PERFORM pg_advisory_xact_lock(__SCHEMA__.bus_topic_lock_key(p_topic_id));
    DELETE FROM __SCHEMA__.bus_messages m
     WHERE m.seq IN (
        SELECT m2.seq FROM __SCHEMA__.bus_messages m2
         WHERE m2.topic_id = p_topic_id AND m2.published_at < p_cutoff
           AND NOT EXISTS (SELECT 1 FROM __SCHEMA__.bus_queue q WHERE q.seq = m2.seq)
         ORDER BY m2.published_at
         LIMIT p_limit);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;
