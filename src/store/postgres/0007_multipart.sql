-- The S3 multipart uploads of requests' files (src/store/multipart.rs): for each request
-- and object ('upload', 'upgraded', 'filepart') at most one current upload, and the parts committed
-- to it. `parts` is the part count: add_part raises it and inserts the part in one
-- statement, conditional on the upload id and on the count being the part's number
-- minus one, so that of two nodes recording the same part exactly one does (the row lock
-- of the UPDATE decides). Deleting the record deletes its uploads and their parts
-- (ON DELETE CASCADE) in the delete's own transaction; replacing an upload deletes the
-- old row, and its parts go with it.
CREATE TABLE multipart_uploads (
    request_id NUMERIC(20, 0) NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    object TEXT NOT NULL CHECK (object IN ('upload', 'upgraded', 'filepart')),
    upload_id TEXT NOT NULL,
    key TEXT NOT NULL,
    started TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- S3 allows 10,000 parts per upload.
    parts INTEGER NOT NULL DEFAULT 0 CHECK (parts >= 0 AND parts <= 10000),
    PRIMARY KEY (request_id, object),
    -- The parts' foreign key: a part belongs to one upload id, not just to the object.
    UNIQUE (request_id, object, upload_id)
);

CREATE TABLE multipart_parts (
    request_id NUMERIC(20, 0) NOT NULL,
    object TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    number INTEGER NOT NULL CHECK (number >= 1 AND number <= 10000),
    -- As S3 answered it, quotes included.
    etag TEXT NOT NULL,
    size BIGINT NOT NULL CHECK (size >= 0),
    PRIMARY KEY (request_id, object, number),
    FOREIGN KEY (request_id, object, upload_id)
        REFERENCES multipart_uploads (request_id, object, upload_id) ON DELETE CASCADE
);
