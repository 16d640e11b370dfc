"""The SQLite backend's scope rows, written behind the events (see sqlite_indexer).

A row of `event_scopes` per group below the root that sees an event makes any
subtree one ordered index range. Those rows land all over their two indexes
(by scope, and by scope and type): written with the events they were a third
of a single-event ingest's CPU. Written here in batches, sorted by scope, the
rows of hundreds of events share each page.

A batch is one statement, run by SQLite in C: the groups above an event's own
are cut from its path. Run as many statements (one a row), the batch let go of
Python's global lock and waited to take it back from the busy event loop at
every row, holding up the ingests' commits meanwhile. Only the events shared
with other groups (`allowedgroups`, rare) are read into Python.
"""

from __future__ import annotations

import sqlite3

from tidings.storage.indexing import scopes_of
from tidings.storage.sqlite_indexer import mark_of, move_mark, next_range

BATCH = 2_000
MARK = "scopes:indexed"

_SHARED = "instr(attributes, '\"allowedgroups\"') > 0"
# The parent of a path: strip the characters after its last '/', then the '/'.
_PARENT = "rtrim(rtrim(scope, replace(scope, '/', '')), '/')"
_OWN_SCOPES = f"""
WITH RECURSIVE up(scope, position, type) AS (
    SELECT group_path, position, type FROM events
    WHERE position > ? AND position <= ? AND instr(group_path, '/') > 0 AND NOT {_SHARED}
    UNION ALL
    SELECT {_PARENT}, position, type FROM up WHERE instr({_PARENT}, '/') > 0
)
INSERT INTO event_scopes (scope, position, type)
SELECT scope, position, type FROM up ORDER BY scope, position
"""


def index_batch(conn: sqlite3.Connection, limit: int = BATCH) -> int:
    """Write the scope rows of up to `limit` events after the mark; return how many events."""
    mark = mark_of(conn, MARK)
    count, last = next_range(conn, mark, limit)
    if not count:
        return 0
    conn.execute(_OWN_SCOPES, (mark, last))
    shared = conn.execute(
        "SELECT position, group_path, type, json_extract(attributes, '$.allowedgroups')"
        f" FROM events WHERE position > ? AND position <= ? AND {_SHARED}",
        (mark, last),
    ).fetchall()
    conn.executemany(
        "INSERT INTO event_scopes (scope, position, type) VALUES (?, ?, ?)",
        sorted(
            (scope, position, type_)
            for position, group, type_, allowed in shared
            for scope in scopes_of(group, allowed.split(",") if allowed else ())
        ),
    )
    move_mark(conn, MARK, last)
    return count


def index_all(conn: sqlite3.Connection) -> None:
    """Write the scope rows of every event stored, in the caller's transaction."""
    while index_batch(conn) == BATCH:
        pass
