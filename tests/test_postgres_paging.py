"""PostgreSQL pages read from a window of days around their cursor are the pages of the whole table.

Events are stored on several days, in an ingest order that disagrees with their stored time
(as clocks that disagree would make it): some land days behind the events ingested before them,
some beyond the widest window. Paging through in both orders, with several page sizes and
filters, must give every matching event exactly once, in ingest order, and the windows must
answer most pages.
"""

from __future__ import annotations

import random
import time
from typing import Any

import psycopg
import pytest

from tests.conftest import event
from tests.databases import new_schema
from tidings import groups, wire
from tidings.model import EventQuery, StoredEvent
from tidings.storage import open_storage, postgres_paging
from tidings.storage.postgres_events import PostgresEventSQL, pack, with_horizon
from tidings.storage.postgres_interned import Interned
from tidings.storage.postgres_partitions import DAY_NS

# Days before noon yesterday some ingests store their event on (the rest: that day): a day or a
# week back (inside the widest window), a month back (past it).
DAYS_BACK = {10: 1, 20: 30, 35: 7, 50: 30, 60: 1}
RARE = "dev.example.rare.v1"


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int] | None]:
    """The window (or None: the whole table) of every read of a page's rows."""
    seen: list[tuple[int, int] | None] = []
    read = postgres_paging._rows

    async def spied(conn: Any, sql: Any, query: EventQuery) -> list[Any]:
        seen.append(sql.window)
        return await read(conn, sql, query)

    monkeypatch.setattr(postgres_paging, "_rows", spied)
    return seen


def hint_of(mode: str, page_end: StoredEvent, rng: random.Random) -> int | None:
    """The stored time a cursor after `page_end` carries: none, its own, or a wrong one."""
    if mode == "none":
        return None
    true_ns = wire.stored_ns(page_end)
    if mode == "true":
        return true_ns
    if mode == "days off":
        return true_ns + rng.randint(-40, 40) * DAY_NS + rng.randrange(DAY_NS)
    return rng.choice((0, true_ns + 3650 * DAY_NS))  # "far": the epoch, or ten years ahead


