-- Nothing reads event_scopes by seq alone any more: a subtree's check of one event
-- gives the whole key of event_scopes_order (scope, tx, seq) and the partition key,
-- and retention deletes the boundary day's scope rows by stored_ns. One index less
-- to write for each scope row an ingest adds, and one less to hold in memory.
DROP INDEX IF EXISTS event_scopes_seq;
--
-- During a rolling upgrade, processes of the previous version still look an event
-- up by scope and seq alone (a subtree's GET of one event, retention's boundary
-- day): still correct without this index, but a scan of the scope's rows. Upgrade
-- the API processes soon after migrating.
