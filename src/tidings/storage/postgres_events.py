"""The PostgreSQL backend's events: set-based ingest with fan-out, and its query dialect.

An event's position is its (tx, seq) pair packed into one integer (tx in the high
64 bits), so cursors and the rest of tidings see one ascending ingest order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import uuid6
from psycopg import AsyncConnection

from tidings import groups
from tidings.errors import Conflict
from tidings.model import EventInput, EventQuery, Ingested, StoredEvent, Subscription
from tidings.storage import querying
from tidings.storage.indexing import searchable_text, visible_scopes
from tidings.storage.rows import (
    SUBSCRIPTION_COLUMNS,
    delivers_to,
    groups_above,
    subscription_from_row,
)
from tidings.timestamps import from_ns
from tidings.wire import render_attributes

EVENT_COLUMNS = "e.tx, e.seq, " + querying.EVENT_COLUMNS
LOW_BITS = 64
WAKE_CHANNEL = "tidings_deliveries"
INGEST_LOCK = (
    7_160_946  # the shared advisory lock every ingest holds (see ingest_horizon() in the schema)
)


def pack(tx: int, seq: int) -> int:
    """One integer position from a (tx, seq) pair."""
    return (tx << LOW_BITS) | seq


def unpack(position: int) -> tuple[int, int]:
    """The (tx, seq) pair of a position."""
    return position >> LOW_BITS, position & ((1 << LOW_BITS) - 1)


async def begin_ingest(conn: AsyncConnection[Any]) -> None:
    """Mark a transaction that will ingest, before it writes anything else.

    Readers' horizon (`ingest_horizon()`) trusts that an ingest holds the advisory lock from
    before it has a transaction id. A transaction that writes other rows first (a subscription
    and its audit event) must take the lock before those writes give it an id.
    """
    await conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (INGEST_LOCK,))


def event_from_row(row: Sequence[Any]) -> StoredEvent:
    """A StoredEvent from a row of EVENT_COLUMNS."""
    return StoredEvent(
        position=pack(row[0], row[1]),
        id=row[2],
        source=row[3],
        type=row[4],
        group=row[5],
        attributes=row[6],
        data=row[7],
    )


class PostgresEventSQL(querying.EventSQL):
    """PostgreSQL's dialect: `%s` placeholders, (tx, seq) positions, the ingest horizon, tsvector.

    `horizon` is the ingest horizon read just before a list (see `with_horizon`); finding by id
    needs none. `window`, whole days of stored time `[first_ns, end_ns)`, keeps a page to the
    partitions of those days (see `postgres_paging`).
    """

    p = "%s"
    # No ORDER BY: with one, the planner walks the tenant's whole ingest order to find an id.
    find_order = ""

    def __init__(self, horizon: int | None = None, window: tuple[int, int] | None = None):
        self.horizon = horizon
        self.window = window

    def in_window(self, alias: str) -> str:
        """The window's bounds on `alias`, as numbers in the SQL: the planner then plans (and
        locks) the window's partitions only."""
        if self.window is None:
            return ""
        first_ns, end_ns = self.window
        return f" AND {alias}.stored_ns >= {int(first_ns)} AND {alias}.stored_ns < {int(end_ns)}"

    def position_columns(self, alias: str) -> list[str]:
        return [f"{alias}.tx", f"{alias}.seq"]

    def after(self, columns: list[str], position: int, descending: bool) -> tuple[str, list[Any]]:
        return f"({columns[0]}, {columns[1]}) {'<' if descending else '>'} (%s, %s)", list(
            unpack(position)
        )

    def text_match(self) -> str:
        return (
            "to_tsvector('simple'::regconfig, e.search_text) @@ to_tsquery('simple'::regconfig, %s)"
        )

    def text_query(self, words: list[str]) -> str:
        quoted = ("'" + word.replace("\\", "\\\\").replace("'", "''") + "':*" for word in words)
        return " & ".join(quoted)

    def visible_now(self, alias: str) -> str:
        # Only rows older than every ingest still running: nothing can commit below them later.
        # The horizon is a number read before the query (see with_horizon()), not a call in it.
        if self.horizon is None:
            raise RuntimeError(
                "a PostgreSQL event query needs the ingest horizon: use with_horizon()"
            )
        return f" AND {alias}.tx < {int(self.horizon)}{self.in_window(alias)}"

    def scope_join(self) -> str:
        return "e.seq = s.seq AND e.stored_ns = s.stored_ns"

    def in_scope(self, scope: str) -> tuple[str, list[Any]]:
        return "EXISTS (SELECT 1 FROM event_scopes s WHERE s.scope = %s AND s.seq = e.seq)", [scope]

    def list_sql(self, query: EventQuery) -> tuple[str, list[Any]]:
        """A page of events, as the shared SQL, but a subtree's scope rows fetch their events one
        by one, in order, until the page is full.

        The planner takes the join's two equalities (seq, stored_ns) as independent and expects
        about one row out of it, so it may hash all the events to join a few scope rows. A
        LATERAL subquery (OFFSET 0 keeps it from being flattened back into a join) leaves it one
        plan: the scope index in order, each row's event looked up in its own partition only.
        """
        if query.scope == groups.root_of(query.scope):
            return super().list_sql(query)
        # The scope rows carry their event's type (0002_scope_types.sql): with one type, the
        # page comes in order from (scope, type, tx, seq), however rare the type.
        type_terms: list[str] = []
        type_params: list[Any] = []
        if query.types:
            type_terms.append(f"s.type IN ({', '.join(['%s'] * len(query.types))})")
            type_params.extend(query.types)
        for prefix in query.type_prefixes:
            type_terms.append("(s.type >= %s AND s.type < %s)")
            type_params.extend(querying.prefix_range(prefix))
        types = " AND (" + " OR ".join(type_terms) + ")" if type_terms else ""
        source = (
            "FROM event_scopes s CROSS JOIN LATERAL"
            f" (SELECT * FROM events e WHERE {self.scope_join()}{self.in_window('e')} OFFSET 0) e"
            f" WHERE s.scope = %s{types}{self.visible_now('s')}"
        )
        order = self.position_columns("s")
        where, more = self.filters(query, order)
        direction = "DESC" if query.descending else "ASC"
        ordering = ", ".join(f"{column} {direction}" for column in order)
        sql = f"SELECT {', '.join(order)}, {querying.EVENT_COLUMNS} {source}{where} ORDER BY {ordering} LIMIT %s"
        return sql, [query.scope, *type_params, *more, query.limit]


