"""The PostgreSQL backend: many API and worker processes on one database.

psycopg 3 with an async connection pool. Workers claim deliveries with
`FOR UPDATE SKIP LOCKED` under a lease, and `LISTEN/NOTIFY` wakes them as soon
as an ingest queues work. Events are partitioned by day; see the schema for how
the ingest order stays safe for cursors while many processes write at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import structlog
from psycopg import AsyncConnection, errors

from tidings import groups
from tidings.catalog import EventType
from tidings.errors import Conflict
from tidings.model import (
    AttemptResult,
    Claim,
    Delivery,
    EventInput,
    EventQuery,
    Group,
    Ingested,
    SigningKey,
    StoredEvent,
    Subscription,
    Token,
    Webhook,
)
from tidings.storage import postgres_delivery as deliveries
from tidings.storage import postgres_paging
from tidings.storage.base import Storage
from tidings.storage.migrations import migration_files
from tidings.storage.postgres_events import (
    WAKE_CHANNEL,
    Key,
    PostgresEventSQL,
    StaleKeys,
    begin_ingest,
    drop_stale_key,
    event_from_row,
    ingest,
    scope_texts,
    unpack,
    with_horizon,
)
from tidings.storage.postgres_interned import Interned
from tidings.storage.postgres_partitions import (
    count_days_before,
    day_of,
    drop_days_before,
    ensure_partitions,
)
from tidings.storage.postgres_pipelined import pipelined
from tidings.storage.postgres_pool import LastInFirstOutPool
from tidings.storage.rows import (
    EVENT_TYPE_COLUMNS,
    SIGNING_KEY_COLUMNS,
    TOKEN_COLUMNS,
    UPSERT_EVENT_TYPE,
    WEBHOOK_COLUMNS,
    event_type_from_row,
    event_type_values,
    placeholders,
    signing_key_from_row,
    signing_key_values,
    subscription_update,
    token_from_row,
    token_values,
    webhook_from_row,
    webhook_values,
)

T = TypeVar("T")
CONNECT_TIMEOUT_S = 30.0  # the longest a process waits for its first connection
log = structlog.get_logger("tidings.postgres")
MIGRATION_LOCK = 7_160_946_001  # pg_advisory_xact_lock key of tidings' migrations
DAYS_AHEAD = (
    1  # housekeeping runs hourly, so tomorrow's partitions exist long before they are needed
)


class PostgresStorage(Storage):
    """Storage in a PostgreSQL database (the schema on the URL's search_path)."""

    def __init__(self, url: str, min_size: int = 2, max_size: int = 16):
        self.url = url
        # Autocommit: `_run` makes its transactions itself, and `_run_pipelined` sends its own
        # BEGIN and COMMIT along with its statements.
        self._pool = LastInFirstOutPool(
            url, min_size=min_size, max_size=max_size, open=False, kwargs={"autocommit": True}
        )
        self._partition_days: set[int] = set()
        self._interned = Interned()
        self._partition_lock = asyncio.Lock()

    async def _run(self, work: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run `work` in one transaction on a pooled connection."""
        async with self._pool.connection() as conn, conn.transaction():
            return await work(conn)

    async def _read(self, work: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run `work` on a pooled connection outside a transaction: each statement sees what
        committed before it began (no BEGIN and COMMIT to wait for)."""
        async with self._pool.connection() as conn:
            return await work(conn)

    async def _run_pipelined(self, work: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        """`_run` in pipeline mode, on a pooled connection (see `pipelined`)."""
        async with self._pool.connection() as conn:
            return await pipelined(conn, work)

    async def open(self) -> None:
        await self._check_reachable()
        await self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        try:
            await self.migrate()
            await self.maintain(time.time_ns())
        except BaseException:  # the caller closes only what opened
            await self._pool.close()
            raise

    async def _check_reachable(self) -> None:
        """Make one connection before the pool opens: a database that cannot be reached fails
        at once with the driver's reason (refused, unknown host, bad password), where the pool
        retries for its whole timeout, warning at every try, and then says only that it timed
        out. Processes start after `tidings migrate` has reached the database, and a supervisor
        restarts them (docs/deploy.md)."""
        try:
            conn = await asyncio.wait_for(AsyncConnection.connect(self.url), CONNECT_TIMEOUT_S)
        except TimeoutError as exc:
            raise errors.OperationalError(
                f"no connection to the database within {CONNECT_TIMEOUT_S:.0f} s"
            ) from exc
        await conn.close()

    async def close(self) -> None:
        await self._pool.close()

    async def migrate(self) -> list[str]:
        async def apply(conn: AsyncConnection[Any]) -> list[str]:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_ns bigint NOT NULL)"
            )
            cursor = await conn.execute("SELECT name FROM schema_migrations")
            done = {row[0] for row in await cursor.fetchall()}
            applied = []
            for name, script in migration_files("postgres"):
                if name not in done:
                    await conn.execute(script.encode())
                    await conn.execute(
                        "INSERT INTO schema_migrations VALUES (%s, %s)", (name, time.time_ns())
                    )
                    applied.append(name)
            return applied

        if not self._pool.closed:
            return await self._run(apply)
        async with await AsyncConnection.connect(self.url) as conn, conn.transaction():
            return await apply(conn)

    async def maintain(self, now_ns: int) -> None:
        """Make sure the partitions of today and the coming days exist."""
        today = day_of(now_ns)
        await self._ensure_days(today, today + DAYS_AHEAD)

    async def _ensure_days(self, first: int, last: int) -> None:
        wanted = set(range(first, last + 1))
        if wanted <= self._partition_days:
            return
        async with self._partition_lock:
            await self._run(lambda conn: ensure_partitions(conn, first, last))
            self._partition_days |= wanted

    async def ready(self) -> bool:
        try:

            async def check(conn: AsyncConnection[Any]) -> bool:
                cursor = await conn.execute("SELECT name FROM schema_migrations")
                done = {row[0] for row in await cursor.fetchall()}
                return all(name in done for name, _ in migration_files("postgres"))

            return await self._run(check)
        except Exception:
            return False

    async def secret(self, name: str, length: int = 32) -> bytes:
        async def get_or_make(conn: AsyncConnection[Any]) -> bytes:
            await conn.execute(
                "INSERT INTO secrets (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                (name, secrets.token_bytes(length)),
            )
            cursor = await conn.execute("SELECT value FROM secrets WHERE name = %s", (name,))
            row = await cursor.fetchone()
            assert row is not None
            return bytes(row[0])

        return await self._run(get_or_make)

    # Events

    async def ingest(self, events: Sequence[EventInput], now_ns: int) -> list[Ingested]:
        numbers = await self._ready_to_ingest(events, now_ns)
        return await self._ingesting(
            lambda: self._run_pipelined(lambda conn: ingest(conn, events, now_ns, numbers))
        )

    async def _ingesting(self, run: Callable[[], Awaitable[T]]) -> T:
        """Run an ingest transaction; when it meets keys whose events retention has dropped
        (StaleKeys), delete those keys, each in a statement of its own, and run it again.

        While retention deletes a day's events in batches, each run may meet other stale keys:
        it goes on while every run meets new ones (so at most once more than the keys a batch
        holds), and gives up only when a key it deleted comes back stale."""
        deleted: set[Key] = set()
        while True:
            try:
                return await run()
            except StaleKeys as stale:
                again = deleted.intersection(stale.keys)
                if again:
                    raise RuntimeError(
                        f"keys {sorted(again)} were stale again after being deleted"
                    ) from stale
                async with self._pool.connection() as conn:  # autocommit
                    for key in stale.keys:
                        await drop_stale_key(conn, key)
                deleted.update(stale.keys)

    async def _ready_to_ingest(
        self, events: Sequence[EventInput], now_ns: int
    ) -> Mapping[str, int]:
        """Make the partitions of `now_ns`'s day and intern what the events' scope rows name,
        each in transactions of their own; return the interned numbers."""
        day = day_of(now_ns)
        await self._ensure_days(day, day)
        return await self._interned.numbers(self._pool, scope_texts(events))

    async def _rows(
        self, query: str, params: Sequence[Any] | Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        async def fetch(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cursor = await conn.execute(query, params)
            return [tuple(row) for row in await cursor.fetchall()]

        return await self._run(fetch)

    async def _event_query(
        self, build: Callable[[PostgresEventSQL], tuple[str, list[Any]]]
    ) -> list[tuple[Any, ...]]:
        """Run an event query below the ingest horizon, read first in a statement of its own."""

        async def fetch(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            sql, params = build(await with_horizon(conn))
            cursor = await conn.execute(sql, params)
            return [tuple(row) for row in await cursor.fetchall()]

        return await self._run(fetch)

    async def list_events(self, query: EventQuery) -> list[StoredEvent]:
        return [
            event_from_row(row)
            for row in await self._read(
                lambda conn: postgres_paging.list_page(conn, query, self._interned)
            )
        ]

    async def count_events(self, query: EventQuery) -> int:
        return int((await self._event_query(lambda sql: sql.count_sql(query)))[0][0])

    async def event_stats(
        self, query: EventQuery, group_by: Sequence[str], interval: str | None
    ) -> list[tuple[Any, ...]]:
        return await self._event_query(lambda sql: sql.stats_sql(query, group_by, interval))

    async def event_payload(self, position: int) -> str | None:
        rows = await self._rows("SELECT payload FROM events WHERE seq = %s", (unpack(position)[1],))
        return None if not rows or rows[0][0] is None else str(rows[0][0])

    async def find_events(
        self, scope: str, event_id: str, source: str | None, limit: int, viewer_roles: int = 15
    ) -> list[StoredEvent]:
        sql, params = PostgresEventSQL().find_sql(scope, event_id, source, viewer_roles, limit)
        return sorted(
            (event_from_row(row) for row in await self._rows(sql, params)), key=lambda e: e.position
        )

    async def expire(self, before_ns: int, batch: int = 10_000) -> int:
        """Delete events stored before `before_ns` with their deliveries; return how many events.

        Whole days go by dropping their partitions, whatever the table's size; the
        rest of the boundary day, and the unpartitioned rows, go in batches of `batch`.
        """
        cutoff_day = day_of(before_ns)

        async def whole_days(conn: AsyncConnection[Any]) -> int:
            counted = await count_days_before(conn, "events", cutoff_day)
            await drop_days_before(conn, cutoff_day)
            return counted

        deleted = await self._run(whole_days)
        self._partition_days = {day for day in self._partition_days if day >= cutoff_day}
        # The boundary day's scope rows go first (an event whose scope rows are gone is one
        # being expired). ctid is per partition: the outer test keeps each batch to the rows
        # meant, whichever partition a ctid is found in.
        await self._delete_in_batches(
            "WITH gone AS (DELETE FROM event_scopes WHERE stored_ns < %(before)s AND ctid = ANY(ARRAY("
            "SELECT ctid FROM event_scopes WHERE stored_ns < %(before)s LIMIT %(batch)s)) RETURNING 1)"
            " SELECT count(*) FROM gone",
            before_ns,
            batch,
        )
        deleted += await self._delete_in_batches(
            "WITH gone AS (DELETE FROM events WHERE (stored_ns, seq) IN (SELECT stored_ns, seq FROM events"
            " WHERE stored_ns < %(before)s LIMIT %(batch)s) RETURNING 1) SELECT count(*) FROM gone",
            before_ns,
            batch,
        )
        for table, column in (("event_ids", "stored_ns"), ("deliveries", "event_stored_ns")):
            await self._delete_in_batches(
                f"WITH gone AS (DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table}"
                f" WHERE {column} < %(before)s LIMIT %(batch)s)) RETURNING 1) SELECT count(*) FROM gone",
                before_ns,
                batch,
            )
        return deleted

    async def _delete_in_batches(self, statement: str, before_ns: int, batch: int) -> int:
        """Run a deleting statement (which answers its count) until it deletes less than a batch."""
        total = 0
        while True:
            rows = await self._rows(statement, {"before": before_ns, "batch": batch})
            total += int(rows[0][0])
            if rows[0][0] < batch:
                return total

    async def watch(self, wake: Callable[[], None], stop: asyncio.Event) -> None:
        """Call `wake` whenever an ingest queues deliveries (LISTEN/NOTIFY), until `stop`."""
        while not stop.is_set():
            try:
                async with await AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {WAKE_CHANNEL}")
                    wake()  # anything queued while nobody listened
                    while not stop.is_set():
                        async for _ in conn.notifies(timeout=0.5):
                            wake()
            except Exception:
                log.warning("listening for deliveries failed; retrying", exc_info=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)

    # Groups and tokens

    async def create_group(self, group: Group) -> None:
        async def insert(conn: AsyncConnection[Any]) -> None:
            try:
                await conn.execute(
                    "INSERT INTO groups (path, name, created_ns) VALUES (%s, %s, %s)",
                    (group.path, group.name, group.created_ns),
                )
            except errors.UniqueViolation as exc:
                raise Conflict(f"group {group.path!r} exists") from exc

        await self._run(insert)

    async def get_group(self, path: str) -> Group | None:
        rows = await self._rows(
            "SELECT path, name, created_ns FROM groups WHERE path = %s", (path,)
        )
        return Group(path=rows[0][0], name=rows[0][1], created_ns=rows[0][2]) if rows else None

    async def create_token(self, token: Token) -> None:
        await self._rows(
            f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING 1",
            token_values(token),
        )

    async def token_by_hash(self, secret_hash: str) -> Token | None:
        rows = await self._rows(
            f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE secret_hash = %s", (secret_hash,)
        )
        return token_from_row(rows[0]) if rows else None

    async def list_tokens(self, scope: str) -> list[Token]:
        low, high = groups.subtree_bounds(scope)
        rows = await self._rows(
            f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE group_path = %s OR (group_path >= %s AND group_path < %s)"
            " ORDER BY created_ns, id",
            (scope, low, high),
        )
        return [token_from_row(row) for row in rows]

    async def delete_token(self, scope: str, token_id: str) -> bool:
        low, high = groups.subtree_bounds(scope)
        rows = await self._rows(
            "DELETE FROM tokens WHERE id = %s AND (group_path = %s OR (group_path >= %s AND group_path < %s))"
            " RETURNING 1",
            (token_id, scope, low, high),
        )
        return bool(rows)

    # Settings and keys

    async def setting(self, name: str, default: str | None = None) -> str | None:
        if default is not None:
            await self._rows(
                "INSERT INTO settings (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING RETURNING 1",
                (name, default),
            )
        rows = await self._rows("SELECT value FROM settings WHERE name = %s", (name,))
        return str(rows[0][0]) if rows else None

    async def put_setting(self, name: str, value: str) -> None:
        await self._rows(
            "INSERT INTO settings (name, value) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value RETURNING 1",
            (name, value),
        )

    async def signing_keys(self) -> list[SigningKey]:
        rows = await self._rows(
            f"SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys ORDER BY created_ns, kid", ()
        )
        return [signing_key_from_row(row) for row in rows]

    async def add_signing_key(self, key: SigningKey, retire_others_ns: int | None) -> None:
        async def add(conn: AsyncConnection[Any]) -> None:
            if retire_others_ns is not None:
                await conn.execute(
                    "UPDATE signing_keys SET retires_ns = %s WHERE retires_ns IS NULL",
                    (retire_others_ns,),
                )
            await conn.execute(
                f"INSERT INTO signing_keys ({SIGNING_KEY_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                signing_key_values(key),
            )

        await self._run(add)

    async def remove_retired_keys(self, now_ns: int) -> int:
        rows = await self._rows(
            "DELETE FROM signing_keys WHERE retires_ns IS NOT NULL AND retires_ns <= %s RETURNING 1",
            (now_ns,),
        )
        return len(rows)

    # Subscriptions and deliveries

    async def create_subscription(
        self, sub: Subscription, events: Sequence[EventInput], now_ns: int
    ) -> list[Ingested]:
        numbers = await self._ready_to_ingest(events, now_ns)

        async def create(conn: AsyncConnection[Any]) -> list[Ingested]:
            await begin_ingest(conn)
            await deliveries.insert_subscription(conn, sub)
            return await ingest(conn, events, now_ns, numbers)

        return await self._ingesting(lambda: self._run(create))

    async def update_subscription(self, sub: Subscription, fields: Collection[str]) -> None:
        sql, values = subscription_update(sub, fields, "%s")
        await self._rows(sql + " RETURNING 1", values)

    async def delete_subscription(
        self, sub_id: str, events: Sequence[EventInput], now_ns: int
    ) -> list[Ingested] | None:
        numbers = await self._ready_to_ingest(events, now_ns)

        async def delete(conn: AsyncConnection[Any]) -> list[Ingested] | None:
            await begin_ingest(conn)
            cursor = await conn.execute(
                "DELETE FROM subscriptions WHERE id = %s RETURNING 1", (sub_id,)
            )
            if await cursor.fetchone() is None:
                return None
            return await ingest(conn, events, now_ns, numbers)

        return await self._ingesting(lambda: self._run(delete))

    async def subscription(self, sub_id: str) -> Subscription | None:
        return await self._run(lambda conn: deliveries.get_subscription(conn, sub_id))

    async def subscriptions(self, scope: str) -> list[Subscription]:
        return await self._run(lambda conn: deliveries.list_subscriptions(conn, scope))

    async def claim_deliveries(self, now_ns: int, lease_ns: int, limit: int) -> list[Claim]:
        return await self._run(lambda conn: deliveries.claim(conn, now_ns, lease_ns, limit))

    async def release_claims(self, claims: Sequence[tuple[int, str, int]]) -> list[bool]:
        if not claims:
            return []
        return await self._run_pipelined(lambda conn: deliveries.release(conn, claims))

    async def record_attempts(self, results: Sequence[AttemptResult]) -> list[bool]:
        if not results:
            return []
        return await self._run_pipelined(lambda conn: deliveries.record(conn, results))

    async def deliveries(
        self, sub_id: str, status: str | None, after: int | None, limit: int, viewer_roles: int = 15
    ) -> list[Delivery]:
        return await self._run(
            lambda conn: deliveries.list_deliveries(
                conn, sub_id, status, after, limit, viewer_roles
            )
        )

    async def delivery(self, delivery_id: int) -> Delivery | None:
        return await self._run(lambda conn: deliveries.get_delivery(conn, delivery_id))

    async def retry_delivery(self, delivery_id: int, now_ns: int) -> bool:
        async def retry(conn: AsyncConnection[Any]) -> bool:
            cursor = await conn.execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, due_ns = %s, claim_token = NULL,"
                " updated_ns = %s WHERE id = %s AND status != 'pending' RETURNING 1",
                (now_ns, now_ns, delivery_id),
            )
            if await cursor.fetchone() is None:
                return False
            await conn.execute(f"NOTIFY {WAKE_CHANNEL}")
            return True

        return await self._run(retry)

    async def replay(self, sub: Subscription, since_ns: int, now_ns: int) -> int:
        return await self._run(lambda conn: deliveries.replay(conn, sub, since_ns, now_ns))

    async def delivery_backlog(self, now_ns: int) -> tuple[int, int, int | None]:
        rows = await self._rows(
            "SELECT count(*) FILTER (WHERE claim_token IS NULL AND due_ns <= %s),"
            " count(*) FILTER (WHERE claim_token IS NOT NULL AND due_ns > %s),"
            " min(due_ns) FILTER (WHERE claim_token IS NULL AND due_ns <= %s)"
            " FROM deliveries WHERE status = 'pending'",
            (now_ns, now_ns, now_ns),
        )
        due, in_flight, oldest = rows[0]
        return int(due), int(in_flight), oldest

    # Catalog and inbound webhooks

    async def tenant_types(self, tenant: str) -> list[EventType]:
        rows = await self._rows(
            f"SELECT {EVENT_TYPE_COLUMNS} FROM event_types WHERE tenant = %s ORDER BY type",
            (tenant,),
        )
        return [event_type_from_row(row) for row in rows]

    async def put_tenant_type(self, tenant: str, event_type: EventType, now_ns: int) -> None:
        await self._rows(
            placeholders(UPSERT_EVENT_TYPE, "%s") + " RETURNING 1",
            event_type_values(tenant, event_type, now_ns),
        )

    async def delete_tenant_type(self, tenant: str, event_type: str) -> bool:
        rows = await self._rows(
            "DELETE FROM event_types WHERE tenant = %s AND type = %s RETURNING 1",
            (tenant, event_type),
        )
        return bool(rows)

    async def create_webhook(self, webhook: Webhook) -> None:
        await self._rows(
            f"INSERT INTO webhooks ({WEBHOOK_COLUMNS}, tenant) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING 1",
            webhook_values(webhook),
        )

    async def webhook(self, webhook_id: str) -> Webhook | None:
        rows = await self._rows(
            f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = %s", (webhook_id,)
        )
        return webhook_from_row(rows[0]) if rows else None

    async def webhooks(self, scope: str) -> list[Webhook]:
        low, high = groups.subtree_bounds(scope)
        rows = await self._rows(
            f"SELECT {WEBHOOK_COLUMNS} FROM webhooks"
            " WHERE tenant = %s AND (group_path = %s OR (group_path >= %s AND group_path < %s))"
            " ORDER BY created_ns, id",
            (groups.root_of(scope), scope, low, high),
        )
        return [webhook_from_row(row) for row in rows]

    async def delete_webhook(self, webhook_id: str) -> bool:
        return bool(
            await self._rows("DELETE FROM webhooks WHERE id = %s RETURNING 1", (webhook_id,))
        )
