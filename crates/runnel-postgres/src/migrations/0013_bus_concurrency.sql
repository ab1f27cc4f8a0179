-- The bus under concurrency: publishes no longer queue behind one topic-wide lock, and no
-- bus transaction sends NOTIFY itself (PostgreSQL serializes the commits of transactions
-- that notify). `__SCHEMA__` is the configured schema. See DESIGN.md, "Bus".
--
-- Locks (all transaction-scoped advisory locks, released at commit):
--   * the topic lock (`bus_topic_lock_key`): shared by publishes, acks and sweeps;
--     exclusive for group creation and deletion, and for a publish touching more than
--     `bus_key_locks_max()` distinct keys;
--   * a key lock per (topic, ordering key) (`bus_key_lock_key`): exclusive, taken by a
--     publish for each key it writes (in lock-key order, so two publishes never deadlock)
--     and by an ack of a keyed row before it looks for the key's next row.
-- Publishes of different keys proceed (and commit) in parallel; publishes of one key, and
-- a publish and an ack of one key, take turns, so `head` is decided right and a key's
-- `seq` values increase in commit order.

CREATE FUNCTION __SCHEMA__.bus_key_lock_key(p_topic_id bigint, p_key bytea) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT hashtextextended('runnel/__SCHEMA__/bus/' || p_topic_id::text || '/key/'
                            || encode(p_key, 'hex'), 0)
$fn$;

-- Above this many distinct keys in one publish, it takes the topic lock exclusively
-- instead of one lock per key: advisory locks live in PostgreSQL's shared lock table
-- (max_locks_per_transaction × connections slots), which a huge batch must not exhaust.
CREATE FUNCTION __SCHEMA__.bus_key_locks_max() RETURNS integer
LANGUAGE sql IMMUTABLE AS $fn$ SELECT 128 $fn$;

-- Appends messages i = 1..n to the topic's log and fans each out to every group of the
-- topic, in one transaction and two statements (set-based, no per-row loop). Notifies
-- `p_channel` with the topic name at commit only when p_channel is not NULL (this build
-- passes NULL and notifies after the commit, outside the transaction).
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
    -- it is the key's first row of this call and the group holds no other row of the key.
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
               AND NOT EXISTS (
                   SELECT 1 FROM __SCHEMA__.bus_queue q
                    WHERE q.group_id = g.group_id AND q.ordering_key = m.ordering_key)),
           p_now, 0
      FROM m CROSS JOIN __SCHEMA__.bus_groups g
     WHERE g.topic_id = tid;
    IF p_channel IS NOT NULL THEN
        PERFORM pg_notify(p_channel, p_topic);
    END IF;
    RETURN n;
END
$fn$;

-- Acknowledges one leased row (only the lease that claimed it can) and makes the key's
-- next row the head. Returns 0 when the lease was no longer held, 1 when acknowledged,
-- 2 when acknowledged and the key's next row became claimable (the caller wakes
-- consumers, after the commit).
CREATE FUNCTION __SCHEMA__.bus_ack_row(
    p_topic_id bigint,
    p_group_id bigint,
    p_seq      bigint,
    p_owner    uuid,
    p_attempt  integer
) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    k bytea;
BEGIN
    -- Shared, before the row lock the DELETE takes: group deletion (exclusive, then
    -- deleting rows) never waits for this ack while it waits for the group deletion.
    PERFORM pg_advisory_xact_lock_shared(__SCHEMA__.bus_topic_lock_key(p_topic_id));
    DELETE FROM __SCHEMA__.bus_queue q
     WHERE q.group_id = p_group_id AND q.seq = p_seq
       AND q.lease_owner = p_owner AND q.attempt = p_attempt
    RETURNING q.ordering_key INTO k;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    IF k IS NULL THEN
        RETURN 1;
    END IF;
    -- A publish of this key that decided "not the head" because this row still existed
    -- has committed once this lock is ours, and the UPDATE's snapshot (taken after it)
    -- sees its row; a publish after this commit sees the row gone.
    PERFORM pg_advisory_xact_lock(__SCHEMA__.bus_key_lock_key(p_topic_id, k));
    UPDATE __SCHEMA__.bus_queue q SET head = true
     WHERE q.group_id = p_group_id
       AND q.seq = (SELECT min(q2.seq) FROM __SCHEMA__.bus_queue q2
                     WHERE q2.group_id = p_group_id AND q2.ordering_key = k);
    IF FOUND THEN
        RETURN 2;
    END IF;
    RETURN 1;
