"""The PostgreSQL backend's subscriptions and deliveries: claims with FOR UPDATE SKIP LOCKED."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from tidings import groups
from tidings.model import (
    Attempt,
    AttemptResult,
    Claim,
    Delivery,
    StoredEvent,
    Subscription,
    roles_mask,
)
from tidings.storage.attempts import DISABLE, SET_FAILING_SINCE, subscription_writes
from tidings.storage.postgres_events import (
    EVENT_COLUMNS,
    SQL,
    event_from_row,
    queue_deliveries,
)
from tidings.storage.rows import (
    SUBSCRIPTION_COLUMNS,
    claims_of,
    deliveries_page_sql,
    placeholders,
    subscription_from_row,
    subscription_values,
)

_DELIVERY_COLUMNS = (
    "d.id, d.subscription_id, e.tx, e.seq, d.status, d.attempts, d.due_ns, d.created_ns, d.updated_ns,"
    " e.id, e.source, e.type"
)
_DELIVERY_FROM = (
    "deliveries d JOIN events e ON e.seq = d.event_seq AND e.stored_ns = d.event_stored_ns"
)


async def insert_subscription(conn: AsyncConnection[Any], sub: Subscription) -> None:
    """Insert a new subscription."""
    await conn.execute(
        f"INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS}, tenant) VALUES ({', '.join(['%s'] * 17)})",
        subscription_values(sub),
    )


async def get_subscription(conn: AsyncConnection[Any], sub_id: str) -> Subscription | None:
    """A subscription by id."""
    cursor = await conn.execute(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = %s", (sub_id,)
    )
    row = await cursor.fetchone()
    return None if row is None else subscription_from_row(row)


async def list_subscriptions(conn: AsyncConnection[Any], scope: str) -> list[Subscription]:
    """The subscriptions of `scope` and every group below it."""
    low, high = groups.subtree_bounds(scope)
    cursor = await conn.execute(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE tenant = %s"
        " AND (group_path = %s OR (group_path >= %s AND group_path < %s)) ORDER BY created_ns, id",
        (groups.root_of(scope), scope, low, high),
    )
    return [subscription_from_row(row) for row in await cursor.fetchall()]


async def claim(conn: AsyncConnection[Any], now_ns: int, lease_ns: int, limit: int) -> list[Claim]:
    """Claim due deliveries under a lease; rows another worker holds locked are skipped, not waited for."""
    token = secrets.token_hex(16)
    cursor = await conn.execute(
        "WITH due AS (SELECT id FROM deliveries WHERE status = 'pending' AND due_ns <= %s"
        " ORDER BY due_ns LIMIT %s FOR UPDATE SKIP LOCKED)"
        " UPDATE deliveries d SET claim_token = %s, due_ns = %s, updated_ns = %s FROM due WHERE d.id = due.id"
        " RETURNING d.id, d.subscription_id, d.event_seq, d.event_stored_ns, d.attempts",
        (now_ns, limit, token, now_ns + lease_ns, now_ns),
    )
    rows = await cursor.fetchall()
    if not rows:
        return []
    cursor = await conn.execute(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = ANY(%s)",
        (sorted({r[1] for r in rows}),),
    )
    subs = {row[0]: subscription_from_row(row) for row in await cursor.fetchall()}
    cursor = await conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events e JOIN unnest(%s::bigint[], %s::bigint[]) AS k(seq, stored_ns)"
        " ON e.seq = k.seq AND e.stored_ns = k.stored_ns",
        ([r[2] for r in rows], [r[3] for r in rows]),
    )
    events: dict[int, StoredEvent] = {}
    for row in await cursor.fetchall():
        events[row[1]] = event_from_row(row)
    claims, orphans = claims_of(
        [(delivery_id, sub_id, seq, attempts) for delivery_id, sub_id, seq, _, attempts in rows],
        token,
        subs,
        events,
    )
    if orphans:
        await conn.execute(
            "UPDATE deliveries SET status = 'failed', claim_token = NULL, updated_ns = %s WHERE id = ANY(%s)",
            (now_ns, orphans),
        )
    return claims


# The attempts whose claims still hold: their deliveries updated and their attempts logged (a
# retried delivery's log goes on after the attempts already logged), answering their ordinals.
_RECORD = (
    "WITH r AS (SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[],"
    " %s::bigint[], %s::integer[], %s::bigint[], %s::integer[], %s::double precision[], %s::text[],"
    " %s::text[]) WITH ORDINALITY AS r(delivery_id, claim_token, status, due_ns, now_ns, number,"
    " started_ns, status_code, latency_ms, error, response, ord)),"
    " held AS (UPDATE deliveries d SET status = r.status, attempts = d.attempts + 1,"
    " due_ns = r.due_ns, claim_token = NULL, updated_ns = r.now_ns FROM r WHERE d.id = r.delivery_id"
    " AND d.claim_token = r.claim_token AND d.status = 'pending' AND d.due_ns > r.now_ns"
    " RETURNING r.*),"
    " logged AS (INSERT INTO delivery_attempts (delivery_id, number, started_ns, status_code,"
    " latency_ms, error, response) SELECT delivery_id, greatest(number, coalesce((SELECT"
    " max(a.number) FROM delivery_attempts a WHERE a.delivery_id = held.delivery_id), 0) + 1),"
    " started_ns, status_code, latency_ms, error, response FROM held)"
    " SELECT ord FROM held"
)


async def record(conn: AsyncConnection[Any], results: Sequence[AttemptResult]) -> list[bool]:
    """Record the attempts whose claims still hold, as if one by one in order; False for the rest.

    Pipelined: the subscriptions are locked and the deliveries written in one round trip;
    the streaks that changed, if any, go with the commit.
    """
    locked = await conn.execute(
        "SELECT id, failing_since_ns FROM subscriptions WHERE id = ANY(%s) ORDER BY id"
        " FOR NO KEY UPDATE",
        (sorted({r.subscription_id for r in results}),),
    )
    held = await conn.execute(
        _RECORD,
        (
            [r.delivery_id for r in results],
            [r.claim_token for r in results],
            [r.status for r in results],
            [r.next_due_ns if r.next_due_ns is not None else r.now_ns for r in results],
            [r.now_ns for r in results],
            [r.attempt.number for r in results],
            [r.attempt.started_ns for r in results],
            [r.attempt.status_code for r in results],
            [r.attempt.latency_ms for r in results],
            [r.attempt.error for r in results],
            [r.attempt.response for r in results],
        ),
    )
    failing = {row[0]: row[1] for row in await locked.fetchall()}
    kept = {row[0] for row in await held.fetchall()}
    recorded = [ordinal in kept for ordinal in range(1, len(results) + 1)]
    streaks, disables = subscription_writes(
        (r for r, ok in zip(results, recorded, strict=True) if ok), failing
    )
    async with conn.cursor() as cursor:
        if streaks:
            await cursor.executemany(placeholders(SET_FAILING_SINCE, "%s"), streaks)
        if disables:
            await cursor.executemany(placeholders(DISABLE, "%s"), disables)
    return recorded


async def release(conn: AsyncConnection[Any], claims: Sequence[tuple[int, str, int]]) -> list[bool]:
    """Give claimed deliveries back unsent, due again when each says; False where the claim was lost."""
    cursor = await conn.execute(
        "UPDATE deliveries d SET claim_token = NULL, due_ns = c.due_ns"
        " FROM unnest(%s::bigint[], %s::text[], %s::bigint[]) WITH ORDINALITY AS c(id, claim_token, due_ns, ord)"
        " WHERE d.id = c.id AND d.claim_token = c.claim_token AND d.status = 'pending' RETURNING c.ord",
        ([c[0] for c in claims], [c[1] for c in claims], [c[2] for c in claims]),
    )
    kept = {row[0] for row in await cursor.fetchall()}
    return [ordinal in kept for ordinal in range(1, len(claims) + 1)]


async def _with_attempts(
    conn: AsyncConnection[Any], rows: Sequence[Sequence[Any]]
) -> list[Delivery]:
    cursor = await conn.execute(
        "SELECT delivery_id, number, started_ns, status_code, latency_ms, error, response FROM delivery_attempts"
        " WHERE delivery_id = ANY(%s) ORDER BY delivery_id, number",
        ([row[0] for row in rows],),
    )
    attempts: dict[int, list[Attempt]] = {}
    for a in await cursor.fetchall():
        attempts.setdefault(a[0], []).append(
            Attempt(
                number=a[1],
                started_ns=a[2],
                status_code=a[3],
                latency_ms=a[4],
                error=a[5],
                response=a[6],
            )
        )
    return [
        Delivery(
            id=row[0],
            subscription_id=row[1],
            event_position=(row[2] << 64) | row[3],
            status=row[4],
            attempts=row[5],
            due_ns=row[6],
            created_ns=row[7],
            updated_ns=row[8],
            event_id=row[9],
            event_source=row[10],
            event_type=row[11],
            attempt_log=tuple(attempts.get(row[0], ())),
        )
        for row in rows
    ]


async def list_deliveries(
    conn: AsyncConnection[Any],
    sub_id: str,
    status: str | None,
    after: int | None,
    limit: int,
    viewer_roles: int,
) -> list[Delivery]:
    """A subscription's deliveries of events the viewer may see, newest first."""
    sql, params = deliveries_page_sql(
        "%s",
        f"SELECT {_DELIVERY_COLUMNS} FROM {_DELIVERY_FROM}",
        sub_id,
        status,
        after,
        limit,
        viewer_roles,
    )
    cursor = await conn.execute(sql, params)
    return await _with_attempts(conn, await cursor.fetchall())


