-- Request records (src/store/record.rs), one row each. Request ids are any u64 above 0,
-- past BIGINT's range, hence NUMERIC(20, 0); it reads as the plain number in psql.
CREATE TABLE records (
    id NUMERIC(20, 0) PRIMARY KEY CHECK (id >= 1 AND id <= 18446744073709551615),
    filename TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('draft', 'pending', 'progress', 'done', 'failed', 'cancelled')),
    -- Hex SHA-256 of the request's secret key; the key itself is never stored.
    key_sha256 TEXT NOT NULL,
    -- When logins stop; NULL: no expiry.
    expires_at TIMESTAMPTZ,
    -- The operator's expiry, a ceiling for the customer's request_sftp_access.
    operator_expires_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- A record's authorized_keys text, one row per line in order, so that it reads back
-- byte for byte (comments and blank lines included) and is replaced in the same
-- transaction as the record. No rows: no keys.
CREATE TABLE record_keys (
    record_id NUMERIC(20, 0) NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (record_id, position)
);
