-- Upload leases (src/store/lease.rs): the node that may write a request's upload, under a
-- fencing number that changes with every acquisition, until expires_at (the database's
-- clock). No foreign key to records: a lease may outlive a deleted record for its TTL.
CREATE SEQUENCE lease_fence;
CREATE TABLE leases (
    request_id NUMERIC(20, 0) PRIMARY KEY,
    node TEXT NOT NULL,
    fence BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
