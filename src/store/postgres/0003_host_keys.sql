-- The host key every node presents, one row per key algorithm, recorded by the first node
-- that started with it: a node whose key of a recorded algorithm differs refuses to start
-- (clients would see the key change from one connection to the next).
CREATE TABLE host_keys (
    algorithm TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    recorded_by TEXT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
