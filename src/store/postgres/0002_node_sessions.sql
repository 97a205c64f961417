-- The live SSH sessions of each running node, so that every node's operator API shows
-- those of all nodes. One row per node process (`instance`: random per start, so that
-- two nodes with one --node-name, or a restarted node, never overwrite each other),
-- rewritten by its node every few seconds in one statement; rows whose heartbeat is
-- older than a few periods are ignored, and removed by the next node that writes.
CREATE TABLE node_sessions (
    instance TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    -- [{"request_id": N, "sessions": N, "peers": ["ip:port", ...]}, ...]
    sessions JSONB NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL
);
