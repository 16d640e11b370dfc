"""PostgreSQL ingest transactions that hold the same ids at once wait for each other."""

from __future__ import annotations

import asyncio
import random
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
from tidings.storage import open_storage, postgres, postgres_events
from tidings.storage.base import Storage
from tidings.storage.postgres import PostgresStorage
from tidings.storage.postgres_events import _texts, ingest
from tidings.storage.postgres_partitions import DAY_NS, day_of, drop_days_before


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


def test_a_text_holding_the_unit_separator_is_refused_not_split() -> None:
    """The batch's columns travel as texts of separator-ended values: one holding the
    separator would shift every value after it onto the next event."""
    assert _texts(["{}", ""]) == "{}\x1f\x1f"
    assert _texts([]) == ""
    with pytest.raises(ValueError, match="unit separator"):
        _texts(["{}", "a\x1fb"])


async def test_every_column_of_a_batch_reads_back_as_sent_whatever_text_it_holds(
    postgres_server: str,
) -> None:
    """A batch's columns travel as separator-ended texts, and the actor, the eventkey and the
    payload as JSON: texts holding the separators, quotes and newlines, absent subjects and
    eventkeys, and a time with its own digits each land in their own event's row."""
    url = new_schema(postgres_server)
    storage = open_storage(url)
    await storage.open()
    try:
        root = groups.new_root()
        child = f"{root}/team"
        tricky = 'a\x1fb\x1ec "q" \\ \n end'
        sent = [
            event(root, id="plain", subject=None),
            event(
                child,
                id="tricky",
                eventkey="key\x1f1",
                time="2026-01-02T03:04:05.12Z",
                allowedroles="viewer",
                data={"actor": {"subject": tricky}, "body": {"note": tricky}},
            ),
            event(child, id="third", subject=f"{child}/s"),
        ]
        now_ns = time.time_ns()
        sent_ns = 1_767_323_045_120_000_000  # 2026-01-02T03:04:05.12Z
        results = await storage.ingest([wire.parse_event(e) for e in sent], now_ns)
        assert [r.created for r in results] == [True, True, True]
        assert query(
            url,
            "SELECT id, group_path, subject, actor, eventkey, roles_mask, time_ns, time_digits"
            " FROM events ORDER BY seq",
        ) == [
            ("plain", root, None, "user-1", None, 0, now_ns, 6),
            ("tricky", child, f"{child}/0123456789abcdef", tricky, "key\x1f1", 1, sent_ns, 2),
            ("third", child, f"{child}/s", "user-1", None, 0, now_ns, 6),
        ]
        stored = await storage.list_events(EventQuery(scope=root, limit=10, descending=False))
        assert [(e.id, e.attributes, e.data) for e in stored] == [
            (r.event.id, r.event.attributes, r.event.data) for r in results
        ]
        assert orjson.loads(stored[1].data)["actor"]["subject"] == tricky
        assert orjson.loads(stored[1].attributes)["eventkey"] == "key\x1f1"
        [found] = await storage.list_events(EventQuery(scope=child, limit=10, actor=tricky))
        assert found.id == "tricky"
    finally:
        await storage.close()


async def test_the_longest_key_and_actor_accepted_fit_postgresql_index_keys(
    postgres_server: str,
) -> None:
    """An index key holds at most 2,704 bytes: the longest (source, id) and actor the limits
    allow, in characters of four bytes that do not compress, are stored (they were a 500)."""
    url = new_schema(postgres_server)
    storage = open_storage(url)
    await storage.open()
    try:
        root = groups.new_root()
        rng = random.Random(7)

        def wide(count: int) -> str:  # characters of four bytes in UTF-8, at random
            return "".join(chr(rng.randrange(0x20000, 0x2A6DF)) for _ in range(count))

        sent = event(
            root,
            id=wide(64),
            source=wide(256),
            data={"actor": {"subject": wide(256)}, "body": {}},
        )
        [stored] = await storage.ingest([wire.parse_event(sent)], time.time_ns())
        assert stored.created
        [found] = await storage.list_events(
            EventQuery(scope=root, actor=sent["data"]["actor"]["subject"])
        )
        assert (found.id, found.source) == (sent["id"], sent["source"])
    finally:
        await storage.close()


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


@dataclass
class Dropped:
    """A storage whose events "a", "b" and "c" of root `root` were stored two days ago, and
    whose day retention has dropped without deleting their `event_ids` keys yet (its first step)."""

    storage: PostgresStorage
    url: str
    root: str
    now: int


@pytest.fixture
async def dropped(postgres_server: str) -> AsyncIterator[Dropped]:
    url = new_schema(postgres_server)
    storage = open_storage(url)
    assert isinstance(storage, PostgresStorage)
    await storage.open()
    try:
        root = groups.new_root()
        now = time.time_ns()
        await storage.maintain(now)
        old = [wire.parse_event(event(root, id=name)) for name in ("a", "b", "c")]
        await storage.ingest(old, now - 2 * DAY_NS)
        async with (
            await AsyncConnection.connect(url, autocommit=True) as conn,
            conn.transaction(),
        ):
            assert len(await drop_days_before(conn, day_of(now - DAY_NS))) == 2
        assert query(url, "SELECT count(*) FROM event_ids") == [(3,)]
        yield Dropped(storage, url, root, now)
    finally:
        await storage.close()


