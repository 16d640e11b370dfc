"""The SQLite backend: one file in WAL mode, group-committed writes."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import orjson
import uuid6

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
from tidings.storage.base import Storage
from tidings.storage.migrations import migration_files
from tidings.storage.sqlite_delivery import (
    FanOut,
    SQLiteDeliveries,
    insert_subscription,
    update_subscription,
)
from tidings.storage.sqlite_engine import SQLiteEngine, connect
from tidings.timestamps import from_ns
from tidings.wire import render_attributes

_EVENT_COLUMNS = "e.position, e.id, e.source, e.type, e.group_path, e.attributes, e.data"


def _event(row: tuple[Any, ...]) -> StoredEvent:
    return StoredEvent(
        position=row[0],
        id=row[1],
        source=row[2],
        type=row[3],
        group=row[4],
        attributes=row[5],
        data=row[6],
    )


def _token(row: tuple[Any, ...]) -> Token:
    return Token(
        id=row[0],
        secret_hash=row[1],
        group=row[2],
        roles=tuple(row[3].split(",")),
        name=row[4],
        subject=row[5],
        expires_ns=row[6],
        created_ns=row[7],
    )


def prefix_range(prefix: str) -> tuple[str, str]:
    """The half-open string range of everything that starts with `prefix`."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


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


class SQLiteStorage(SQLiteDeliveries, Storage):
    """Storage in one SQLite file."""

    def __init__(self, path: str, synchronous: str = "FULL"):
        self.path = path
        self._engine = SQLiteEngine(path, synchronous)
        self._open = False

    async def open(self) -> None:
        if not self._open:
            await self.migrate()
            self._engine.start()
            self._open = True

    async def close(self) -> None:
        if self._open:
            self._engine.stop()
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
        return await self._engine.write(lambda conn: _ingest(conn, events, now_ns))

    async def list_events(self, query: EventQuery) -> list[StoredEvent]:
        sql, params = _list_sql(query)
        rows = await self._engine.read(lambda conn: conn.execute(sql, params).fetchall())
        return [_event(row) for row in rows]

    async def find_events(
        self, scope: str, event_id: str, source: str | None, limit: int
    ) -> list[StoredEvent]:
        low, high = groups.subtree_bounds(scope)
        sql = (
            f"SELECT {_EVENT_COLUMNS} FROM events e WHERE e.tenant = ? AND e.id = ?"
            " AND (e.group_path = ? OR (e.group_path >= ? AND e.group_path < ?))"
        )
        params: list[Any] = [groups.root_of(scope), event_id, scope, low, high]
        if source is not None:
            sql += " AND e.source = ?"
            params.append(source)
        sql += " ORDER BY e.position LIMIT ?"
        params.append(limit)
        rows = await self._engine.read(lambda conn: conn.execute(sql, params).fetchall())
        return [_event(row) for row in rows]

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
                "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token.id,
                    token.secret_hash,
                    token.group,
                    ",".join(token.roles),
                    token.name,
                    token.subject,
                    token.expires_ns,
                    token.created_ns,
                ),
            )
        )

    async def token_by_hash(self, secret_hash: str) -> Token | None:
        row = await self._engine.read(
            lambda conn: conn.execute(
                "SELECT * FROM tokens WHERE secret_hash = ?", (secret_hash,)
            ).fetchone()
        )
        return None if row is None else _token(row)

    async def list_tokens(self, scope: str) -> list[Token]:
        low, high = groups.subtree_bounds(scope)
        rows = await self._engine.read(
            lambda conn: conn.execute(
                "SELECT * FROM tokens WHERE group_path = ? OR (group_path >= ? AND group_path < ?)"
                " ORDER BY created_ns, id",
                (scope, low, high),
            ).fetchall()
        )
        return [_token(row) for row in rows]

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
                "SELECT kid, private_key, public_jwk, created_ns, signs_from_ns, retires_ns"
                " FROM signing_keys ORDER BY created_ns, kid"
            ).fetchall()
        )
        return [
            SigningKey(
                kid=row[0],
                private_key=bytes(row[1]),
                public_jwk=orjson.loads(row[2]),
                created_ns=row[3],
                signs_from_ns=row[4],
                retires_ns=row[5],
            )
            for row in rows
        ]

    async def add_signing_key(self, key: SigningKey, retire_others_ns: int | None) -> None:
        def add(conn: sqlite3.Connection) -> None:
            if retire_others_ns is not None:
                conn.execute(
                    "UPDATE signing_keys SET retires_ns = ? WHERE retires_ns IS NULL",
                    (retire_others_ns,),
                )
            conn.execute(
                "INSERT INTO signing_keys VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key.kid,
                    key.private_key,
                    orjson.dumps(key.public_jwk).decode(),
                    key.created_ns,
                    key.signs_from_ns,
                    key.retires_ns,
                ),
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
            return _ingest(conn, events, now_ns)

        return await self._engine.write(create)

    async def update_subscription(self, sub: Subscription) -> None:
        await self._engine.write(lambda conn: update_subscription(conn, sub))

    async def delete_subscription(
        self, sub_id: str, events: Sequence[EventInput], now_ns: int
    ) -> list[Ingested] | None:
        def delete(conn: sqlite3.Connection) -> list[Ingested] | None:
            if not conn.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,)).rowcount:
                return None
            return _ingest(conn, events, now_ns)

        return await self._engine.write(delete)


