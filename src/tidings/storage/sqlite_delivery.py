"""The SQLite backend's subscriptions and deliveries: fan-out, claims under a lease, attempts."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Sequence
from typing import Any

from tidings import groups
from tidings.model import (
    Attempt,
    AttemptResult,
    Claim,
    Delivery,
    EventInput,
    Ingested,
    StoredEvent,
    Subscription,
    roles_mask,
)
from tidings.storage import sqlite_scopes as scopes
from tidings.storage.attempts import DISABLE, SET_FAILING_SINCE, subscription_writes
from tidings.storage.rows import (
    SUBSCRIPTION_COLUMNS,
    claims_of,
    deliveries_page_sql,
    delivers_to,
    groups_above,
    placeholders,
    subscription_from_row,
    subscription_values,
)
from tidings.storage.sqlite_engine import SQLiteEngine

_DELIVERY_COLUMNS = (
    "d.id, d.subscription_id, d.event_position, d.status, d.attempts, d.due_ns, d.created_ns,"
    " d.updated_ns, e.id, e.source, e.type"
)
_DELIVERY_FROM = "deliveries d JOIN events e ON e.position = d.event_position"


class FanOut:
    """Finds the active subscriptions an event goes to, within one write transaction."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        self._of_group: dict[str, list[Subscription]] = {}
        self._subscribing: dict[str, bool] = {}

    def _any_active(self, tenant: str) -> bool:
        """Whether the tenant has an active subscription at all (the events of a tenant
        without any then cost one query an ingest call, a batch's included)."""
        if tenant not in self._subscribing:
            self._subscribing[tenant] = (
                self._conn.execute(
                    "SELECT 1 FROM subscriptions WHERE tenant = ? AND state = 'active' LIMIT 1",
                    (tenant,),
                ).fetchone()
                is not None
            )
        return self._subscribing[tenant]

    def _active_of(self, wanted: set[str]) -> list[Subscription]:
        """The active subscriptions of the `wanted` groups (themselves, not below them)."""
        missing = [group for group in wanted if group not in self._of_group]
        if missing:
            for group in missing:
                self._of_group[group] = []
            rows = self._conn.execute(
                f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions"
                f" WHERE state = 'active' AND group_path IN ({','.join('?' * len(missing))})",
                missing,
            ).fetchall()
            for row in rows:
                sub = subscription_from_row(row)
                self._of_group[sub.group].append(sub)
        return [sub for group in wanted for sub in self._of_group[group]]

    def enqueue(self, position: int, event: EventInput, now_ns: int) -> int:
        """Queue the event for every matching subscription that may see it; return how many."""
        if not self._any_active(groups.root_of(event.group)):
            return 0
        targets = [
            sub.id for sub in self._active_of(groups_above(event)) if delivers_to(sub, event)
        ]
        if targets:
            self._conn.executemany(
                "INSERT INTO deliveries (subscription_id, event_position, status, due_ns, created_ns,"
                " updated_ns) VALUES (?, ?, 'pending', ?, ?, ?)",
                [(sub_id, position, now_ns, now_ns, now_ns) for sub_id in targets],
            )
        return len(targets)


def insert_subscription(conn: sqlite3.Connection, sub: Subscription) -> None:
    """Insert a new subscription."""
    conn.execute(
        f"INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS}, tenant) VALUES ({','.join('?' * 17)})",
        subscription_values(sub),
    )


def get_subscription(conn: sqlite3.Connection, sub_id: str) -> Subscription | None:
    """A subscription by id."""
    row = conn.execute(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = ?", (sub_id,)
    ).fetchone()
    return None if row is None else subscription_from_row(row)


def list_subscriptions(conn: sqlite3.Connection, scope: str) -> list[Subscription]:
    """The subscriptions of `scope` and every group below it."""
    low, high = groups.subtree_bounds(scope)
    rows = conn.execute(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE tenant = ?"
        " AND (group_path = ? OR (group_path >= ? AND group_path < ?)) ORDER BY created_ns, id",
        (groups.root_of(scope), scope, low, high),
    ).fetchall()
    return [subscription_from_row(row) for row in rows]


