-- Scope rows keyed by numbers: each group path and event type they name is interned once
-- in `interned`, and a scope row holds its numbers. Two integers compare and pack far better
-- than two texts of 40 to 100 characters: writing a batch's scope rows costs about a third
-- of what it did (see tidings/storage/sqlite_scopes.py). The table is rewritten whole, under
-- the write lock: on a large file, plan the upgrade for a quiet moment.
CREATE TABLE interned (
    id INTEGER PRIMARY KEY,
    text TEXT NOT NULL UNIQUE
);
INSERT INTO interned (text) SELECT scope FROM event_scopes UNION SELECT type FROM event_scopes WHERE type IS NOT NULL;
CREATE TABLE event_scopes_interned (
    scope INTEGER NOT NULL,
    position INTEGER NOT NULL,
    type INTEGER,
    PRIMARY KEY (scope, position)
) WITHOUT ROWID;
INSERT INTO event_scopes_interned (scope, position, type)
SELECT g.id, s.position, t.id FROM event_scopes s
JOIN interned g ON g.text = s.scope
LEFT JOIN interned t ON t.text = s.type
ORDER BY 1, 2;
DROP TABLE event_scopes;
ALTER TABLE event_scopes_interned RENAME TO event_scopes;
CREATE INDEX event_scopes_type ON event_scopes (scope, type, position);
