"""Ids tidings mints name their event's stored time, and stay unique beside the ids producers give.

On PostgreSQL an event whose id tidings minted has no `event_ids` row: the uniqueness of
`(source, id)` then rests on the id naming its stored time, so that a producer sending it
back is caught by a probe of the events stored around that time. These tests store events
at fake stored times (the storage API's `now_ns`) and send their ids back later, on both
backends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from tests.conftest import event
from tidings import groups, wire
from tidings.errors import Conflict
from tidings.ids import MINTED_AHEAD_MS, minted_ms, uuid7s
from tidings.model import EventInput, EventQuery
from tidings.storage import open_storage
from tidings.storage.base import Storage
from tidings.storage.postgres_events import day_ranges, twin_span

NS = 1_000_000_000
DAY_NS = 86_400 * NS


@pytest.fixture
async def storage(database_url: str) -> AsyncIterator[Storage]:
    opened = open_storage(database_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def without_id(group: str, **overrides: object) -> EventInput:
    body = event(group, **overrides)
    return wire.parse_event(body)


def sent_back(original: EventInput, event_id: str) -> EventInput:
    """The event as a producer sends it again with the id tidings gave it."""
    body = event(original.group, id=event_id, subject=original.subject)
    return wire.parse_event(body)


async def stored_ids(storage: Storage, root: str) -> list[str]:
    return [found.id for found in await storage.list_events(EventQuery(scope=root, limit=100))]


async def test_a_minted_id_names_the_millisecond_its_event_was_stored_in(
    storage: Storage,
) -> None:
    """A batch's ids take one 1/4096 ms step each from its stored time: 20 stored at the start
    of a millisecond all name it; 20 stored in its last step spill into the next."""
    root = groups.new_root()
    ms_start = (time.time_ns() - 30 * DAY_NS) // 1_000_000 * 1_000_000 + 123_000_000
    last_step = ms_start + 1_000_000 - 1
    named: list[set[int | None]] = []
    for stored_at in (ms_start, last_step):
        results = await storage.ingest([without_id(root) for _ in range(20)], stored_at)
        ids = [result.event.id for result in results]
        assert ids == sorted(ids)
        named.append({minted_ms(event_id) for event_id in ids})
    ms = ms_start // 1_000_000
    assert named == [{ms}, {ms, ms + 1}]


@pytest.mark.parametrize("days_ago", [0, 30])
async def test_a_minted_id_sent_back_by_a_producer_is_a_conflict_that_stores_nothing(
    storage: Storage, days_ago: int
) -> None:
    """Sent back alone or in a batch, at once or a month later: a 409, and nothing new stored."""
    root = groups.new_root()
    now = time.time_ns()
    original = without_id(root, subject=f"{root}/first")
    [first] = await storage.ingest([original], now - days_ago * DAY_NS)
    again = sent_back(original, first.event.id)
    with pytest.raises(Conflict, match="stored with other content") as alone:
        await storage.ingest([again], now)
    assert alone.value.details == [{"index": 0, "source": again.source, "id": first.event.id}]
    fresh = without_id(root, subject=f"{root}/second")
    with pytest.raises(Conflict) as in_batch:
        await storage.ingest([fresh, again], now)
    assert in_batch.value.details[0]["index"] == 1
    assert await stored_ids(storage, root) == [first.event.id]


async def test_an_id_minted_while_the_stored_clock_ran_ahead_is_still_found(
    storage: Storage,
) -> None:
    """A request whose stored time lies just before another's mints after it, so its ids name
    the later time: the probe looks that far back (MINTED_AHEAD_MS)."""
    root = groups.new_root()
    later = time.time_ns() - DAY_NS
    earlier = later - 900_000_000
    await storage.ingest([without_id(root, subject=f"{root}/a")], later)
    original = without_id(root, subject=f"{root}/b")
    [behind] = await storage.ingest([original], earlier)
    named = minted_ms(behind.event.id)
    assert named is not None
    assert earlier // 1_000_000 < named <= earlier // 1_000_000 + MINTED_AHEAD_MS
    with pytest.raises(Conflict):
        await storage.ingest([sent_back(original, behind.event.id)], time.time_ns())


async def test_a_producers_uuid7_naming_a_stored_millisecond_is_its_own_event(
    storage: Storage,
) -> None:
    """An id in the form tidings mints that names no stored event is stored (and deduplicated)
    like any id a producer gives."""
    root = groups.new_root()
    now = time.time_ns() // 1_000_000 * 1_000_000  # a millisecond's start: room for both ids
    [minted] = await storage.ingest([without_id(root)], now)
    [own_id] = uuid7s(1, now)
    assert own_id != minted.event.id
    assert minted_ms(own_id) == minted_ms(minted.event.id)
    theirs = sent_back(without_id(root), own_id)
    assert [r.created for r in await storage.ingest([theirs], now)] == [True]
    assert [r.created for r in await storage.ingest([theirs], now)] == [False]
    assert sorted(await stored_ids(storage, root)) == sorted([minted.event.id, own_id])


@pytest.mark.parametrize(
    "event_id",
    ["ffffffff-ffff-7fff-bfff-ffffffffffff", "00000000-0000-7000-8000-000000000000"],
)
async def test_a_uuid7_naming_a_time_no_event_is_stored_at_is_an_id_like_any_other(
    storage: Storage, event_id: str
) -> None:
    """The year 10889 and 1970: nothing to look for, nothing out of range."""
    root = groups.new_root()
    [stored] = await storage.ingest([wire.parse_event(event(root, id=event_id))], time.time_ns())
    assert stored.created
    assert await stored_ids(storage, root) == [event_id]


def test_the_probe_plans_the_days_its_ids_name_and_none_between() -> None:
    """Ids naming times 80 days apart cost two days' partitions, not 81; a time within two
    seconds after midnight adds the day before."""
    day = 20_000 * DAY_NS
    ids = {
        "noon": uuid7s(1, day + DAY_NS // 2)[0],
        "80 days on": uuid7s(1, day + 80 * DAY_NS + DAY_NS // 2)[0],
        "just after midnight": uuid7s(1, day + 3 * DAY_NS + 500_000_000)[0],
    }
    spans = [twin_span(event_id) for event_id in ids.values()]
    assert None not in spans
    assert day_ranges(span for span in spans if span is not None) == [
        (day, day + DAY_NS),
        (day + 2 * DAY_NS, day + 4 * DAY_NS),
        (day + 80 * DAY_NS, day + 81 * DAY_NS),
    ]
    assert twin_span("order-42") is None
    assert twin_span("ffffffff-ffff-7fff-bfff-ffffffffffff") is None
