-- Scope rows are written after the events, in batches, by the scope indexer
-- (see tidings/storage/sqlite_scopes.py): this mark is the last position it has
-- indexed. Every event stored so far has its scope rows.
INSERT INTO settings (name, value)
SELECT 'scopes:indexed', CAST(COALESCE(MAX(position), 0) AS TEXT) FROM events;
