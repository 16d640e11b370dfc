"""The PostgreSQL storage's pool hands out the connection returned last."""

from __future__ import annotations

from tests.databases import new_schema
from tidings.storage.postgres_pool import LastInFirstOutPool


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
