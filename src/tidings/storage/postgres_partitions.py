"""Daily partitions of the PostgreSQL events: made ahead of time, dropped whole by retention."""

from __future__ import annotations

import time
from typing import Any

from psycopg import AsyncConnection, sql

DAY_NS = 86_400 * 1_000_000_000
PARTITIONED = ("events", "event_scopes")
PARTITION_LOCK = 7_160_946_002  # pg_advisory_xact_lock key: one process makes partitions at a time


def day_of(ns: int) -> int:
    """The day number (since the epoch) of an instant."""
    return ns // DAY_NS


def partition_name(table: str, day: int) -> str:
    """The name of a table's partition for a day: `events_20261125`."""
    return f"{table}_{time.strftime('%Y%m%d', time.gmtime(day * 86_400))}"


async def ensure_partitions(conn: AsyncConnection[Any], first_day: int, last_day: int) -> list[str]:
    """Create the partitions of every day from `first_day` to `last_day` that do not exist yet.

    Processes starting together on a new database (or making the same day's partitions at
    once) take turns: `CREATE TABLE IF NOT EXISTS` alone fails in all but one of them.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
    created = []
    existing = await partitions(conn)
    for day in range(first_day, last_day + 1):
        for table in PARTITIONED:
            name = partition_name(table, day)
            if name in existing:
                continue
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})"
                ).format(
                    sql.Identifier(name),
                    sql.Identifier(table),
                    sql.Literal(day * DAY_NS),
                    sql.Literal((day + 1) * DAY_NS),
                )
            )
            created.append(name)
    return created


async def partitions(conn: AsyncConnection[Any]) -> dict[str, int]:
    """The existing partitions of the partitioned tables, with the day each holds."""
    cursor = await conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent"
        " JOIN pg_namespace n ON n.oid = p.relnamespace"
        " WHERE p.relname = ANY(%s) AND n.nspname = current_schema()",
        (list(PARTITIONED),),
    )
    found = {}
    for name, bound in await cursor.fetchall():
        # FOR VALUES FROM ('1764028800000000000') TO ('1764115200000000000')
        low = int(bound.split("(")[1].split(")")[0].strip("'"))
        found[name] = day_of(low)
    return found


async def partitions_before(conn: AsyncConnection[Any], day: int) -> list[tuple[str, int]]:
    """The partitions holding only days before `day`, each with the day it holds, by name."""
    return sorted((name, held) for name, held in (await partitions(conn)).items() if held < day)


async def count_days_before(conn: AsyncConnection[Any], table: str, day: int) -> int:
    """How many rows the partitions of `table` holding only days before `day` hold: each counted
    on its own, from its smallest index alone (a count through the parent tests every row's
    stored time, which no index holds, and reads the days' heap)."""
    counted = 0
    for name, held in await partitions_before(conn, day):
        if name == partition_name(table, held):
            cursor = await conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
            )
            row = await cursor.fetchone()
            counted += int(row[0]) if row else 0
    return counted


async def drop_days_before(conn: AsyncConnection[Any], day: int) -> list[str]:
    """Drop every partition holding only days before `day`; return their names."""
    dropped = []
    for name, _ in await partitions_before(conn, day):
        # Dropping a partition locks the parent table: give up rather than queue every
        # reader and ingest behind a long transaction; housekeeping tries again later.
        await conn.execute("SET LOCAL lock_timeout = '2s'")
        await conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
        dropped.append(name)
    return dropped
