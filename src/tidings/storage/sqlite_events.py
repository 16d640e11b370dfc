"""The SQLite backend's events: ingest with fan-out, and the SQL of lists, lookups and stats.

Who sees an event: a token of group G sees the events of G's subtree and
those that name a group of G's subtree in `allowedgroups`. Both are rows of
`event_scopes` (one per group below the root that sees the event), so any
subtree is one ordered index range; the root sees its whole tenant. An event
with `allowedroles` is seen only by tokens holding one of them (`roles_mask`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

import uuid6

from tidings import groups
from tidings.errors import Conflict
from tidings.model import EventInput, EventQuery, Ingested, StoredEvent
from tidings.storage.sqlite_delivery import FanOut
from tidings.timestamps import from_ns
from tidings.wire import render_attributes

EVENT_COLUMNS = "e.position, e.id, e.source, e.type, e.group_path, e.attributes, e.data"
GROUP_BY_COLUMNS = {
    "type": "e.type",
    "group": "e.group_path",
    "actor": "e.actor",
    "source": "e.source",
    "subject": "e.subject",
}
INTERVALS = {"hour": 3_600_000_000_000, "day": 86_400_000_000_000}


def event_from_row(row: Sequence[Any]) -> StoredEvent:
    """A StoredEvent from a row of EVENT_COLUMNS."""
    return StoredEvent(
        position=row[0],
        id=row[1],
        source=row[2],
        type=row[3],
        group=row[4],
        attributes=row[5],
        data=row[6],
    )


def prefix_range(prefix: str) -> tuple[str, str]:
    """The half-open string range of everything that starts with `prefix`."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def visible_scopes(event: EventInput) -> list[str]:
    """The groups below the root that see the event: its own ancestors and the allowed groups'."""
    scopes = set(groups.ancestors(event.group)[1:])
    for allowed in event.allowed_groups:
        scopes.update(groups.ancestors(allowed)[1:])
    return sorted(scopes)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        yield str(value)


def searchable_text(event: EventInput) -> str:
    """What `q` searches: type, subject, actor, description and the body's values."""
    parts = [
        event.type,
        event.subject or "",
        event.actor or "",
        str(event.extensions.get("description", "")),
    ]
    parts.extend(_strings(event.data.get("body", {})))
    return " ".join(part for part in parts if part)


def ingest(conn: sqlite3.Connection, events: Sequence[EventInput], now_ns: int) -> list[Ingested]:
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
            " stored_ns, fingerprint, attributes, data, roles_mask, eventkey)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
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
                event.roles_mask,
                event.eventkey,
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
            [(scope, position) for scope in visible_scopes(event)],
        )
        conn.execute(
            "INSERT INTO events_text (rowid, text) VALUES (?, ?)",
            (position, searchable_text(event)),
        )
        if event.raw is not None:
            conn.execute(
                "INSERT INTO event_payloads (position, payload) VALUES (?, ?)",
                (position, event.raw),
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
        f"SELECT {EVENT_COLUMNS}, e.fingerprint FROM events e WHERE e.tenant = ? AND e.source = ? AND e.id = ?",
        (tenant, event.source, event_id),
    ).fetchone()
    if row[7] != event.fingerprint:
        raise Conflict(
            f"an event with source {event.source!r} and id {event_id!r} is stored with other content",
            details=[{"index": index, "source": event.source, "id": event_id}],
        )
    return event_from_row(row)


def _scoped(scope: str) -> tuple[str, list[Any], str]:
    """FROM and WHERE of the events visible from `scope`, and the column to order by."""
    tenant = groups.root_of(scope)
    if scope == tenant:
        return "FROM events e WHERE e.tenant = ?", [tenant], "e.position"
    return (
        "FROM event_scopes s JOIN events e ON e.position = s.position WHERE s.scope = ?",
        [scope],
        "s.position",
    )


