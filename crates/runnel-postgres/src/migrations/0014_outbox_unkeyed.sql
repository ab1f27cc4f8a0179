-- The outbox claim finds heads with a skip scan over `outbox_pending_by_key` (one probe per
-- pending key) instead of testing every pending row; unkeyed rows, each its own head, are
-- found in `seq` order through this index without passing the keyed rows. See DESIGN.md,
-- "Outbox".
CREATE INDEX outbox_pending_unkeyed ON __SCHEMA__.outbox_messages (seq)
    WHERE published_at IS NULL AND ordering_key IS NULL;
