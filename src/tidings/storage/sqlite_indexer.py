"""Indexes of the SQLite backend written behind the events, in batches, instead of with them.

An ingest's group commit writes each page it changes to the WAL. Indexes whose
entries land all over their B-tree (a row per group that sees the event, the
full-text index) touch pages that no other event of the group shares, so kept
in the ingest's transaction they cost most of an ingest's writing. An index
written behind is filled by a batch function, in position order, from the
events after its mark (a row of `settings`, moved in the same transaction, so
a crash loses nothing): hundreds of events' entries share each page.

An indexer runs its batches shortly after ingests, and when a storage opens.
Reads below the root never wait for the scope indexer: they read the events
after its mark straight from `events` (see SQLiteEventSQL). A full-text search
checks that the mark is at the last event stored and, if not, catches the index
up and runs again. Both the mark and the last position only grow, so a search
never misses an event acknowledged before it began, and what it sees is all
below the mark: a page never passes an event that is still to be indexed.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable

DELAY_S = 0.2

Batch = Callable[[sqlite3.Connection], int]
Writer = Callable[..., Awaitable[int]]


def mark_of(conn: sqlite3.Connection, mark: str) -> int:
    """The last position indexed under `mark`."""
    row = conn.execute(
        "SELECT CAST(value AS INTEGER) FROM settings WHERE name = ?", (mark,)
    ).fetchone()
    return int(row[0])


def next_range(conn: sqlite3.Connection, mark: int, limit: int) -> tuple[int, int]:
    """How many of the (up to `limit`) events after position `mark` there are, and the last
    one's position: a batch's range."""
    count, last = conn.execute(
        "SELECT count(*), max(position) FROM"
        " (SELECT position FROM events WHERE position > ? ORDER BY position LIMIT ?)",
        (mark, limit),
    ).fetchone()
    return int(count), int(last or 0)


def move_mark(conn: sqlite3.Connection, mark: str, position: int) -> None:
    conn.execute("UPDATE settings SET value = ? WHERE name = ?", (str(position), mark))


class BehindIndexer:
    """Keeps one index written behind caught up: soon after ingests, and at once for a read."""

    def __init__(self, write: Writer, batch: Batch, mark: str, batch_size: int):
        self._write = write
        self._batch = batch
        self.mark = mark
        self._batch_size = batch_size
        self._scheduled: asyncio.TimerHandle | None = None
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        self._running: asyncio.Task[None] | None = None

    def current(self, conn: sqlite3.Connection) -> bool:
        """Whether every event stored (in `conn`'s snapshot) is indexed."""
        (last,) = conn.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()
        return bool(last <= mark_of(conn, self.mark))

    def ingested(self) -> None:
        """Events were stored: index them in a moment (one batch run for many ingests)."""
        loop = asyncio.get_running_loop()
        if self._scheduled is None or self._scheduled_on is not loop:
            self._scheduled = loop.call_later(DELAY_S, self._start)
            self._scheduled_on = loop

    def _start(self) -> None:
        self._scheduled = None
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self.catch_up())

    async def catch_up(self) -> None:
        """Index every event stored so far (off the event loop: see SQLiteEngine.write)."""
        while await self._write(self._batch, long=True) == self._batch_size:
            pass

    def stop(self) -> None:
        """Cancel a scheduled run (what it would have indexed waits for the next start)."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if self._running is not None:
            self._running.cancel()
            self._running = None
