-- The event outbox (src/store/outbox.rs). One row per request that ever had an event:
-- its last sequence number (never reused), how many events wait, when delivery is due
-- (the backoff after failures) and who holds the delivery claim until when (the
-- database's clock). The claim is a plain row, taken with FOR UPDATE SKIP LOCKED, so any
-- node may deliver and never two at once (no session advisory locks).
CREATE SEQUENCE outbox_claim;
CREATE TABLE outbox_requests (
    request_id NUMERIC(20, 0) PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    pending INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    claim BIGINT,
    claimed_by TEXT,
    claimed_until TIMESTAMPTZ
);
CREATE INDEX outbox_requests_due ON outbox_requests (due_at) WHERE pending > 0;

-- The events waiting, each body exactly as it is signed and POSTed.
CREATE TABLE outbox_events (
    request_id NUMERIC(20, 0) NOT NULL,
    seq BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (request_id, seq)
);

-- The last expiry of each request that an access-expired event was stored for, written
-- in the same transaction as that event: one event per expiry, whichever node sees it.
CREATE TABLE outbox_expiries (
    request_id NUMERIC(20, 0) PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);

-- Expiries are looked for every second (access-expired events).
CREATE INDEX records_expires_at ON records (expires_at) WHERE expires_at IS NOT NULL;
