-- The full-text index is written after the events, in batches, by the search indexer
-- (see tidings/storage/sqlite_search.py): this mark is the last position it has indexed.
-- Every event stored so far was indexed with it.
INSERT INTO settings (name, value)
SELECT 'search:indexed', CAST(COALESCE(MAX(position), 0) AS TEXT) FROM events;
