"""A page of PostgreSQL events read from the days around its cursor, when that is provably the
whole answer.

Events are partitioned by the day they were stored and paged in ingest order. With no bound on
the stored time, a page plans, locks and opens an index scan on every partition (92 at 90 days
of retention): most of a page's time at 10,000,000 events, and most of its cold reads. Stored
time and ingest order nearly agree, so a page usually lies in the day of its cursor. The page is
therefore first read from a window of whole days there, planned against those partitions only,
and one more statement, sent with it, finds the first position past the cursor outside the
window among the tenant's events, or a subtree's scope rows (an index probe per other
partition, on a plan kept prepared). The window's rows before that position are exactly the
first rows after the cursor in the whole table. When they are too few for the page (a rare
filter), one more window, as wide as should hold a page, is tried (up to `MAX_WINDOW_DAYS`);
otherwise (or when clocks disagreed) the whole table is read. No clock is trusted for
correctness: the probe is what decides. A subtree's read of the whole table (with no type or
one) runs on a generic plan, kept prepared: planned anew, its every partition (184 at 90 days
of retention) cost more to plan than the page to read.

Both statements run after the ingest horizon was read, so every row below it has committed
(see `with_horizon`); the probe ignores the horizon and the filters it cannot see (all but a
subtree's group and one type), which can only make it answer a nearer position, never miss a
row.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, overload

from psycopg import AsyncConnection, AsyncCursor
from psycopg.types.numeric import Int8

from tidings import groups
from tidings.model import EventQuery
from tidings.storage.postgres_events import PostgresEventSQL, unpack, with_horizon
from tidings.storage.postgres_interned import Interned, ScopeNumbers
from tidings.storage.postgres_partitions import DAY_NS
from tidings.storage.postgres_pipelined import pipelined

FIRST_WINDOW_DAYS = 2
# A type within a subtree is sparser: at 10,000,000 events the rarer ones hold about 60 events
# a day in a child's subtree, so two days held too few rows for a fifth of such pages, each then
# read twice (p99 of the storage's reads 11 to 17 ms; with four days, 9 to 10 ms). Four days
# still held too few for 4.6% of them, the tail of their p99 (12 to 16 ms a request, with every
# block cached); six days for none (10 to 12 ms), at two more days' partitions (of the scope
# rows and of the events) planned a page.
FIRST_WINDOW_DAYS_TYPE_IN_SUBTREE = 6
# The widest window tried before the whole table: wider ones plan and open as many partitions.
MAX_WINDOW_DAYS = 16
_FAR = 2**63 - 1  # beyond every tx, seq and stored_ns

_HORIZON_AND_ANCHOR = (
    "SELECT ingest_horizon(), (SELECT stored_ns FROM events WHERE tx = %s AND seq = %s)"
)


# The rows a probe looks among: the tenant's events, or for a subtree its scope rows (with the
# page's one type, if it has one). A subtree's probe ignores the same filters, but answers
# where the next row of the subtree (and type) is: none, often, for a rare combination, and the
# page is then the window's rows, instead of a read of every partition.
_TENANT_ROWS = "events WHERE tenant = %(tenant)s"
_SCOPE_ROWS = "event_scopes WHERE scope = %(scope)s"
_SCOPE_TYPE_ROWS = "event_scopes WHERE scope = %(scope)s AND type = %(type)s"


def _probe(rows: str, descending: bool) -> str:
    """The nearest position past a cursor among `rows` outside a window of stored time."""
    past, order = ("<", "DESC") if descending else (">", "ASC")
    side = (
        "(SELECT tx, seq FROM {rows} AND (tx, seq) {past} (%(tx)s, %(seq)s)"
        " AND {bound} ORDER BY tx {order}, seq {order} LIMIT 1)"
    )
    sides = " UNION ALL ".join(
        side.format(rows=rows, past=past, order=order, bound=bound)
        for bound in ("stored_ns < %(first)s", "stored_ns >= %(end)s")
    )
    return f"SELECT tx, seq FROM ({sides}) o ORDER BY tx {order}, seq {order} LIMIT 1"


_PROBES = {
    (rows, descending): _probe(rows, descending)
    for rows in (_TENANT_ROWS, _SCOPE_ROWS, _SCOPE_TYPE_ROWS)
    for descending in (False, True)
}


@overload
def bigints(params: Sequence[Any]) -> list[Any]: ...
@overload
def bigints(params: Mapping[str, Any]) -> dict[str, Any]: ...
def bigints(params: Sequence[Any] | Mapping[str, Any]) -> list[Any] | dict[str, Any]:
    """The parameters of a prepared statement with every int sent as a bigint.

    psycopg sends an int as the smallest integer type that holds it, and prepares a statement
    per text and parameter types: a cursor's small and large numbers each had their own, and
    each paid for its own plans (a generic plan over every partition, PostgreSQL's comparison
    of custom and generic plans: a few milliseconds at a statement's first uses on a
    connection). As bigints, they share one."""

    def wide(value: Any) -> Any:
        return Int8(value) if type(value) is int else value

    if isinstance(params, Mapping):
        return {name: wide(value) for name, value in params.items()}
    return [wide(value) for value in params]


def _probed_rows(query: EventQuery, numbers: ScopeNumbers | None) -> tuple[str, dict[str, Any]]:
    """What the probe of `query` looks among, and the parameters naming them: a subtree's
    scope rows (with its one type), else the tenant's events (a page at the root, or of
    several types)."""
    if numbers is not None and numbers.types is None:
        return _SCOPE_ROWS, {"scope": numbers.scope}
    if numbers is not None and numbers.types is not None and len(numbers.types) == 1:
        return _SCOPE_TYPE_ROWS, {"scope": numbers.scope, "type": numbers.types[0]}
    return _TENANT_ROWS, {"tenant": groups.root_of(query.scope)}


def window(anchor_ns: int, days: int, descending: bool) -> tuple[int, int]:
    """Whole days of stored time from the anchor's day onwards (backwards when descending)."""
    day_start = anchor_ns // DAY_NS * DAY_NS
    if descending:
        return day_start + DAY_NS - days * DAY_NS, day_start + DAY_NS
    return day_start, day_start + days * DAY_NS


