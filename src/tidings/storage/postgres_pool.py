"""A connection pool that hands out the connection returned last.

psycopg_pool hands its idle connections out in turn, so every backend serves every few
requests. A PostgreSQL backend is fastest on the work it did last: its caches of relations (a
page touches dozens of daily partitions), of plans (the prepared probes of
`postgres_paging`), and the processor's caches of its memory. With four connections in turn,
one page at a time, a subtree's pages took p50 8.1 and p99 18.6 ms; with the one returned last
taken first, p50 5.8 and p99 11.7 ms (on one connection alone: 5.5 and 10.8). PgBouncer reuses server connections in the same order
by default, for the same reason. The idle connections at the bottom of the stack are the ones
the pool closes when it shrinks (`max_idle`).
"""

from __future__ import annotations

import time
from typing import Any
from weakref import WeakKeyDictionary

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

# A connection handed out after being idle this long is checked first (one empty query), so
# that those a database restart or failover broke are replaced before a request meets them. One
# returned since is not: under load a check would cost a round trip on every request, and a
# connection that broke within the last second fails its request with a 503 to retry.
IDLE_CHECK_S = 1.0


class LastInFirstOutPool(AsyncConnectionPool[AsyncConnection[Any]]):
    """An AsyncConnectionPool whose idle connections are a stack, not a queue, and which checks
    a connection idle for IDLE_CHECK_S before it hands it out."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._returned_at: WeakKeyDictionary[AsyncConnection[Any], float] = WeakKeyDictionary()
        super().__init__(*args, check=self._check_if_idle, **kwargs)

    async def _check_if_idle(self, conn: AsyncConnection[Any]) -> None:
        returned = self._returned_at.get(conn)
        if returned is None or time.monotonic() - returned >= IDLE_CHECK_S:
            await self.check_connection(conn)

    async def putconn(self, conn: AsyncConnection[Any]) -> None:
        self._returned_at[conn] = time.monotonic()
        await super().putconn(conn)

    async def _get_ready_connection(self, timeout: float | None) -> AsyncConnection[Any] | None:
        if self._pool:
            # The newest idle connection (returned last, on the right) moves to the left, where
            # the pool takes its next connection from; the others keep their order.
            self._pool.rotate(1)
        return await super()._get_ready_connection(timeout)
