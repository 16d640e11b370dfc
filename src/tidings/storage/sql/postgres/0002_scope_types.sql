-- A subtree's page of one type. Its scope rows are in (scope, tx, seq) order, but
-- the type is the event's: a rare type in a big subtree made a page walk the
-- subtree's order, looking up every row's event to test it (17,000 lookups a
-- page for a type of 0.6% of the events: 0.8 s at 1,000,000 events). The scope
-- rows now carry their event's type (it never changes), so (scope, type, tx, seq)
-- yields such a page in order. Rows stored before this migration get theirs here.
ALTER TABLE event_scopes ADD COLUMN type text COLLATE "C";
UPDATE event_scopes s SET type = e.type FROM events e
    WHERE e.seq = s.seq AND e.stored_ns = s.stored_ns AND s.type IS NULL;
CREATE INDEX event_scopes_type ON event_scopes (scope, type, tx, seq);
