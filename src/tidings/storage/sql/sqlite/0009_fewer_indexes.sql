-- Fewer indexes on events: every index an ingest's group commit touches at a page
-- no other event of the group shares costs the commit a 4 KiB WAL frame, and one
-- more copy at the checkpoint.
--
-- The lookup by id and the uniqueness of (tenant, source, id) share one index.
DROP INDEX events_id;
DROP INDEX events_source_id;
CREATE UNIQUE INDEX events_id_source ON events (tenant, id, source);
-- Lists by type read (tenant, type, position); stats by type read the time and the
-- roles from the same entries, so they never touch the table.
DROP INDEX events_type;
DROP INDEX events_stats_type;
CREATE INDEX events_type ON events (tenant, type, position, time_ns, roles_mask);
-- Stats per group read the group from the time index (events mostly arrive in time
-- order, so it is mostly appended to and cheap to keep), instead of an index by group
-- that needed each row for its roles.
DROP INDEX events_group;
DROP INDEX events_stats_time;
CREATE INDEX events_time ON events (tenant, time_ns, roles_mask, group_path);