async def get_delivery(conn: AsyncConnection[Any], delivery_id: int) -> Delivery | None:
    """One delivery with its attempts."""
    cursor = await conn.execute(
        f"SELECT {_DELIVERY_COLUMNS} FROM {_DELIVERY_FROM} WHERE d.id = %s", (delivery_id,)
    )
    rows = await cursor.fetchall()
    found = await _with_attempts(conn, rows) if rows else []
    return found[0] if found else None


async def replay(conn: AsyncConnection[Any], sub: Subscription, since_ns: int, now_ns: int) -> int:
    """Queue every stored event the subscription sees, stored since `since_ns`, that matches it."""
    tenant = groups.root_of(sub.group)
    if sub.group == tenant:
        cursor = await conn.execute(
            "SELECT e.seq, e.stored_ns, e.type, e.subject, e.roles_mask FROM events e"
            " WHERE e.tenant = %s AND e.stored_ns >= %s ORDER BY e.tx, e.seq",
            (tenant, since_ns),
        )
    else:
        cursor = await conn.execute(
            "SELECT e.seq, e.stored_ns, e.type, e.subject, e.roles_mask FROM event_scopes s"
            f" JOIN events e ON {SQL.scope_join()} WHERE {SQL.scope_is('s')} AND s.stored_ns >= %s"
            " ORDER BY s.tx, s.seq",
            (sub.group, since_ns),
        )
    found = await cursor.fetchall()
    mask = roles_mask(sub.roles)
    # An event still waiting to go to this subscription is not queued a second time.
    cursor = await conn.execute(
        "SELECT event_seq FROM deliveries WHERE subscription_id = %s AND status = 'pending'",
        (sub.id,),
    )
    waiting = {row[0] for row in await cursor.fetchall()}
    queued = [
        (sub.id, seq, stored_ns)
        for seq, stored_ns, type_, subject, event_mask in found
        if seq not in waiting
        and sub.matches(type_, subject)
        and (event_mask == 0 or event_mask & mask)
    ]
    await queue_deliveries(conn, queued, now_ns)
    return len(queued)
