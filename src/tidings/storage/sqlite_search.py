"""The SQLite backend's full-text index, written behind the events instead of with them.

An ingest's transaction used to write each event's text into the FTS5 index
too. FTS5 turns every transaction into a new index segment and merges the
segments as they pile up, so with one small transaction per group commit the
index cost an ingest about a tenth of its time. Here ingest stores the events
only, and the indexer adds their text in batches of up to `BATCH` events, in
position order, keeping the last position indexed in `settings` (in the same
transaction, so a crash loses nothing). It runs shortly after ingests, and a
search first catches the index up with every event stored when the search
began: a search never misses an event that was acknowledged before it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from tidings.storage.indexing import search_text

BATCH = 2_000
DELAY_S = 0.2
MARK = "search:indexed"

Writer = Callable[..., Awaitable[int]]


def index_batch(conn: sqlite3.Connection, limit: int = BATCH) -> int:
    """Index the text of up to `limit` events after the mark; return how many were indexed."""
    (mark,) = conn.execute("SELECT CAST(value AS INTEGER) FROM settings WHERE name = ?", (MARK,))
    rows = conn.execute(
        "SELECT position, type, subject, actor, attributes, data FROM events"
        " WHERE position > ? ORDER BY position LIMIT ?",
        (mark[0], limit),
    ).fetchall()
    if not rows:
        return 0
    conn.executemany(
        "INSERT INTO events_text (rowid, text) VALUES (?, ?)",
        [(row[0], _text(row)) for row in rows],
    )
    conn.execute("UPDATE settings SET value = ? WHERE name = ?", (str(rows[-1][0]), MARK))
    return len(rows)


def _text(row: tuple[Any, ...]) -> str:
    _, type_, subject, actor, attributes, data = row
    body = orjson.loads(data).get("body", {})
    return search_text(type_, subject, actor, orjson.loads(attributes).get("description"), body)


class SearchIndexer:
    """Keeps the full-text index caught up: soon after ingests, and at once before a search."""

    def __init__(self, write: Writer):
        self._write = write
        self._scheduled: asyncio.TimerHandle | None = None
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        self._running: asyncio.Task[None] | None = None

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
        """Index every event stored so far."""
        while await self._write(index_batch, long=True) == BATCH:
            pass

    def stop(self) -> None:
        """Cancel a scheduled run (what it would have indexed waits for the next start)."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if self._running is not None:
            self._running.cancel()
            self._running = None
