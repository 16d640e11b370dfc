-- tidings on PostgreSQL: the same concepts as on SQLite, laid out for many processes.
--
-- Events are partitioned by the day they were stored (stored_ns), so retention
-- drops whole partitions. Their ingest order is (tx, seq): the inserting
-- transaction's id, then a sequence number. A reader returns only rows whose
-- transaction is older than every ingest still running (ingest_horizon()), so a
-- cursor never passes an event that is yet to commit (sequence values, and
-- transaction ids, commit out of order).

CREATE TABLE secrets (
    name text PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE settings (
    name text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE groups (
    path text COLLATE "C" PRIMARY KEY,
    name text,
    created_ns bigint NOT NULL
);

CREATE TABLE tokens (
    id text PRIMARY KEY,
    secret_hash text NOT NULL UNIQUE,
    group_path text COLLATE "C" NOT NULL,
    roles text NOT NULL,
    name text,
    subject text,
    expires_ns bigint,
    created_ns bigint NOT NULL
);
CREATE INDEX tokens_group ON tokens (group_path);

CREATE SEQUENCE events_seq;

CREATE TABLE events (
    tx bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    seq bigint NOT NULL,
    tenant text COLLATE "C" NOT NULL,
    group_path text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    source text COLLATE "C" NOT NULL,
    type text COLLATE "C" NOT NULL,
    subject text COLLATE "C",
    actor text COLLATE "C",
    eventkey text COLLATE "C",
    roles_mask integer NOT NULL DEFAULT 0,
    time_ns bigint NOT NULL,
    stored_ns bigint NOT NULL,
    attributes text NOT NULL,
    data text NOT NULL,
    search_text text NOT NULL,
    payload text
) PARTITION BY RANGE (stored_ns);
CREATE INDEX events_order ON events (tenant, tx, seq);
CREATE INDEX events_type ON events (tenant, type, tx, seq);
CREATE INDEX events_actor ON events (tenant, actor, tx, seq);
CREATE INDEX events_eventkey ON events (tenant, eventkey, tx, seq) WHERE eventkey IS NOT NULL;
CREATE INDEX events_seq_index ON events (seq);
CREATE INDEX events_id ON events (tenant, id);
CREATE INDEX events_time ON events (tenant, time_ns);
CREATE INDEX events_search ON events USING gin (to_tsvector('simple'::regconfig, search_text));

-- (tenant, source, id) is unique: a unique index on the partitioned table would
-- have to contain the partition key, so the deduplication lives here, unpartitioned,
-- and retention deletes its rows with the events'.
CREATE TABLE event_ids (
    tenant text COLLATE "C" NOT NULL,
    source text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    stored_ns bigint NOT NULL,
    fingerprint text NOT NULL,
    PRIMARY KEY (tenant, source, id)
);
CREATE INDEX event_ids_stored ON event_ids (stored_ns);

-- The groups below the root that see each event (its ancestors and allowed groups').
CREATE TABLE event_scopes (
    scope text COLLATE "C" NOT NULL,
    tx bigint NOT NULL,
    seq bigint NOT NULL,
    stored_ns bigint NOT NULL
) PARTITION BY RANGE (stored_ns);
CREATE INDEX event_scopes_order ON event_scopes (scope, tx, seq);
CREATE INDEX event_scopes_seq ON event_scopes (seq);

CREATE TABLE subscriptions (
    id text COLLATE "C" PRIMARY KEY,
    group_path text COLLATE "C" NOT NULL,
    tenant text COLLATE "C" NOT NULL,
    kind text NOT NULL,
    sink text NOT NULL,
    types text NOT NULL,
    subject_prefix text,
    description text,
    state text NOT NULL,
    state_reason text,
    slack_username text,
    slack_icon text,
    signing_secret text,
    roles text NOT NULL,
    failing_since_ns bigint,
    created_ns bigint NOT NULL,
    updated_ns bigint NOT NULL
);
CREATE INDEX subscriptions_active ON subscriptions (group_path) WHERE state = 'active';
CREATE INDEX subscriptions_tenant ON subscriptions (tenant, group_path);

CREATE TABLE deliveries (
    id bigserial PRIMARY KEY,
    subscription_id text COLLATE "C" NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    event_seq bigint NOT NULL,
    event_stored_ns bigint NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    due_ns bigint NOT NULL,
    claim_token text,
    created_ns bigint NOT NULL,
    updated_ns bigint NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (due_ns) WHERE status = 'pending';
CREATE INDEX deliveries_subscription ON deliveries (subscription_id, id);
CREATE INDEX deliveries_event ON deliveries (event_stored_ns);

CREATE TABLE delivery_attempts (
    delivery_id bigint NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    number integer NOT NULL,
    started_ns bigint NOT NULL,
    status_code integer,
    latency_ms double precision NOT NULL,
    error text,
    response text,
    PRIMARY KEY (delivery_id, number)
);

CREATE TABLE signing_keys (
    kid text PRIMARY KEY,
    private_key bytea NOT NULL,
    public_jwk text NOT NULL,
    created_ns bigint NOT NULL,
    signs_from_ns bigint NOT NULL,
    retires_ns bigint
);

CREATE TABLE event_types (
    tenant text COLLATE "C" NOT NULL,
    type text COLLATE "C" NOT NULL,
    description text,
    schema text,
    example text,
    validation text,
    created_ns bigint NOT NULL,
    updated_ns bigint NOT NULL,
    PRIMARY KEY (tenant, type)
);

CREATE TABLE webhooks (
    id text PRIMARY KEY,
    tenant text COLLATE "C" NOT NULL,
    group_path text COLLATE "C" NOT NULL,
    name text NOT NULL,
    mapping text NOT NULL,
    key_hash text NOT NULL,
    rate_limit double precision NOT NULL,
    created_ns bigint NOT NULL
);
CREATE INDEX webhooks_tenant ON webhooks (tenant, group_path);

-- The ingest horizon: every event with tx below it is committed, and no event
-- below it can commit later. Each ingest transaction holds a shared advisory
-- lock (key 7160946) from its first statement, taken together with its
-- transaction id; the horizon is the oldest id among the holders. A holder
-- caught between the two (no id yet) makes the answer fall back to the oldest
-- transaction running anywhere, which is always safe. Other long transactions
-- on the server therefore do not hold back the audit log.
CREATE FUNCTION ingest_horizon() RETURNS bigint LANGUAGE sql STABLE AS $$
    WITH now AS (
        SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin,
               pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax
    ),
    holders AS (
        SELECT x.transactionid::text::bigint AS xid32
        FROM pg_locks a
        LEFT JOIN pg_locks x ON x.virtualtransaction = a.virtualtransaction
            AND x.locktype = 'transactionid' AND x.mode = 'ExclusiveLock' AND x.granted
        WHERE a.locktype = 'advisory' AND a.classid = 0 AND a.objid = 7160946 AND a.objsubid = 1
            AND a.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    )
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM holders WHERE xid32 IS NULL) THEN (SELECT xmin FROM now)
        ELSE coalesce(
            (SELECT min(
                -- widen the 32-bit id to the 64-bit one of the current epoch
                ((n.xmax >> 32) << 32) + h.xid32
                - CASE WHEN h.xid32 > (n.xmax & 4294967295) THEN 4294967296 ELSE 0 END)
             FROM holders h, now n),
            (SELECT xmax FROM now))
    END
$$;
