"""A reader paging forward by cursor while four writers ingest at once sees every event exactly once.

Positions must ascend in the order readers see commits: a cursor (the last position a
page returned) must never pass an event that commits later. The writers here make
commits land out of order on purpose: batches of every size, large batches that hold
their transaction open, a writer that sleeps inside its open ingest transaction before
committing, and subscriptions created with their audit events in the same transaction.
Two readers page in ascending order at the same time, one over the whole tenant and one
over a child group (the scoped index), until the writers are done and one more page
shows nothing new.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import event
from tests.databases import new_schema
from tidings import groups, wire
from tidings.model import EventInput, EventQuery, Ingested, Subscription
from tidings.storage import open_storage
from tidings.storage.base import Storage

WRITE_SECONDS = {"postgres": 5.0, "sqlite": 2.0}  # how long the writers keep writing
SLOW_HOLD_S = (0.005, 0.05)  # how long the slow writer keeps its ingest transaction open


@dataclass
class Tally:
    """What the writers stored: event id -> position."""

    stored: dict[str, int] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)

    def add(self, results: list[Ingested]) -> None:
        for result in results:
            assert result.created
            assert result.event.id not in self.stored
            self.stored[result.event.id] = result.event.position
            self.groups[result.event.id] = result.event.group


def batch(
    prefix: str, start: int, size: int, root: str, team: str, rng: random.Random
) -> list[EventInput]:
    """`size` events with ids `prefix-N`, each in the root or the child group at random."""
    return [
        wire.parse_event(event(rng.choice((root, team)), id=f"{prefix}-{start + n}"))
        for n in range(size)
    ]


async def open_(url: str) -> Storage:
    storage = open_storage(url, pool_min=1, pool_max=2)
    await storage.open()
    return storage


async def slow_ingest(storage: Storage, events: list[EventInput], hold_s: float) -> list[Ingested]:
    """Ingest `events` in a transaction that stays open `hold_s` after its rows are written."""
    now = time.time_ns()
    if storage.__class__.__name__ == "PostgresStorage":
        from psycopg import AsyncConnection

        from tidings.storage.postgres_events import ingest

        url: str = storage.url  # type: ignore[attr-defined]
        # The partitions made and the scope rows' groups and types interned, as the storage does.
        numbers = await storage._ready_to_ingest(events, now)  # type: ignore[attr-defined]
        async with await AsyncConnection.connect(url) as conn:
            async with conn.transaction():
                results = await ingest(conn, events, now, numbers)
                await asyncio.sleep(hold_s)
            return results
    from tidings.storage.sqlite_events import ingest as sqlite_ingest

    def write(conn: Any) -> list[Ingested]:
        results = sqlite_ingest(conn, events, now)
        time.sleep(hold_s)  # the write lock is held meanwhile: the other writers wait
        return results

    engine: Any = storage._engine  # type: ignore[attr-defined]
    written: list[Ingested] = await engine.write(write)
    return written


async def writer(
    storage: Storage,
    name: str,
    tally: Tally,
    root: str,
    team: str,
    deadline: float,
    step: Callable[[Storage, int, random.Random], Awaitable[list[Ingested]]],
    pauses: tuple[float, ...],
) -> int:
    """Write with `step` (given the storage, the next index and an rng) until `deadline`."""
    rng = random.Random(name)
    written = 0
    while time.monotonic() < deadline:
        results = await step(storage, written, rng)
        tally.add(results)
        written += len(results)
        await asyncio.sleep(rng.choice(pauses))
    return written


async def reader(
    url: str, scope: str, done: threading.Event, last: Callable[[], int], rng: random.Random
) -> list[tuple[int, str]]:
    """Page forward (ascending) from the start, as fast as it can, staying at the head of the log,
    until the writers are done, the last event written has been passed, and a page is empty.

    (The last position matters only on a server shared with others: their ingests can hold
    the horizon back for a moment after ours are done, and a reader then waits for it.)
    """
    storage = await open_(url)
    seen: list[tuple[int, str]] = []
    cursor: int | None = None
    give_up = time.monotonic() + 60  # (the test then fails, naming what was not seen)
    try:
        while time.monotonic() < give_up:
            finished = done.is_set()  # read before the page: an empty page after it is final
            page = await storage.list_events(
                EventQuery(scope=scope, after=cursor, limit=rng.choice((100, 100, 50, 7, 1)))
            )
            seen.extend((found.position, found.id) for found in page)
            if page:
                cursor = page[-1].position
            elif finished and cursor is not None and cursor >= last():
                return seen
            elif finished:
                await asyncio.sleep(0.01)
        return seen
    finally:
        await storage.close()


async def test_paging_during_concurrent_ingest_sees_every_event_once(
    backend: str, database_url: str
) -> None:
    """Four writers, two readers: each reader sees each event of its scope once, in position order."""
    root = groups.new_root()
    team = groups.new_child(root)
    tally = Tally()

    async def small(storage: Storage, index: int, rng: random.Random) -> list[Ingested]:
        # Mostly 1 to 3 events; now and then a subscription is created with its audit event.
        if rng.random() < 0.2:
            now = time.time_ns()
            sub = Subscription(
                id=groups.new_child(root),
                group=root,
                kind="webhook",
                sink="http://127.0.0.1:9/",
                types=("dev.nothing.*",),
                roles=("owner",),
                created_ns=now,
                updated_ns=now,
            )
            return await storage.create_subscription(
                sub, batch("audit", index, 1, root, team, rng), now
            )
        return await storage.ingest(
            batch("small", index, rng.randint(1, 3), root, team, rng), time.time_ns()
        )

    async def varied(storage: Storage, index: int, rng: random.Random) -> list[Ingested]:
        size = rng.choice((1, 1, 2, 3, 5, 10, 25, 100))
        return await storage.ingest(batch("varied", index, size, root, team, rng), time.time_ns())

    async def large(storage: Storage, index: int, rng: random.Random) -> list[Ingested]:
        size = rng.randint(200, 500)  # a long transaction: it commits after many small ones
        return await storage.ingest(batch("large", index, size, root, team, rng), time.time_ns())

    async def slow(storage: Storage, index: int, rng: random.Random) -> list[Ingested]:
        events = batch("slow", index, rng.randint(1, 20), root, team, rng)
        return await slow_ingest(storage, events, rng.uniform(*SLOW_HOLD_S))

    def last_of(scope: str) -> Callable[[], int]:
        return lambda: max(
            position
            for event_id, position in tally.stored.items()
            if scope == root or tally.groups[event_id] == scope
        )

    # The readers run in threads of their own (each with its event loop), so that they keep
    # paging at the head of the log however busy the writers keep this one.
    done = threading.Event()
    readers = [
        asyncio.create_task(
            asyncio.to_thread(
                asyncio.run,
                reader(database_url, scope, done, last_of(scope), random.Random(f"{scope}{n}")),
            )
        )
        for n, scope in enumerate((root, team))
    ]
    # On PostgreSQL each writer has a storage (a connection pool) of its own, as if in a process
    # of its own. SQLite has one writer per process by design: the writers share its engine.
    if backend == "postgres":
        storages = [await open_(database_url) for _ in range(4)]
    else:
        storages = [await open_(database_url)] * 4
    deadline = time.monotonic() + WRITE_SECONDS[backend]
    try:
        written = await asyncio.gather(
            *(
                writer(storage, step.__name__, tally, root, team, deadline, step, pauses)
                for storage, (step, pauses) in zip(
                    storages,
                    (
                        (small, (0,)),
                        (varied, (0, 0, 0.002)),
                        (large, (0.05, 0.1)),
                        (slow, (0,)),
                    ),
                    strict=True,
                )
            )
        )
    finally:
        done.set()  # (whatever happened: the readers' threads must end)
        for storage in set(storages):
            await storage.close()
    seen_by = await asyncio.gather(*readers)

    assert all(written), written  # every writer got to write
    assert len(tally.stored) == sum(written)
    for scope, seen in zip((root, team), seen_by, strict=True):
        expected = {i for i, group in tally.groups.items() if group == scope or scope == root}
        ids = [event_id for _, event_id in seen]
        duplicates = len(ids) - len(set(ids))
        assert duplicates == 0, f"{duplicates} events seen twice in {scope}"
        missed = expected - set(ids)
        if missed:
            below = sorted(tally.stored[event_id] for event_id in missed)
            passed = [position for position in below if position < seen[-1][0]]
            pytest.fail(
                f"{len(missed)} of {len(expected)} events never seen in {scope}: {len(passed)} of"
                f" them lie below the reader's last position (its cursor passed them)"
            )
        assert set(ids) == expected
        positions = [position for position, _ in seen]
        assert positions == sorted(positions)
        assert len(set(positions)) == len(positions)
        assert all(tally.stored[event_id] == position for position, event_id in seen)


async def probe(
    storage: Storage, root: str, start: int | None, t: str, w: str, both: asyncio.Event
) -> int:
    """Read the page after `start` until it holds `t` and `w`; how many pages held `w` without `t`."""
    passed = 0
    while not both.is_set():
        page = [
            e.id for e in await storage.list_events(EventQuery(scope=root, after=start, limit=10))
        ]
        passed += w in page and t not in page
        if w in page and t in page:
            both.set()
    return passed


async def test_no_page_passes_an_ingest_that_commits_while_the_page_is_read(
    postgres_server: str,
) -> None:
    """The race the general test finds only now and then, made likely (PostgreSQL).

    An ingest T takes its transaction id, then a later ingest W commits; T commits while
    many pages are being read from just before both. A page may hold neither, or T's event
    then W's, but never W's without T's: its cursor would pass T for good. A page read as T
    commits must not trust a horizon read after the page's snapshot was taken.
    """
    from psycopg import AsyncConnection

    from tidings.storage.postgres_events import ingest

    url = new_schema(postgres_server)
    probes, cycles = 6, 30
    storage = open_storage(url, pool_min=probes, pool_max=probes + 1)
    await storage.open()
    root = groups.new_root()
    rng = random.Random(7)
    passed: list[int] = []
    try:
        after: int | None = None
        for cycle in range(cycles):
            now = time.time_ns()
            await storage.maintain(now)  # today's partitions, for the ingest outside the storage
            older = await AsyncConnection.connect(url)
            try:
                await older.execute("BEGIN")
                # At the root: no scope rows, nothing to intern.
                [t] = await ingest(older, [wire.parse_event(event(root, id=f"t{cycle}"))], now, {})
                [w] = await storage.ingest([wire.parse_event(event(root, id=f"w{cycle}"))], now)
                assert t.event.position < w.event.position
                both = asyncio.Event()
                readers = [
                    asyncio.create_task(probe(storage, root, after, f"t{cycle}", f"w{cycle}", both))
                    for _ in range(probes)
                ]
                await asyncio.sleep(rng.uniform(0.002, 0.02))
                await older.execute("COMMIT")
                if sum(await asyncio.wait_for(asyncio.gather(*readers), timeout=10)):
                    passed.append(cycle)
                after = w.event.position
            finally:
                await older.close()
    finally:
        await storage.close()
    assert not passed, f"in {len(passed)} of {cycles} cycles a page held W's event without T's"