def claim(conn: sqlite3.Connection, now_ns: int, lease_ns: int, limit: int) -> list[Claim]:
    """Claim up to `limit` due deliveries under a lease; fail those of disabled subscriptions."""
    token = secrets.token_hex(16)
    rows = conn.execute(
        "UPDATE deliveries SET claim_token = ?, due_ns = ?, updated_ns = ? WHERE id IN ("
        " SELECT id FROM deliveries WHERE status = 'pending' AND due_ns <= ? ORDER BY due_ns LIMIT ?)"
        " RETURNING id, subscription_id, event_position, attempts",
        (token, now_ns + lease_ns, now_ns, now_ns, limit),
    ).fetchall()
    if not rows:
        return []
    sub_ids = sorted({row[1] for row in rows})
    positions = sorted({row[2] for row in rows})
    subs = {
        row[0]: subscription_from_row(row)
        for row in conn.execute(
            f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions"
            f" WHERE id IN ({','.join('?' * len(sub_ids))})",
            sub_ids,
        )
    }
    events = {
        row[0]: StoredEvent(
            position=row[0],
            id=row[1],
            source=row[2],
            type=row[3],
            group=row[4],
            attributes=row[5],
            data=row[6],
        )
        for row in conn.execute(
            "SELECT position, id, source, type, group_path, attributes, data FROM events"
            f" WHERE position IN ({','.join('?' * len(positions))})",
            positions,
        )
    }
    claims, orphans = claims_of(rows, token, subs, events)
    if orphans:
        conn.executemany(
            "UPDATE deliveries SET status = 'failed', claim_token = NULL, updated_ns = ? WHERE id = ?",
            [(now_ns, delivery_id) for delivery_id in orphans],
        )
    return claims


_HOLD = (
    "UPDATE deliveries SET status = ?, attempts = attempts + 1, due_ns = ?, claim_token = NULL,"
    " updated_ns = ? WHERE id = ? AND claim_token = ? AND status = 'pending' AND due_ns > ?"
)
# A retried delivery starts its schedule afresh (attempts = 0), but its log goes on:
# the logged number follows the attempts already recorded.
_LOG = (
    "INSERT INTO delivery_attempts (delivery_id, number, started_ns, status_code, latency_ms,"
    " error, response) VALUES (?, max(?, (SELECT coalesce(max(number), 0) + 1"
    " FROM delivery_attempts WHERE delivery_id = ?)), ?, ?, ?, ?, ?)"
)


def record(conn: sqlite3.Connection, results: Sequence[AttemptResult]) -> list[bool]:
    """Record the attempts whose claims still hold, as if one by one in order; False for the rest."""
    held = [
        conn.execute(
            _HOLD,
            (
                result.status,
                result.next_due_ns if result.next_due_ns is not None else result.now_ns,
                result.now_ns,
                result.delivery_id,
                result.claim_token,
                result.now_ns,
            ),
        ).rowcount
        > 0
        for result in results
    ]
    recorded = [result for result, ok in zip(results, held, strict=True) if ok]
    conn.executemany(
        _LOG,
        [
            (
                r.delivery_id,
                r.attempt.number,
                r.delivery_id,
                r.attempt.started_ns,
                r.attempt.status_code,
                r.attempt.latency_ms,
                r.attempt.error,
                r.attempt.response,
            )
            for r in recorded
        ],
    )
    sub_ids = sorted({r.subscription_id for r in recorded})
    if sub_ids:
        failing = dict(
            conn.execute(
                "SELECT id, failing_since_ns FROM subscriptions"
                f" WHERE id IN ({','.join('?' * len(sub_ids))})",
                sub_ids,
            ).fetchall()
        )
        streaks, disables = subscription_writes(recorded, failing)
        conn.executemany(placeholders(SET_FAILING_SINCE, "?"), streaks)
        conn.executemany(placeholders(DISABLE, "?"), disables)
    return held


