"""The SQLite backend's scope rows, written behind the events (see sqlite_indexer).

A row of `event_scopes` per group below the root that sees an event makes any
subtree one ordered index range. Those rows land all over their two indexes
(by scope, and by scope and type): written with the events they were a third
of a single-event ingest's CPU. Written here in batches, sorted by scope, the
rows of hundreds of events share each page.
"""

from __future__ import annotations

import sqlite3

from tidings.storage.indexing import scopes_of
from tidings.storage.sqlite_indexer import mark_of, move_mark

BATCH = 2_000
MARK = "scopes:indexed"


def index_batch(conn: sqlite3.Connection, limit: int = BATCH) -> int:
    """Write the scope rows of up to `limit` events after the mark; return how many events."""
    # Only events shared with other groups need their attributes read.
    rows = conn.execute(
        "SELECT position, group_path, type,"
        " CASE WHEN instr(attributes, '\"allowedgroups\"') > 0"
        " THEN json_extract(attributes, '$.allowedgroups') END"
        " FROM events WHERE position > ? ORDER BY position LIMIT ?",
        (mark_of(conn, MARK), limit),
    ).fetchall()
    if not rows:
        return 0
    seen_from: dict[tuple[str, str | None], list[str]] = {}  # a batch's events share groups
    scope_rows: list[tuple[str, int, str]] = []
    for position, group, type_, allowed in rows:
        key = (group, allowed)
        if key not in seen_from:
            seen_from[key] = scopes_of(group, allowed.split(",") if allowed else ())
        scope_rows.extend((scope, position, type_) for scope in seen_from[key])
    scope_rows.sort()
    conn.executemany(
        "INSERT INTO event_scopes (scope, position, type) VALUES (?, ?, ?)", scope_rows
    )
    move_mark(conn, MARK, rows[-1][0])
    return len(rows)


def index_all(conn: sqlite3.Connection) -> None:
    """Write the scope rows of every event stored, in the caller's transaction."""
    while index_batch(conn) == BATCH:
        pass