@pytest.mark.parametrize("hints", ["none", "true", "days off", "far"])
async def test_pages_from_windows_are_the_pages_of_the_whole_table(
    postgres_server: str,
    windows: list[tuple[int, int] | None],
    hints: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever stored time a cursor carries (cursors tidings gives carry their event's; a wrong
    one costs time, never rows). A cursor that carries one is not looked up."""
    if hints != "none":
        monkeypatch.setattr(postgres_paging, "_HORIZON_AND_ANCHOR", "SELECT 1 / 0")
    rng = random.Random(11)
    storage = open_storage(new_schema(postgres_server))
    await storage.open()
    root = groups.new_root()
    team = groups.new_child(root)
    noon_yesterday = time.time_ns() // DAY_NS * DAY_NS - DAY_NS // 2  # whenever the test runs
    stored: list[tuple[str, str, str]] = []  # (id, group, type) in ingest order
    pages = 0
    try:
        for index in range(80):
            group = rng.choice((root, team))
            type_ = RARE if index % 9 == 4 else "dev.example.widget.created.v1"
            body = event(group, id=f"e{index}", type=type_)
            now = noon_yesterday - DAYS_BACK.get(index, 0) * DAY_NS - rng.randrange(DAY_NS // 4)
            await storage.ingest([wire.parse_event(body)], now)
            stored.append((f"e{index}", group, type_))
        for scope, types in ((root, ()), (team, ()), (root, (RARE,)), (team, (RARE,))):
            expected = [
                id_
                for id_, group, type_ in stored
                if groups.contains(scope, group) and (not types or type_ in types)
            ]
            for descending in (False, True):
                for limit in (1, 3, 7):
                    ids: list[str] = []
                    after = hint = None
                    while page := await storage.list_events(
                        EventQuery(
                            scope=scope,
                            types=types,
                            after=after,
                            after_stored_ns=hint,
                            descending=descending,
                            limit=limit,
                        )
                    ):
                        pages += 1
                        ids.extend(found.id for found in page)
                        after = page[-1].position
                        hint = hint_of(hints, page[-1], rng)
                    assert ids == (expected[::-1] if descending else expected), (
                        scope,
                        types,
                        descending,
                        limit,
                    )
    finally:
        await storage.close()
    if hints in ("none", "true"):
        whole_table = windows.count(None)
        assert 0 < whole_table < pages / 2  # most pages came from a window, some needed all


async def test_a_subtree_read_over_every_partition_keeps_one_generic_plan(
    postgres_server: str,
) -> None:
    """Planned anew, a page over every partition cost more than reading it (at 90 days, 11 ms of
    planning for 2 to 7 ms of reading). Its statement is prepared with the subtree's numbers
    and the horizon as parameters, and runs on the generic plan from the first read on, one
    statement whatever the size of its horizon; the settings that ask for it end with the read,
    so the pooled connection keeps its own."""
    url = new_schema(postgres_server)
    storage = open_storage(url)
    await storage.open()
    root = groups.new_root()
    team = groups.new_child(root)
    try:
        for index in range(6):
            type_ = RARE if index % 2 else "dev.example.widget.created.v1"
            await storage.ingest(
                [wire.parse_event(event(team, id=f"e{index}", type=type_))], time.time_ns()
            )
    finally:
        await storage.close()
    interned = Interned()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for types, expected in (((), 6), ((RARE,), 3)):
            query = EventQuery(scope=team, types=types, limit=101)
            numbers = await interned.of_query(conn, query)
            horizon = (await with_horizon(conn)).horizon
            sql = PostgresEventSQL(horizon, numbers=numbers)
            assert sql.generic
            for horizon_now in (horizon, horizon + 2**40, horizon):  # a small int, then an int8
                assert horizon_now is not None
                sql = PostgresEventSQL(horizon_now, numbers=numbers)
                rows = await postgres_paging._rows(conn, sql, query)
                assert [row[2] for row in rows] == [f"e{i}" for i in range(6) if not types or i % 2]
            assert len(rows) == expected
            # The plan kept is the one shape that suits every subtree: its scope rows read in
            # order, never all of them sorted (which a plan for these few rows would prefer).
            cursor = await conn.execute(
                "SELECT name FROM pg_prepared_statements WHERE statement LIKE %s"
                " AND (statement LIKE %s) = %s",
                ("%FROM event_scopes s CROSS JOIN LATERAL%", "%s.type = $%", bool(types)),
            )
            (name,) = [name for (name,) in await cursor.fetchall()]
            literals = ", ".join(repr(value) for value in sql.list_sql(query)[1])
            async with conn.transaction():
                await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                cursor = await conn.execute(f"EXPLAIN EXECUTE {name}({literals})")
                plan = "\n".join(line for (line,) in await cursor.fetchall())
            assert "Merge Append" in plan
            assert "Sort" not in plan.replace("Sort Key", "")
        cursor = await conn.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE %s ORDER BY statement",
            ("%FROM event_scopes s CROSS JOIN LATERAL%",),
        )
        assert await cursor.fetchall() == [(4, 0), (4, 0)]
        cursor = await conn.execute("SHOW plan_cache_mode")
        assert await cursor.fetchone() == ("auto",)
        cursor = await conn.execute("SHOW enable_sort")
        assert await cursor.fetchone() == ("on",)


async def test_the_prepared_statements_of_pages_do_not_multiply_with_the_size_of_numbers(
    postgres_server: str,
) -> None:
    """psycopg sends each int as the smallest integer type that holds it, and prepares a
    statement per text and types: the probe past a window and the lookup of a cursor's stored
    time take bigints, so cursors small and large share one statement each (and its plans)."""
    url = new_schema(postgres_server)
    storage = open_storage(url)
    await storage.open()
    root = groups.new_root()
    try:
        await storage.ingest([wire.parse_event(event(root, id="e0"))], time.time_ns())
    finally:
        await storage.close()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for seq in (5, 2**40, 70_000, 5):
            after = pack(3, seq)
            query = EventQuery(scope=root, after=after, limit=101)
            await postgres_paging.list_page(conn, query, Interned())
            span = postgres_paging.window(time.time_ns(), 2, False)
            await postgres_paging._rows_and_nearest(
                conn, PostgresEventSQL(2**50, span), query, span
            )
        cursor = await conn.execute(
            "SELECT count(*) FILTER (WHERE statement LIKE '%UNION ALL%'),"
            " count(*) FILTER (WHERE statement LIKE '%ingest_horizon()%')"
            " FROM pg_prepared_statements"
        )
        assert await cursor.fetchone() == (1, 1)
