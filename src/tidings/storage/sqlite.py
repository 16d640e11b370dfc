"""The SQLite backend: one file in WAL mode, group-committed writes."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

from tidings import groups
from tidings.errors import Conflict
from tidings.model import (
    EventInput,
    EventQuery,
    Group,
    Ingested,
    SigningKey,
    StoredEvent,
    Subscription,
    Token,
)
from tidings.storage import sqlite_scopes, sqlite_search
from tidings.storage.base import Storage
from tidings.storage.migrations import migration_files
from tidings.storage.rows import (
    SIGNING_KEY_COLUMNS,
    TOKEN_COLUMNS,
    signing_key_from_row,
    signing_key_values,
    subscription_update,
    token_from_row,
    token_values,
)
from tidings.storage.sqlite_catalog import SQLiteCatalog
from tidings.storage.sqlite_delivery import (
    SQLiteDeliveries,
    insert_subscription,
)
from tidings.storage.sqlite_engine import GROUP_SIZE, SQLiteEngine, connect
from tidings.storage.sqlite_events import SQL, event_from_row, expire_batch, ingest
from tidings.storage.sqlite_indexer import BehindIndexer

T = TypeVar("T")


def split_statements(script: str) -> list[str]:
    """The complete SQL statements of a script, in order."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip() and not all(
        part.strip().startswith("--") or not part.strip() for part in current.splitlines()
    ):
        raise ValueError(f"incomplete SQL statement in a migration: {current.strip()[:80]!r}")
    return statements


def apply_migrations(path: str) -> list[str]:
    """Apply the pending migrations to the database at `path`, atomically; return their names.

    The write lock is taken before reading which migrations are applied, so two
    processes migrating one file at once apply each migration exactly once.
    """
    conn = connect(path)
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_ns INTEGER)"
        )
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
            applied = []
            for name, sql in migration_files("sqlite"):
                if name in done:
                    continue
                for statement in split_statements(sql):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, time.time_ns()))
                applied.append(name)
            conn.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK")
            raise
        return applied
    finally:
        conn.close()


