-- Events, groups, tokens and tidings' own secrets.

CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE groups (
    path TEXT PRIMARY KEY,
    name TEXT,
    created_ns INTEGER NOT NULL
);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    group_path TEXT NOT NULL,
    roles TEXT NOT NULL,
    name TEXT,
    subject TEXT,
    expires_ns INTEGER,
    created_ns INTEGER NOT NULL
);
CREATE INDEX tokens_group ON tokens (group_path);

-- position: the ingest order. AUTOINCREMENT never reuses a position, even
-- after retention deletes the newest rows, so cursors stay valid.
CREATE TABLE events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    group_path TEXT NOT NULL,
    id TEXT NOT NULL,
    source TEXT NOT NULL,
    type TEXT NOT NULL,
    subject TEXT,
    actor TEXT,
    time_ns INTEGER NOT NULL,
    stored_ns INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    attributes TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE UNIQUE INDEX events_source_id ON events (tenant, source, id);
CREATE INDEX events_tenant ON events (tenant, position);
CREATE INDEX events_type ON events (tenant, type, position);
CREATE INDEX events_id ON events (tenant, id);

-- One row per event and each group above it below the root, so that a
-- subtree is one ordered index range whatever the tree's shape.
CREATE TABLE event_scopes (
    scope TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (scope, position)
) WITHOUT ROWID;
