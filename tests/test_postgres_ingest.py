"""PostgreSQL ingest transactions that hold the same ids at once wait for each other."""

from __future__ import annotations

import asyncio
import time

import pytest
from psycopg import AsyncConnection

from tests.conftest import event
from tests.databases import new_schema, query
from tidings import groups, wire
from tidings.model import EventQuery
from tidings.storage import open_storage
from tidings.storage.postgres_events import _texts, ingest


async def test_batches_holding_the_same_ids_in_opposite_orders_do_not_deadlock(
    postgres_server: str,
) -> None:
    """Events at the root (no scope rows, so nothing to intern). T1 stores `a`; T2's batch [b, a] starts and waits for T1; T1 then stores `b` and
    commits. Were T2 to take `b` before waiting on `a`, T1 and T2 would wait for each other
    and PostgreSQL would fail one of them."""
    url = new_schema(postgres_server)
    storage = open_storage(url, pool_min=1, pool_max=2)
    await storage.open()
    root = groups.new_root()
    now = time.time_ns()
    await storage.maintain(now)
    first = await AsyncConnection.connect(url)
    second = await AsyncConnection.connect(url)
    try:
        a, b = (wire.parse_event(event(root, id=name)) for name in ("a", "b"))
        await first.execute("BEGIN")
        await ingest(first, [a], now, {})

        async def other_batch() -> list[bool]:
            async with second.transaction():
                return [result.created for result in await ingest(second, [b, a], now, {})]

        waiting = asyncio.create_task(other_batch())
        await asyncio.sleep(0.5)  # T2 is now waiting for T1's `a`
        assert not waiting.done()
        await ingest(first, [b], now, {})
        await first.execute("COMMIT")
        assert await asyncio.wait_for(waiting, 10) == [False, False]
        stored = await storage.list_events(EventQuery(scope=root, limit=10))
        assert sorted(found.id for found in stored) == ["a", "b"]
    finally:
        await first.close()
        await second.close()
        await storage.close()


def test_a_long_text_holding_the_unit_separator_is_refused_not_split() -> None:
    """The batch's long texts travel separator-ended: one holding the separator would shift
    every value after it onto the next event."""
    assert _texts(["{}", ""]) == "{}\x1f\x1f"
    with pytest.raises(ValueError, match="unit separator"):
        _texts(["{}", "a\x1fb"])


async def test_only_the_ids_producers_give_take_a_deduplication_row(postgres_server: str) -> None:
    """An id tidings mints needs no `event_ids` row (see postgres_events._TWINS)."""
    url = new_schema(postgres_server)
    storage = open_storage(url)
    await storage.open()
    try:
        root = groups.new_root()
        given = [wire.parse_event(event(root, id=f"given-{n}")) for n in range(3)]
        minted = [wire.parse_event(event(root)) for _ in range(2)]
        await storage.ingest([*given, *minted], time.time_ns())
        assert query(url, "SELECT id FROM event_ids ORDER BY id") == [
            ("given-0",),
            ("given-1",),
            ("given-2",),
        ]
        assert len(await storage.list_events(EventQuery(scope=root, limit=10))) == 5
    finally:
        await storage.close()
