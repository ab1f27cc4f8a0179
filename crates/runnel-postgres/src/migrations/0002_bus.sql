-- The embedded durable bus on PostgreSQL (table queue, FOR UPDATE SKIP LOCKED). `__SCHEMA__` is the configured schema.
-- (filled in by the issue that builds it; an empty migration is a no-op)
SELECT 1;
