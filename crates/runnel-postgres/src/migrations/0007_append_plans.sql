-- append_batch's statements are all point lookups and inserts by key, and its plans are
-- generic (planned once per connection, see 0001). A generic plan made while the tables were
-- small (a fresh store) used sequential scans and hash joins, and kept them while the tables
-- grew: measured, a 1-event append went from 0.5 ms to 5 ms within 100k events, and to
-- 67 ms at 200k. Forbidding those plan shapes inside the function makes every plan use the
-- indexes whatever the statistics were when it was made. (With no usable index the planner
-- still falls back to a scan; these settings only steer its choice.) JIT goes off too: the
-- penalty cost a disabled plan shape carries pushed plans over `jit_above_cost`, and
-- compiling them took 5-10 ms per call.
ALTER FUNCTION __SCHEMA__.append_batch(
    bigint, text, text[], text[], smallint[], bigint[], integer[], uuid[], text[], integer[],
    text[], bytea[], jsonb[])
    SET enable_seqscan = off;
ALTER FUNCTION __SCHEMA__.append_batch(
    bigint, text, text[], text[], smallint[], bigint[], integer[], uuid[], text[], integer[],
    text[], bytea[], jsonb[])
    SET enable_hashjoin = off;
ALTER FUNCTION __SCHEMA__.append_batch(
    bigint, text, text[], text[], smallint[], bigint[], integer[], uuid[], text[], integer[],
    text[], bytea[], jsonb[])
    SET enable_mergejoin = off;
ALTER FUNCTION __SCHEMA__.append_batch(
    bigint, text, text[], text[], smallint[], bigint[], integer[], uuid[], text[], integer[],
    text[], bytea[], jsonb[])
    SET jit = off;
