-- The transactional outbox: messages enqueued in the application's own transaction, then
-- published by relays. `__SCHEMA__` is the configured schema. See DESIGN.md, "Outbox".
--
-- Only a key's earliest pending row (its head) is claimable; a claim locks heads with
-- FOR UPDATE SKIP LOCKED and leases them (with the key's following rows) to one relay, so
-- several relays share the work without publishing a key out of order. A lease that runs
-- out (the relay died) makes the head claimable again.
CREATE TABLE __SCHEMA__.outbox_messages (
    seq             bigserial   PRIMARY KEY,
    message_id      text        NOT NULL,
    topic           text        NOT NULL,
    ordering_key    text,                  -- NULL = unordered: every such row is a head
    envelope        text        NOT NULL,  -- the Message as JSON, payload left out
    payload         bytea       NOT NULL,
    created_at      timestamptz NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT '-infinity',
    parked          boolean     NOT NULL DEFAULT false,
    leased_by       text,
    leased_until    timestamptz,
    published_at    timestamptz
);
-- The claim scan: pending rows in enqueue order.
CREATE INDEX outbox_pending ON __SCHEMA__.outbox_messages (seq) WHERE published_at IS NULL;
-- Whether a key has an earlier pending row, and a head's followers.
CREATE INDEX outbox_pending_by_key ON __SCHEMA__.outbox_messages (ordering_key, seq)
    WHERE published_at IS NULL AND ordering_key IS NOT NULL;
-- The retention purge.
CREATE INDEX outbox_published ON __SCHEMA__.outbox_messages (published_at)
    WHERE published_at IS NOT NULL;
