"""A transaction sent in pipeline mode: BEGIN goes out with the first statements and COMMIT
with the last, so the transaction waits for the database only where its work reads a result,
and once at the end."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection

T = TypeVar("T")


async def pipelined(
    conn: AsyncConnection[Any], work: Callable[[AsyncConnection[Any]], Awaitable[T]]
) -> T:
    """Run `work` in one transaction on `conn` (idle, outside a transaction), in pipeline
    mode. On an error (a 409 included) the transaction is rolled back before the error goes
    on, so the connection goes back to its pool clean, with none of the transaction's
    settings (psycopg's rollback also deallocates the connection's prepared statements)."""
    try:
        async with conn.pipeline():
            await conn.execute("BEGIN")
            result = await work(conn)
            await conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            await conn.rollback()
        raise
    return result
