-- The ingest horizon, corrected, and as a PL/pgSQL function.
--
-- The correction. A holder's transaction id comes from pg_locks in 32 bits, and was widened to
-- 64 bits in the epoch of the snapshot's xmax, less one epoch when it was above xmax's low bits.
-- But xmax is one past the latest transaction to *end*: a transaction still running may have an
-- id at or above it (any ingest that began after another transaction, of any kind, that is
-- still running; or one that got its id after the reader's snapshot). Such an ingest's id was
-- taken for the previous epoch: the horizon fell 2^32 below every event, and readers saw an
-- empty audit log until the older transactions ended. An id is now widened to the 64-bit
-- value nearest xmax (running transactions lie within 2^31 of it, or the server would have
-- stopped for wraparound); this also holds across an epoch boundary, where the old widening
-- was off by one epoch.

-- The function. A SQL function whose body cannot be inlined (this one has CTEs) is planned
-- anew at every call: `SELECT ingest_horizon()`, read before every list page, took 0.6 ms on a
-- slow day, against 0.05 for `SELECT 1`. PL/pgSQL keeps its statement's plan for the session:
-- 0.15 ms. Being STABLE, it reads the caller's snapshot, as the SQL function did.
--
-- Processes of the previous version call the same function: no restart is needed.
CREATE OR REPLACE FUNCTION ingest_horizon() RETURNS bigint LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
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
                    -- the 64-bit id whose low 32 bits are the holder's, nearest xmax
                    n.xmax - 2147483648
                    + ((h.xid32 - (n.xmax & 4294967295) + 2147483648) % 4294967296 + 4294967296)
                      % 4294967296)
                 FROM holders h, now n),
                (SELECT xmax FROM now))
        END
    );
END
$$;