class SQLiteStorage(SQLiteDeliveries, SQLiteCatalog, Storage):
    """Storage in one SQLite file."""

    def __init__(self, path: str, synchronous: str = "FULL"):
        self.path = path
        self._engine = SQLiteEngine(path, synchronous)
        self._scopes = BehindIndexer(
            self._engine.write, sqlite_scopes.index_batch, sqlite_scopes.MARK, sqlite_scopes.BATCH
        )
        self._search = BehindIndexer(
            self._engine.write, sqlite_search.index_batch, sqlite_search.MARK, sqlite_search.BATCH
        )
        self._open = False

    async def open(self) -> None:
        if not self._open:
            await self.migrate()
            self._engine.start()
            self._open = True
            # Events a previous process stored and did not index yet are indexed soon too.
            self._scopes.ingested()
            self._search.ingested()

    async def close(self) -> None:
        if self._open:
            self._scopes.stop()
            self._search.stop()
            await self._engine.stop()
            self._open = False

    async def migrate(self) -> list[str]:
        return await asyncio.to_thread(apply_migrations, self.path)

    async def ready(self) -> bool:
        def check(conn: sqlite3.Connection) -> bool:
            done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
            return all(name in done for name, _ in migration_files("sqlite"))

        try:
            return await self._engine.read(check)
        except sqlite3.Error:
            return False

    async def secret(self, name: str, length: int = 32) -> bytes:
        def get_or_make(conn: sqlite3.Connection) -> bytes:
            conn.execute(
                "INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                (name, secrets.token_bytes(length)),
            )
            row = conn.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
            return bytes(row[0])

        return await self._engine.write(get_or_make)

    async def ingest(self, events: Sequence[EventInput], now_ns: int) -> list[Ingested]:
        ingested = await self._engine.write(
            lambda conn: ingest(conn, events, now_ns),
            long=len(events) > GROUP_SIZE,
            size=len(events),
        )
        if self._open:  # not after close(): the indexers are stopped
            self._scopes.ingested()
            self._search.ingested()
        return ingested

    async def _read_searchable(self, fn: Callable[[sqlite3.Connection], T], text: bool) -> T:
        """Run the read `fn`; a full-text search first has the index hold every event stored
        so far. (Reads below the root need no such step: see SQLiteEventSQL.)"""
        if not text:
            return await self._engine.read(fn)

        def checked(conn: sqlite3.Connection) -> tuple[T] | None:
            return (fn(conn),) if self._search.current(conn) else None

        done = await self._engine.read(checked)
        if done is not None:
            return done[0]
        await self._search.catch_up()
        return await self._engine.read(fn)

    async def list_events(self, query: EventQuery) -> list[StoredEvent]:
        parts = SQL.list_parts(query)

        def page(conn: sqlite3.Connection) -> list[Any]:
            rows: list[Any] = []
            conn.execute("BEGIN")  # one snapshot for every part
            try:
                for sql, params in parts:
                    rows.extend(conn.execute(sql, params).fetchmany(query.limit - len(rows)))
                    if len(rows) >= query.limit:
                        break
            finally:
                conn.execute("COMMIT")
            return rows

        rows = await self._read_searchable(page, query.text is not None)
        return [event_from_row(row) for row in rows]

    async def count_events(self, query: EventQuery) -> int:
        sql, params = SQL.count_sql(query)
        row = await self._read_searchable(
            lambda conn: conn.execute(sql, params).fetchone(), query.text is not None
        )
        return int(row[0])

    async def event_stats(
        self, query: EventQuery, group_by: Sequence[str], interval: str | None
    ) -> list[tuple[Any, ...]]:
        sql, params = SQL.stats_sql(query, group_by, interval)
        return await self._read_searchable(
            lambda conn: [tuple(r) for r in conn.execute(sql, params)], query.text is not None
        )

    async def event_payload(self, position: int) -> str | None:
        row = await self._engine.read(
            lambda conn: conn.execute(
                "SELECT payload FROM event_payloads WHERE position = ?", (position,)
            ).fetchone()
        )
        return None if row is None else str(row[0])

    async def find_events(
        self, scope: str, event_id: str, source: str | None, limit: int, viewer_roles: int = 15
    ) -> list[StoredEvent]:
        sql, params = SQL.find_sql(scope, event_id, source, viewer_roles, limit)
        rows = await self._engine.read(lambda conn: conn.execute(sql, params).fetchall())
        return [event_from_row(row) for row in rows]

    async def create_group(self, group: Group) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO groups (path, name, created_ns) VALUES (?, ?, ?)",
                    (group.path, group.name, group.created_ns),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"group {group.path!r} exists") from exc

        await self._engine.write(insert)

    async def get_group(self, path: str) -> Group | None:
        row = await self._engine.read(
            lambda conn: conn.execute(
                "SELECT path, name, created_ns FROM groups WHERE path = ?", (path,)
            ).fetchone()
        )
        return None if row is None else Group(path=row[0], name=row[1], created_ns=row[2])

    async def create_token(self, token: Token) -> None:
        await self._engine.write(
            lambda conn: conn.execute(
                f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                token_values(token),
            )
        )

    async def token_by_hash(self, secret_hash: str) -> Token | None:
        # Every request looks its token up: a unique-index probe, done on the event loop's own
        # connection rather than through the reader pool.
        row = self._engine.read_at_once(
            lambda conn: conn.execute(
                f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE secret_hash = ?", (secret_hash,)
            ).fetchone()
        )
        return None if row is None else token_from_row(row)

    async def list_tokens(self, scope: str) -> list[Token]:
        low, high = groups.subtree_bounds(scope)
        rows = await self._engine.read(
            lambda conn: conn.execute(
                f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE group_path = ? OR (group_path >= ? AND group_path < ?)"
                " ORDER BY created_ns, id",
                (scope, low, high),
            ).fetchall()
        )
        return [token_from_row(row) for row in rows]

    async def delete_token(self, scope: str, token_id: str) -> bool:
        low, high = groups.subtree_bounds(scope)

        def delete(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM tokens WHERE id = ?"
                " AND (group_path = ? OR (group_path >= ? AND group_path < ?))",
                (token_id, scope, low, high),
            )
            return cursor.rowcount > 0

        return await self._engine.write(delete)

    async def setting(self, name: str, default: str | None = None) -> str | None:
        def get(conn: sqlite3.Connection) -> str | None:
            if default is not None:
                conn.execute(
                    "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                    (name, default),
                )
            row = conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
            return None if row is None else str(row[0])

        if default is None:
            return await self._engine.read(get)
        return await self._engine.write(get)

    async def put_setting(self, name: str, value: str) -> None:
        await self._engine.write(
            lambda conn: conn.execute(
                "INSERT INTO settings (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )
        )

    async def signing_keys(self) -> list[SigningKey]:
        rows = await self._engine.read(
            lambda conn: conn.execute(
                f"SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys ORDER BY created_ns, kid"
            ).fetchall()
        )
        return [signing_key_from_row(row) for row in rows]

    async def add_signing_key(self, key: SigningKey, retire_others_ns: int | None) -> None:
        def add(conn: sqlite3.Connection) -> None:
            if retire_others_ns is not None:
                conn.execute(
                    "UPDATE signing_keys SET retires_ns = ? WHERE retires_ns IS NULL",
                    (retire_others_ns,),
                )
            conn.execute(
                f"INSERT INTO signing_keys ({SIGNING_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                signing_key_values(key),
            )

        await self._engine.write(add)

    async def remove_retired_keys(self, now_ns: int) -> int:
        return await self._engine.write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM signing_keys WHERE retires_ns IS NOT NULL AND retires_ns <= ?",
                    (now_ns,),
                ).rowcount
            )
        )

    async def create_subscription(
        self, sub: Subscription, events: Sequence[EventInput], now_ns: int
    ) -> list[Ingested]:
        def create(conn: sqlite3.Connection) -> list[Ingested]:
            insert_subscription(conn, sub)
            return ingest(conn, events, now_ns)

        return await self._engine.write(create)

    async def update_subscription(self, sub: Subscription, fields: Collection[str]) -> None:
        sql, values = subscription_update(sub, fields, "?")
        await self._engine.write(lambda conn: conn.execute(sql, values))

    async def expire(self, before_ns: int, batch: int = 1000) -> int:
        deleted = 0
        while True:
            removed = await self._engine.write(
                lambda conn: expire_batch(conn, before_ns, batch), long=True
            )
            deleted += removed
            if removed < batch:
                return deleted

    async def delete_subscription(
        self, sub_id: str, events: Sequence[EventInput], now_ns: int
    ) -> list[Ingested] | None:
        def delete(conn: sqlite3.Connection) -> list[Ingested] | None:
            if not conn.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,)).rowcount:
                return None
            return ingest(conn, events, now_ns)

        return await self._engine.write(delete)


def open_connection(path: str) -> sqlite3.Connection:
    """A plain connection to the database, for tools and tests."""
    return connect(path)
