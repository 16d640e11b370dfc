-- A subtree's events of one type are one index range: the scope rows carry the event's type.
ALTER TABLE event_scopes ADD COLUMN type TEXT;
UPDATE event_scopes SET type = (SELECT e.type FROM events e WHERE e.position = event_scopes.position);
CREATE INDEX event_scopes_type ON event_scopes (scope, type, position);
