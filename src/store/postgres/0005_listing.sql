-- The operator's paged listing (GET /v1/requests?after=&state=&updated_since=) reads
-- records in id order from an id on: the primary key serves that alone. These serve its
-- filters: records of one state in id order straight from the index, and records updated
-- since a time without reading the others.
CREATE INDEX records_state_id ON records (state, id);
CREATE INDEX records_updated_at ON records (updated_at);
