"""The SQLite backend's scope rows, written behind the events (see sqlite_indexer).

A row of `event_scopes` per group below the root that sees an event makes any
subtree one ordered index range. Those rows land all over their two indexes
(by scope, and by scope and type): written with the events they were a third
of a single-event ingest's CPU. Written here in batches, sorted by scope, the
rows of hundreds of events share each page.

The rows hold interned numbers (table `interned`) for their group path and
event type: with the texts themselves, a batch cost three times as much (21 µs
an event, now 7). Two other ways of writing a batch that looked cheaper were
not: building the rows in SQL (a recursive CTE cutting each path's parents)
took 31 µs an event against 21 in Python, and sending them as one JSON array
(`json_each`) 17 µs to insert against 10 with `executemany`.

Reads below the root do not wait for this indexer: they read the events after
its mark from `events` itself (see SQLiteEventSQL in sqlite_events).
"""

from __future__ import annotations

import sqlite3

import orjson

from tidings.storage.indexing import scopes_of
from tidings.storage.sqlite_indexer import mark_of, move_mark, next_range

BATCH = 2_000
MARK = "scopes:indexed"
# The interned number of the text given as one parameter (NULL if none was interned).
INTERNED = "(SELECT id FROM interned WHERE text = ?)"


def index_batch(conn: sqlite3.Connection, limit: int = BATCH) -> int:
    """Write the scope rows of up to `limit` events after the mark; return how many events."""
    mark = mark_of(conn, MARK)
    count, last = next_range(conn, mark, limit)
    if not count:
        return 0
    # Only events shared with other groups need their attributes read.
    events = conn.execute(
        "SELECT position, group_path, type,"
        " CASE WHEN instr(attributes, '\"allowedgroups\"') > 0"
        " THEN json_extract(attributes, '$.allowedgroups') END"
        " FROM events WHERE position > ? AND position <= ?",
        (mark, last),
    ).fetchall()
    seen_from: dict[tuple[str, str | None], list[str]] = {}  # a batch's events share groups
    rows: list[tuple[str, int, str]] = []
    for position, group, type_, allowed in events:
        if (group, allowed) not in seen_from:
            seen_from[group, allowed] = scopes_of(group, allowed.split(",") if allowed else ())
        rows.extend((scope, position, type_) for scope in seen_from[group, allowed])
    ids = intern(conn, {text for scope, _, type_ in rows for text in (scope, type_)})
    conn.executemany(
        "INSERT INTO event_scopes (scope, position, type) VALUES (?, ?, ?)",
        sorted((ids[scope], position, ids[type_]) for scope, position, type_ in rows),
    )
    move_mark(conn, MARK, last)
    return count


def intern(conn: sqlite3.Connection, texts: set[str]) -> dict[str, int]:
    """The interned numbers of `texts`, interning those that are new."""
    listed = orjson.dumps(sorted(texts)).decode()
    conn.execute(
        "INSERT INTO interned (text) SELECT value FROM json_each(?) WHERE true"
        " ON CONFLICT (text) DO NOTHING",
        (listed,),
    )
    found = conn.execute(
        "SELECT text, id FROM interned WHERE text IN (SELECT value FROM json_each(?))", (listed,)
    )
    return {str(text): int(id_) for text, id_ in found}


def index_all(conn: sqlite3.Connection) -> None:
    """Write the scope rows of every event stored, in the caller's transaction."""
    while index_batch(conn) == BATCH:
        pass
