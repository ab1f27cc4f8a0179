-- Claim-check blobs: payloads too large to travel in a message, stored once under an id
-- the message carries. See DESIGN.md, "Blobs".
CREATE TABLE __SCHEMA__.blobs (
    blob_id      text        PRIMARY KEY,
    content_type text        NOT NULL,
    data         bytea       NOT NULL,
    created_at   timestamptz NOT NULL
);
CREATE INDEX blobs_by_created_at ON __SCHEMA__.blobs (created_at);
