"""The SQLite backend's full-text index, written behind the events (see sqlite_indexer).

FTS5 turns every transaction into a new index segment and merges the segments
as they pile up: written with the events, one small transaction per group
commit, the index cost an ingest about a tenth of its time.
"""

from __future__ import annotations

import sqlite3

from tidings.storage.sqlite_indexer import mark_of, move_mark, next_range

BATCH = 2_000
MARK = "search:indexed"


# What `q` searches in an event, as indexing.search_text gives it, in SQL: run by SQLite
# in C (off Python's global lock) instead of in Python on the event loop. FTS5's unicode61
# tokenizer splits the words itself; their order does not matter to a search of words. One
# difference: a number beyond 64 bits or in exponent form is written as SQLite shows a real
# (12345678901234567890 as 1.23456789012346e+19), so it is found by other words.
TEXT = (
    "e.type || ' ' || coalesce(e.subject, '') || ' ' || coalesce(e.actor, '') || ' '"
    " || coalesce(json_extract(e.attributes, '$.description'), '') || ' '"
    " || coalesce((SELECT group_concat(j.atom, ' ') FROM json_tree(e.data, '$.body') j"
    " WHERE j.type IN ('text', 'integer', 'real')), '')"
)


def index_batch(conn: sqlite3.Connection, limit: int = BATCH) -> int:
    """Index the text of up to `limit` events after the mark; return how many were indexed."""
    mark = mark_of(conn, MARK)
    count, last = next_range(conn, mark, limit)
    if not count:
        return 0
    conn.execute(
        f"INSERT INTO events_text (rowid, text) SELECT e.position, {TEXT} FROM events e"
        " WHERE e.position > ? AND e.position <= ?",
        (mark, last),
    )
    move_mark(conn, MARK, last)
    return count