def release(conn: sqlite3.Connection, claims: Sequence[tuple[int, str, int]]) -> list[bool]:
    """Give claimed deliveries back unsent, due again when each says; False where the claim was lost."""
    return [
        conn.execute(
            "UPDATE deliveries SET claim_token = NULL, due_ns = ? WHERE id = ? AND claim_token = ?"
            " AND status = 'pending'",
            (due_ns, delivery_id, claim_token),
        ).rowcount
        > 0
        for delivery_id, claim_token, due_ns in claims
    ]


def list_deliveries(
    conn: sqlite3.Connection,
    sub_id: str,
    status: str | None,
    after: int | None,
    limit: int,
    viewer_roles: int = 15,
) -> list[Delivery]:
    """A subscription's deliveries of events a reader with `viewer_roles` sees, newest first."""
    sql, params = deliveries_page_sql(
        "?",
        f"SELECT {_DELIVERY_COLUMNS} FROM {_DELIVERY_FROM}",
        sub_id,
        status,
        after,
        limit,
        viewer_roles,
    )
    rows = conn.execute(sql, params).fetchall()
    return [_with_attempts(conn, row) for row in rows]


def get_delivery(conn: sqlite3.Connection, delivery_id: int) -> Delivery | None:
    """One delivery with its attempts."""
    row = conn.execute(
        f"SELECT {_DELIVERY_COLUMNS} FROM {_DELIVERY_FROM} WHERE d.id = ?", (delivery_id,)
    ).fetchone()
    return None if row is None else _with_attempts(conn, row)


def _with_attempts(conn: sqlite3.Connection, row: Sequence[Any]) -> Delivery:
    attempts = tuple(
        Attempt(
            number=a[0],
            started_ns=a[1],
            status_code=a[2],
            latency_ms=a[3],
            error=a[4],
            response=a[5],
        )
        for a in conn.execute(
            "SELECT number, started_ns, status_code, latency_ms, error, response FROM delivery_attempts"
            " WHERE delivery_id = ? ORDER BY number",
            (row[0],),
        )
    )
    return Delivery(
        id=row[0],
        subscription_id=row[1],
        event_position=row[2],
        status=row[3],
        attempts=row[4],
        due_ns=row[5],
        created_ns=row[6],
        updated_ns=row[7],
        event_id=row[8],
        event_source=row[9],
        event_type=row[10],
        attempt_log=attempts,
    )


def retry(conn: sqlite3.Connection, delivery_id: int, now_ns: int) -> bool:
    """Queue a finished delivery again, at once, with a fresh schedule."""
    return (
        conn.execute(
            "UPDATE deliveries SET status = 'pending', attempts = 0, due_ns = ?, claim_token = NULL,"
            " updated_ns = ? WHERE id = ? AND status != 'pending'",
            (now_ns, now_ns, delivery_id),
        ).rowcount
        > 0
    )


def replay(conn: sqlite3.Connection, sub: Subscription, since_ns: int, now_ns: int) -> int:
    """Queue every stored event of the subscription's subtree stored since `since_ns` that matches it."""
    tenant = groups.root_of(sub.group)
    if sub.group == tenant:
        rows = conn.execute(
            "SELECT position, type, subject, roles_mask FROM events WHERE tenant = ? AND stored_ns >= ?"
            " ORDER BY position",
            (tenant, since_ns),
        )
    else:
        scopes.index_all(conn)
        rows = conn.execute(
            "SELECT e.position, e.type, e.subject, e.roles_mask FROM event_scopes s"
            " JOIN events e ON e.position = s.position"
            f" WHERE s.scope = {scopes.INTERNED} AND e.stored_ns >= ? ORDER BY s.position",
            (sub.group, since_ns),
        )
    mask = roles_mask(sub.roles)  # the subscription sees what the token that made it saw
    # An event still waiting to go to this subscription is not queued a second time.
    waiting = {
        row[0]
        for row in conn.execute(
            "SELECT event_position FROM deliveries WHERE subscription_id = ? AND status = 'pending'",
            (sub.id,),
        )
    }
    queued = [
        (sub.id, position, now_ns, now_ns, now_ns)
        for position, type_, subject, event_mask in rows
        if position not in waiting
        and sub.matches(type_, subject)
        and (event_mask == 0 or event_mask & mask)
    ]
    conn.executemany(
        "INSERT INTO deliveries (subscription_id, event_position, status, due_ns, created_ns, updated_ns)"
        " VALUES (?, ?, 'pending', ?, ?, ?)",
        queued,
    )
    return len(queued)


