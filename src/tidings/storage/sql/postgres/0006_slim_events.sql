-- Slimmer events rows. A page of a sparse filter (a rare type in a subtree) reads one heap page
-- per event, and at 10,000,000 events the events heap (1.6 KB a row, 16.5 GB) did not fit in a
-- machine's page cache beside the index pages that pages read: how much of it did decided the
-- p99 of such pages.
--
-- `attributes`, the CloudEvents JSON of the attributes (490 bytes an event in the benchmark),
-- repeated what the columns hold. New rows keep only what no column holds: `extras` (the
-- audience and the extensions, as JSON) and `time_digits` (the fractional digits `time` is
-- shown with); readers compose the attributes from the columns (wire.compose_attributes). Rows
-- stored before this migration keep their `attributes` text, which readers take as it is, until
-- retention drops their days.
--
-- Nothing is rewritten and no lock is held for long. Processes of the previous version cannot
-- read the rows written without the text: replace every API process and worker at once.
ALTER TABLE events ALTER COLUMN attributes DROP NOT NULL;
ALTER TABLE events ADD COLUMN extras text, ADD COLUMN time_digits smallint;
