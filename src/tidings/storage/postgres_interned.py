"""Numbers for the group paths and event types that PostgreSQL's scope rows hold.

A scope row names a group and its event's type by their numbers in `interned`
(0004_interned_scopes.sql). Numbers are never reused nor deleted, so a process keeps every
one it has looked up. Texts new to the database are interned in a transaction of their own,
committed before the ingest that needs them reads them, in text order, so that two processes
interning the same texts wait for each other instead of deadlocking.

Interning inside the ingest statement would not be safe: an `ON CONFLICT DO NOTHING` that
meets a row committed by another process after the statement's snapshot skips it, and the
statement cannot see it either.

Readers do not need the numbers: their SQL looks a text's number up itself (`number_of`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from psycopg_pool import AsyncConnectionPool


def number_of(placeholder: str = "%s") -> str:
    """SQL for the number of the text given as one parameter (NULL if it was never interned)."""
    return f"(SELECT id FROM interned WHERE text = {placeholder})"


def numbers_of(condition: str) -> str:
    """SQL for the array of the numbers of the interned texts `text` meeting `condition`."""
    return f"ARRAY(SELECT id FROM interned WHERE {condition})"


class Interned:
    """The numbers of texts this process has interned or looked up."""

    def __init__(self) -> None:
        self._known: dict[str, int] = {}

    async def numbers(
        self, pool: AsyncConnectionPool[Any], texts: Collection[str]
    ) -> Mapping[str, int]:
        """A mapping holding the number of each of `texts`, interning those new to the database."""
        missing = sorted(text for text in texts if text not in self._known)
        if missing:
            async with pool.connection() as conn:  # autocommit: each statement commits
                await conn.execute(
                    "INSERT INTO interned (text) SELECT unnest(%s::text[]) ORDER BY 1"
                    " ON CONFLICT (text) DO NOTHING",
                    (missing,),
                )
                cursor = await conn.execute(
                    "SELECT text, id FROM interned WHERE text = ANY(%s::text[])", (missing,)
                )
                self._known.update((str(text), int(id_)) for text, id_ in await cursor.fetchall())
        return self._known
