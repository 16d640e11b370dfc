-- Visibility by role, Cloudforet's event keys, full-text search, tenant event
-- types and inbound webhooks.

-- Roles allowed to see an event, as a bit mask (0: every role).
ALTER TABLE events ADD COLUMN roles_mask INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN eventkey TEXT;
CREATE INDEX events_eventkey ON events (tenant, eventkey, position) WHERE eventkey IS NOT NULL;
CREATE INDEX events_actor ON events (tenant, actor, position);
CREATE INDEX events_time ON events (tenant, time_ns);
CREATE INDEX events_group ON events (tenant, group_path);

-- The payload an inbound webhook received, kept beside the event it became.
CREATE TABLE event_payloads (
    position INTEGER PRIMARY KEY,
    payload TEXT NOT NULL
);

-- The searchable text of each event (type, subject, actor, description, body); rowid = position.
CREATE VIRTUAL TABLE events_text USING fts5 (text, tokenize = 'unicode61');

CREATE TABLE event_types (
    tenant TEXT NOT NULL,
    type TEXT NOT NULL,
    description TEXT,
    schema TEXT,
    example TEXT,
    validation TEXT,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    PRIMARY KEY (tenant, type)
);

CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    group_path TEXT NOT NULL,
    name TEXT NOT NULL,
    mapping TEXT NOT NULL,
    key_hash TEXT NOT NULL,
    rate_limit REAL NOT NULL,
    created_ns INTEGER NOT NULL
);
CREATE INDEX webhooks_tenant ON webhooks (tenant, group_path);