async def _horizon_and_anchor(
    conn: AsyncConnection[Any], query: EventQuery
) -> tuple[int, int | None]:
    """The ingest horizon, and the stored time to open windows at: the cursor's event's (as the
    cursor says, or looked up in every partition for a cursor that does not: None if it has
    expired), now for a first page in descending order, None for one in ascending order."""
    if query.after is not None and query.after_stored_ns is None:
        cursor = await conn.execute(_HORIZON_AND_ANCHOR, bigints(unpack(query.after)), prepare=True)
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0]), (None if row[1] is None else int(row[1]))
    horizon = (await with_horizon(conn)).horizon
    assert horizon is not None
    if query.after is not None:
        return horizon, query.after_stored_ns
    return horizon, (time.time_ns() if query.descending else None)


async def _rows_and_nearest(
    conn: AsyncConnection[Any], sql: PostgresEventSQL, query: EventQuery, span: tuple[int, int]
) -> tuple[list[tuple[Any, ...]], tuple[int, int] | None]:
    """The window's rows, and the nearest (tx, seq) past the cursor of the probed rows stored
    outside `span`: the two statements go out together (pipelined), one wait for both."""
    if query.after is not None:
        tx, seq = unpack(query.after)
    else:  # a first page: descending, from the newest
        tx, seq = _FAR, _FAR
    probed, params = _probed_rows(query, sql.numbers)
    text, values = sql.list_sql(query)
    async with conn.pipeline():
        rows = await conn.execute(text, values)
        nearest = await conn.execute(
            _PROBES[probed, query.descending],
            bigints({**params, "tx": tx, "seq": seq, "first": span[0], "end": span[1]}),
            prepare=True,
        )
        found = [tuple(row) for row in await rows.fetchall()]
        position = await nearest.fetchone()
    return found, None if position is None else (int(position[0]), int(position[1]))


async def _rows(conn: AsyncConnection[Any], sql: PostgresEventSQL, query: EventQuery) -> list[Any]:
    """The rows of `list_sql` over every partition: for a subtree, on a plan kept prepared."""
    text, params = sql.list_sql(query)

    async def read_generic(conn: AsyncConnection[Any]) -> AsyncCursor[Any]:
        # PostgreSQL keeps planning a prepared statement anew while a custom plan looks no
        # dearer than the generic one, and here neither can prune a partition: so it is told to
        # keep the generic plan. Planned for no subtree in particular, that plan must still be
        # the one shape that suits every subtree (the scope rows in order, never all of them
        # sorted): sorting is ruled out. Both settings end with the transaction.
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute("SET LOCAL enable_sort = off")
        return await conn.execute(text, bigints(params), prepare=True)

    if sql.generic:
        cursor = await pipelined(conn, read_generic)  # one wait for the five statements
    else:
        cursor = await conn.execute(text, params)
    return [tuple(row) for row in await cursor.fetchall()]


def _before(row: tuple[Any, ...], position: tuple[int, int], descending: bool) -> bool:
    """Whether `row` (tx and seq first) comes before `position` in the page's order."""
    here = (row[0], row[1])
    return here > position if descending else here < position


async def list_page(
    conn: AsyncConnection[Any], query: EventQuery, interned: Interned
) -> list[tuple[Any, ...]]:
    """The rows of a page (the position columns, then EVENT_COLUMNS), as `list_sql` over the
    whole table would give them."""
    horizon, anchor_ns = await _horizon_and_anchor(conn, query)
    numbers = None
    if query.scope != groups.root_of(query.scope):
        # Looked up after the horizon: every event below it was committed after its group and
        # type were interned, so none of them can be missed for a number not found here.
        numbers = await interned.of_query(conn, query)
        if numbers.scope is None or numbers.types == ():
            return []  # a group or types never interned: no scope row names them
    typed = numbers is not None and numbers.types is not None
    days = FIRST_WINDOW_DAYS_TYPE_IN_SUBTREE if typed else FIRST_WINDOW_DAYS
    for _ in range(2 if anchor_ns is not None else 0):  # two windows at most
        span = window(anchor_ns or 0, days, query.descending)
        rows, nearest = await _rows_and_nearest(
            conn, PostgresEventSQL(horizon, span, numbers), query, span
        )
        if nearest is None:
            return rows
        if len(rows) == query.limit and _before(rows[-1], nearest, query.descending):
            return rows  # a full page, all of it before every row outside the window
        if not rows or len(rows) == query.limit:
            break  # nothing here, or rows of a skewed clock beyond the window: read everything
        # Too few rows for a page: once more, as many days as should hold one (with a margin).
        days = max(days + 1, -(-days * query.limit * 3 // (2 * len(rows))))
        if days > MAX_WINDOW_DAYS:
            break
    return await _rows(conn, PostgresEventSQL(horizon, numbers=numbers), query)
