-- Nothing reads event_scopes by seq alone any more: a subtree's check of one event
-- gives the whole key of event_scopes_order (scope, tx, seq) and the partition key,
-- and retention deletes the boundary day's scope rows by stored_ns. One index less
-- to write for each scope row an ingest adds, and one less to hold in memory.
DROP INDEX IF EXISTS event_scopes_seq;
