"""The SQLite backend's events: ingest with fan-out, and the SQL of lists, lookups and stats.

Who sees an event: a token of group G sees the events of G's subtree and
those that name a group of G's subtree in `allowedgroups`. Both are rows of
`event_scopes` (one per group below the root that sees the event, written
behind the events by sqlite_scopes), so any subtree is one ordered index
range; the root sees its whole tenant. An event with `allowedroles` is seen
only by tokens holding one of them (`roles_mask`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from tidings import groups
from tidings.ids import uuid7s
from tidings.model import EventInput, EventQuery, Ingested, StoredEvent
from tidings.storage import querying
from tidings.storage.conflicts import repeated_in_batch, stored_with_other_content
from tidings.storage.rows import event_identity
from tidings.storage.sqlite_delivery import FanOut
from tidings.storage.sqlite_scopes import INTERNED
from tidings.timestamps import from_ns
from tidings.wire import render_attributes

EVENT_COLUMNS = "e.position, " + querying.EVENT_COLUMNS


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


# The last position the scope indexer has done, read in the query's own snapshot.
_INDEXED = "(SELECT CAST(value AS INTEGER) FROM settings WHERE name = 'scopes:indexed')"
_SHARED_WITH = (
    "json_each('[\"' || replace(json_extract(e.attributes, '$.allowedgroups'), ',', '\",\"')"
    " || '\"]')"
)


def _seen_from(scope: str) -> tuple[str, list[Any]]:
    """The condition that `e` is seen from `scope` (below the root) by its group or the groups
    it is shared with, tested on the event itself: what its scope rows will say."""
    bounds = [scope, scope + "/", scope + "0"]  # '0' follows '/': the subtree's paths lie between
    return (
        "(e.group_path = ? OR (e.group_path > ? AND e.group_path < ?)"
        " OR (instr(e.attributes, '\"allowedgroups\"') > 0 AND EXISTS (SELECT 1 FROM"
        f" {_SHARED_WITH} j WHERE j.value = ? OR (j.value > ? AND j.value < ?))))",
        [*bounds, *bounds],
    )


class SQLiteEventSQL(querying.EventSQL):
    """SQLite's dialect: `?` placeholders, one integer position, FTS5.

    A query below the root reads two parts in one snapshot: the scope rows up to the scope
    indexer's mark, and the events after it (not indexed yet), each tested for the group. So
    a read never waits for the indexer nor writes: it sees every event stored before it, and
    never passes one.
    """

    p = "?"

    def __init__(self, tail: bool = False):
        # True: the SQL of the second part, the events after the mark.
        self.tail = tail

    def visible_now(self, alias: str) -> str:
        return f" AND s.position <= {_INDEXED}" if alias == "s" else ""

    def scoped(self, scope: str) -> tuple[str, list[Any], list[str]]:
        if not self.tail:
            return super().scoped(scope)
        seen, params = _seen_from(scope)
        return (
            f"FROM events e WHERE e.tenant = ? AND e.position > {_INDEXED} AND {seen}",
            [groups.root_of(scope), *params],
            ["e.position"],
        )

    def list_parts(self, query: EventQuery) -> list[tuple[str, list[Any]]]:
        """A page's queries, to run in order in one snapshot until the page is full: below the
        root, the scope rows up to the mark and the events after it (those first, descending).
        (As one compound statement, SQLite sorted each part whole instead of stopping early.)"""
        indexed = self.list_sql(query)
        if _at_root(query):
            return [indexed]
        parts = [indexed, TAIL.list_sql(query)]
        return parts[::-1] if query.descending else parts

    def count_sql(self, query: EventQuery) -> tuple[str, list[Any]]:
        indexed, params = super().count_sql(query)
        if _at_root(query) or self.tail:
            return indexed, params
        tail, more = TAIL.count_sql(query)
        return f"SELECT ({indexed}) + ({tail})", [*params, *more]

    def counts_sql(
        self, query: EventQuery, group_by: Sequence[str], interval: str | None
    ) -> tuple[str, list[Any], int]:
        indexed, params, keys = super().counts_sql(query, group_by, interval)
        if _at_root(query) or self.tail:
            return indexed, params, keys
        tail, more, _ = TAIL.counts_sql(query, group_by, interval)
        names = "".join(f"k{i}, " for i in range(keys))
        numbers = ", ".join(str(i + 1) for i in range(keys))
        return (
            f"WITH parts ({names}n) AS (SELECT * FROM ({indexed}) UNION ALL SELECT * FROM ({tail}))"
            f" SELECT {names}sum(n) FROM parts" + (f" GROUP BY {numbers}" if keys else ""),
            [*params, *more],
            keys,
        )

    def position_columns(self, alias: str) -> list[str]:
        return [f"{alias}.position"]

    def after(self, columns: list[str], position: int, descending: bool) -> tuple[str, list[Any]]:
        return f"{columns[0]} {'<' if descending else '>'} ?", [position]

    def text_match(self) -> str:
        return "e.position IN (SELECT rowid FROM events_text WHERE events_text MATCH ?)"

    def text_query(self, words: list[str]) -> str:
        return " ".join('"' + word.replace('"', '""') + '"*' for word in words)

    # Scope rows hold interned numbers for their group and type (see sqlite_scopes).
    def scope_is(self, alias: str) -> str:
        return f"{alias}.scope = {INTERNED}"

    def scope_join(self) -> str:
        return "e.position = s.position"

    def in_scope(self, scope: str) -> tuple[str, list[Any]]:
        seen, params = _seen_from(scope)
        return (
            f"(e.position IN (SELECT position FROM event_scopes s WHERE {self.scope_is('s')})"
            f" OR (e.position > {_INDEXED} AND {seen}))",
            [scope, *params],
        )

    find_order = " ORDER BY e.position"

    def scope_filters(self, query: EventQuery) -> tuple[str, list[Any]]:
        # Scope rows carry the event's type: exact types are one range of (scope, type, position).
        if query.types and not query.type_prefixes and not self.tail:
            types = ", ".join("?" * len(query.types))
            return f" AND s.type IN (SELECT id FROM interned WHERE text IN ({types}))", list(
                query.types
            )
        return "", []


def _at_root(query: EventQuery) -> bool:
    return query.scope == groups.root_of(query.scope)


SQL = SQLiteEventSQL()
TAIL = SQLiteEventSQL(tail=True)


def ingest(conn: sqlite3.Connection, events: Sequence[EventInput], now_ns: int) -> list[Ingested]:
    """Store events and queue their deliveries in the caller's transaction (the outbox).

    Their scope rows and text are indexed behind (sqlite_scopes, sqlite_search)."""
    results: list[Ingested] = []
    fan_out = FanOut(conn)
    minted = iter(uuid7s(sum(1 for event in events if not event.id), now_ns))
    now = from_ns(now_ns)
    batch_keys: set[tuple[str, str, str]] = set()  # the (tenant, source, id) of those stored
    for index, event in enumerate(events):
        tenant = groups.root_of(event.group)
        event_id = event.id or next(minted)
        time = event.time or now
        attributes = render_attributes(event, event_id, time, now_ns)
        # Not RETURNING: it makes SQLite's insert about three times as slow (~20 us an event);
        # the cursor's rowcount and lastrowid say the same.
        inserted = conn.execute(
            "INSERT INTO events (tenant, group_path, id, source, type, subject, actor, time_ns,"
            " stored_ns, fingerprint, attributes, data, roles_mask, eventkey)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (tenant, source, id) DO NOTHING",
            (
                *event_identity(event, event_id),
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
        )
        key = (tenant, event.source, event_id)
        if inserted.rowcount == 0:
            existing = _existing(conn, tenant, event, event_id, index, key in batch_keys)
            results.append(Ingested(event=existing, created=False))
            continue
        batch_keys.add(key)
        position = inserted.lastrowid
        assert position is not None  # the rowid (position) of the row just inserted
        if event.raw is not None:
            conn.execute(
                "INSERT INTO event_payloads (position, payload) VALUES (?, ?)",
                (position, event.raw),
            )
        deliveries = fan_out.enqueue(position, event, now_ns)
        stored = StoredEvent.of_new(event, position, event_id, attributes)
        results.append(Ingested(event=stored, created=True, deliveries=deliveries))
    return results


def _existing(
    conn: sqlite3.Connection,
    tenant: str,
    event: EventInput,
    event_id: str,
    index: int,
    in_batch: bool,
) -> StoredEvent:
    """The stored event holding `event`'s key (stored by this batch if `in_batch`); Conflict
    if its content is other."""
    row = conn.execute(
        f"SELECT {EVENT_COLUMNS}, e.fingerprint FROM events e WHERE e.tenant = ? AND e.source = ? AND e.id = ?",
        (tenant, event.source, event_id),
    ).fetchone()
    if row[7] != event.fingerprint:
        conflict = repeated_in_batch if in_batch else stored_with_other_content
        raise conflict(index, event.source, event_id)
    return event_from_row(row)


def expire_batch(conn: sqlite3.Connection, before_ns: int, limit: int) -> int:
    """Delete up to `limit` events stored before `before_ns`, and all that hangs on them."""
    positions = [
        row[0]
        for row in conn.execute(
            "SELECT position FROM events WHERE stored_ns < ? ORDER BY stored_ns LIMIT ?",
            (before_ns, limit),
        )
    ]
    if positions:
        marks = ",".join("?" * len(positions))
        for table in ("deliveries", "event_scopes", "event_payloads", "events"):
            column = "event_position" if table == "deliveries" else "position"
            conn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", positions)
        conn.execute(f"DELETE FROM events_text WHERE rowid IN ({marks})", positions)
    return len(positions)
