-- "By type from a time" reads walk `events_by_type (event_type, position)` from the first
-- position recorded at or after the time (found by a binary search over positions:
-- `recorded_at` never decreases with position), so the `(event_type, recorded_at)` index
-- is no longer read. Every append paid for it: one B-tree insert per event.
DROP INDEX IF EXISTS events_by_type_time;