END
$fn$;

-- The earlier signature, for processes of the previous build still running against an
-- upgraded schema: the new locking, and its NOTIFY inside the transaction as before.
CREATE OR REPLACE FUNCTION __SCHEMA__.bus_ack(
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
    r integer;
BEGIN
    r := __SCHEMA__.bus_ack_row(p_topic_id, p_group_id, p_seq, p_owner, p_attempt);
    IF r = 2 AND p_channel IS NOT NULL THEN
        PERFORM pg_notify(p_channel, p_topic);
    END IF;
    RETURN r > 0;
END
$fn$;

-- Deletes up to p_limit of the topic's log rows published before p_cutoff that no group's
-- queue holds. Under the topic lock, shared: only a group being created with Earliest
-- (exclusive) must not copy a row this deletes; publishes commit their log rows and queue
-- rows together, so a sweep never sees one without the other.
CREATE OR REPLACE FUNCTION __SCHEMA__.bus_sweep(
    p_topic_id bigint,
    p_cutoff   timestamptz,
    p_limit    integer
) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    n integer;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(__SCHEMA__.bus_topic_lock_key(p_topic_id));
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

-- Acknowledges several leased rows in one transaction, as bus_ack_row does each: element i
-- of the result is row i's outcome (0 lease lost, 1 acknowledged, 2 acknowledged and its
-- key's next row became the head). Locks: every topic's lock shared, then the deletes,
-- then the keys' locks in lock-key order, then the promotions. Row by row (by primary
-- key, then by the key index): a set-based join's cached plan could scan the queue.
CREATE FUNCTION __SCHEMA__.bus_ack_rows(
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
    k       bytea;
    j       integer;
BEGIN
    IF n = 0 THEN
        RETURN outcome;
    END IF;
    SELECT array_agg(DISTINCT __SCHEMA__.bus_topic_lock_key(t)) INTO locks
      FROM unnest(p_topic_ids) AS t;
    PERFORM pg_advisory_xact_lock_shared(l) FROM unnest(locks) AS l;
    FOR j IN 1 .. n LOOP
        DELETE FROM __SCHEMA__.bus_queue q
         WHERE q.group_id = p_group_ids[j] AND q.seq = p_seqs[j]
           AND q.lease_owner = p_owners[j] AND q.attempt = p_attempts[j]
        RETURNING q.ordering_key INTO k;
        IF FOUND THEN
            outcome[j] := 1;
            keys[j] := k;
        END IF;
    END LOOP;
    SELECT array_agg(DISTINCT __SCHEMA__.bus_key_lock_key(x.t, x.k)) INTO locks
      FROM unnest(p_topic_ids, keys) AS x(t, k)
     WHERE x.k IS NOT NULL;
    IF locks IS NULL THEN
        RETURN outcome;
    END IF;
    -- As in bus_ack_row: once these locks are ours, a publish of any of these keys that
    -- saw an acknowledged row still there has committed, and the next statements see its
    -- row.
    PERFORM pg_advisory_xact_lock(l) FROM unnest(locks) AS l;
    FOR j IN 1 .. n LOOP
        CONTINUE WHEN keys[j] IS NULL;
        UPDATE __SCHEMA__.bus_queue q SET head = true
         WHERE q.group_id = p_group_ids[j]
           AND q.seq = (SELECT min(q2.seq) FROM __SCHEMA__.bus_queue q2
                         WHERE q2.group_id = p_group_ids[j] AND q2.ordering_key = keys[j]);
        IF FOUND THEN
            outcome[j] := 2;
        END IF;
    END LOOP;
    RETURN outcome;
END
$fn$;
