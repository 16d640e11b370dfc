-- Scope rows keyed by numbers: each group path and event type they name is interned once in
-- `interned`, and a scope row holds its numbers (as on SQLite). Two integers index far more
-- compactly than two texts of 40 to 100 characters: the scope rows' two indexes shrink to
-- about a third, and writing a batch of 100 events costs the database 5 to 9 us an event less.
--
-- Numbers are never reused nor deleted, so processes keep the ones they have looked up.
-- They intern new texts in transactions of their own, before an ingest, in text order.
--
-- ALTER COLUMN TYPE rewrites every scope row and rebuilds the scope indexes, holding the table
-- locked until the migration commits: on a big database, run `tidings migrate` at a quiet
-- time. Processes of the previous version cannot write scope rows afterwards: stop their
-- API processes before migrating, then start the new version's.
CREATE TABLE interned (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    text text COLLATE "C" NOT NULL UNIQUE
);
INSERT INTO interned (text)
    SELECT scope FROM event_scopes UNION SELECT type FROM event_scopes WHERE type IS NOT NULL
    ORDER BY 1;

CREATE FUNCTION interned_id(name text) RETURNS integer LANGUAGE sql STABLE
    AS $$ SELECT id FROM interned WHERE text = name $$;

DROP TRIGGER event_scopes_type ON event_scopes;
DROP FUNCTION event_scopes_type();
ALTER TABLE event_scopes
    ALTER COLUMN scope TYPE integer USING interned_id(scope),
    ALTER COLUMN type TYPE integer USING interned_id(type);
DROP FUNCTION interned_id(text);
