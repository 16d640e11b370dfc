"""The SQLite full-text index, written behind the events by the search indexer."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from tests.conftest import event, migrated_before
from tidings import groups, wire
from tidings.model import EventQuery
from tidings.storage.indexing import WORD, searchable_text
from tidings.storage.sqlite import SQLiteStorage, apply_migrations
from tidings.storage.sqlite_search import TEXT

NOW = 1_780_000_000 * 10**9


def indexed(path: Path) -> tuple[int, int]:
    """(rows in the full-text index, the indexer's mark), read from the file."""
    with sqlite3.connect(path) as conn:
        (rows,) = conn.execute("SELECT count(*) FROM events_text").fetchone()
        (mark,) = conn.execute(
            "SELECT CAST(value AS INTEGER) FROM settings WHERE name = 'search:indexed'"
        ).fetchone()
    return int(rows), int(mark)


async def test_a_search_finds_an_event_stored_just_before(tmp_path: Path) -> None:
    """Read your writes: a search right after an ingest finds the event."""
    storage = SQLiteStorage(str(tmp_path / "search.db"))
    await storage.open()
    try:
        root = groups.new_root()
        body = {"actor": {"subject": "user-1"}, "body": {"name": "zanzibar-gadget"}}
        for n in range(3):
            [stored] = await storage.ingest([wire.parse_event(event(root, data=body))], NOW + n)
            found = await storage.list_events(EventQuery(scope=root, text="zanzibar"))
            assert [e.id for e in found][-1] == stored.event.id
            assert len(found) == n + 1
    finally:
        await storage.close()


async def test_an_event_holding_nul_is_indexed_by_its_distinct_words(tmp_path: Path) -> None:
    """Its text is made in Python (SQLite's JSON functions stop at a NUL) and, as everywhere,
    holds each word once: a word after many repeats is still within the indexed bytes."""
    storage = SQLiteStorage(str(tmp_path / "nul.db"))
    await storage.open()
    try:
        root = groups.new_root()
        note = "start\x00" + "repeated " * 40_000 + "zanzibar"  # 360 KB with its repeats
        body = {"actor": {"subject": "user-1"}, "body": {"note": note}}
        await storage.ingest([wire.parse_event(event(root, data=body))], NOW)
        for q in ("start", "repeated", "zanzibar"):
            assert len(await storage.list_events(EventQuery(scope=root, text=q))) == 1, q
    finally:
        await storage.close()


async def test_the_index_follows_ingest_without_a_search(tmp_path: Path) -> None:
    """Ingested events are indexed soon after, in the background, and the mark moves on."""
    path = tmp_path / "background.db"
    storage = SQLiteStorage(str(path))
    await storage.open()
    try:
        root = groups.new_root()
        batch = [wire.parse_event(event(root, id=f"e{n}")) for n in range(5)]
        stored = await storage.ingest(batch, NOW)
        for _ in range(100):
            if indexed(path)[0] == 5:
                break
            await asyncio.sleep(0.05)
        assert indexed(path) == (5, stored[-1].event.position)
    finally:
        await storage.close()


async def test_an_upgraded_database_is_not_indexed_twice(tmp_path: Path) -> None:
    """A database whose events were indexed with them (before the indexer) keeps one index row
    an event: the migration starts the indexer after the last event stored."""
    path = tmp_path / "upgraded.db"
    conn = migrated_before(str(path), "0007")
    for position in (1, 2):  # as the previous version stored events: the text with them
        conn.execute(
            "INSERT INTO events (position, tenant, group_path, id, source, type, time_ns, stored_ns,"
            " fingerprint, attributes, data) VALUES (?, 't', 't', ?, 's', 'dev.x.v1', 0, 0, '',"
            " '{}', '{\"body\": {}}')",
            (position, f"old-{position}"),
        )
        conn.execute("INSERT INTO events_text (rowid, text) VALUES (?, 'dev x v1')", (position,))
    conn.close()
    assert apply_migrations(str(path))[:1] == ["0007_search_backlog.sql"]
    assert indexed(path) == (2, 2)
    storage = SQLiteStorage(str(path))
    await storage.open()
    try:
        assert await storage.count_events(EventQuery(scope="t", text="dev")) == 2
        assert indexed(path) == (2, 2)
    finally:
        await storage.close()


async def test_the_indexed_text_holds_the_words_every_backend_searches(tmp_path: Path) -> None:
    """SQLite's indexed text (built in SQL) has the words of indexing.searchable_text, the
    text PostgreSQL indexes: type, subject, actor, description and the body's values."""
    root = groups.new_root()
    bodies: list[dict[str, object]] = [
        {"name": "w1"},
        {"nested": {"list": [1, 2.5, "x_y z", True, None, {"deep": "Ünïcode wörds"}]}},
        {},
        {"count": -7, "ratio": 0.125, "flag": False, "empty": ""},
    ]
    events = []
    for n, body in enumerate(bodies):
        sent = event(root, id=f"t{n}", data={"actor": {"subject": f"actor-{n}"}, "body": body})
        if n % 2:
            sent["description"] = f"A description, number {n}"
        if n == 2:
            del sent["subject"]
        events.append(wire.parse_event(sent))
    path = tmp_path / "text.db"
    storage = SQLiteStorage(str(path))
    await storage.open()
    try:
        await storage.ingest(events, NOW)
    finally:
        await storage.close()
    with sqlite3.connect(path) as conn:
        texts = [row[0] for row in conn.execute(f"SELECT {TEXT} FROM events e ORDER BY position")]
    for text, stored in zip(texts, events, strict=True):
        assert sorted(WORD.findall(text)) == sorted(searchable_text(stored).split())


async def test_an_upgraded_index_keeps_its_rows_and_tells_accents_apart(tmp_path: Path) -> None:
    """The index an older version wrote (accents folded) is copied into one that keeps them:
    every row stays, found by its words as written, and no longer by them without accents."""
    path = tmp_path / "upgraded.db"
    conn = migrated_before(str(path), "0011")
    root = groups.new_root()
    conn.execute(
        "INSERT INTO events (position, tenant, group_path, id, source, type, time_ns, stored_ns,"
        " fingerprint, attributes, data) VALUES (1, ?, ?, 'old', 's', 'dev.x.v1', 0, 0, '',"
        ' \'{}\', \'{"body": {"order": "Café crème"}}\')',
        (root, root),
    )
    conn.execute("INSERT INTO events_text (rowid, text) VALUES (1, 'dev.x.v1 Café crème')")
    conn.execute("UPDATE settings SET value = '1' WHERE name = 'search:indexed'")
    assert conn.execute("SELECT rowid FROM events_text WHERE events_text MATCH 'cafe'").fetchall()
    conn.close()
    assert apply_migrations(str(path)) == ["0011_search_keeps_accents.sql"]
    assert indexed(path) == (1, 1)
    storage = SQLiteStorage(str(path))
    await storage.open()
    try:
        for q, expected in (("café", ["old"]), ("CRÈME", ["old"]), ("cafe", [])):
            found = await storage.list_events(EventQuery(scope=root, text=q))
            assert [e.id for e in found] == expected, q
    finally:
        await storage.close()
