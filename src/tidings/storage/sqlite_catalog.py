"""The SQLite backend's tenant event types and inbound webhooks."""

from __future__ import annotations

import sqlite3

from tidings import groups
from tidings.catalog import EventType
from tidings.model import Webhook
from tidings.storage.rows import (
    EVENT_TYPE_COLUMNS,
    UPSERT_EVENT_TYPE,
    WEBHOOK_COLUMNS,
    event_type_from_row,
    event_type_values,
    placeholders,
    webhook_from_row,
    webhook_values,
)
from tidings.storage.sqlite_engine import SQLiteEngine


class SQLiteCatalog:
    """Tenant event types and inbound webhooks, for the SQLite storage."""

    _engine: SQLiteEngine

    async def tenant_types(self, tenant: str) -> list[EventType]:
        """The event types a tenant registered (or whose validation it set)."""
        rows = await self._engine.read(
            lambda conn: conn.execute(
                f"SELECT {EVENT_TYPE_COLUMNS} FROM event_types WHERE tenant = ? ORDER BY type",
                (tenant,),
            ).fetchall()
        )
        return [event_type_from_row(row) for row in rows]

    async def put_tenant_type(self, tenant: str, event_type: EventType, now_ns: int) -> None:
        """Register or replace a tenant's event type."""

        def put(conn: sqlite3.Connection) -> None:
            conn.execute(
                placeholders(UPSERT_EVENT_TYPE, "?"), event_type_values(tenant, event_type, now_ns)
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
                f"INSERT INTO webhooks ({WEBHOOK_COLUMNS}, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                webhook_values(webhook),
            )
        )

    async def webhook(self, webhook_id: str) -> Webhook | None:
        """An inbound webhook by id."""
        row = await self._engine.read(
            lambda conn: conn.execute(
                f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?", (webhook_id,)
            ).fetchone()
        )
        return None if row is None else webhook_from_row(row)

    async def webhooks(self, scope: str) -> list[Webhook]:
        """The inbound webhooks of a subtree."""
        low, high = groups.subtree_bounds(scope)
        rows = await self._engine.read(
            lambda conn: conn.execute(
                f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE tenant = ?"
                " AND (group_path = ? OR (group_path >= ? AND group_path < ?)) ORDER BY created_ns, id",
                (groups.root_of(scope), scope, low, high),
            ).fetchall()
        )
        return [webhook_from_row(row) for row in rows]

    async def delete_webhook(self, webhook_id: str) -> bool:
        """Delete an inbound webhook."""
        return await self._engine.write(
            lambda conn: (
                conn.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,)).rowcount > 0
            )
        )
