"""The PostgreSQL storage's pool hands out the connection returned last."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from tests.databases import new_schema
from tidings.storage.postgres_pool import IDLE_CHECK_S, LastInFirstOutPool


async def test_the_connection_returned_last_is_handed_out_first(postgres_server: str) -> None:
    pool = LastInFirstOutPool(new_schema(postgres_server), min_size=3, max_size=3, open=False)
    await pool.open(wait=True)
    try:
        held = [await pool.getconn() for _ in range(3)]
        pids = [conn.info.backend_pid for conn in held]
        for conn in held:  # returned in order: the last one is the newest
            await pool.putconn(conn)
        again = await pool.getconn()
        assert again.info.backend_pid == pids[-1]
        await pool.putconn(again)
        # The others keep their order below it: the oldest stays at the bottom, to be closed
        # first when the pool shrinks.
        taken = [await pool.getconn() for _ in range(3)]
        assert [conn.info.backend_pid for conn in taken] == [pids[2], pids[1], pids[0]]
        for conn in taken:
            await pool.putconn(conn)
    finally:
        await pool.close()


async def _end(server_url: str, pid: int) -> None:
    """End a backend, as a restart does, and wait until it is gone."""
    async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(500):
            gone = await admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
            if await gone.fetchone() is None:
                return
            await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} did not end")


async def test_a_connection_idle_for_a_while_is_checked_before_it_is_handed_out(
    postgres_server: str,
) -> None:
    """The server ends the pool's one connection. Handed out at once, as under load, it is
    not checked (its query fails); handed out after IDLE_CHECK_S, it is, and a new one comes."""
    pool = LastInFirstOutPool(new_schema(postgres_server), min_size=1, max_size=1, open=False)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            first = conn.info.backend_pid
        await _end(postgres_server, first)
        with pytest.raises(psycopg.OperationalError):
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
        await pool.wait()  # the broken one replaced
        async with pool.connection() as conn:
            second = conn.info.backend_pid
        await _end(postgres_server, second)
        await asyncio.sleep(IDLE_CHECK_S)
        async with pool.connection() as conn:
            assert (await (await conn.execute("SELECT 1")).fetchone()) == (1,)
            assert conn.info.backend_pid not in (first, second)
    finally:
        await pool.close()
