"""PostgreSQL ingest transactions that hold the same ids at once wait for each other."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from psycopg import AsyncConnection

from tests.conftest import event
from tests.databases import new_schema, query
from tidings import groups, wire
from tidings.ids import uuid7s
from tidings.model import EventQuery
from tidings.storage import open_storage
from tidings.storage.base import Storage
from tidings.storage.postgres_events import _texts, ingest


@dataclass
class TwoWriters:
    """A storage on a new schema, with two connections of its own to ingest on at once."""

    storage: Storage
    first: AsyncConnection[Any]
    second: AsyncConnection[Any]
    root: str
    now: int


@pytest.fixture
async def writers(postgres_server: str) -> AsyncIterator[TwoWriters]:
    url = new_schema(postgres_server)
    storage = open_storage(url, pool_min=1, pool_max=2)
    await storage.open()
    now = time.time_ns()
    await storage.maintain(now)
    first = await AsyncConnection.connect(url)
    second = await AsyncConnection.connect(url)
    try:
        yield TwoWriters(storage, first, second, groups.new_root(), now)
    finally:
        await first.close()
        await second.close()
        await storage.close()


async def test_batches_holding_the_same_ids_in_opposite_orders_do_not_deadlock(
    writers: TwoWriters,
) -> None:
    """Events at the root (no scope rows, so nothing to intern). T1 stores `a`; T2's batch
    [b, a] starts and waits for T1; T1 then stores `b` and commits. Were T2 to take `b` before
    waiting on `a`, T1 and T2 would wait for each other and PostgreSQL would fail one of them."""
    first, second, root, now = writers.first, writers.second, writers.root, writers.now
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
    stored = await writers.storage.list_events(EventQuery(scope=root, limit=10))
    assert sorted(found.id for found in stored) == ["a", "b"]


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


async def test_a_uuid7_id_sent_twice_at_once_is_a_repeat_not_a_conflict(
    writers: TwoWriters,
) -> None:
    """T1 stores an event with a producer's UUIDv7 id and has not committed; T2 sends it again.
    T2's probe for a minted twin cannot see T1's event yet; its key waits for T1's, then
    answers the stored event."""
    first, second, root, now = writers.first, writers.second, writers.root, writers.now
    [event_id] = uuid7s(1, now)  # names the stored time: a probe would look right there
    sent = wire.parse_event(event(root, id=event_id))
    await first.execute("BEGIN")
    await ingest(first, [sent], now, {})

    async def again() -> list[bool]:
        async with second.transaction():
            return [result.created for result in await ingest(second, [sent], now, {})]

    waiting = asyncio.create_task(again())
    await asyncio.sleep(0.5)
    assert not waiting.done()
    await first.execute("COMMIT")
    assert await asyncio.wait_for(waiting, 10) == [False]
    stored = await writers.storage.list_events(EventQuery(scope=root, limit=10))
    assert [found.id for found in stored] == [event_id]


async def test_a_repeat_whose_event_retention_dropped_before_its_key_is_stored_anew(
    postgres_server: str,
) -> None:
    """Retention drops an expired day's events first and deletes their `event_ids` keys in later
    batches. A repeat sent in between is stored anew, as after retention (and as on SQLite),
    whatever its content; the other events of its batch are answered as usual."""
    url = new_schema(postgres_server)
    storage = open_storage(url)
    await storage.open()
    try:
        root = groups.new_root()
        now = time.time_ns()
        await storage.maintain(now)
        first = [wire.parse_event(event(root, id=name)) for name in ("a", "b", "c")]
        await storage.ingest(first, now)
        # The state retention leaves between its two steps: the events of "a" and "c" are
        # gone (their day's partition dropped), their keys not yet.
        gone = query(url, "DELETE FROM events WHERE id IN ('a', 'c') RETURNING id")
        assert sorted(gone) == [("a",), ("c",)]
        changed = event(root, id="c")
        changed["data"]["body"] = {"name": "other"}
        again = [
            wire.parse_event(event(root, id="a")),
            wire.parse_event(event(root, id="b")),
            wire.parse_event(changed),
            wire.parse_event(event(root, id="d")),
        ]
        results = await storage.ingest(again, now + 1)
        assert [(r.event.id, r.created) for r in results] == [
            ("a", True),
            ("b", False),
            ("c", True),
            ("d", True),
        ]
        stored = {e.id: e for e in await storage.list_events(EventQuery(scope=root, limit=10))}
        assert sorted(stored) == ["a", "b", "c", "d"]
        assert orjson.loads(stored["c"].data)["body"] == {"name": "other"}
        # Each key names its event again, so a later repeat is answered from it.
        assert query(
            url,
            "SELECT i.id FROM event_ids i JOIN events e ON e.seq = i.seq"
            " AND e.stored_ns = i.stored_ns ORDER BY i.id",
        ) == [("a",), ("b",), ("c",), ("d",)]
        [repeat] = await storage.ingest([again[0]], now + 2)
        assert not repeat.created
        assert repeat.event.position == results[0].event.position
    finally:
        await storage.close()
