-- The bus's statements keep their index plans as the queue grows (see DESIGN.md, "Bus").
-- `__SCHEMA__` is the configured schema.
--
-- Measured in `runnel-bench bus` (BENCHMARKS.md): `bus_publish`'s `head` decision was a
-- correlated `NOT EXISTS` that the planner, once the queue's statistics showed a few
-- thousand rows, turned into a hashed subplan: every call read the whole queue (every
-- group's rows) into a hash table, so a publish cost more the longer the consumers lagged.
-- The probe is now a lateral `LIMIT 1` subquery (one index probe per row, whatever the
-- statistics). `bus_ack_rows` (the acks of a group commit) is set-based: one DELETE and one
-- UPDATE for the whole batch instead of two statements per row. Like `append_batch`
-- (migration 7) both run with the plan shapes that scan or hash whole tables turned off,
-- and without JIT, so their joins stay index probes whatever the statistics.

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

-- Acknowledges several leased rows in one transaction, as bus_ack_row does each: element i
-- of the result is row i's outcome (0 lease lost, 1 acknowledged, 2 acknowledged and its
-- key's next row became the head). Locks: every topic's lock shared, then the deletes,
-- then the keys' locks in lock-key order, then the promotions. Set-based: one DELETE for
-- every row and one UPDATE for every key's successor (index probes, as the plan settings
-- below keep them) instead of two statements per row.
CREATE OR REPLACE FUNCTION __SCHEMA__.bus_ack_rows(
    p_topic_ids bigint[],
    p_group_ids bigint[],
    p_seqs      bigint[],
    p_owners    uuid[],
    p_attempts  integer[]
) RETURNS integer[]
LANGUAGE plpgsql AS $fn$
DECLARE
    n       integer := coalesce(array_length(p_seqs, 1), 0);
    outcome integer[] := array_fill(0, ARRAY[n]);
    keys    bytea[] := array_fill(NULL::bytea, ARRAY[n]);
    locks   bigint[];
    js      bigint[];
    ks      bytea[];
    i       integer;
BEGIN
    IF n = 0 THEN
        RETURN outcome;
    END IF;
    SELECT array_agg(DISTINCT __SCHEMA__.bus_topic_lock_key(t)) INTO locks
      FROM unnest(p_topic_ids) AS t;
    PERFORM pg_advisory_xact_lock_shared(l) FROM unnest(locks) AS l;
    WITH d AS (
        -- A lease named twice is acknowledged by its first mention (the others: 0).
        DELETE FROM __SCHEMA__.bus_queue q
         USING (SELECT DISTINCT ON (x.g, x.s, x.o, x.t) x.*
                  FROM unnest(p_group_ids, p_seqs, p_owners, p_attempts) WITH ORDINALITY
                       AS x(g, s, o, t, j)
                 ORDER BY x.g, x.s, x.o, x.t, x.j) a
         WHERE q.group_id = a.g AND q.seq = a.s AND q.lease_owner = a.o AND q.attempt = a.t
        RETURNING a.j, q.ordering_key
    )
    SELECT array_agg(d.j), array_agg(d.ordering_key) INTO js, ks FROM d;
    IF js IS NULL THEN
        RETURN outcome;
    END IF;
    FOR i IN 1 .. cardinality(js) LOOP
        outcome[js[i]] := 1;
        keys[js[i]] := ks[i];
    END LOOP;
    SELECT array_agg(DISTINCT __SCHEMA__.bus_key_lock_key(x.t, x.k)) INTO locks
      FROM unnest(p_topic_ids, keys) AS x(t, k)
     WHERE x.k IS NOT NULL;
    IF locks IS NULL THEN
        RETURN outcome;
    END IF;
    -- As in bus_ack_row: once these locks are ours, a publish of any of these keys that
    -- saw an acknowledged row still there has committed, and the next statement sees its
    -- row.
    PERFORM pg_advisory_xact_lock(l) FROM unnest(locks) AS l;
    WITH acked AS (
        SELECT DISTINCT x.g, x.k FROM unnest(p_group_ids, keys) AS x(g, k)
         WHERE x.k IS NOT NULL
    ), promoted AS (
        UPDATE __SCHEMA__.bus_queue q SET head = true
          FROM acked
         CROSS JOIN LATERAL (
               SELECT min(q2.seq) AS seq FROM __SCHEMA__.bus_queue q2
                WHERE q2.group_id = acked.g AND q2.ordering_key = acked.k) next
         WHERE q.group_id = acked.g AND q.seq = next.seq
        RETURNING q.group_id, q.ordering_key
    )
    SELECT array_agg(x.j) INTO js
      FROM unnest(p_group_ids, keys) WITH ORDINALITY AS x(g, k, j)
      JOIN promoted p ON p.group_id = x.g AND p.ordering_key = x.k;
    IF js IS NOT NULL THEN
        FOR i IN 1 .. cardinality(js) LOOP
            outcome[js[i]] := 2;
        END LOOP;
    END IF;
    RETURN outcome;
END
$fn$;

ALTER FUNCTION __SCHEMA__.bus_ack_rows(bigint[], bigint[], bigint[], uuid[], integer[])
    SET enable_seqscan = off;
ALTER FUNCTION __SCHEMA__.bus_ack_rows(bigint[], bigint[], bigint[], uuid[], integer[])
    SET enable_hashjoin = off;
ALTER FUNCTION __SCHEMA__.bus_ack_rows(bigint[], bigint[], bigint[], uuid[], integer[])
    SET enable_mergejoin = off;
ALTER FUNCTION __SCHEMA__.bus_ack_rows(bigint[], bigint[], bigint[], uuid[], integer[])
    SET jit = off;
