"""PostgreSQL scope rows hold interned numbers: concurrent interning, and an upgraded database."""

from __future__ import annotations

import asyncio
import time

from psycopg import AsyncConnection

from tests.conftest import TEST_TYPE, event
from tests.databases import new_schema, postgres_migrated_before
from tidings import groups, wire
from tidings.model import EventQuery
from tidings.storage import open_storage
from tidings.storage.postgres import PostgresStorage
from tidings.storage.postgres_interned import Interned
from tidings.storage.postgres_partitions import day_of, ensure_partitions

OTHER_TYPE = "dev.example.widget.deleted.v1"


async def test_processes_interning_the_same_texts_at_once_get_the_same_numbers(
    postgres_server: str,
) -> None:
    url = new_schema(postgres_server)
    stores = [PostgresStorage(url, min_size=1, max_size=2) for _ in range(4)]
    for store in stores:
        await store.open()
    try:
        texts = [{f"group-{n}" for n in range(start, start + 60)} for start in (0, 20, 40, 0)]
        found = await asyncio.gather(
            *(
                Interned().numbers(store._pool, wanted)
                for store, wanted in zip(stores, texts, strict=True)
            )
        )
        for wanted, numbers in zip(texts, found, strict=True):
            assert wanted <= numbers.keys()
        merged = {text: numbers[text] for numbers in found for text in numbers}
        assert len(set(merged.values())) == len(merged) == 100
        for numbers in found:
            assert all(merged[text] == number for text, number in numbers.items())
    finally:
        for store in stores:
            await store.close()


async def test_a_list_naming_a_group_or_type_never_interned_is_empty(postgres_server: str) -> None:
    storage = open_storage(new_schema(postgres_server))
    await storage.open()
    try:
        root = groups.new_root()
        team = groups.new_child(root)
        await storage.ingest([wire.parse_event(event(team))], time.time_ns())
        assert await storage.list_events(EventQuery(scope=groups.new_child(root))) == []
        assert await storage.list_events(EventQuery(scope=team, types=(OTHER_TYPE,))) == []
        assert len(await storage.list_events(EventQuery(scope=team, types=(TEST_TYPE,)))) == 1
    finally:
        await storage.close()


async def test_an_upgraded_database_lists_its_subtrees_by_interned_numbers(
    postgres_server: str,
) -> None:
    """Scope rows written by the previous version (texts; one without its type, which that
    version's trigger fills in) are listed by group and type after the migration."""
    url = new_schema(postgres_server)
    await postgres_migrated_before(url, "0004")
    root = groups.new_root()
    team = groups.new_child(root)
    now = time.time_ns()
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        await ensure_partitions(conn, day_of(now), day_of(now))
        for seq, (type_, scope_type) in enumerate(
            ((TEST_TYPE, TEST_TYPE), (OTHER_TYPE, None)), start=1
        ):
            await conn.execute(
                "INSERT INTO events (tx, seq, tenant, group_path, id, source, type, time_ns,"
                " stored_ns, attributes, data, search_text) VALUES (1, %s, %s, %s, %s, 's', %s,"
                " %s, %s, %s, '{}', '')",
                (seq, root, team, f"old-{seq}", type_, now, now, f'{{"id": "old-{seq}"}}'),
            )
            await conn.execute(
                "INSERT INTO event_scopes (scope, tx, seq, stored_ns, type) VALUES (%s, 1, %s, %s, %s)",
                (team, seq, now, scope_type),
            )
        await conn.execute("SELECT setval('events_seq', 2)")
    storage = open_storage(url)
    await storage.open()
    try:
        await storage.ingest([wire.parse_event(event(team, id="new"))], now)
        listed = await storage.list_events(EventQuery(scope=team))
        assert [e.id for e in listed] == ["old-1", "old-2", "new"]
        typed = await storage.list_events(EventQuery(scope=team, types=(OTHER_TYPE,)))
        assert [e.id for e in typed] == ["old-2"]
        prefixed = await storage.list_events(EventQuery(scope=team, type_prefixes=("dev.",)))
        assert [e.id for e in prefixed] == ["old-1", "old-2", "new"]
    finally:
        await storage.close()
    async with await AsyncConnection.connect(url) as conn:
        cursor = await conn.execute("SELECT text FROM interned ORDER BY text")
        assert [row[0] for row in await cursor.fetchall()] == sorted([team, TEST_TYPE, OTHER_TYPE])


async def test_a_group_or_type_interned_by_another_process_is_found_at_once(
    postgres_server: str,
) -> None:
    """A reader keeps the numbers it found, never the texts it did not: a group, an exact type
    and a type prefix that were new a moment ago are listed as soon as another process stores
    an event naming them."""
    url = new_schema(postgres_server)
    reader, writer = (PostgresStorage(url, min_size=1, max_size=2) for _ in range(2))
    await reader.open()
    await writer.open()
    try:
        root = groups.new_root()
        team = groups.new_child(root)
        queries = [
            EventQuery(scope=team),
            EventQuery(scope=team, types=(OTHER_TYPE,)),
            EventQuery(scope=team, type_prefixes=("dev.example.widget.",)),
        ]
        for query in queries:
            assert await reader.list_events(query) == []
        await writer.ingest([wire.parse_event(event(team, type=OTHER_TYPE))], time.time_ns())
        for query in queries:
            assert [e.type for e in await reader.list_events(query)] == [OTHER_TYPE]
    finally:
        await reader.close()
        await writer.close()


async def test_a_process_that_meets_known_texts_uses_up_no_numbers(postgres_server: str) -> None:
    """A restarted process knows no numbers: looking its texts up must not spend identity
    values (an INSERT meeting a conflict would), or the numbers would run out with restarts."""
    url = new_schema(postgres_server)
    store = PostgresStorage(url, min_size=1, max_size=2)
    await store.open()
    try:
        known = {f"group-{n}" for n in range(50)}
        first = await Interned().numbers(store._pool, known)
        for _ in range(3):  # as many restarts
            again = await Interned().numbers(store._pool, known)
            assert {text: again[text] for text in known} == {text: first[text] for text in known}
        newer = await Interned().numbers(store._pool, {"group-new"})
        assert newer["group-new"] == max(first[text] for text in known) + 1
    finally:
        await store.close()
