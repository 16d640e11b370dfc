"""The SQLite backend's full-text index, written behind the events (see sqlite_indexer).

FTS5 turns every transaction into a new index segment and merges the segments
as they pile up: written with the events, one small transaction per group
commit, the index cost an ingest about a tenth of its time.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from tidings.storage.indexing import search_text
from tidings.storage.sqlite_indexer import mark_of, move_mark

BATCH = 2_000
MARK = "search:indexed"


def index_batch(conn: sqlite3.Connection, limit: int = BATCH) -> int:
    """Index the text of up to `limit` events after the mark; return how many were indexed."""
    rows = conn.execute(
        "SELECT position, type, subject, actor, attributes, data FROM events"
        " WHERE position > ? ORDER BY position LIMIT ?",
        (mark_of(conn, MARK), limit),
    ).fetchall()
    if not rows:
        return 0
    conn.executemany(
        "INSERT INTO events_text (rowid, text) VALUES (?, ?)",
        [(row[0], _text(row)) for row in rows],
    )
    move_mark(conn, MARK, rows[-1][0])
    return len(rows)


def _text(row: tuple[Any, ...]) -> str:
    _, type_, subject, actor, attributes, data = row
    body = orjson.loads(data).get("body", {})
    return search_text(type_, subject, actor, orjson.loads(attributes).get("description"), body)
