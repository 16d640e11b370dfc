"""The SQLite engine's group commit: writes share a transaction, a failing one fails alone."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tidings.storage import sqlite_engine
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
    """Run `writes` as one group: asked for together, before the engine gets to them."""
    return await asyncio.gather(*(engine.write(write) for write in writes), return_exceptions=True)


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
        await engine.stop()


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
        await engine.stop()


async def test_writes_that_conflict_within_a_group_are_serialized(engine: SQLiteEngine) -> None:
    """Two writes of the same key in one group: exactly one commits, the other fails."""
    try:
        results = await _grouped(engine, [_insert("same"), _insert("same"), _insert("other")])
        failures = [r for r in results if isinstance(r, sqlite3.IntegrityError)]
        assert len(failures) == 1
        assert sorted(r for r in results if isinstance(r, str)) == ["other", "same"]
        assert _names(engine) == ["other", "same"]
    finally:
        await engine.stop()


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
        await engine.stop()


async def test_a_long_write_runs_alone_between_groups(engine: SQLiteEngine) -> None:
    """A long write runs off the loop in a transaction of its own; the writes before and after
    it are committed too, each answered with its own result."""
    ran_on: list[str] = []

    def long_write(conn: sqlite3.Connection) -> str:
        ran_on.append(threading.current_thread().name)
        conn.execute("INSERT INTO rows (name) VALUES ('long')")
        return "long"

    try:
        results = await asyncio.gather(
            engine.write(_insert("before")),
            engine.write(long_write, long=True),
            engine.write(_insert("after")),
        )
        assert results == ["before", "long", "after"]
        assert ran_on != [threading.current_thread().name]
        assert _names(engine) == ["after", "before", "long"]
    finally:
        await engine.stop()


async def test_stop_finishes_the_writes_asked_for(engine: SQLiteEngine) -> None:
    """Writes asked for before the engine stops are committed, not dropped."""
    writes = [asyncio.ensure_future(engine.write(_insert(f"w{n}"))) for n in range(20)]
    await asyncio.sleep(0)  # each has asked
    await engine.stop()
    assert [await write for write in writes] == [f"w{n}" for n in range(20)]
    conn = sqlite3.connect(engine.path)
    assert conn.execute("SELECT count(*) FROM rows").fetchone()[0] == 20
    conn.close()


async def test_writes_go_on_after_a_drain_is_cancelled(engine: SQLiteEngine) -> None:
    """If the task committing the writes is cancelled (its loop going away), the next write
    starts committing again, the pending ones with it, instead of everyone waiting for ever."""
    try:
        first = asyncio.ensure_future(engine.write(_insert("lost")))
        await asyncio.sleep(0)  # the write has asked, and its drain is scheduled
        drainer = engine._drainer
        assert drainer is not None
        drainer.cancel()
        await asyncio.sleep(0)
        assert drainer.cancelled()
        assert await asyncio.wait_for(engine.write(_insert("later")), 5) == "later"
        assert await asyncio.wait_for(first, 5) == "lost"  # still pending, taken by the next
        assert _names(engine) == ["later", "lost"]
    finally:
        await engine.stop()


class _LockedAtFirst:
    """A connection whose switch to WAL reports the database locked `times` times, as it can
    while other connections open a new file at the same moment (a race no test reaches at will)."""

    def __init__(self, conn: sqlite3.Connection, times: int, message: str = "database is locked"):
        self.conn = conn
        self.times = times
        self.message = message
        self.tries = 0

    def execute(self, sql: str) -> sqlite3.Cursor:
        if sql == "PRAGMA journal_mode = WAL":
            self.tries += 1
            if self.tries <= self.times:
                raise sqlite3.OperationalError(self.message)
        return self.conn.execute(sql)


def test_the_switch_to_wal_is_tried_again_while_the_database_is_locked(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "new.db", isolation_level=None)
    locked = _LockedAtFirst(conn, times=3)
    sqlite_engine._enter_wal(locked)  # type: ignore[arg-type]
    assert locked.tries == 4
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_the_switch_to_wal_gives_up_after_the_busy_timeout_and_on_other_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = sqlite3.connect(tmp_path / "new.db", isolation_level=None)
    monkeypatch.setattr(sqlite_engine, "_BUSY_TIMEOUT_S", 0.05)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        sqlite_engine._enter_wal(_LockedAtFirst(conn, times=10**6))  # type: ignore[arg-type]
    broken = _LockedAtFirst(conn, times=1, message="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        sqlite_engine._enter_wal(broken)  # type: ignore[arg-type]
    assert broken.tries == 1


def test_a_wait_for_the_lock_cut_short_leaves_no_transaction_behind(
    engine: SQLiteEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loop that ends while its write waits for another process's lock: the commit thread
    still takes the lock when it is let go, and lets it go again, so that the next loop's
    writes (and other processes) are not locked out for good."""
    monkeypatch.setattr(sqlite_engine, "_BUSY_TIMEOUT_S", 5.0)
    other = sqlite3.connect(tmp_path / "engine.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")

    async def cut_short() -> None:
        writing = asyncio.ensure_future(engine.write(_insert("never")))
        await asyncio.sleep(0.3)  # the write waits on the commit thread; the loop then ends
        assert not writing.done()

    asyncio.run(cut_short())
    other.execute("ROLLBACK")
    other.close()

    async def later() -> str:
        return await asyncio.wait_for(engine.write(_insert("later")), 5)

    assert asyncio.run(later()) == "later"
    assert _names(engine) == ["later"]
    asyncio.run(engine.stop())
