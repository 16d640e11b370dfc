"""PostgreSQL's ingest horizon: readers page below it, so it must stop at every ingest still
running, and only at those."""

from __future__ import annotations

import time
from typing import Any

import pytest
from psycopg import AsyncConnection

from tests.conftest import event
from tests.databases import new_schema
from tidings import groups, wire
from tidings.model import EventQuery
from tidings.storage import open_storage
from tidings.storage.postgres_events import INGEST_LOCK, begin_ingest


@pytest.fixture
async def schema(postgres_server: str) -> str:
    """A migrated schema's URL."""
    url = new_schema(postgres_server)
    storage = open_storage(url)
    await storage.open()
    await storage.close()
    return url


async def _value(conn: AsyncConnection[Any], query: str) -> int:
    row = await (await conn.execute(query)).fetchone()
    assert row is not None
    return int(row[0])


async def horizon(url: str) -> int:
    async with await AsyncConnection.connect(url, autocommit=True) as reader:
        return await _value(reader, "SELECT ingest_horizon()")


async def _xid(conn: AsyncConnection[Any]) -> int:
    return await _value(conn, "SELECT pg_current_xact_id()::text::bigint")


async def test_an_ingest_in_progress_holds_the_horizon_until_it_commits(schema: str) -> None:
    async with await AsyncConnection.connect(schema) as ingest:
        await begin_ingest(ingest)
        ingest_xid = await _xid(ingest)
        assert await horizon(schema) == ingest_xid
        await ingest.commit()
        assert await horizon(schema) > ingest_xid


async def test_the_oldest_of_several_ingests_sets_the_horizon(schema: str) -> None:
    async with (
        await AsyncConnection.connect(schema) as first,
        await AsyncConnection.connect(schema) as second,
    ):
        await begin_ingest(first)
        await begin_ingest(second)
        first_xid, second_xid = await _xid(first), await _xid(second)
        assert first_xid < second_xid
        assert await horizon(schema) == first_xid
        await first.commit()
        assert await horizon(schema) == second_xid
        await second.commit()
        assert await horizon(schema) > second_xid


async def test_an_ingest_younger_than_another_running_transaction_holds_the_horizon(
    schema: str,
) -> None:
    """The snapshot's xmax is one past the latest transaction to end, not the newest id: an
    ingest that started after another transaction that is still running has an id at or above
    it."""
    async with (
        await AsyncConnection.connect(schema) as other,
        await AsyncConnection.connect(schema) as ingest,
    ):
        other_xid = await _xid(other)
        await begin_ingest(ingest)
        ingest_xid = await _xid(ingest)
        assert await horizon(schema) == ingest_xid > other_xid
        await ingest.rollback()
        await other.rollback()


async def test_an_ingest_writing_in_a_savepoint_holds_the_horizon_at_its_own_id(
    schema: str,
) -> None:
    """A subtransaction's id is listed under the same transaction: the ingest's own id, the
    older, is the horizon."""
    async with await AsyncConnection.connect(schema) as ingest:
        await begin_ingest(ingest)
        ingest_xid = await _xid(ingest)
        async with ingest.transaction():
            await ingest.execute("INSERT INTO settings (name, value) VALUES ('horizon', 'test')")
            assert await horizon(schema) == ingest_xid
        await ingest.rollback()


async def test_other_transactions_do_not_hold_the_horizon_back(schema: str) -> None:
    async with await AsyncConnection.connect(schema) as other:
        other_xid = await _xid(other)  # a long transaction of someone else's, with an id
        async with await AsyncConnection.connect(schema) as ingest:
            await begin_ingest(ingest)
            ingest_xid = await _xid(ingest)
            await ingest.commit()
        assert await horizon(schema) > ingest_xid > other_xid
        await other.rollback()


async def test_a_holder_without_a_transaction_id_falls_back_to_the_oldest_transaction(
    schema: str,
) -> None:
    """Between taking the lock and getting its id an ingest cannot be placed: every
    transaction running anywhere then holds the horizon back."""
    async with (
        await AsyncConnection.connect(schema) as other,
        await AsyncConnection.connect(schema) as holder,
    ):
        other_xid = await _xid(other)
        await holder.execute("SELECT pg_advisory_xact_lock_shared(%s)", (INGEST_LOCK,))
        async with await AsyncConnection.connect(schema) as ingest:
            await begin_ingest(ingest)
            ingest_xid = await _xid(ingest)
            await ingest.commit()
        assert await horizon(schema) <= other_xid
        await holder.commit()
        assert await horizon(schema) > ingest_xid > other_xid
        await other.rollback()


async def test_committed_events_are_listed_while_ingests_run(schema: str) -> None:
    """Ingests in flight, younger than the last transaction to end, leave the events committed
    before them visible."""
    storage = open_storage(schema)
    await storage.open()
    try:
        root = groups.new_root()
        await storage.ingest([wire.parse_event(event(root))], time.time_ns())
        async with (
            await AsyncConnection.connect(schema) as first,
            await AsyncConnection.connect(schema) as second,
        ):
            await begin_ingest(first)
            await begin_ingest(second)
            assert len(await storage.list_events(EventQuery(scope=root))) == 1
            await first.rollback()
            await second.rollback()
    finally:
        await storage.close()
