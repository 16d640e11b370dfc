-- Retention deletes events by the time they were stored.
CREATE INDEX events_stored ON events (stored_ns);