def _filters(query: EventQuery, order_column: str) -> tuple[str, list[Any]]:
    """The WHERE terms of a query's filters (after the scope's)."""
    sql = " AND (e.roles_mask = 0 OR (e.roles_mask & ?) != 0)"
    params: list[Any] = [query.viewer_roles]
    type_terms = []
    if query.types:
        type_terms.append(f"e.type IN ({','.join('?' * len(query.types))})")
        params.extend(query.types)
    for prefix in query.type_prefixes:
        type_terms.append("(e.type >= ? AND e.type < ?)")
        params.extend(prefix_range(prefix))
    if type_terms:
        sql += " AND (" + " OR ".join(type_terms) + ")"
    for column, value in (
        ("e.source", query.source),
        ("e.subject", query.subject),
        ("e.actor", query.actor),
        ("e.eventkey", query.eventkey),
    ):
        if value is not None:
            sql += f" AND {column} = ?"
            params.append(value)
    if query.subject_prefix:
        sql += " AND e.subject >= ? AND e.subject < ?"
        params.extend(prefix_range(query.subject_prefix))
    elif query.subject_prefix == "":
        sql += " AND e.subject IS NOT NULL"
    if query.since_ns is not None:
        sql += " AND e.time_ns >= ?"
        params.append(query.since_ns)
    if query.until_ns is not None:
        sql += " AND e.time_ns < ?"
        params.append(query.until_ns)
    if query.text is not None:
        sql += " AND e.position IN (SELECT rowid FROM events_text WHERE events_text MATCH ?)"
        params.append(query.text)
    if query.after is not None:
        sql += f" AND {order_column} {'<' if query.descending else '>'} ?"
        params.append(query.after)
    return sql, params


def list_sql(query: EventQuery) -> tuple[str, list[Any]]:
    """The SQL of a page of events."""
    source, params, order_column = _scoped(query.scope)
    where, more = _filters(query, order_column)
    direction = "DESC" if query.descending else "ASC"
    sql = f"SELECT {EVENT_COLUMNS} {source}{where} ORDER BY {order_column} {direction} LIMIT ?"
    return sql, [*params, *more, query.limit]


def count_sql(query: EventQuery) -> tuple[str, list[Any]]:
    """The SQL counting every event a query matches (ignoring its cursor and limit)."""
    source, params, order_column = _scoped(query.scope)
    where, more = _filters(query, order_column)
    return f"SELECT count(*) {source}{where}", [*params, *more]


def find_sql(
    scope: str, event_id: str, source: str | None, viewer_roles: int, limit: int
) -> tuple[str, list[Any]]:
    """The SQL of the visible events with a CloudEvents id (and source)."""
    tenant = groups.root_of(scope)
    sql = f"SELECT {EVENT_COLUMNS} FROM events e WHERE e.tenant = ? AND e.id = ?"
    params: list[Any] = [tenant, event_id]
    if scope != tenant:
        sql += " AND e.position IN (SELECT position FROM event_scopes WHERE scope = ?)"
        params.append(scope)
    sql += " AND (e.roles_mask = 0 OR (e.roles_mask & ?) != 0)"
    params.append(viewer_roles)
    if source is not None:
        sql += " AND e.source = ?"
        params.append(source)
    sql += " ORDER BY e.position LIMIT ?"
    params.append(limit)
    return sql, params


def stats_sql(
    query: EventQuery, group_by: Sequence[str], interval: str | None
) -> tuple[str, list[Any]]:
    """The SQL counting events per `group_by` fields and time bucket, most first."""
    source, params, order_column = _scoped(query.scope)
    where, more = _filters(query, order_column)
    keys = [GROUP_BY_COLUMNS[name] for name in group_by]
    if interval is not None:
        width = INTERVALS[interval]
        keys.append(f"(e.time_ns / {width}) * {width}")
    select = ", ".join(keys)
    grouping = f" GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))}" if keys else ""
    order = " ORDER BY count(*) DESC" + (
        f", {', '.join(str(i + 1) for i in range(len(keys)))}" if keys else ""
    )
    sql = f"SELECT {select + ', ' if select else ''}count(*) {source}{where}{grouping}{order}"
    return sql, [*params, *more]
