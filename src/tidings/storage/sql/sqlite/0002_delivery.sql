-- Subscriptions, their deliveries (the outbox) with every attempt, and the issuer's keys.

CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    group_path TEXT NOT NULL,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    sink TEXT NOT NULL,
    types TEXT NOT NULL,
    subject_prefix TEXT,
    description TEXT,
    state TEXT NOT NULL,
    state_reason TEXT,
    slack_username TEXT,
    slack_icon TEXT,
    signing_secret TEXT,
    roles TEXT NOT NULL,
    failing_since_ns INTEGER,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE INDEX subscriptions_group ON subscriptions (group_path) WHERE state = 'active';
CREATE INDEX subscriptions_tenant ON subscriptions (tenant, group_path);

-- One row per event and subscription. A pending delivery is due at due_ns;
-- a claimed one has a claim token and due_ns is the end of its lease, so a
-- claim whose worker died falls due again by itself.
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    event_position INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_ns INTEGER NOT NULL,
    claim_token TEXT,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (due_ns) WHERE status = 'pending';
CREATE INDEX deliveries_subscription ON deliveries (subscription_id, id);
CREATE INDEX deliveries_event ON deliveries (event_position);

CREATE TABLE delivery_attempts (
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    started_ns INTEGER NOT NULL,
    status_code INTEGER,
    latency_ms REAL NOT NULL,
    error TEXT,
    response TEXT,
    PRIMARY KEY (delivery_id, number)
) WITHOUT ROWID;

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    private_key BLOB NOT NULL,
    public_jwk TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    signs_from_ns INTEGER NOT NULL,
    retires_ns INTEGER
);
