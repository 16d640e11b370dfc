"""Numbers for the group paths and event types that PostgreSQL's scope rows hold.

A scope row names a group and its event's type by their numbers in `interned`
(0004_interned_scopes.sql). Numbers are never reused nor deleted, so a process keeps every
one it has looked up. Texts new to the database are interned in a transaction of their own,
committed before the ingest that needs them reads them, in text order, so that two processes
interning the same texts wait for each other instead of deadlocking.

Interning inside the ingest statement would not be safe: an `ON CONFLICT DO NOTHING` that
meets a row committed by another process after the statement's snapshot skips it, and the
statement cannot see it either.

A page of a subtree is planned with its group's and types' numbers written into its SQL
(`ScopeNumbers`), so that the planner sees their statistics: looked up inside the query (an
InitPlan), a frequent type in a big subtree was planned for the average one, and a page
sorted thousands of scope rows, each looked up in its event's partition, to keep 100. Other
readers (counts, stats, an event found by id, replay) look a text's number up inside their
SQL (`number_of`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from tidings.model import EventQuery
from tidings.storage.querying import prefix_range


def number_of(placeholder: str = "%s") -> str:
    """SQL for the number of the text given as one parameter (NULL if it was never interned)."""
    return f"(SELECT id FROM interned WHERE text = {placeholder})"


@dataclass(frozen=True, slots=True)
class ScopeNumbers:
    """A subtree query's group and types by their numbers. `scope` None: the group was never
    interned, so no scope row names it; `types` None: no type filter, empty: no type matches."""

    scope: int | None
    types: tuple[int, ...] | None


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
                await self._look_up(conn, missing)
                # Only texts new to the database are inserted: an INSERT that meets a conflict
                # still uses up a number of the identity.
                new = [text for text in missing if text not in self._known]
                if new:
                    await conn.execute(
                        "INSERT INTO interned (text) SELECT unnest(%s::text[]) ORDER BY 1"
                        " ON CONFLICT (text) DO NOTHING",
                        (new,),
                    )
                    await self._look_up(conn, new)
        return self._known

    async def _look_up(self, conn: AsyncConnection[Any], texts: list[str]) -> None:
        """Keep the numbers of those of `texts` the database has interned."""
        cursor = await conn.execute(
            "SELECT text, id FROM interned WHERE text = ANY(%s::text[])", (texts,)
        )
        self._known.update((str(text), int(id_)) for text, id_ in await cursor.fetchall())

    async def of_query(self, conn: AsyncConnection[Any], query: EventQuery) -> ScopeNumbers:
        """The numbers of the query's group and types (and of the types its prefixes match)."""
        missing = [text for text in (query.scope, *query.types) if text not in self._known]
        if missing:
            await self._look_up(conn, missing)
        if not query.types and not query.type_prefixes:
            return ScopeNumbers(self._known.get(query.scope), None)
        types = {self._known[text] for text in query.types if text in self._known}
        if query.type_prefixes:  # read each time: a type new to the database may match
            ranges = [bound for prefix in query.type_prefixes for bound in prefix_range(prefix)]
            cursor = await conn.execute(
                "SELECT id FROM interned WHERE "
                + " OR ".join(["(text >= %s AND text < %s)"] * len(query.type_prefixes)),
                ranges,
            )
            types.update(int(row[0]) for row in await cursor.fetchall())
        return ScopeNumbers(self._known.get(query.scope), tuple(sorted(types)))
