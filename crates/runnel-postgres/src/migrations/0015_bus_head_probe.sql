-- The bus's statements keep their index plans as the queue grows (see DESIGN.md, "Bus").
-- `__SCHEMA__` is the configured schema.
--
-- Measured in `runnel-bench bus` (BENCHMARKS.md): `bus_publish`'s `head` decision was a
-- correlated `NOT EXISTS` that the planner, once the queue's statistics showed a few
-- thousand rows, turned into a hashed subplan: every call read the whole queue (every
-- group's rows) into a hash table, so a publish cost more the longer the consumers lagged.
-- The probe is now a lateral `LIMIT 1` subquery (one index probe per row, whatever the
-- statistics), and like `append_batch` (migration 7) the publish and ack functions run
-- with the plan shapes that scan or hash whole tables turned off, and without JIT.

CREATE OR REPLACE FUNCTION __SCHEMA__.bus_publish(
    p_topic     text,
    p_channel   text,
    p_keys      bytea[],
    p_envelopes bytea[],
    p_payloads  bytea[],
    p_now       timestamptz
) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    tid   bigint;
    n     integer := coalesce(array_length(p_envelopes, 1), 0);
    locks bigint[];
BEGIN
    IF n = 0 THEN
        RETURN 0;
    END IF;
    SELECT t.topic_id INTO tid FROM __SCHEMA__.bus_topics t WHERE t.name = p_topic;
    IF NOT FOUND THEN
        tid := __SCHEMA__.bus_topic_id(p_topic, p_now);
    END IF;
    SELECT array_agg(DISTINCT __SCHEMA__.bus_key_lock_key(tid, k))
      INTO locks
      FROM unnest(p_keys) AS k
     WHERE k IS NOT NULL;
    IF coalesce(cardinality(locks), 0) > __SCHEMA__.bus_key_locks_max() THEN
        PERFORM pg_advisory_xact_lock(__SCHEMA__.bus_topic_lock_key(tid));
    ELSE
        -- Shared: group creation (exclusive) waits for this publish and the other way
        -- round, so each message is queued for a new group exactly once.
        PERFORM pg_advisory_xact_lock_shared(__SCHEMA__.bus_topic_lock_key(tid));
        -- array_agg(DISTINCT …) sorts, and unnest keeps the order: every publish takes
        -- its key locks in the same order.
        PERFORM pg_advisory_xact_lock(l) FROM unnest(locks) AS l;
    END IF;
    -- This statement's snapshot is taken after the locks: it sees every committed row of
    -- these keys and every group created before. A row is its key's head in a group when
    -- it is the key's first row of this call and the group holds no other row of the key:
    -- one index probe per row (`LIMIT 1` in a lateral subquery, which the planner can
    -- neither hash nor turn into a join over the whole queue).
    WITH m AS (
        INSERT INTO __SCHEMA__.bus_messages (topic_id, ordering_key, envelope, payload, published_at)
        SELECT tid, u.k, u.e, u.p, p_now
          FROM unnest(p_keys, p_envelopes, p_payloads) WITH ORDINALITY AS u(k, e, p, i)
         ORDER BY u.i
        RETURNING seq, ordering_key
    )
    INSERT INTO __SCHEMA__.bus_queue (group_id, seq, ordering_key, head, visible_at, attempt)
    SELECT g.group_id, m.seq, m.ordering_key,
           m.ordering_key IS NULL
           OR (m.seq = min(m.seq) OVER (PARTITION BY g.group_id, m.ordering_key)
               AND older.seq IS NULL),
           p_now, 0
      FROM m
      JOIN __SCHEMA__.bus_groups g ON g.topic_id = tid
      LEFT JOIN LATERAL (
          SELECT q.seq FROM __SCHEMA__.bus_queue q
           WHERE q.group_id = g.group_id AND q.ordering_key = m.ordering_key
           LIMIT 1) older ON true;
    IF p_channel IS NOT NULL THEN
        PERFORM pg_notify(p_channel, p_topic);
    END IF;
    RETURN n;
END
$fn$;

ALTER FUNCTION __SCHEMA__.bus_publish(text, text, bytea[], bytea[], bytea[], timestamptz)
    SET enable_seqscan = off;
ALTER FUNCTION __SCHEMA__.bus_publish(text, text, bytea[], bytea[], bytea[], timestamptz)
    SET enable_hashjoin = off;
ALTER FUNCTION __SCHEMA__.bus_publish(text, text, bytea[], bytea[], bytea[], timestamptz)
    SET enable_mergejoin = off;
ALTER FUNCTION __SCHEMA__.bus_publish(text, text, bytea[], bytea[], bytea[], timestamptz)
    SET jit = off;