async def test_a_repeat_whose_event_retention_dropped_before_its_key_is_stored_anew(
    dropped: Dropped,
) -> None:
    """Retention drops an expired day's events first and deletes their `event_ids` keys in later
    batches. A repeat sent in between is stored anew, as after retention (and as on SQLite),
    whatever its content; the other events of its batch are answered as usual, and the rest of
    retention leaves the new events and their keys alone."""
    storage, root, now = dropped.storage, dropped.root, dropped.now
    [kept] = await storage.ingest([wire.parse_event(event(root, id="b"))], now)
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
    assert kept.created
    assert results[1].event.position == kept.event.position
    assert await storage.expire(now - DAY_NS) == 0
    stored = {e.id: e for e in await storage.list_events(EventQuery(scope=root, limit=10))}
    assert sorted(stored) == ["a", "b", "c", "d"]
    assert orjson.loads(stored["c"].data)["body"] == {"name": "other"}
    # Each key names its new event, so a later repeat is answered from it.
    assert query(
        dropped.url,
        "SELECT i.id FROM event_ids i JOIN events e ON e.seq = i.seq"
        " AND e.stored_ns = i.stored_ns ORDER BY i.id",
    ) == [("a",), ("b",), ("c",), ("d",)]
    [repeat] = await storage.ingest([again[0]], now + 2)
    assert not repeat.created
    assert repeat.event.position == results[0].event.position


async def _blocked_by(url: str, pid: int) -> None:
    """Wait until some backend waits for a lock `pid` holds."""
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        for _ in range(500):
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (pid,),
            )
            row = await cursor.fetchone()
            if row is not None and row[0]:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"no backend waited for {pid}")


async def test_an_ingest_meeting_stale_keys_never_deadlocks_with_retention(
    dropped: Dropped, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention deletes keys in its own order (by row position). Once an ingest has found its
    keys "a" and "b" stale, retention's batch takes "b" and then wants "a": an ingest that held
    "a" while waiting for "b" would close a cycle, and PostgreSQL would fail one of them."""
    storage, url, root, now = dropped.storage, dropped.url, dropped.root, dropped.now
    retention = await AsyncConnection.connect(url)
    found = asyncio.Event()
    real_existing = postgres_events._existing

    async def existing(*args: Any) -> Any:
        answer = await real_existing(*args)
        if not found.is_set():
            found.set()
            await retention.execute("DELETE FROM event_ids WHERE id = 'b'")  # holds "b"
        return answer

    monkeypatch.setattr(postgres_events, "_existing", existing)
    batch = [wire.parse_event(event(root, id=name)) for name in ("a", "b")]
    ingesting = asyncio.create_task(storage.ingest(batch, now))
    try:
        await asyncio.wait_for(found.wait(), 10)
        await _blocked_by(url, retention.info.backend_pid)  # the ingest waits for "b"
        await retention.execute("DELETE FROM event_ids WHERE id IN ('a', 'c')")
        await retention.commit()
        results = await asyncio.wait_for(ingesting, 10)
    finally:
        ingesting.cancel()
        await retention.close()
    assert [(r.event.id, r.created) for r in results] == [("a", True), ("b", True)]
    assert query(url, "SELECT id FROM event_ids ORDER BY id") == [("a",), ("b",)]


async def test_a_batch_meeting_new_stale_keys_at_each_try_is_stored(
    dropped: Dropped, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention deletes a day's events in batches: each try of an ingest may meet keys that
    were not stale at the one before. It goes on while it makes progress."""
    storage, root, now = dropped.storage, dropped.root, dropped.now
    revived = await storage.ingest([wire.parse_event(event(root, id=n)) for n in "bc"], now)
    assert [r.created for r in revived] == [True, True]  # "a" alone is stale now
    real_drop = postgres.drop_stale_key
    going = ["b", "c"]  # retention's next batches: the event "b", then "c"

    async def drop(conn: AsyncConnection[Any], key: Any) -> None:
        await real_drop(conn, key)
        if going:
            await conn.execute("DELETE FROM events WHERE id = %s", (going.pop(0),))

    monkeypatch.setattr(postgres, "drop_stale_key", drop)
    batch = [wire.parse_event(event(root, id=name)) for name in ("a", "b", "c")]
    results = await storage.ingest(batch, now + 1)
    assert [(r.event.id, r.created) for r in results] == [("a", True), ("b", True), ("c", True)]
    assert going == []
    stored = await storage.list_events(EventQuery(scope=root, limit=10))
    assert sorted(e.id for e in stored) == ["a", "b", "c"]


async def test_a_key_stale_again_after_its_deletion_ends_the_ingest_storing_nothing(
    dropped: Dropped, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key deleted as stale and met stale again means no progress (here its deletion does
    nothing): the ingest gives up instead of looping."""
    tries = 0

    async def kept_key(conn: AsyncConnection[Any], key: Any) -> None:
        nonlocal tries
        tries += 1

    monkeypatch.setattr(postgres, "drop_stale_key", kept_key)
    batch = [wire.parse_event(event(dropped.root, id=name)) for name in ("a", "d")]
    with pytest.raises(RuntimeError, match="stale again after being deleted"):
        await dropped.storage.ingest(batch, dropped.now)
    assert tries == 1  # "a" alone is stale
    assert query(dropped.url, "SELECT count(*) FROM events") == [(0,)]
