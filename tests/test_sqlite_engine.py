"""The SQLite engine's group commit: writes share a transaction, a failing one fails alone."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tidings.storage.sqlite_engine import SQLiteEngine


class Refused(Exception):
    """A write that fails after it has written."""


@pytest.fixture
def engine(tmp_path: Path) -> SQLiteEngine:
    engine = SQLiteEngine(str(tmp_path / "engine.db"))
    engine.start()
    setup = sqlite3.connect(tmp_path / "engine.db")
    setup.execute("CREATE TABLE rows (name TEXT PRIMARY KEY)")
    setup.commit()
    setup.close()
    return engine


Write = Callable[[sqlite3.Connection], str]


def _insert(name: str, fail: bool = False) -> Write:
    def write(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO rows (name) VALUES (?)", (name,))
        if fail:
            raise Refused(name)
        return name

    return write


def _names(engine: SQLiteEngine) -> list[str]:
    return engine.read_at_once(
        lambda conn: [row[0] for row in conn.execute("SELECT name FROM rows ORDER BY name")]
    )


async def _grouped(engine: SQLiteEngine, writes: list[Write]) -> list[object]:
    """Run `writes` as one group: a first write holds the writer until all are queued."""
    gate = threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        gate.wait(10)

    held = asyncio.ensure_future(engine.write(hold))
    await asyncio.sleep(0.05)  # the writer has taken `hold` and waits in it
    futures = [asyncio.ensure_future(engine.write(write)) for write in writes]
    await asyncio.sleep(0.05)  # every write is queued
    gate.set()
    await held
    return await asyncio.gather(*futures, return_exceptions=True)


async def test_a_failing_write_fails_alone_and_leaves_nothing(engine: SQLiteEngine) -> None:
    """In a group, the write that raises gets its exception and its rows are rolled back;
    every other write of the group is committed and gets its result."""
    try:
        writes = [_insert("a"), _insert("b"), _insert("c", fail=True), _insert("d")]
        results = await _grouped(engine, writes)
        assert results[:2] == ["a", "b"]
        assert results[3] == "d"
        assert isinstance(results[2], Refused)
        assert _names(engine) == ["a", "b", "d"]
    finally:
        engine.stop()


async def test_two_failing_writes_in_a_group(engine: SQLiteEngine) -> None:
    """Several failures in one group: each fails alone, the rest still commit."""
    try:
        writes = [_insert("a", fail=True), _insert("b"), _insert("c", fail=True), _insert("d")]
        results = await _grouped(engine, writes)
        assert isinstance(results[0], Refused)
        assert isinstance(results[2], Refused)
        assert (results[1], results[3]) == ("b", "d")
        assert _names(engine) == ["b", "d"]
    finally:
        engine.stop()


async def test_writes_that_conflict_within_a_group_are_serialized(engine: SQLiteEngine) -> None:
    """Two writes of the same key in one group: exactly one commits, the other fails."""
    try:
        results = await _grouped(engine, [_insert("same"), _insert("same"), _insert("other")])
        failures = [r for r in results if isinstance(r, sqlite3.IntegrityError)]
        assert len(failures) == 1
        assert sorted(r for r in results if isinstance(r, str)) == ["other", "same"]
        assert _names(engine) == ["other", "same"]
    finally:
        engine.stop()


async def test_the_wal_is_checkpointed_off_the_writer(tmp_path: Path) -> None:
    """Committed writes reach the database file itself soon after, with nobody asking."""
    path = tmp_path / "checkpointed.db"
    engine = SQLiteEngine(str(path))
    engine.start()
    try:
        await engine.write(lambda conn: conn.execute("CREATE TABLE rows (name TEXT)"))
        before = path.stat().st_size
        await engine.write(
            lambda conn: conn.executemany(
                "INSERT INTO rows (name) VALUES (?)", [(f"row {i:06}",) for i in range(5_000)]
            )
        )
        for _ in range(100):
            if path.stat().st_size > before + 50_000:
                break
            await asyncio.sleep(0.05)
        assert path.stat().st_size > before + 50_000
    finally:
        engine.stop()