def backlog(conn: sqlite3.Connection, now_ns: int) -> tuple[int, int, int | None]:
    """(due, in flight, the oldest due delivery's due time) across all subscriptions."""
    due, oldest = conn.execute(
        "SELECT count(*), min(due_ns) FROM deliveries WHERE status = 'pending' AND due_ns <= ?"
        " AND claim_token IS NULL",
        (now_ns,),
    ).fetchone()
    in_flight = conn.execute(
        "SELECT count(*) FROM deliveries WHERE status = 'pending' AND claim_token IS NOT NULL AND due_ns > ?",
        (now_ns,),
    ).fetchone()[0]
    return int(due), int(in_flight), oldest


class SQLiteDeliveries:
    """The subscription and delivery methods of the SQLite storage."""

    _engine: SQLiteEngine

    async def subscription(self, sub_id: str) -> Subscription | None:
        """A subscription by id."""
        return await self._engine.read(lambda conn: get_subscription(conn, sub_id))

    async def subscriptions(self, scope: str) -> list[Subscription]:
        """The subscriptions in the subtree of `scope`."""
        return await self._engine.read(lambda conn: list_subscriptions(conn, scope))

    async def claim_deliveries(self, now_ns: int, lease_ns: int, limit: int) -> list[Claim]:
        """Claim due deliveries under a lease."""
        return await self._engine.write(
            lambda conn: claim(conn, now_ns, lease_ns, limit), size=limit
        )

    async def release_claims(self, claims: Sequence[tuple[int, str, int]]) -> list[bool]:
        """Give claimed deliveries back unsent, in one write job."""
        return await self._engine.write(lambda conn: release(conn, claims), size=len(claims))

    async def record_attempts(self, results: Sequence[AttemptResult]) -> list[bool]:
        """Record attempts in one write job; False for those whose claim was lost."""
        return await self._engine.write(lambda conn: record(conn, results), size=len(results))

    async def deliveries(
        self, sub_id: str, status: str | None, after: int | None, limit: int, viewer_roles: int = 15
    ) -> list[Delivery]:
        """A subscription's deliveries (of events `viewer_roles` may see), newest first."""
        return await self._engine.read(
            lambda conn: list_deliveries(conn, sub_id, status, after, limit, viewer_roles)
        )

    async def delivery(self, delivery_id: int) -> Delivery | None:
        """One delivery."""
        return await self._engine.read(lambda conn: get_delivery(conn, delivery_id))

    async def retry_delivery(self, delivery_id: int, now_ns: int) -> bool:
        """Queue a finished delivery again; False if it is still pending or absent."""
        return await self._engine.write(lambda conn: retry(conn, delivery_id, now_ns))

    async def replay(self, sub: Subscription, since_ns: int, now_ns: int) -> int:
        """Queue the subscription's matching events stored since `since_ns`."""
        return await self._engine.write(lambda conn: replay(conn, sub, since_ns, now_ns), long=True)

    async def delivery_backlog(self, now_ns: int) -> tuple[int, int, int | None]:
        """(due, in flight, oldest due time)."""
        return await self._engine.read(lambda conn: backlog(conn, now_ns))


__all__ = ["FanOut", "Ingested", "SQLiteDeliveries", "insert_subscription"]
