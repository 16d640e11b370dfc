"""The PostgreSQL backend's events: set-based ingest with fan-out, and its query dialect.

An event's position is its (tx, seq) pair packed into one integer (tx in the high
64 bits), so cursors and the rest of tidings see one ascending ingest order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from psycopg import AsyncConnection, AsyncCursor

from tidings import groups
from tidings.errors import Conflict
from tidings.ids import MINTED_AHEAD_MS, minted_ms, uuid7s
from tidings.model import EventInput, EventQuery, Ingested, StoredEvent, Subscription
from tidings.storage import querying
from tidings.storage.conflicts import repeated_in_batch, stored_with_other_content
from tidings.storage.indexing import searchable_text, visible_scopes
from tidings.storage.postgres_interned import ScopeNumbers, number_of
from tidings.storage.postgres_partitions import DAY_NS
from tidings.storage.rows import (
    SUBSCRIPTION_COLUMNS,
    delivers_to,
    event_identity,
    groups_above,
    subscription_from_row,
)
from tidings.timestamps import Timestamp, from_ns
from tidings.wire import attribute_extras, compose_attributes, render_attributes

# After the shared columns, what the attributes of an event stored without their text are
# composed from (0006_slim_events.sql).
EVENT_FIELDS = (
    querying.EVENT_COLUMNS + ", e.subject, e.time_ns, e.time_digits, e.stored_ns, e.extras"
)
EVENT_COLUMNS = "e.tx, e.seq, " + EVENT_FIELDS
LOW_BITS = 64
WAKE_CHANNEL = "tidings_deliveries"
INGEST_LOCK = (
    7_160_946  # the shared advisory lock every ingest holds (see ingest_horizon() in the schema)
)

Key = tuple[str, str, str]  # (tenant, source, id)
Item = tuple[EventInput, str, Key]  # an event of a batch, its id (given or minted), its key


def pack(tx: int, seq: int) -> int:
    """One integer position from a (tx, seq) pair."""
    return (tx << LOW_BITS) | seq


def unpack(position: int) -> tuple[int, int]:
    """The (tx, seq) pair of a position."""
    return position >> LOW_BITS, position & ((1 << LOW_BITS) - 1)


async def begin_ingest(conn: AsyncConnection[Any]) -> None:
    """Mark a transaction that will ingest, before it writes anything else.

    Readers' horizon (`ingest_horizon()`) trusts that an ingest holds the advisory lock from
    before it has a transaction id. The same statement then gives it its id: while a holder
    has none, readers fall back to the oldest transaction running anywhere, so that moment is
    kept short. A transaction that writes other rows first (a subscription and its audit
    event) calls this before those writes.
    """
    await conn.execute(
        "SELECT pg_current_xact_id() FROM (SELECT pg_advisory_xact_lock_shared(%s) OFFSET 0) AS lock",
        (INGEST_LOCK,),
    )


def event_from_row(row: Sequence[Any]) -> StoredEvent:
    """A StoredEvent from a row of EVENT_COLUMNS."""
    tx, seq, event_id, source, type_, group, attributes, data = row[:8]
    if attributes is None:  # stored without its text: composed from the columns
        subject, time_ns, time_digits, stored_ns, extras = row[8:13]
        attributes = compose_attributes(
            event_id=event_id,
            source=source,
            type_=type_,
            subject=subject,
            time=Timestamp(time_ns, time_digits),
            group=group,
            extras=extras,
            stored_ns=stored_ns,
        )
    return StoredEvent(
        position=pack(tx, seq),
        id=event_id,
        source=source,
        type=type_,
        group=group,
        attributes=attributes,
        data=data,
    )


class PostgresEventSQL(querying.EventSQL):
    """PostgreSQL's dialect: `%s` placeholders, (tx, seq) positions, the ingest horizon, tsvector.

    `horizon` is the ingest horizon read just before a list (see `with_horizon`); finding by id
    needs none. `window`, whole days of stored time `[first_ns, end_ns)`, keeps a page to the
    partitions of those days (see `postgres_paging`). `numbers`, the interned numbers of a
    subtree query's group and types, are what its page names the scope rows by.
    """

    p = "%s"
    event_columns = EVENT_FIELDS
    # No ORDER BY: with one, the planner walks the tenant's whole ingest order to find an id.
    find_order = ""

    def __init__(
        self,
        horizon: int | None = None,
        window: tuple[int, int] | None = None,
        numbers: ScopeNumbers | None = None,
    ):
        self.horizon = horizon
        self.window = window
        self.numbers = numbers

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
        return f" AND {alias}.tx < {self.read_horizon()}{self.in_window(alias)}"

    def read_horizon(self) -> int:
        """The ingest horizon this query was built with."""
        if self.horizon is None:
            raise RuntimeError(
                "a PostgreSQL event query needs the ingest horizon: use with_horizon()"
            )
        return int(self.horizon)

    def scope_is(self, alias: str) -> str:
        # Scope rows hold the group's interned number (see postgres_interned).
        return f"{alias}.scope = {number_of()}"

    def scope_join(self) -> str:
        return "e.seq = s.seq AND e.stored_ns = s.stored_ns"

    def in_scope(self, scope: str) -> tuple[str, list[Any]]:
        # The whole key of event_scopes_order, and the partition key: one index probe.
        return (
            f"EXISTS (SELECT 1 FROM event_scopes s WHERE {self.scope_is('s')} AND s.tx = e.tx"
            " AND s.seq = e.seq AND s.stored_ns = e.stored_ns)",
            [scope],
        )

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
        if self.numbers is None:
            raise RuntimeError(
                "a PostgreSQL subtree's page needs the interned numbers of its query"
            )
        # Numbers are written as literals, so the planner sees their statistics (see
        # postgres_interned); NULL, a number never interned, matches no scope row. A read of
        # every partition is the exception (see `generic`): parameters, on a plan kept. The scope
        # rows carry their event's type (0002_scope_types.sql): with one type, the page comes
        # in order from (scope, type, tx, seq), however rare the type.
        scope, types = self.numbers.scope, self.numbers.types
        if self.generic:
            condition, params = self._generic_condition()
        else:
            condition = f"s.scope = {'NULL' if scope is None else int(scope)}"
            if types is not None:
                condition += f" AND s.type IN ({', '.join(str(int(t)) for t in types) or 'NULL'})"
            condition += self.visible_now("s")
            params = []
        source = (
            "FROM event_scopes s CROSS JOIN LATERAL"
            f" (SELECT * FROM events e WHERE {self.scope_join()}{self.in_window('e')} OFFSET 0) e"
            f" WHERE {condition}"
        )
        order = self.position_columns("s")
        where, more = self.filters(query, order)
        direction = "DESC" if query.descending else "ASC"
        ordering = ", ".join(f"{column} {direction}" for column in order)
        sql = f"SELECT {', '.join(order)}, {self.event_columns} {source}{where} ORDER BY {ordering} LIMIT {int(query.limit)}"
        return sql, [*params, *more]

    @property
    def generic(self) -> bool:
        """Whether a subtree's page is read with a generic plan (see `postgres_paging`): over
        every partition (no window), for no type or one, where its plan has one shape only."""
        numbers = self.numbers
        return (
            self.window is None
            and numbers is not None
            and numbers.scope is not None
            and (numbers.types is None or len(numbers.types) == 1)
        )

    def _generic_condition(self) -> tuple[str, list[Any]]:
        """The scope rows' terms of a generic plan's page: the numbers and the horizon as
        parameters, so that the statement of a query's shape (its filters, order and size)
        serves every subtree."""
        assert self.numbers is not None
        condition, params = "s.scope = %s", [self.numbers.scope]
        if self.numbers.types is not None:
            condition += " AND s.type = %s"
            params.append(self.numbers.types[0])
        return condition + " AND s.tx < %s", [*params, self.read_horizon()]


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


# One statement writes a batch. Its events come column by column, each column as one text of
# its values, each value ended by the unit separator (U+001F), and PostgreSQL splits them back
# (string_to_array, at memchr speed): the rows cost no Python per value (no COPY rows, no
# array dumpers) and no round trips of their own. No value of these columns can hold the
# separator: the attributes refuse control characters, JSON texts escape them, search words are
# letters and digits, numbers are digits (`_texts` checks it all the same). In the nullable
# ones, an empty text is NULL; none of them can be empty otherwise. The three that can hold any
# text (the actor, the eventkey, the payload) come as JSON arrays. Reading the short columns
# as one JSON object a row (json_to_recordset, which parses every row's keys) had cost the
# database about 7 us of CPU an event more: 77 against 70 us for all of a batch's writing.
# `event_ids` takes the (tenant, source, id) keys of the ids producers gave first; only the
# rows it took go on to `events` and `event_scopes`. Sequence values are drawn in the batch's
# order; the keys are taken in key order, so two batches holding the same ids wait for each
# other, never deadlock. An id tidings mints takes no key (see _TWINS).
_WRITE_EVENTS = """
WITH input AS MATERIALIZED (
    SELECT r.*, nextval('events_seq') AS seq
    FROM (
        SELECT n - 1 AS ord, tenant, group_path, id, source, type, subject, actor, eventkey,
            roles_mask::int, time_ns::bigint, time_digits::smallint, payload, fingerprint,
            scopes::int[], type_number::int, minted::boolean, extras, data, search_text
        FROM ROWS FROM (
            unnest(string_to_array(%(tenant)s, chr(31))),
            unnest(string_to_array(%(group_path)s, chr(31))),
            unnest(string_to_array(%(id)s, chr(31))),
            unnest(string_to_array(%(source)s, chr(31))),
            unnest(string_to_array(%(type)s, chr(31))),
            unnest(string_to_array(%(subject)s, chr(31), '')),
            json_array_elements_text(%(actor)s::json),
            json_array_elements_text(%(eventkey)s::json),
            unnest(string_to_array(%(roles_mask)s, chr(31), '')),
            unnest(string_to_array(%(time_ns)s, chr(31), '')),
            unnest(string_to_array(%(time_digits)s, chr(31), '')),
            json_array_elements_text(%(payload)s::json),
            unnest(string_to_array(%(fingerprint)s, chr(31))),
            unnest(string_to_array(%(scopes)s, chr(31), '')),
            unnest(string_to_array(%(type_number)s, chr(31), '')),
            unnest(string_to_array(%(minted)s, chr(31), '')),
            unnest(string_to_array(%(extras)s, chr(31))),
            unnest(string_to_array(%(data)s, chr(31))),
            unnest(string_to_array(%(search_text)s, chr(31)))
        ) WITH ORDINALITY AS t(tenant, group_path, id, source, type, subject, actor, eventkey,
            roles_mask, time_ns, time_digits, payload, fingerprint, scopes, type_number, minted,
            extras, data, search_text, n)
        WHERE n <= %(count)s  -- each text's last separator ends one more, empty, value
        ORDER BY n
    ) r
), fresh AS (
    INSERT INTO event_ids (tenant, source, id, seq, stored_ns, fingerprint)
    SELECT tenant, source, id, seq, %(now)s, fingerprint FROM input
    WHERE NOT minted ORDER BY tenant, source, id
    ON CONFLICT DO NOTHING RETURNING seq
), kept AS MATERIALIZED (
    SELECT * FROM input WHERE minted OR seq IN (SELECT seq FROM fresh)
), written AS (
    INSERT INTO events (tx, seq, tenant, group_path, id, source, type, subject, actor, eventkey,
        roles_mask, time_ns, time_digits, stored_ns, extras, data, search_text, payload)
    SELECT pg_current_xact_id()::text::bigint, seq, tenant, group_path, id, source, type,
        subject, actor, eventkey, roles_mask, time_ns, time_digits, %(now)s,
        extras, data, search_text, payload
    FROM kept
), scoped AS (
    INSERT INTO event_scopes (scope, tx, seq, stored_ns, type)
    SELECT scope, pg_current_xact_id()::text::bigint, k.seq, %(now)s, k.type_number
    FROM kept k CROSS JOIN LATERAL unnest(k.scopes) AS scope
)
SELECT ord, pg_current_xact_id()::text::bigint, seq FROM kept
"""

# An id tidings mints needs no `event_ids` key: nobody can send it before its event is
# stored, and a producer who sends it later sends a UUIDv7 naming the event's stored time
# (tidings.ids). So the ids a batch gives in that form are looked for among the events stored
# in the two seconds before the time each names (one probe of `events_id` each). The days
# those seconds fall on are written into the SQL, so that only their partitions are planned
# and locked (a batch of ids naming times far apart costs a partition per day named, not
# every day between). One found without a key holds a minted id, and the batch is refused.
# One found with a key is a repeat, as any other (`event_ids` answers it); one being stored
# by another transaction cannot hold a minted id, so waiting for its key is enough.
_TWINS = """
SELECT k.ord FROM unnest(%s::int[], %s::text[], %s::text[], %s::text[], %s::bigint[], %s::bigint[])
    AS k(ord, tenant, source, id, first_ns, end_ns)
