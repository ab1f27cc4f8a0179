-- Claim-check blobs: payloads too large to travel in a message, stored once under an id
-- the message carries. See DESIGN.md, "Blobs".
CREATE TABLE blobs (
    blob_id      TEXT    NOT NULL PRIMARY KEY,
    content_type TEXT    NOT NULL,
    data         BLOB    NOT NULL,
    created_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX blobs_by_created_at ON blobs (created_at);
