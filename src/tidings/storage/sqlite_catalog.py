"""The SQLite backend's tenant event types and inbound webhooks."""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from tidings import groups
from tidings.catalog import EventType
from tidings.model import Webhook
from tidings.storage.sqlite_engine import SQLiteEngine


def _type_from_row(row: tuple[Any, ...]) -> EventType:
    return EventType(
        type=row[0],
        description=row[1] or "",
        schema=None if row[2] is None else orjson.loads(row[2]),
        examples=() if row[3] is None else (orjson.loads(row[3]),),
        validation=row[4],
        origin="tenant",
    )


def _webhook_from_row(row: tuple[Any, ...]) -> Webhook:
    return Webhook(
        id=row[0],
        group=row[1],
        name=row[2],
        mapping=orjson.loads(row[3]),
        key_hash=row[4],
        rate_limit=row[5],
        created_ns=row[6],
    )


_WEBHOOK_COLUMNS = "id, group_path, name, mapping, key_hash, rate_limit, created_ns"


class SQLiteCatalog:
    """Tenant event types and inbound webhooks, for the SQLite storage."""

    _engine: SQLiteEngine

    async def tenant_types(self, tenant: str) -> list[EventType]:
        """The event types a tenant registered (or whose validation it set)."""
        rows = await self._engine.read(
            lambda conn: conn.execute(
                "SELECT type, description, schema, example, validation FROM event_types"
                " WHERE tenant = ? ORDER BY type",
                (tenant,),
            ).fetchall()
        )
        return [_type_from_row(row) for row in rows]

    async def put_tenant_type(self, tenant: str, event_type: EventType, now_ns: int) -> None:
        """Register or replace a tenant's event type."""

        def put(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO event_types (tenant, type, description, schema, example, validation,"
                " created_ns, updated_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant, type) DO UPDATE SET description = excluded.description,"
                " schema = excluded.schema, example = excluded.example,"
                " validation = excluded.validation, updated_ns = excluded.updated_ns",
                (
                    tenant,
                    event_type.type,
                    event_type.description,
                    None if event_type.schema is None else orjson.dumps(event_type.schema).decode(),
                    orjson.dumps(event_type.examples[0]).decode() if event_type.examples else None,
                    event_type.validation,
                    now_ns,
                    now_ns,
                ),
            )

        await self._engine.write(put)

    async def delete_tenant_type(self, tenant: str, event_type: str) -> bool:
        """Forget a tenant's event type."""
        return await self._engine.write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM event_types WHERE tenant = ? AND type = ?", (tenant, event_type)
                ).rowcount
                > 0
            )
        )

    async def create_webhook(self, webhook: Webhook) -> None:
        """Store an inbound webhook."""
        await self._engine.write(
            lambda conn: conn.execute(
                "INSERT INTO webhooks (id, tenant, group_path, name, mapping, key_hash, rate_limit,"
                " created_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    webhook.id,
                    groups.root_of(webhook.group),
                    webhook.group,
                    webhook.name,
                    orjson.dumps(webhook.mapping).decode(),
                    webhook.key_hash,
                    webhook.rate_limit,
                    webhook.created_ns,
                ),
            )
        )

    async def webhook(self, webhook_id: str) -> Webhook | None:
        """An inbound webhook by id."""
        row = await self._engine.read(
            lambda conn: conn.execute(
                f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?", (webhook_id,)
            ).fetchone()
        )
        return None if row is None else _webhook_from_row(row)

    async def webhooks(self, scope: str) -> list[Webhook]:
        """The inbound webhooks of a subtree."""
        low, high = groups.subtree_bounds(scope)
        rows = await self._engine.read(
            lambda conn: conn.execute(
                f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE tenant = ?"
                " AND (group_path = ? OR (group_path >= ? AND group_path < ?)) ORDER BY created_ns, id",
                (groups.root_of(scope), scope, low, high),
            ).fetchall()
        )
        return [_webhook_from_row(row) for row in rows]

    async def delete_webhook(self, webhook_id: str) -> bool:
        """Delete an inbound webhook."""
        return await self._engine.write(
            lambda conn: (
                conn.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,)).rowcount > 0
            )
        )
