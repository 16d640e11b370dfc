"""The SQLite scope rows, written behind the events by the scope indexer."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from tests import databases
from tests.conftest import event, migrated_before
from tidings import groups, wire
from tidings.model import EventQuery, Subscription
from tidings.storage import sqlite_indexer
from tidings.storage.sqlite import SQLiteStorage, apply_migrations

NOW = 1_780_000_000 * 10**9


def scope_rows(path: Path) -> tuple[list[tuple[str, int]], int]:
    """(the scope rows, the indexer's mark), read from the file."""
    with sqlite3.connect(path) as conn:
        rows = [
            (str(scope), int(position))
            for scope, position in conn.execute(
                "SELECT g.text, s.position FROM event_scopes s JOIN interned g ON g.id = s.scope"
                " ORDER BY s.position, g.text"
            )
        ]
        (mark,) = conn.execute(
            "SELECT CAST(value AS INTEGER) FROM settings WHERE name = 'scopes:indexed'"
        ).fetchone()
    return rows, int(mark)


async def wait_for_mark(path: Path, position: int) -> None:
    """Until the scope indexer has done `position` (at most 5 s)."""
    for _ in range(100):
        if scope_rows(path)[1] >= position:
            return
        await asyncio.sleep(0.05)


storage = databases.sqlite_storage  # the fixture, under the name these tests use


@pytest.fixture
def indexer_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The indexer's own run comes a minute after an ingest: what a test reads before it is
    not indexed, however slow the machine."""
    monkeypatch.setattr(sqlite_indexer, "DELAY_S", 60)


async def test_a_subtree_read_finds_an_event_stored_just_before(
    storage: SQLiteStorage, tmp_path: Path, indexer_waits: None
) -> None:
    """Read your writes below the root: a list, a count, stats and a lookup by id, each right
    after an ingest and before the indexer's own run, see the event."""
    root = groups.new_root()
    team = groups.new_child(root)
    project = groups.new_child(team)
    for n in range(3):
        [stored] = await storage.ingest([wire.parse_event(event(project, id=f"e{n}"))], NOW + n)
        assert (
            scope_rows(tmp_path / "tidings.db")[1] < stored.event.position
        )  # not indexed yet: the read must catch up
        listed = await storage.list_events(EventQuery(scope=team))
        assert [e.id for e in listed] == [f"e{i}" for i in range(n + 1)]
        assert await storage.count_events(EventQuery(scope=project)) == n + 1
        stats = await storage.event_stats(EventQuery(scope=team), ["type"], None)
        assert [row[-1] for row in stats] == [n + 1]
        found = await storage.find_events(project, f"e{n}", None, limit=2)
        assert [e.position for e in found] == [stored.event.position]


async def test_scope_rows_follow_ingest_without_a_read(
    storage: SQLiteStorage, tmp_path: Path
) -> None:
    """Ingested events get their scope rows soon after, in the background; the mark moves on."""
    root = groups.new_root()
    team = groups.new_child(root)
    project = groups.new_child(team)
    stored = await storage.ingest(
        [wire.parse_event(event(g, id=f"e-{g}")) for g in (root, team, project)], NOW
    )
    positions = [result.event.position for result in stored]
    expected = sorted(
        [(team, positions[1]), (team, positions[2]), (project, positions[2])],
        key=lambda row: (row[1], row[0]),
    )
    await wait_for_mark(tmp_path / "tidings.db", positions[-1])
    assert scope_rows(tmp_path / "tidings.db") == (expected, positions[-1])


async def test_an_event_is_seen_from_the_groups_it_is_shared_with(
    storage: SQLiteStorage,
) -> None:
    """allowedgroups: the shared group and the groups above it (below the root) see the event,
    and no other group does."""
    root = groups.new_root()
    team, other, third = (groups.new_child(root) for _ in range(3))
    shared = groups.new_child(other)
    body = event(team, id="shared", allowedgroups=shared)
    await storage.ingest([wire.parse_event(body), wire.parse_event(event(third))], NOW)
    for scope, seen in ((team, True), (other, True), (shared, True), (third, False)):
        ids = [e.id for e in await storage.list_events(EventQuery(scope=scope))]
        assert ("shared" in ids) is seen, scope


async def test_a_replay_below_the_root_queues_events_not_yet_indexed(
    storage: SQLiteStorage, tmp_path: Path, indexer_waits: None
) -> None:
    """A replay of a subtree's subscription made right after an ingest queues the new event."""
    root = groups.new_root()
    team = groups.new_child(root)
    sub = Subscription(
        id=f"{team}/replayed",
        group=team,
        kind="webhook",
        sink="https://replayed.example/hook",
        types=(),
        roles=("owner",),
        created_ns=NOW,
        updated_ns=NOW,
    )
    [stored] = await storage.ingest([wire.parse_event(event(team, id="late"))], NOW + 1)
    await storage.create_subscription(sub, [], NOW + 2)
    assert scope_rows(tmp_path / "tidings.db")[1] < stored.event.position
    assert await storage.replay(sub, NOW, NOW + 3) == 1


async def test_an_upgraded_database_keeps_its_scope_rows_once(tmp_path: Path) -> None:
    """A database whose scope rows were written with the events (before the indexer) is not
    indexed again: the migration starts the indexer after the last event stored."""
    path = tmp_path / "upgraded.db"
    conn = migrated_before(str(path), "0008")
    root = groups.new_root()
    team = groups.new_child(root)
    for position in (1, 2):  # as the previous version stored events: the scope rows with them
        conn.execute(
            "INSERT INTO events (position, tenant, group_path, id, source, type, time_ns, stored_ns,"
            " fingerprint, attributes, data) VALUES (?, ?, ?, ?, 's', 'dev.x.v1', 0, 0, '',"
            " '{}', '{\"body\": {}}')",
            (position, root, team, f"old-{position}"),
        )
        conn.execute(
            "INSERT INTO event_scopes (scope, position, type) VALUES (?, ?, 'dev.x.v1')",
            (team, position),
        )
    conn.close()
    assert apply_migrations(str(path))[:1] == ["0008_scopes_behind.sql"]
    assert scope_rows(path) == ([(team, 1), (team, 2)], 2)
    storage = SQLiteStorage(str(path))
    await storage.open()
    try:
        await storage.ingest([wire.parse_event(event(team, id="new"))], NOW)
        listed = await storage.list_events(EventQuery(scope=team))
        assert [e.id for e in listed] == ["old-1", "old-2", "new"]
    finally:
        await storage.close()


async def test_an_event_sixteen_groups_deep_has_a_scope_row_for_each_group_below_the_root(
    storage: SQLiteStorage, tmp_path: Path
) -> None:
    """Each group above the event's, up to the root's child, sees it; the root needs no row."""
    chain = [groups.new_root()]
    while len(chain) < groups.MAX_DEPTH:
        chain.append(groups.new_child(chain[-1]))
    [stored] = await storage.ingest([wire.parse_event(event(chain[-1]))], NOW)
    await wait_for_mark(tmp_path / "tidings.db", stored.event.position)
    rows, _ = scope_rows(tmp_path / "tidings.db")
    assert rows == sorted((group, stored.event.position) for group in chain[1:])
    for group in chain:
        listed = await storage.list_events(EventQuery(scope=group))
        assert [e.position for e in listed] == [stored.event.position]


async def test_events_left_unindexed_by_a_closed_storage_are_indexed_after_the_next_open(
    tmp_path: Path,
) -> None:
    """A storage closed before its indexer ran leaves a backlog; the next one to open indexes
    it in the background, without waiting for a read or an ingest."""
    path = tmp_path / "backlog.db"
    root = groups.new_root()
    team = groups.new_child(root)
    first = SQLiteStorage(str(path))
    await first.open()
    [stored] = await first.ingest([wire.parse_event(event(team))], NOW)
    await first.close()
    assert scope_rows(path) == ([], 0)
    second = SQLiteStorage(str(path))
    await second.open()
    try:
        await wait_for_mark(path, stored.event.position)
        assert scope_rows(path) == ([(team, stored.event.position)], stored.event.position)
    finally:
        await second.close()


async def test_a_subtree_read_merges_indexed_and_unindexed_events_without_writing(
    storage: SQLiteStorage, tmp_path: Path
) -> None:
    """Below the root, the events before the indexer's mark (scope rows) and after it (read
    from the events) come in one order, counted and grouped together; and the read takes no
    write lock: another connection holding one does not hold it up."""
    path = tmp_path / "tidings.db"
    root = groups.new_root()
    team = groups.new_child(root)
    [old] = await storage.ingest([wire.parse_event(event(team, id="old"))], NOW)
    await wait_for_mark(path, old.event.position)
    other = dict(event(team, id="new"), type="dev.example.other.v1")
    [new] = await storage.ingest([wire.parse_event(other)], NOW + 1)
    assert scope_rows(path)[1] == old.event.position  # "new" is not indexed yet
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        read = asyncio.gather(
            storage.list_events(EventQuery(scope=team)),
            storage.list_events(EventQuery(scope=team, descending=True, limit=1)),
            storage.list_events(EventQuery(scope=team, after=old.event.position)),
            storage.count_events(EventQuery(scope=team)),
            storage.event_stats(EventQuery(scope=team), ["type"], None),
            storage.find_events(team, "new", None, limit=2),
        )
        ascending, newest, after_old, count, stats, found = await asyncio.wait_for(read, 5)
    finally:
        blocker.rollback()
        blocker.close()
    assert [e.id for e in ascending] == ["old", "new"]
    assert [e.id for e in newest] == ["new"]
    assert [e.id for e in after_old] == ["new"]
    assert count == 2
    assert sorted(stats) == [("dev.example.other.v1", 1), ("dev.example.widget.created.v1", 1)]
    assert [e.position for e in found] == [new.event.position]
