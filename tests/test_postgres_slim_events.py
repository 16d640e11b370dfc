"""PostgreSQL events rows kept slim: no attributes text (0006_slim_events.sql), and each
search word once.

A new row keeps only what no column holds (`extras`, `time_digits`): readers compose the
attributes from the columns. Rows stored before the migration keep their attributes text,
which is read as it is.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
from psycopg import AsyncConnection

from tests.conftest import event
from tests.databases import new_schema, postgres_migrated_before, query
from tidings import groups, wire
from tidings.model import EventQuery, StoredEvent
from tidings.storage.indexing import searchable_text
from tidings.storage.postgres import PostgresStorage
from tidings.storage.postgres_partitions import DAY_NS, day_of, ensure_partitions


@pytest.fixture
async def storage(postgres_server: str) -> AsyncIterator[PostgresStorage]:
    opened = PostgresStorage(new_schema(postgres_server))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def with_body(group: str, event_id: str, body: dict[str, str]) -> dict[str, object]:
    return event(group, id=event_id, data={"actor": {"subject": "u"}, "body": body})


def varied(group: str) -> list[dict[str, object]]:
    """Events whose attributes take every form: no subject, no time, 0 to 9 digits, texts that
    JSON escapes, integer and list extensions, another audience."""
    return [
        event(group, subject=None, id="no-subject"),
        event(group, id="no-time", time=None),
        event(group, id="whole-seconds", time="2026-03-01T10:00:00Z"),
        event(group, id="nine-digits", time="2026-03-01T10:00:00.123456789+02:00"),
        event(group, id="three-digits", time="2026-03-01T10:00:00.120Z"),
        event(
            group,
            id='quote"back\\slash',
            subject='emoji 🐙 "quoted" \\ and\u2028',
            audience="internal",
            zeta=-7,
            alpha="ünïcode </script>",
            allowedroles=["viewer", "owner"],
            dataschema="https://example.com/schema",
        ),
    ]


async def test_a_new_event_is_stored_without_its_attributes_text_and_read_back_whole(
    storage: PostgresStorage,
) -> None:
    root = groups.new_root()
    bodies = varied(root)
    ingested = await storage.ingest([wire.parse_event(body) for body in bodies], time.time_ns())
    answered = {result.event.id: result.event for result in ingested}

    stored = query(storage.url, "SELECT attributes, extras, time_digits FROM events ORDER BY seq")
    assert len(stored) == len(bodies)
    assert all(
        attributes is None and extras and digits is not None
        for attributes, extras, digits in stored
    )

    listed = await storage.list_events(EventQuery(scope=root, limit=100))
    assert [e.to_json() for e in listed] == [answered[e.id].to_json() for e in listed]
    for event_id, expected in answered.items():
        (found,) = await storage.find_events(root, event_id, None, 2)
        assert found.attributes == expected.attributes

    by_id = {e.id: json.loads(e.attributes) for e in listed}
    assert "subject" not in by_id["no-subject"]
    assert by_id["whole-seconds"]["time"] == "2026-03-01T10:00:00Z"
    assert by_id["nine-digits"]["time"] == "2026-03-01T08:00:00.123456789Z"
    assert by_id["three-digits"]["time"] == "2026-03-01T10:00:00.120Z"
    odd = by_id['quote"back\\slash']
    assert odd["subject"] == 'emoji 🐙 "quoted" \\ and\u2028'
    assert (odd["audience"], odd["alpha"], odd["zeta"]) == ("internal", "ünïcode </script>", -7)
    assert odd["allowedroles"] == "owner,viewer"
    assert list(odd)[-1] == "storedtime"
    assert by_id["no-time"]["time"] == by_id["no-time"]["storedtime"]


async def test_a_row_holds_each_search_word_once_and_is_found_by_every_one(
    storage: PostgresStorage,
) -> None:
    root = groups.new_root()
    team = groups.new_child(root)
    body = {"path": f"{team}/x", "again": team, "note": "heron heron egret"}
    await storage.ingest([wire.parse_event(with_body(team, "e", body))], time.time_ns())
    ((text,),) = query(storage.url, "SELECT search_text FROM events")
    assert isinstance(text, str)
    words = text.split(" ")
    assert len(words) == len(set(words))
    assert set(words) == set(searchable_text(wire.parse_event(with_body(team, "e", body))).split())
    for word in ("heron", "egr", root, team.split("/")[1]):
        found = await storage.list_events(EventQuery(scope=root, text=word))
        assert [e.id for e in found] == ["e"], word


async def test_rows_stored_before_the_migration_keep_their_attributes_text(
    postgres_server: str,
) -> None:
    url = new_schema(postgres_server)
    await postgres_migrated_before(url, "0006")
    root = groups.new_root()
    now = time.time_ns()
    # The attributes text as the previous version wrote it: read back verbatim, not composed.
    old_attributes = '{"specversion":"1.0","id":"old","source":"s","type":"t","legacy":"kept"}'
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        await ensure_partitions(conn, day_of(now) - 1, day_of(now))
        for seq, stored_at in ((1, now - DAY_NS), (2, now)):
            await conn.execute(
                "INSERT INTO events (tx, seq, tenant, group_path, id, source, type, time_ns,"
                " stored_ns, attributes, data, search_text) VALUES (1, %s, %s, %s, %s, 's', 't',"
                " %s, %s, %s, '{}', %s)",
                (
                    seq,
                    root,
                    root,
                    f"old-{seq}",
                    stored_at,
                    stored_at,
                    old_attributes,
                    f"walrus w{seq}",
                ),
            )
        await conn.execute("SELECT setval('events_seq', 2)")
    storage = PostgresStorage(url)
    await storage.open()
    try:
        await storage.ingest([wire.parse_event(with_body(root, "new", {"n": "walrus"}))], now)
        listed: list[StoredEvent] = await storage.list_events(EventQuery(scope=root))
        assert [e.id for e in listed] == ["old-1", "old-2", "new"]
        assert [e.attributes for e in listed[:2]] == [old_attributes, old_attributes]
        assert json.loads(listed[2].attributes)["id"] == "new"
        searched = await storage.list_events(EventQuery(scope=root, text="walrus"))
        assert [e.id for e in searched] == ["old-1", "old-2", "new"]
        assert [e.id for e in await storage.list_events(EventQuery(scope=root, text="w2"))] == [
            "old-2"
        ]
        (found,) = await storage.find_events(root, "old-2", None, 2)
        assert found.attributes == old_attributes
        assert await storage.expire(now - DAY_NS // 2) == 1
        assert [e.id for e in await storage.list_events(EventQuery(scope=root))] == ["old-2", "new"]
    finally:
        await storage.close()
