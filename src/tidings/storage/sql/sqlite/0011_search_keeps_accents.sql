-- The full-text index keeps accents, as PostgreSQL's does: with unicode61's default
-- (remove_diacritics 1) `q=cafe` found "café" on SQLite and not on PostgreSQL, and `q=é` found
-- every word beginning with "e". The index is copied into a new table (its text as stored,
-- tokenized anew) under the write lock: on a large file, plan the upgrade for a quiet moment.
CREATE VIRTUAL TABLE events_text_accents USING fts5 (text, tokenize = 'unicode61 remove_diacritics 0');
INSERT INTO events_text_accents (rowid, text) SELECT rowid, text FROM events_text;
DROP TABLE events_text;
ALTER TABLE events_text_accents RENAME TO events_text;