SQL = PostgresEventSQL()


async def with_horizon(conn: AsyncConnection[Any]) -> PostgresEventSQL:
    """The dialect with the ingest horizon as it is now, read in a statement of its own.

    It must be read before the query's snapshot is taken: every ingest below it has then
    finished, so the query (a later statement, with a later snapshot under READ COMMITTED)
    sees all of them. Read within the query itself, an ingest could commit between the
    snapshot and the read, and a cursor would pass its events for good.
    """
    cursor = await conn.execute("SELECT ingest_horizon()")
    row = await cursor.fetchone()
    assert row is not None
    return PostgresEventSQL(int(row[0]))


async def _active_subscriptions(conn: AsyncConnection[Any], scopes: set[str]) -> list[Subscription]:
    cursor = await conn.execute(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE state = 'active' AND group_path = ANY(%s)",
        (sorted(scopes),),
    )
    return [subscription_from_row(row) for row in await cursor.fetchall()]


async def ingest(
    conn: AsyncConnection[Any], events: Sequence[EventInput], now_ns: int
) -> list[Ingested]:
    """Store events, their scopes and their deliveries in the caller's transaction (the outbox)."""
    keyed: dict[tuple[str, str, str], int] = {}
    prepared: list[tuple[EventInput, str, tuple[str, str, str]]] = []
    for index, event in enumerate(events):
        event_id = event.id or str(uuid6.uuid7())
        key = (groups.root_of(event.group), event.source, event_id)
        first = keyed.setdefault(key, index)
        if first != index and prepared[first][0].fingerprint != event.fingerprint:
            raise Conflict(
                f"the batch holds two different events with source {event.source!r} and id {event_id!r}",
                details=[{"index": index, "source": event.source, "id": event_id}],
            )
        prepared.append((event, event_id, key))
    unique = [prepared[i] for i in sorted(set(keyed.values()))]
    # The advisory lock marks this transaction as an ingest for readers' horizon (see the schema);
    # it is taken in the same statement that gives the transaction its id.
    cursor = await conn.execute(
        "SELECT pg_current_xact_id()::text::bigint, array(SELECT nextval('events_seq') FROM generate_series(1, %s))"
        " FROM (SELECT pg_advisory_xact_lock_shared(%s)) AS lock",
        (len(unique), INGEST_LOCK),
    )
    tx, seqs = await cursor.fetchone()  # type: ignore[misc]
    cursor = await conn.execute(
        "INSERT INTO event_ids (tenant, source, id, seq, stored_ns, fingerprint)"
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::text[])"
        " ON CONFLICT DO NOTHING RETURNING tenant, source, id",
        (
            [key[0] for _, _, key in unique],
            [key[1] for _, _, key in unique],
            [key[2] for _, _, key in unique],
            seqs,
            [now_ns] * len(unique),
            [event.fingerprint for event, _, _ in unique],
        ),
    )
    inserted = {tuple(row) for row in await cursor.fetchall()}
    existing = await _existing(conn, [item for item in unique if item[2] not in inserted], prepared)
    stored: dict[tuple[str, str, str], StoredEvent] = dict(existing)
    rows: list[tuple[Any, ...]] = []
    scope_rows: list[tuple[str, int, int, int, str]] = []
    fresh: list[tuple[EventInput, int]] = []
    for (event, event_id, key), seq in zip(unique, seqs, strict=True):
        if key not in inserted:
            continue
        time = event.time or from_ns(now_ns)
        attributes = render_attributes(event, event_id, time, now_ns)
        rows.append(
            (
                tx,
                seq,
                key[0],
                event.group,
                event_id,
                event.source,
                event.type,
                event.subject,
                event.actor,
                event.eventkey,
                event.roles_mask,
                time.ns,
                now_ns,
                attributes,
                event.data_json,
                searchable_text(event),
                event.raw,
            )
        )
        scope_rows.extend((scope, tx, seq, now_ns, event.type) for scope in visible_scopes(event))
        stored[key] = StoredEvent(
            position=pack(tx, seq),
            id=event_id,
            source=event.source,
            type=event.type,
            group=event.group,
            attributes=attributes,
            data=event.data_json,
        )
        fresh.append((event, seq))
    if rows:
        async with conn.cursor().copy(
            "COPY events (tx, seq, tenant, group_path, id, source, type, subject, actor, eventkey,"
            " roles_mask, time_ns, stored_ns, attributes, data, search_text, payload) FROM STDIN"
        ) as copy:
            for row in rows:
                await copy.write_row(row)
    if scope_rows:
        async with conn.cursor().copy(
            "COPY event_scopes (scope, tx, seq, stored_ns, type) FROM STDIN"
        ) as copy:
            for scope_row in scope_rows:
                await copy.write_row(scope_row)
    queued = await _fan_out(conn, fresh, now_ns)
    seq_of = {key: seq for (_, _, key), seq in zip(unique, seqs, strict=True)}
    results = []
    for index, (_, _, key) in enumerate(prepared):
        created = key in inserted and index == keyed[key]
        deliveries = queued[seq_of[key]] if created else 0
        results.append(Ingested(event=stored[key], created=created, deliveries=deliveries))
    return results