CROSS JOIN LATERAL (
    SELECT 1 FROM events e WHERE e.tenant = k.tenant AND e.id = k.id AND e.source = k.source
    AND e.stored_ns >= k.first_ns AND e.stored_ns < k.end_ns AND ({days}) LIMIT 1
) AS twin
WHERE NOT EXISTS (
    SELECT 1 FROM event_ids i WHERE i.tenant = k.tenant AND i.source = k.source AND i.id = k.id
)
ORDER BY k.ord
"""
_MS_NS = 1_000_000
_NS_LIMIT = 2**63  # stored times are bigints


def twin_span(event_id: str) -> tuple[int, int] | None:
    """The stored times `[first, end)` an event may have if tidings minted `event_id`: None if
    it has another form or names a time no stored time reaches."""
    named_ms = minted_ms(event_id)
    if named_ms is None:
        return None
    first, end = (named_ms - MINTED_AHEAD_MS) * _MS_NS, (named_ms + 1) * _MS_NS
    return None if first >= _NS_LIMIT else (first, min(end, _NS_LIMIT - 1))


def day_ranges(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The whole days that `spans` of stored time fall on, runs of days merged (within the
    stored times' range)."""
    days = sorted(
        {day for first, end in spans for day in range(first // DAY_NS, (end - 1) // DAY_NS + 1)}
    )
    ranges: list[tuple[int, int]] = []
    for day in days:
        end = min((day + 1) * DAY_NS, _NS_LIMIT - 1)
        if ranges and ranges[-1][1] == day * DAY_NS:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((day * DAY_NS, end))
    return ranges


async def _find_twins(
    conn: AsyncConnection[Any], unique: Sequence[Item]
) -> AsyncCursor[Any] | None:
    """Send the probe of _TWINS for the ids of `unique` in the form tidings mints (None: none)."""
    named = [
        (ord_, key, span)
        for ord_, (event, _, key) in enumerate(unique)
        if event.id is not None and (span := twin_span(event.id)) is not None
    ]
    if not named:
        return None
    days = " OR ".join(
        f"(e.stored_ns >= {first} AND e.stored_ns < {end})"
        for first, end in day_ranges(span for _, _, span in named)
    )
    return await conn.execute(
        _TWINS.format(days=days),
        (
            [ord_ for ord_, _, _ in named],
            *([key[part] for _, key, _ in named] for part in range(3)),
            [span[0] for _, _, span in named],
            [span[1] for _, _, span in named],
        ),
    )


UNIT_SEPARATOR = "\x1f"
# The columns of _WRITE_EVENTS that travel as texts of separator-ended values, and as JSON.
_TEXT_COLUMNS = (
    "tenant",
    "group_path",
    "id",
    "source",
    "type",
    "subject",
    "roles_mask",
    "time_ns",
    "time_digits",
    "fingerprint",
    "scopes",
    "type_number",
    "minted",
    "extras",
    "data",
    "search_text",
)
_JSON_COLUMNS = ("actor", "eventkey", "payload")


def scope_texts(events: Iterable[EventInput]) -> set[str]:
    """The group paths and event types that the scope rows of `events` name."""
    texts: set[str] = set()
    for event in events:
        scopes = visible_scopes(event)
        if scopes:
            texts.update(scopes)
            texts.add(event.type)
    return texts


def _text_values(
    event: EventInput,
    event_id: str,
    time: Timestamp,
    extras: str,
    search_text: str,
    numbers: Mapping[str, int],
) -> tuple[str, ...]:
    """An event's values of _TEXT_COLUMNS (at `time`, with its attributes' extras and its search
    words); its scope rows' groups and type by their numbers (see postgres_interned)."""
    scopes = visible_scopes(event)
    return (
        *event_identity(event, event_id),
        event.subject or "",
        str(event.roles_mask),
        str(time.ns),
        str(time.digits),
        event.fingerprint,
        "{" + ",".join([str(numbers[scope]) for scope in scopes]) + "}",
        str(numbers[event.type]) if scopes else "",
        "f" if event.id else "t",
        extras,
        event.data_json,
        search_text,
    )


def _column_params(
    texts: Sequence[tuple[str, ...]], anything: Sequence[tuple[str | None, ...]]
) -> dict[str, Any]:
    """The parameters of _WRITE_EVENTS for the events whose values are `texts` (of
    _TEXT_COLUMNS) and `anything` (of _JSON_COLUMNS), and `count`, their number."""
    params: dict[str, Any] = {"count": len(texts)}
    for names, rows, encode in (
        (_TEXT_COLUMNS, texts, _texts),
        (_JSON_COLUMNS, anything, lambda values: orjson.dumps(values).decode()),
    ):
        columns = list(zip(*rows, strict=True)) or [()] * len(names)
        params.update(zip(names, map(encode, columns), strict=True))
    return params


def _texts(values: Sequence[str]) -> str:
    """A column as one text: each value ended by the unit separator."""
    joined = UNIT_SEPARATOR.join(values) + UNIT_SEPARATOR if values else ""
    if joined.count(UNIT_SEPARATOR) != len(values):  # it would shift every later value
        raise ValueError("a text of the batch holds the unit separator")
    return joined


class StaleKeys(Exception):
    """Keys of a batch found in `event_ids` without their event: retention drops an expired
    day's events before it deletes their keys (in batches, later). As on SQLite, and as once
    retention is done, such an event is stored anew: the ingest is rolled back, and the caller
    deletes the keys (`drop_stale_key`) outside it, each in a statement of its own (a row lock
    held alone and briefly cannot close a cycle with retention's batches or another ingest),
    then runs the ingest again."""

    def __init__(self, keys: list[Key]):
        super().__init__(f"{len(keys)} keys without their events")
        self.keys = keys


async def drop_stale_key(conn: AsyncConnection[Any], key: Key) -> None:
    """Delete `key` from `event_ids` if its event is gone (on an autocommit connection)."""
    await conn.execute(
        "DELETE FROM event_ids i WHERE tenant = %s AND source = %s AND id = %s"
        " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.seq = i.seq AND e.stored_ns = i.stored_ns)",
        key,
    )


async def ingest(
    conn: AsyncConnection[Any],
    events: Sequence[EventInput],
    now_ns: int,
    numbers: Mapping[str, int],
) -> list[Ingested]:
    """Store events, their scopes and their deliveries in the caller's transaction (the outbox).

    `numbers` holds the interned number of each of `scope_texts(events)`.

    In pipeline mode (as the storage runs it) the transaction waits for the database once for
    the events, and once more only for repeats. StaleKeys: keys of the batch whose events
    retention has dropped; nothing is stored.
    """
    keyed: dict[Key, int] = {}
    prepared: list[Item] = []
    minted = iter(uuid7s(sum(1 for event in events if not event.id), now_ns))
    for index, event in enumerate(events):
        event_id = event.id or next(minted)
        key = (groups.root_of(event.group), event.source, event_id)
        first = keyed.setdefault(key, index)
        if first != index and prepared[first][0].fingerprint != event.fingerprint:
            raise repeated_in_batch(index, event.source, event_id)
        prepared.append((event, event_id, key))
    unique = [prepared[i] for i in sorted(set(keyed.values()))]
    texts: list[tuple[str, ...]] = []
    attributes_of: list[str] = []
    now = from_ns(now_ns)
    for event, event_id, _ in unique:
        time = event.time or now
        extras = attribute_extras(event)
        attributes_of.append(render_attributes(event, event_id, time, now_ns, extras))
        search_text = searchable_text(event, distinct=True)
        texts.append(_text_values(event, event_id, time, extras, search_text, numbers))
    anything = [(event.actor, event.eventkey, event.raw) for event, _, _ in unique]
    scopes: set[str] = set()
    for event, _, _ in unique:
        scopes |= groups_above(event)
    # The advisory lock marks this transaction as an ingest for readers' horizon (see the
    # schema): it is taken before the first write gives the transaction its id.
    await begin_ingest(conn)
    twins = await _find_twins(conn, unique)
    written = await conn.execute(_WRITE_EVENTS, {**_column_params(texts, anything), "now": now_ns})
    # Read after the write: deliveries go to the subscriptions as they stand then (the foreign
    # key would refuse a delivery to one deleted meanwhile).
    subscriptions = await conn.execute(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE state = 'active'"
        " AND group_path IN (SELECT json_array_elements_text(%s::json))",
        (orjson.dumps(sorted(scopes)).decode(),),
    )
    if twins is not None and (found := await twins.fetchall()):
        event, event_id, key = unique[found[0][0]]
        raise _other_content(event, event_id, key, prepared)
    kept = {ord_: (tx, seq) for ord_, tx, seq in await written.fetchall()}
    active = [subscription_from_row(row) for row in await subscriptions.fetchall()]
    stored, gone = await _existing(
        conn, [item for ord_, item in enumerate(unique) if ord_ not in kept], prepared
    )
    if gone:
        raise StaleKeys(gone)
    fresh: list[tuple[EventInput, int]] = []
    created: dict[Key, int] = {}
    for ord_, (tx, seq) in sorted(kept.items()):
        event, event_id, key = unique[ord_]
        stored[key] = StoredEvent.of_new(event, pack(tx, seq), event_id, attributes_of[ord_])
        created[key] = seq
        fresh.append((event, seq))
    queued = await _fan_out(conn, active, fresh, now_ns)
    results = []
    for index, (_, _, key) in enumerate(prepared):
        is_new = key in created and index == keyed[key]
        deliveries = queued[created[key]] if is_new else 0
        results.append(Ingested(event=stored[key], created=is_new, deliveries=deliveries))
    return results


async def _existing(
    conn: AsyncConnection[Any], items: list[Item], prepared: list[Item]
) -> tuple[dict[Key, StoredEvent], list[Key]]:
    """The stored events of repeats, and the keys of those stored without their event (see
    StaleKeys); Conflict if one was stored with other content."""
    if not items:
        return {}, []
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
    gone = []
    for event, event_id, key in items:
        if key not in found:
            gone.append(key)
            continue
        fingerprint, stored = found[key]
        if fingerprint != event.fingerprint:
            raise _other_content(event, event_id, key, prepared)
        result[key] = stored
    return result, gone


def _other_content(event: EventInput, event_id: str, key: Key, prepared: list[Item]) -> Conflict:
    """The answer to an event whose (source, id) is stored with other content."""
    index = next(i for i, item in enumerate(prepared) if item[2] == key)
    return stored_with_other_content(index, event.source, event_id)


async def _fan_out(
    conn: AsyncConnection[Any],
    subscriptions: list[Subscription],
    fresh: list[tuple[EventInput, int]],
    now_ns: int,
) -> Counter[int]:
    """Queue each new event for the active subscriptions that match it, and wake the workers;
    return how many deliveries each event (by its seq) queued."""
    queued = [
        (sub.id, seq, now_ns)
        for event, seq in fresh
        for sub in subscriptions
        if sub.group in groups_above(event) and delivers_to(sub, event)
    ]
    await queue_deliveries(conn, queued, now_ns)
    return Counter(seq for _, seq, _ in queued)


async def queue_deliveries(
    conn: AsyncConnection[Any], queued: Sequence[tuple[str, int, int]], now_ns: int
) -> None:
    """Insert pending deliveries, each (subscription id, event seq, event stored_ns), due now,
    in their order, and wake the workers."""
    if not queued:
        return
    await conn.execute(
        "INSERT INTO deliveries (subscription_id, event_seq, event_stored_ns, status, due_ns,"
        " created_ns, updated_ns) SELECT r.sub, r.seq, r.stored_ns, 'pending', %(now)s, %(now)s,"
        " %(now)s FROM json_to_recordset(%(rows)s::json) AS r(sub text, seq bigint, stored_ns bigint)",
        {
            "rows": orjson.dumps(
                [{"sub": sub, "seq": seq, "stored_ns": at} for sub, seq, at in queued]
            ).decode(),
            "now": now_ns,
        },
    )
    await conn.execute(f"NOTIFY {WAKE_CHANNEL}")
