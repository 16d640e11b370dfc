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


# SQLite's JSON functions end a string at an escaped NUL, so TEXT would leave out every word
# after one: the text of an event whose JSON holds `\u0000` (rare) is made in Python instead.
_HOLDS_NUL = "(instr(e.data, '\\u0000') OR instr(e.attributes, '\\u0000'))"


def index_batch(conn: sqlite3.Connection, limit: int = BATCH) -> int:
    """Index the text of up to `limit` events after the mark; return how many were indexed."""
    mark = mark_of(conn, MARK)
    count, last = next_range(conn, mark, limit)
    if not count:
        return 0
    conn.execute(
        f"INSERT INTO events_text (rowid, text) SELECT e.position, {TEXT} FROM events e"
        f" WHERE e.position > ? AND e.position <= ? AND NOT {_HOLDS_NUL}",
        (mark, last),
    )
    holding_nul = conn.execute(
        "SELECT e.position, e.type, e.subject, e.actor, e.attributes, e.data FROM events e"
        f" WHERE e.position > ? AND e.position <= ? AND {_HOLDS_NUL}",
        (mark, last),
    )
    conn.executemany(  # one event's text at a time: each may be as large as an event
        "INSERT INTO events_text (rowid, text) VALUES (?, ?)",
        ((row[0], _text_in_python(*row[1:])) for row in holding_nul),
    )
    move_mark(conn, MARK, last)
    return count


def _text_in_python(
    type_: str, subject: str | None, actor: str | None, attributes: str, data: str
) -> str:
    """TEXT of one event, by indexing.search_text: each word once, as PostgreSQL indexes it, so
    that the words past SEARCH_TEXT_LIMIT are cut as there."""
    loaded: Any = orjson.loads(data)
    body = loaded.get("body", {}) if isinstance(loaded, dict) else {}
    description = orjson.loads(attributes).get("description")
    return search_text(type_, subject, actor, description, body, distinct=True)
