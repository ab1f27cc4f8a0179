-- A lone append's own function. `append_batch` is built for many appends at once: its
-- set-based path checks the batch for repeated streams, joins, numbers and windows the
-- arrays, and its statements cost about 0.1 ms more per call than the handful a single
-- append needs — as much as a commit on a fast disk. Most appends arrive alone (one writer,
-- or `append_in` inside an application's transaction), so they come here: a point lookup of
-- the stream, one insert of the events, one insert or update of the stream row.
--
-- Same result rows as append_batch (idx is always 1). If any of the event ids is already
-- stored, the append is an idempotent retry or a duplicate; that rare case is handed, under
-- the same lock, to append_batch's append-by-append path, which tells the two apart.
CREATE FUNCTION __SCHEMA__.append_one(
    lock_key       bigint,
    channel        text,
    stream_name    text,
    category_      text,
    expected_kind  smallint,
    expected_rev   bigint,
    ids            uuid[],
    types          text[],
    versions       integer[],
    content_types  text[],
    datas          bytea[],
    metas          jsonb[]
) RETURNS TABLE (idx integer, status smallint, revision bigint, pos bigint, detail text)
LANGUAGE plpgsql
-- The same plan settings as append_batch (see migrations 1 and 7): plans are made once per
-- connection and must stay index plans whatever the tables held when they were made.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET jit = off
AS $fn$
DECLARE
    cnt     integer := coalesce(cardinality(ids), 0);
    sid     bigint;
    cur     bigint;
    base    bigint;
    now_    timestamptz := clock_timestamp();
BEGIN
    -- The store's append lock, as in append_batch: positions are handed out in commit order.
    PERFORM pg_advisory_xact_lock(lock_key);

    IF cnt = 0 OR EXISTS (SELECT 1 FROM unnest(ids) AS x(id)
                           JOIN __SCHEMA__.events e ON e.event_id = x.id) THEN
        -- A retry, a duplicate or an empty append: the general path decides (it takes the
        -- lock again, which this transaction already holds).
        RETURN QUERY SELECT * FROM __SCHEMA__.append_batch(
            lock_key, channel, ARRAY[stream_name], ARRAY[category_], ARRAY[expected_kind],
            ARRAY[expected_rev], ARRAY[cnt], ids, types, versions, content_types, datas, metas);
        RETURN;
    END IF;

    SELECT s.stream_id, s.revision INTO sid, cur
      FROM __SCHEMA__.streams s WHERE s.name = stream_name;
    idx := 1;
    detail := NULL;
    IF NOT coalesce(expected_kind = 0
                    OR (expected_kind = 1 AND sid IS NULL)
                    OR (expected_kind = 2 AND sid IS NOT NULL)
                    OR (expected_kind = 3 AND sid IS NOT NULL AND cur = expected_rev), false) THEN
        status := 2; revision := cur; pos := NULL;
        RETURN NEXT;
        RETURN;
    END IF;

    SELECT CASE WHEN q.is_called THEN q.last_value ELSE 0 END INTO base
      FROM __SCHEMA__.event_position q;
    IF sid IS NULL THEN
        cur := 0;
        INSERT INTO __SCHEMA__.streams AS s
               (name, category, revision, last_position, created_at, updated_at)
        VALUES (stream_name, category_, cnt, base + cnt, now_, now_)
        RETURNING s.stream_id INTO sid;
    ELSE
        UPDATE __SCHEMA__.streams s
           SET revision = cur + cnt, last_position = base + cnt, updated_at = now_
         WHERE s.stream_id = sid;
    END IF;

    INSERT INTO __SCHEMA__.events
        (position, event_id, stream_id, revision, category, event_type, schema_version,
         content_type, data, metadata, recorded_at)
    SELECT base + u.ord, u.id, sid, cur + u.ord, category_, u.typ, u.ver, u.ct, u.dat,
           u.meta, now_
      FROM unnest(ids, types, versions, content_types, datas, metas)
           WITH ORDINALITY AS u(id, typ, ver, ct, dat, meta, ord);

    -- Sequences ignore rollback: if this transaction aborts, the numbers stay used.
    PERFORM setval('__SCHEMA__.event_position', base + cnt);
    PERFORM pg_notify(channel, (base + cnt)::text);
    status := 0; revision := cur + cnt; pos := base + cnt;
    RETURN NEXT;
END
$fn$;
