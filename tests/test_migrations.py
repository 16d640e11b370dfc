"""Schema migrations on a real SQLite file: applied once, in order, and data outlives restarts."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import event
from tidings import groups, wire
from tidings.model import EventQuery, Group
from tidings.storage.migrations import migration_files
from tidings.storage.sqlite import SQLiteStorage, apply_migrations
from tidings.tokens import hash_secret, new_token

CORE_TABLES = {"schema_migrations", "secrets", "groups", "tokens", "events", "event_scopes"}
NOW = 1_700_000_000_000_000_000


@pytest.fixture
def db(tmp_path: Path) -> str:
    """The path of a fresh SQLite file (not yet created)."""
    return str(tmp_path / "tidings.db")


@pytest.fixture
def migrated(db: str) -> list[str]:
    """The migrations applied to the fresh file."""
    assert not Path(db).exists()
    return apply_migrations(db)


@pytest.fixture
def conn(db: str, migrated: list[str]) -> Iterator[sqlite3.Connection]:
    """A plain connection to the migrated file (no pragmas of its own), closed after the test."""
    connection = sqlite3.connect(db)
    yield connection
    connection.close()


def recorded(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]


def test_migration_files_are_numbered_and_ordered() -> None:
    """Every migration is a numbered .sql file, and they are applied in number order."""
    names = [name for name, _ in migration_files("sqlite")]
    assert names
    assert names[0] == "0001_core.sql"
    assert names == sorted(names)
    assert all(name[:4].isdigit() and name[4] == "_" for name in names)
    assert len({name[:4] for name in names}) == len(names)


def test_fresh_file_gets_every_migration_once(
    migrated: list[str], conn: sqlite3.Connection
) -> None:
    """Migrating a new file applies each migration, in order, and records each once."""
    expected = [name for name, _ in migration_files("sqlite")]
    assert migrated == expected
    assert recorded(conn) == expected


def test_migrating_again_applies_nothing(db: str, conn: sqlite3.Connection) -> None:
    """A second migration run finds nothing to do and leaves the record unchanged."""
    before = list(conn.execute("SELECT name, applied_ns FROM schema_migrations ORDER BY name"))
    assert apply_migrations(db) == []
    after = list(conn.execute("SELECT name, applied_ns FROM schema_migrations ORDER BY name"))
    assert after == before


def test_schema_has_the_core_tables_and_indexes(conn: sqlite3.Connection) -> None:
    """The migrated schema holds the core tables and the unique (tenant, source, id) index."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables >= CORE_TABLES
    unique_columns = [
        {row[2] for row in conn.execute(f"PRAGMA index_info('{row[1]}')")}
        for row in conn.execute("PRAGMA index_list('events')")
        if row[2] == 1
    ]
    assert {"tenant", "source", "id"} in unique_columns
    columns = {row[1] for row in conn.execute("PRAGMA table_info('events')")}
    assert {"position", "tenant", "group_path", "id", "source", "stored_ns", "data"} <= columns


def test_schema_is_in_wal_mode(conn: sqlite3.Connection) -> None:
    """The file is left in WAL mode, so readers do not block the writer."""
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_storage_open_migrates_and_is_ready(db: str) -> None:
    """Opening a storage on a new file migrates it; it is then ready and migrating again is a no-op."""
    storage = SQLiteStorage(db)
    await storage.open()
    try:
        assert await storage.ready()
        assert await storage.migrate() == []
    finally:
        await storage.close()


async def test_data_survives_reopening(db: str) -> None:
    """Events, tokens, groups and secrets written before a restart are all there after it."""
    root = groups.new_root()
    token, secret = new_token(root, ["owner"], "ci", None, None, NOW)
    sent = wire.parse_event(event(root, id="kept-1", time="2026-06-17T22:32:33.12323813Z"))

    first = SQLiteStorage(db)
    await first.open()
    try:
        key = await first.secret("cursor-key")
        await first.create_token(token)
        await first.create_group(Group(path=f"{root}/team", name="Team", created_ns=NOW))
        stored = await first.ingest([sent], NOW)
    finally:
        await first.close()

    again = SQLiteStorage(db)
    await again.open()
    try:
        assert await again.migrate() == []
        assert await again.secret("cursor-key") == key
        found = await again.token_by_hash(hash_secret(secret))
        assert found is not None
        assert (found.id, found.group, found.roles, found.name) == (
            token.id,
            root,
            ("owner",),
            "ci",
        )
        group = await again.get_group(f"{root}/team")
        assert group is not None
        assert group.name == "Team"
        events = await again.list_events(EventQuery(scope=root))
        assert [e.to_json() for e in events] == [stored[0].event.to_json()]
        assert '"time":"2026-06-17T22:32:33.12323813Z"' in events[0].attributes
        repeat = await again.ingest([sent], NOW + 1)
        assert not repeat[0].created
    finally:
        await again.close()