def _ingest(conn: sqlite3.Connection, events: Sequence[EventInput], now_ns: int) -> list[Ingested]:
    """Store events and queue their deliveries in the caller's transaction (the outbox)."""
    results: list[Ingested] = []
    fan_out = FanOut(conn)
    for index, event in enumerate(events):
        tenant = groups.root_of(event.group)
        event_id = event.id or str(uuid6.uuid7())
        time = event.time or from_ns(now_ns)
        attributes = render_attributes(event, event_id, time, now_ns)
        row = conn.execute(
            "INSERT INTO events (tenant, group_path, id, source, type, subject, actor, time_ns,"
            " stored_ns, fingerprint, attributes, data) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (tenant, source, id) DO NOTHING RETURNING position",
            (
                tenant,
                event.group,
                event_id,
                event.source,
                event.type,
                event.subject,
                event.actor,
                time.ns,
                now_ns,
                event.fingerprint,
                attributes,
                event.data_json,
            ),
        ).fetchone()
        if row is None:
            results.append(
                Ingested(event=_existing(conn, tenant, event, event_id, index), created=False)
            )
            continue
        position = row[0]
        conn.executemany(
            "INSERT INTO event_scopes (scope, position) VALUES (?, ?)",
            [(scope, position) for scope in groups.ancestors(event.group)[1:]],
        )
        fan_out.enqueue(position, event, now_ns)
        stored = StoredEvent(
            position=position,
            id=event_id,
            source=event.source,
            type=event.type,
            group=event.group,
            attributes=attributes,
            data=event.data_json,
        )
        results.append(Ingested(event=stored, created=True))
    return results


def _existing(
    conn: sqlite3.Connection, tenant: str, event: EventInput, event_id: str, index: int
) -> StoredEvent:
    row = conn.execute(
        f"SELECT {_EVENT_COLUMNS}, e.fingerprint FROM events e"
        " WHERE e.tenant = ? AND e.source = ? AND e.id = ?",
        (tenant, event.source, event_id),
    ).fetchone()
    if row[7] != event.fingerprint:
        raise Conflict(
            f"an event with source {event.source!r} and id {event_id!r} is stored with other content",
            details=[{"index": index, "source": event.source, "id": event_id}],
        )
    return _event(row)


def _list_sql(query: EventQuery) -> tuple[str, list[Any]]:
    tenant = groups.root_of(query.scope)
    params: list[Any] = []
    if query.scope == tenant:
        sql = f"SELECT {_EVENT_COLUMNS} FROM events e WHERE e.tenant = ?"
        params.append(tenant)
        order_column = "e.position"
    else:
        sql = (
            f"SELECT {_EVENT_COLUMNS} FROM event_scopes s JOIN events e ON e.position = s.position"
            " WHERE s.scope = ?"
        )
        params.append(query.scope)
        order_column = "s.position"
    type_terms = []
    if query.types:
        type_terms.append(f"e.type IN ({','.join('?' * len(query.types))})")
        params.extend(query.types)
    for prefix in query.type_prefixes:
        type_terms.append("(e.type >= ? AND e.type < ?)")
        params.extend(prefix_range(prefix))
    if type_terms:
        sql += " AND (" + " OR ".join(type_terms) + ")"
    if query.source is not None:
        sql += " AND e.source = ?"
        params.append(query.source)
    if query.subject is not None:
        sql += " AND e.subject = ?"
        params.append(query.subject)
    if query.subject_prefix:
        sql += " AND e.subject >= ? AND e.subject < ?"
        params.extend(prefix_range(query.subject_prefix))
    elif query.subject_prefix == "":
        sql += " AND e.subject IS NOT NULL"
    if query.actor is not None:
        sql += " AND e.actor = ?"
        params.append(query.actor)
    if query.since_ns is not None:
        sql += " AND e.time_ns >= ?"
        params.append(query.since_ns)
    if query.until_ns is not None:
        sql += " AND e.time_ns < ?"
        params.append(query.until_ns)
    if query.after is not None:
        sql += f" AND {order_column} {'<' if query.descending else '>'} ?"
        params.append(query.after)
    sql += f" ORDER BY {order_column} {'DESC' if query.descending else 'ASC'} LIMIT ?"
    params.append(query.limit)
    return sql, params


def open_connection(path: str) -> sqlite3.Connection:
    """A plain connection to the database, for tools and tests."""
    return connect(path)