async def _existing(
    conn: AsyncConnection[Any],
    items: list[tuple[EventInput, str, tuple[str, str, str]]],
    prepared: list[Any],
) -> dict[tuple[str, str, str], StoredEvent]:
    """The stored events of repeats; Conflict if one was stored with other content."""
    if not items:
        return {}
    cursor = await conn.execute(
        f"SELECT i.tenant, i.source, i.id, i.fingerprint, {EVENT_COLUMNS} FROM event_ids i"
        " JOIN events e ON e.seq = i.seq AND e.stored_ns = i.stored_ns"
        " WHERE (i.tenant, i.source, i.id) IN (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]))",
        ([k[0] for _, _, k in items], [k[1] for _, _, k in items], [k[2] for _, _, k in items]),
    )
    found = {
        (row[0], row[1], row[2]): (row[3], event_from_row(row[4:]))
        for row in await cursor.fetchall()
    }
    result = {}
    for event, event_id, key in items:
        fingerprint, stored = found[key]
        if fingerprint != event.fingerprint:
            index = next(i for i, item in enumerate(prepared) if item[2] == key)
            raise Conflict(
                f"an event with source {event.source!r} and id {event_id!r} is stored with other content",
                details=[{"index": index, "source": event.source, "id": event_id}],
            )
        result[key] = stored
    return result


async def _fan_out(
    conn: AsyncConnection[Any], fresh: list[tuple[EventInput, int]], now_ns: int
) -> Counter[int]:
    """Queue each new event for the active subscriptions that match it, and wake the workers;
    return how many deliveries each event (by its seq) queued."""
    if not fresh:
        return Counter()
    scopes: set[str] = set()
    for event, _ in fresh:
        scopes |= groups_above(event)
    subscriptions = await _active_subscriptions(conn, scopes)
    queued = [
        (sub.id, seq, now_ns)
        for event, seq in fresh
        for sub in subscriptions
        if sub.group in groups_above(event) and delivers_to(sub, event)
    ]
    if not queued:
        return Counter()
    async with conn.cursor().copy(
        "COPY deliveries (subscription_id, event_seq, event_stored_ns, status, due_ns, created_ns, updated_ns)"
        " FROM STDIN"
    ) as copy:
        for sub_id, seq, stored_ns in queued:
            await copy.write_row((sub_id, seq, stored_ns, "pending", now_ns, now_ns, now_ns))
    await conn.execute(f"NOTIFY {WAKE_CHANNEL}")
    return Counter(seq for _, seq, _ in queued)
