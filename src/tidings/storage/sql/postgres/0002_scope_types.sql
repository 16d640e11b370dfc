-- A subtree's page of one type. Its scope rows are in (scope, tx, seq) order, but
-- the type is the event's: a rare type in a big subtree made a page walk the
-- subtree's order, looking up every row's event to test it (17,000 lookups a
-- page for a type of 0.6% of the events: 0.8 s at 1,000,000 events). The scope
-- rows now carry their event's type (it never changes), so (scope, type, tx, seq)
-- yields such a page in order.
--
-- ADD COLUMN locks event_scopes until this migration commits, so no ingest can
-- slip a row between the backfill and the trigger. The backfill rewrites every
-- scope row once: on a big database, run `tidings migrate` at a quiet time.
ALTER TABLE event_scopes ADD COLUMN type text COLLATE "C";

-- Processes of the previous version, still running during a rolling upgrade,
-- insert scope rows without the type: it is looked up from their event, which
-- ingest inserts just before them in the same transaction.
CREATE FUNCTION event_scopes_type() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT e.type INTO NEW.type FROM events e WHERE e.seq = NEW.seq AND e.stored_ns = NEW.stored_ns;
    RETURN NEW;
END
$$;
CREATE TRIGGER event_scopes_type BEFORE INSERT ON event_scopes
    FOR EACH ROW WHEN (NEW.type IS NULL) EXECUTE FUNCTION event_scopes_type();

UPDATE event_scopes s SET type = e.type FROM events e
    WHERE e.seq = s.seq AND e.stored_ns = s.stored_ns AND s.type IS NULL;
CREATE INDEX event_scopes_type ON event_scopes (scope, type, tx, seq);
