"""PostgreSQL benchmarks of tidings, in one run: ingest, list latency at scale, delivery, retention.

1. Single-event `POST /v1/events` at concurrency 32, against a no-op `POST` route
   added to the same app on the same server, hit by the same client with the same
   bodies (bench/ingest.py's figure 1, on PostgreSQL; synchronous_commit on).
2. Batch ingest (100 events a request, c=8), in events/s, against bare psycopg
   `COPY` of the same `events` rows into a database migrated like tidings', in
   transactions of 100, from one connection and from as many connections as the
   API has requests in flight; the faster of the two is the baseline. Three rounds
   (`--batch-rounds`), each measuring the bare rate just before tidings' in new
   databases; the figure is the median round's ratio. tidings is `tidings serve
   --no-worker --processes N`, one process a core as COPY's 8 connections use every
   core (`--batch-processes`); each round also measures one process, shown beside.
3. `GET /v1/events` p50/p99 (a page of 100) over 1,000,000 and `--events`
   (10,000,000) stored events: no filter, a type, a child group's subtree, both.
   Each request starts at a random position (a cursor) in a random order. The
   server is `tidings serve --no-worker` in a subprocess; the client is aiohttp,
   one request at a time. Where the relations list pages read fit in shared
   buffers, they are first read in with `pg_prewarm`, as its autoprewarm worker
   does after a restart on a server sized as docs/deploy.md says (`--no-prewarm`).
4. Delivery throughput: 10,000 events x 5 local receivers (bench/delivery.py's)
   are queued by `tidings serve --no-worker`, then drained by one `tidings worker`
   process; then another 10,000 by two. The rate is measured at the receivers,
   first receipt to last. One worker is set beside aiohttp posting the same
   requests with no database (bench/delivery.py's baseline), two beside one.
5. Retention: `PostgresStorage.expire()` with a cutoff that drops exactly the
   oldest day of the large database (its partitions, and its `event_ids` rows in
   batches). It runs last; the day is then loaded back, so the kept database stays
   whole for the next run.

The list databases are bulk-loaded with COPY straight into tidings' schema: rows
shaped exactly like `tidings.storage.postgres_events.ingest` writes them (events,
event_ids, event_scopes), one tenant (a root, 10 children, 100 grandchildren, 40
Chainguard types, Zipf-distributed), spread evenly over 90 whole days of
`stored_ns` in daily partitions made by `postgres_partitions.ensure_partitions`,
100 events per ingest transaction. Indexes are dropped while loading and built
again from their own definitions afterwards. Each database is kept on the server
as `tidings_bench_v<FILL_VERSION>_<count>` and reused; later migrations are
applied to it before it is used. Drop them with `DROP DATABASE` when done.

    .venv/bin/python bench/postgres.py                   # the full run (the first fill takes a while)
    .venv/bin/python bench/postgres.py --quick           # a smoke run: small counts, short durations
    .venv/bin/python bench/postgres.py --events 3000000  # another large size
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import math
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
import psycopg
import uvloop
from psycopg import AsyncConnection, sql
from starlette.requests import Request
from starlette.responses import Response

import report
from delivery import (
    PER_SINK,
    SINKS,
    TIDINGS,
    Process,
    Receipts,
    Receivers,
    Tenant,
    _baseline_post,
    bench_token,
    cli,
    cpu_seconds,
    ingest_batches,
    run_baseline_process,
    subscribe,
    tidings_env,
)
from delivery import EventMaker as DeliveryEventMaker
from ingest import (
    BATCH_SIZE,
    BATCH_TARGET,
    EVENTS_PATH,
    INGEST_TARGET,
    NOOP_PATH,
    PAGE_SIZE,
    Access,
    EventMaker,
    ListQuery,
    Load,
    Row,
    Server,
    Tree,
    _batch_load,
    _free_port,
    _session,
    _single_event_loads,
    latency_rows,
    prepare_access,
)
from tidings import groups, wire
from tidings.api.app import CURSOR_KEY
from tidings.cursors import CursorCodec
from tidings.delivery.request import webhook_request
from tidings.model import EventInput, EventQuery
from tidings.storage.indexing import searchable_text, visible_scopes
from tidings.storage.postgres import PostgresStorage
from tidings.storage.postgres_events import (
    EVENT_COLUMNS,
    PostgresEventSQL,
    event_from_row,
    pack,
)
from tidings.storage.postgres_interned import Interned, ScopeNumbers
from tidings.storage.postgres_partitions import (
    DAY_NS,
    PARTITIONED,
    day_of,
    ensure_partitions,
    partition_name,
)
from tidings.timestamps import from_ns

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# Bump when the generated rows change, so that kept list databases are filled again.
FILL_VERSION = 6
FILL_SEED = 20240601
HISTORY_DAYS = 90
TX_EVENTS = 100  # events per ingest transaction in a filled log (a batch request's worth)
POOL_EVENTS = 4096  # distinct event contents a fill draws from; ids, times and positions differ
FILL_WORKERS = 2
BYTES_PER_EVENT = 3_000  # a first guess at the disk a filled event takes, indexes included
DISK_MARGIN = 10 << 30  # what a fill leaves free on the disk, at least
RETENTION_DAYS = "36500"  # the bench's servers must never expire the kept events themselves
START_TIMEOUT = 60.0
EXPIRE_TARGET_S = 1.0

_EVENT_COLUMNS = (
    "tx, seq, tenant, group_path, id, source, type, subject, actor, eventkey,"
    " roles_mask, time_ns, time_digits, stored_ns, extras, data, search_text, payload"
)
_BARE_COLUMNS = _EVENT_COLUMNS.removeprefix("tx, ")  # tx: the column's default, the xact's id


# --- rows as tidings' ingest writes them ----------------------------------------------------


def uuid7_at(ns: int, rng: random.Random) -> str:
    """A UUIDv7 minted at `ns`, as ingest's `tidings.ids.uuid7()` would have then."""
    value = (
        (ns // 1_000_000) << 80
        | 0x7 << 76
        | (ns % 1_000_000) * 4096 // 1_000_000 << 64
        | 0b10 << 62
        | rng.getrandbits(62)
    )
    return str(uuid.UUID(int=value))


@dataclass(frozen=True)
class Prepared:
    """An event's content, with what ingest derives from it once."""

    event: EventInput
    tenant: str
    extras: str
    search_text: str
    scopes: tuple[str, ...]

    @classmethod
    def of(cls, event: EventInput) -> Prepared:
        return cls(
            event,
            groups.root_of(event.group),
            wire.attribute_extras(event),
            searchable_text(event, distinct=True),
            tuple(visible_scopes(event)),
        )

    def row(self, tx: int, seq: int, event_id: str, stored_ns: int) -> tuple[Any, ...]:
        """The `events` row (in _EVENT_COLUMNS order) of this event stored at `stored_ns`."""
        event = self.event
        time_ = event.time or from_ns(stored_ns)
        return (
            tx,
            seq,
            self.tenant,
            event.group,
            event_id,
            event.source,
            event.type,
            event.subject,
            event.actor,
            event.eventkey,
            event.roles_mask,
            time_.ns,
            time_.digits,
            stored_ns,
            self.extras,
            event.data_json,
            self.search_text,
            event.raw,
        )


@dataclass(frozen=True)
class FillPlan:
    """What a list database holds: `count` events over `days` whole days from `first_day`."""

    count: int
    seed: int
    first_day: int
    days: int
    tx_base: int  # the first event's transaction id; all lie below the fill's own

    def day_span(self, index: int) -> tuple[int, int]:
        """The first seq (1-based) and the number of events of the `index`-th day."""
        base, extra = divmod(self.count, self.days)
        return index * base + min(index, extra) + 1, base + (1 if index < extra else 0)

    def stored_ns_of(self, seq: int) -> int:
        """When the event of `seq` was stored (as `RowMaker.day` stores it)."""
        base, extra = divmod(self.count, self.days)
        longer = extra * (base + 1)  # the seqs of the first `extra` days, one event more each
        index = (seq - 1) // (base + 1) if seq - 1 < longer else extra + (seq - 1 - longer) // base
        first_seq, count = self.day_span(index)
        return self.stored_ns_at(index, seq - first_seq, count)

    def stored_ns_at(self, index: int, number: int, count: int) -> int:
        """The stored time of the `number`-th of the `count` events of the `index`-th day."""
        return (self.first_day + index) * DAY_NS + number * DAY_NS // count

    def tx_of(self, seq: int) -> int:
        return self.tx_base + (seq - 1) // TX_EVENTS

    def position_of(self, seq: int) -> int:
        return pack(self.tx_of(seq), seq)

    def tree(self) -> Tree:
        return Tree.mint(random.Random(self.seed))

    def type_names(self) -> list[str]:
        rng = random.Random(self.seed)
        return EventMaker(Tree.mint(rng), rng).type_names


class RowMaker:
    """The rows of a plan's days: contents drawn from a pool, each with its own id, time and position."""

    def __init__(self, plan: FillPlan, numbers: dict[str, int]):
        self.plan = plan
        self.numbers = numbers  # the interned numbers of the groups and types scope rows name
        rng = random.Random(plan.seed)
        maker = EventMaker(Tree.mint(rng), rng)
        self.pool = [Prepared.of(wire.parse_event(maker.body())) for _ in range(POOL_EVENTS)]

    def day(
        self, index: int
    ) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...], list[tuple[Any, ...]]]]:
        """(events row, event_ids row, event_scopes rows) of each event of a day, in ingest order."""
        plan = self.plan
        day = plan.first_day + index
        first_seq, count = plan.day_span(index)
        rng = random.Random(f"{plan.seed}/{day}")
        for number in range(count):
            seq = first_seq + number
            stored_ns = plan.stored_ns_at(index, number, count)
            item = self.pool[rng.randrange(POOL_EVENTS)]
            event_id = uuid7_at(stored_ns, rng)
            tx = plan.tx_of(seq)
            event = item.event
            numbers = self.numbers
            yield (
                item.row(tx, seq, event_id, stored_ns),
                (item.tenant, event.source, event_id, seq, stored_ns, event.fingerprint),
                [
                    (numbers[scope], tx, seq, stored_ns, numbers[event.type])
                    for scope in item.scopes
                ],
            )


def intern_tree(conn: psycopg.Connection[Any], tree: Tree, types: list[str]) -> None:
    """Intern what the fill's scope rows name: the groups below the root, and the types."""
    conn.execute(
        "INSERT INTO interned (text) SELECT unnest(%s::text[]) ORDER BY 1 ON CONFLICT DO NOTHING",
        (sorted({*tree.children, *tree.grandchildren, *types}),),
    )


def interned_numbers(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {str(text): int(id_) for text, id_ in conn.execute("SELECT text, id FROM interned")}


def load_day(conn: psycopg.Connection[Any], maker: RowMaker, index: int) -> int:
    """COPY one day's rows into its (emptied) partitions and event_ids, in one transaction."""
    day = maker.plan.first_day + index
    events_part = sql.Identifier(partition_name("events", day))
    scopes_part = sql.Identifier(partition_name("event_scopes", day))
    ids: list[tuple[Any, ...]] = []
    scopes: list[tuple[Any, ...]] = []
    with conn.transaction(), conn.cursor() as cur:
        # Emptied in this transaction, so the rows can be written frozen (as VACUUM would leave them).
        cur.execute(sql.SQL("TRUNCATE {}, {}").format(events_part, scopes_part))
        with cur.copy(
            sql.SQL("COPY {} ({}) FROM STDIN (FREEZE)").format(events_part, sql.SQL(_EVENT_COLUMNS))
        ) as copy:
            for row, id_row, scope_rows in maker.day(index):
                copy.write_row(row)
                ids.append(id_row)
                scopes.extend(scope_rows)
        with cur.copy(
            sql.SQL("COPY {} (scope, tx, seq, stored_ns, type) FROM STDIN (FREEZE)").format(
                scopes_part
            )
        ) as copy:
            for scope_row in scopes:
                copy.write_row(scope_row)
        with cur.copy(
            "COPY event_ids (tenant, source, id, seq, stored_ns, fingerprint) FROM STDIN"
        ) as copy:
            for id_row in ids:
                copy.write_row(id_row)
    return len(ids)


_FILLER: dict[str, Any] = {}


def _filler_init(url: str, plan: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool
    _FILLER["maker"] = RowMaker(FillPlan(**plan), interned_numbers(url))
    conn = psycopg.connect(url)
    conn.execute("SET synchronous_commit = off")
    conn.commit()
    _FILLER["conn"] = conn


def _filler_day(index: int) -> tuple[int, int]:
    return index, load_day(_FILLER["conn"], _FILLER["maker"], index)


# --- the kept list databases ----------------------------------------------------------------


def database_url(admin_url: str, name: str) -> str:
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


def database_exists(admin_url: str, name: str) -> bool:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        return (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            is not None
        )


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def create_database(admin_url: str, name: str) -> str:
    drop_database(admin_url, name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_url(admin_url, name)


@contextmanager
def scratch_database(admin_url: str, label: str) -> Iterator[str]:
    """A fresh database for one figure, dropped when the block ends."""
    name = f"tidings_bench_{label}_{os.getpid()}"
    url = create_database(admin_url, name)
    try:
        yield url
    finally:
        drop_database(admin_url, name)


def read_plan(url: str) -> FillPlan | None:
    """The plan of a completely filled database, or None."""
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT value FROM bench_meta WHERE name = 'complete'").fetchone()
    except psycopg.Error:
        return None
    return None if row is None else FillPlan(**json.loads(row[0]))


def mark(url: str, plan: FillPlan | None) -> None:
    """Record the database as completely filled by `plan` (None: as being changed)."""
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_meta (name text PRIMARY KEY, value text)")
        conn.execute("DELETE FROM bench_meta WHERE name = 'complete'")
        if plan is not None:
            conn.execute(
                "INSERT INTO bench_meta VALUES ('complete', %s)", (json.dumps(asdict(plan)),)
            )


def data_directory(admin_url: str) -> str:
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    return str(row[0])


def free_bytes(admin_url: str) -> int:
    """Free space on the disk of the server's data directory (or of this directory)."""
    try:
        return shutil.disk_usage(data_directory(admin_url)).free
    except (OSError, psycopg.Error):
        return shutil.disk_usage(Path(__file__).parent).free


# What list pages read: the events and scope rows, and the indexes of figure 3's queries.
_LIST_RELATIONS = (
    "events",
    "event_scopes",
    "events_order",
    "events_type",
    "events_seq_index",
    "event_scopes_order",
    "event_scopes_type",
)


# Their partitions, with the TOAST tables (and TOAST indexes) of the events partitions: a
# large value is read from there, and a block read from the disk there costs a page its p99.
_LIST_LEAVES = (
    "WITH leaves AS (SELECT t.relid FROM unnest(%s::text[]) AS r(name),"
    " pg_partition_tree(r.name::regclass) AS t WHERE t.isleaf)"
    " SELECT relid FROM leaves"
    " UNION ALL SELECT c.reltoastrelid FROM leaves l JOIN pg_class c ON c.oid = l.relid"
    " WHERE c.reltoastrelid <> 0"
    " UNION ALL SELECT i.indexrelid FROM leaves l JOIN pg_class c ON c.oid = l.relid"
    " JOIN pg_index i ON i.indrelid = c.reltoastrelid"
)


def list_relations_bytes(url: str) -> int:
    """The size of the relations (every partition) that figure 3's pages read."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"SELECT sum(pg_relation_size(relid)) FROM ({_LIST_LEAVES}) l", (list(_LIST_RELATIONS),)
        ).fetchone()
    assert row is not None
    return int(row[0])


PREWARM_PASSES = 4


def prewarm_list_relations(url: str) -> str:
    """Read what list pages read into shared buffers when it fits there, as autoprewarm would.

    A server sized as `docs/deploy.md` says runs with `pg_prewarm`'s autoprewarm, which reads
    these blocks back after a restart; a database just filled, or one the OS has since evicted,
    would otherwise be measured cold. Blocks another database used often (the other list size)
    outlast blocks read once, so the relations are read again until shared buffers hold them
    (at most PREWARM_PASSES times). Returns what was done, for figure 3's notes.
    """
    relations, buffers = list_relations_bytes(url), shared_buffers_bytes(url)
    if relations > buffers:
        return (
            f"not prewarmed: {relations / 2**30:.1f} GiB of relations do not fit in"
            f" {buffers / 2**30:.1f} GiB of shared_buffers"
        )
    began = time.perf_counter()
    held = 0.0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_buffercache")
        passes = 0
        while passes < PREWARM_PASSES and held < 0.999:
            passes += 1
            conn.execute(
                f"SELECT pg_prewarm(relid) FROM ({_LIST_LEAVES}) l", (list(_LIST_RELATIONS),)
            )
            row = conn.execute(
                "SELECT count(*) * current_setting('block_size')::bigint FROM pg_buffercache b"
                " WHERE b.reldatabase = (SELECT oid FROM pg_database"
                " WHERE datname = current_database())"
                f" AND b.relfilenode IN (SELECT pg_relation_filenode(relid) FROM ({_LIST_LEAVES}) l)",
                (list(_LIST_RELATIONS),),
            ).fetchone()
            held = int(row[0]) / relations if row and relations else 1.0
    return (
        f"prewarmed: {passes} pass(es) of pg_prewarm in {time.perf_counter() - began:.0f} s left"
        f" {held:.1%} of those relations in shared_buffers"
    )


def shared_buffers_bytes(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT setting::bigint * pg_size_bytes(unit) FROM pg_settings"
            " WHERE name = 'shared_buffers'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def database_bytes(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(row[0])


async def _migrate(url: str) -> list[str]:
    return await PostgresStorage(url, min_size=1, max_size=2).migrate()


async def _ensure_days(url: str, first: int, last: int) -> None:
    async with await AsyncConnection.connect(url) as conn, conn.transaction():
        await ensure_partitions(conn, first, last)


def transaction_base(conn: psycopg.Connection[Any], needed: int) -> int:
    """A first transaction id for `needed` ingest transactions, all below every id to come.

    Readers see only rows below the ingest horizon (at most the next transaction
    id), so the filled rows take ids the server has already handed out; if it has
    not handed out that many yet, it is made to (each COMMIT in the loop is one).
    """
    current = int(conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0])  # type: ignore[index]
    short = needed + 1000 - current
    if short > 0:
        conn.execute(
            f"DO $$ BEGIN FOR i IN 1..{short} LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$"
        )
        current = int(conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0])  # type: ignore[index]
    return current - needed - 1


def drop_indexes(conn: psycopg.Connection[Any]) -> list[str]:
    """Drop the indexes (and keys) of the tables a fill loads; the DDL making them again."""
    rows = conn.execute(
        "SELECT c.relname, t.relname, pg_get_indexdef(i.indexrelid), con.conname,"
        " pg_get_constraintdef(con.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_class t ON t.oid = i.indrelid"
        " LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid"
        " WHERE t.relname IN ('events', 'event_scopes', 'event_ids')"
        " AND t.relnamespace = current_schema()::regnamespace"
    ).fetchall()
    remake = []
    for index, table, definition, constraint, constraint_def in rows:
        if constraint is not None:
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(table), sql.Identifier(constraint)
                )
            )
            remake.append(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ")
                .format(sql.Identifier(table), sql.Identifier(constraint))
                .as_string(conn)
                + constraint_def
            )
        else:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index)))
            # A partitioned table's index is defined ON ONLY the parent: made again, it must
            # be made on every partition too.
            remake.append(definition.replace(" ON ONLY ", " ON ", 1))
    return remake


def run_parallel(url: str, statements: list[str]) -> list[float]:
    """Run statements on FILL_WORKERS connections at once, in order; the seconds each took."""

    def run(statement: str) -> float:
        began = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET maintenance_work_mem = '1GB'")
            conn.execute("SET max_parallel_maintenance_workers = 0")
            conn.execute(statement)  # type: ignore[call-overload]
        return time.perf_counter() - began

    with concurrent.futures.ThreadPoolExecutor(FILL_WORKERS) as pool:
        return list(pool.map(run, statements))


def build_indexes(url: str, statements: list[str]) -> None:
    """Run the index DDL on FILL_WORKERS connections at once, the slowest (GIN) first."""
    ordered = sorted(statements, key=lambda ddl: ("USING gin" not in ddl, "event_ids" in ddl))
    for ddl, seconds in zip(ordered, run_parallel(url, ordered), strict=True):
        print(f"    {seconds:6.1f} s  {ddl[:110]}", flush=True)


def fill(url: str, count: int, seed: int) -> FillPlan:
    """Fill a migrated, empty database with `count` events; its plan."""
    today = day_of(time.time_ns())
    first_day = today - HISTORY_DAYS
    asyncio.run(_ensure_days(url, first_day, today + 1))
    tree = Tree.mint(random.Random(seed))
    with psycopg.connect(url, autocommit=True) as conn:
        plan = FillPlan(
            count, seed, first_day, HISTORY_DAYS, transaction_base(conn, -(-count // TX_EVENTS))
        )
        now = time.time_ns()
        with conn.cursor().copy("COPY groups (path, name, created_ns) FROM STDIN") as copy:
            for path in (tree.root, *tree.children, *tree.grandchildren):
                copy.write_row((path, None, now))
        intern_tree(conn, tree, plan.type_names())
        remake = drop_indexes(conn)
    began = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    done = 0
    with context.Pool(FILL_WORKERS, _filler_init, (url, asdict(plan))) as pool:
        for finished, (_, loaded) in enumerate(
            pool.imap_unordered(_filler_day, range(plan.days)), 1
        ):
            done += loaded
            if finished % 10 == 0 or finished == plan.days:
                rate = done / (time.perf_counter() - began)
                print(
                    f"  loaded {finished} of {plan.days} days, {done:,} events ({rate:,.0f}/s)",
                    flush=True,
                )
    print(f"  building {len(remake)} indexes ...", flush=True)
    build_indexes(url, remake)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT setval('events_seq', %s)", (count,))
    vacuumed = time.perf_counter()
    # What autovacuum would do to the new rows anyway (it must not do it during a run): set the
    # visibility map and hint bits, and gather the planner's statistics. The fresh indexes have
    # nothing to clean up.
    run_parallel(
        url,
        [
            "VACUUM (ANALYZE, INDEX_CLEANUP OFF) events, groups",
            "VACUUM (ANALYZE, INDEX_CLEANUP OFF) event_scopes, event_ids",
        ],
    )
    print(f"  vacuumed and analyzed in {time.perf_counter() - vacuumed:.0f} s", flush=True)
    return plan


@dataclass
class ListDatabase:
    name: str
    url: str
    plan: FillPlan
    made: bool
    seconds: float
    migrated: list[str]


def list_database(admin_url: str, count: int, seed: int) -> ListDatabase:
    """The kept database of `count` events, filled on first use (under a lock on the server)."""
    name = f"tidings_bench_v{FILL_VERSION}_{count}"
    url = database_url(admin_url, name)
    began = time.perf_counter()
    with psycopg.connect(admin_url, autocommit=True) as lock:
        lock.execute("SELECT pg_advisory_lock(hashtext(%s))", (name,))
        plan = read_plan(url) if database_exists(admin_url, name) else None
        made = plan is None or plan.count != count or plan.seed != seed
        if made:
            print(f"  filling {name} with {count:,} events ...", flush=True)
            create_database(admin_url, name)
            asyncio.run(_migrate(url))
            mark(url, None)
            plan = fill(url, count, seed)
            mark(url, plan)
        migrated = asyncio.run(_migrate(url))  # a kept database takes the migrations since
        assert plan is not None
    return ListDatabase(name, url, plan, made, time.perf_counter() - began, migrated)


def check_disk(admin_url: str, count: int, small: ListDatabase | None) -> tuple[int, str | None]:
    """The large size that fits on the disk, and a note when it had to be scaled down."""
    name = f"tidings_bench_v{FILL_VERSION}_{count}"
    if database_exists(admin_url, name) and read_plan(database_url(admin_url, name)):
        return count, None
    per_event = BYTES_PER_EVENT
    if small is not None:
        per_event = math.ceil(database_bytes(small.url) / small.plan.count)
    free = free_bytes(admin_url)
    fits = int((free - DISK_MARGIN) / (per_event * 1.2))
    print(
        f"  disk: {free / 2**30:,.1f} GiB free; about {per_event:,} bytes an event,"
        f" {count * per_event * 1.2 / 2**30:,.1f} GiB for {count:,} events (with room to build indexes)",
        flush=True,
    )
    if fits >= count:
        return count, None
    scaled = max(fits // 1_000_000 * 1_000_000, fits // 10_000 * 10_000, 10_000)
    return scaled, (
        f"scaled down from {count:,} to {scaled:,} events: {free / 2**30:,.1f} GiB free,"
        f" about {per_event:,} bytes an event, {DISK_MARGIN >> 30} GiB kept free"
    )


# --- servers --------------------------------------------------------------------------------


def _serve_app(url: str, port: int) -> None:
    """The child process: tidings' app on PostgreSQL under tidings' uvicorn config, plus a no-op POST."""
    import uvicorn

    from tidings.api import create_app
    from tidings.config import Settings
    from tidings.gc_tuning import tune_for_service
    from tidings.server import uvicorn_config

    app = create_app(Settings(database_url=url, retention_days=float(RETENTION_DAYS)))

    @app.post(NOOP_PATH, include_in_schema=False)
    async def noop(request: Request) -> Response:
        await request.body()
        return Response(b"{}", status_code=201, media_type="application/json")

    tune_for_service()  # as `tidings serve` does
    uvicorn.Server(uvicorn_config(app, "127.0.0.1", port)).run()


def _wait_ready(url: str, alive: Any, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        if not alive() or time.monotonic() > deadline:
            tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{what} did not start {tail}")
        time.sleep(0.05)


@contextmanager
def running_app(url: str) -> Iterator[Server]:
    """The app (with the no-op route) on the database at `url` in a child process."""
    port = _free_port()
    process = multiprocessing.get_context("spawn").Process(
        target=_serve_app, args=(url, port), name="tidings-bench-server", daemon=True
    )
    process.start()
    assert process.pid is not None
    try:
        _wait_ready(f"http://127.0.0.1:{port}", process.is_alive, "the bench server")
        yield Server(f"http://127.0.0.1:{port}", process.pid)
    finally:
        process.terminate()
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join()


def spawn(url: str, logs: Path, *args: str) -> Process:
    """A `tidings` process on the database at `url`, logging to a file in `logs`."""
    log = logs / f"{args[0]}-{time.monotonic_ns()}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [TIDINGS, *args],
            env=tidings_env(url, TIDINGS_RETENTION_DAYS=RETENTION_DAYS),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Process(popen, log)


@contextmanager
def serving(url: str, logs: Path, *options: str) -> Iterator[Process]:
    """`tidings serve --no-worker` (and `options`) on the database at `url`, ready, until the
    block ends."""
    port = _free_port()
    process = spawn(
        url, logs, "serve", "--port", str(port), "--no-worker", "--log-level", "warning", *options
    )
    process.url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process.url, lambda: process.popen.poll() is None, "tidings serve", process.log)
        yield process
    finally:
        process.stop()


def postgres_cpu_seconds() -> float:
    """User plus system CPU time of every `postgres` process on this machine so far."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, _, rest = stat.partition(" (")[2].rpartition(")")
        if name.startswith("postgres"):
            fields = rest.split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def _prepare(url: str, tree: Tree, record_groups: bool) -> Access:
    """Migrate, record the tree's groups if asked, and mint a producer and a viewer token."""
    return await prepare_access(PostgresStorage(url, min_size=1, max_size=2), tree, record_groups)


async def _cursor_key(url: str) -> bytes:
    storage = PostgresStorage(url, min_size=1, max_size=2)
    await storage.open()
    try:
        return await storage.secret(CURSOR_KEY)
    finally:
        await storage.close()


def block_counts(url: str) -> tuple[int, int]:
    """Blocks found in shared_buffers and blocks read, in the database so far (its statistics)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT blks_hit, blks_read FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def count_rows(url: str, table: str = "events") -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        ).fetchone()
    assert row is not None
    return int(row[0])


# --- the figures ----------------------------------------------------------------------------


def _usage(load: Load, postgres_cpu: float) -> str:
    return f"{load.usage()}, postgres {postgres_cpu / load.seconds:.2f} cores"


def figure_single(args: argparse.Namespace) -> Row:
    """1. Single-event ingest at concurrency 32 vs a no-op POST on the same server."""
    rng = random.Random(args.seed)
    tree = Tree.mint(rng)
    maker = EventMaker(tree, rng)
    bodies = [orjson.dumps(maker.body()) for _ in range(5_000)]
    with scratch_database(args.postgres, "single") as url:
        access = asyncio.run(_prepare(url, tree, record_groups=True))
        with running_app(url) as server:
            pg_before = postgres_cpu_seconds()
            noop, ingest, acknowledged = uvloop.run(
                _single_event_loads(server, access.producer, bodies, args)
            )
            pg_cpu = postgres_cpu_seconds() - pg_before
        stored = count_rows(url)
    ratio = ingest.rate / noop.rate
    errors = noop.errors + ingest.errors
    row = Row(
        f"1. POST {EVENTS_PATH}, 1 event, c={args.concurrency}",
        f"{ingest.rate:,.0f} ev/s",
        f"{noop.rate:,.0f} req/s (no-op POST)",
        f"{ratio:.2f}",
        f"- (SQLite's: >= {INGEST_TARGET:.2f})",
        not errors and stored == acknowledged,
        [
            f"ingest: {ingest.ok:,} in {ingest.seconds:.1f} s, {ingest.usage()}",
            f"no-op:  {noop.ok:,} in {noop.seconds:.1f} s, {noop.usage()}",
            f"all postgres processes over both sides: {pg_cpu:.1f} s CPU"
            f" ({pg_cpu / (ingest.seconds + noop.seconds):.2f} cores on average);"
            f" {args.rounds} alternating rounds; {stored:,} events stored,"
            f" {acknowledged:,} acknowledged (warm-ups included), synchronous_commit on",
        ],
    )
    if errors:
        row.notes.append(f"non-2xx answers: {dict(errors)}")
    return row


def bare_rows(bodies: list[list[dict[str, Any]]], now_ns: int) -> list[list[tuple[Any, ...]]]:
    """The `events` rows ingest would write for the batches (no tx: its default is the xact's id)."""
    rng = random.Random(0)
    seq = 0
    batches = []
    for batch in bodies:
        rows = []
        for body in batch:
            seq += 1
            row = Prepared.of(wire.parse_event(body)).row(0, seq, uuid7_at(now_ns, rng), now_ns)
            rows.append(row[1:])
        batches.append(rows)
    return batches


async def bare_copy(url: str, batches: list[list[tuple[Any, ...]]], connections: int) -> float:
    """Seconds to COPY the batches, one transaction each, from `connections` connections at once."""
    todo = iter(batches)
    conns = [await AsyncConnection.connect(url) for _ in range(connections)]
    statement = f"COPY events ({_BARE_COLUMNS}) FROM STDIN"

    async def writer(conn: AsyncConnection[Any]) -> None:
        for rows in todo:
            async with conn.transaction(), conn.cursor().copy(statement) as copy:
                for row in rows:
                    await copy.write_row(row)

    try:
        began = time.perf_counter()
        await asyncio.gather(*(writer(conn) for conn in conns))
        return time.perf_counter() - began
    finally:
        for conn in conns:
            await conn.close()


def _bare_rate(
    args: argparse.Namespace, tree: Tree, rows: list[list[Any]], connections: int
) -> float:
    """Rows a second that bare COPY writes, from `connections` connections, into a new database."""
    with scratch_database(args.postgres, "bare") as url:
        asyncio.run(_prepare(url, tree, record_groups=True))
        return sum(map(len, rows)) / asyncio.run(bare_copy(url, rows, connections))


@dataclass
class BatchRound:
    """One round of figure 2: tidings' load, and the bare COPY rate measured just before it."""

    bare: float
    load: Load
    postgres_cores: float
    stored: int

    @property
    def rate(self) -> float:
        return self.load.ok * BATCH_SIZE / self.load.seconds


def _batch_round(
    args: argparse.Namespace,
    tree: Tree,
    warm: list[bytes],
    bodies: list[bytes],
    bare: float,
    processes: int,
) -> BatchRound:
    """tidings' batch ingest of `bodies` (after `warm`) into a new database, served by
    `tidings serve --no-worker --processes <processes>`."""
    with scratch_database(args.postgres, "batch") as url, tempfile.TemporaryDirectory() as logs:
        access = asyncio.run(_prepare(url, tree, record_groups=True))
        with serving(url, Path(logs), "--processes", str(processes)) as process:
            server = Server(process.url, process.popen.pid)
            pg_before = postgres_cpu_seconds()
            load = uvloop.run(_batch_load(server, access.producer, warm, bodies, args))
            pg_cpu = postgres_cpu_seconds() - pg_before
        return BatchRound(bare, load, pg_cpu / load.seconds, count_rows(url))


def figure_batch(args: argparse.Namespace) -> Row:
    """2. Batch ingest (100 a request) vs bare psycopg COPY of the same rows, in rounds that
    each measure the bare rate just before tidings' (as figure 1 alternates its sides): the
    bare rate moves by a tenth from run to run, so each ratio compares against its own."""
    rng = random.Random(args.seed + 1)
    tree = Tree.mint(rng)
    maker = EventMaker(tree, rng)
    warmup = [[maker.body() for _ in range(BATCH_SIZE)] for _ in range(args.batch_concurrency * 4)]
    batches = [
        [maker.body() for _ in range(BATCH_SIZE)] for _ in range(args.batch_events // BATCH_SIZE)
    ]
    rows = bare_rows(batches, time.time_ns())
    warm_bodies = [orjson.dumps(batch) for batch in warmup]
    bodies = [orjson.dumps(batch) for batch in batches]
    # Never the faster so far; shown, and kept as a floor.
    one_connection = _bare_rate(args, tree, rows, 1)
    processes = args.batch_processes
    rounds, single = [], []
    for _ in range(args.batch_rounds):
        bare = max(one_connection, _bare_rate(args, tree, rows, args.batch_concurrency))
        rounds.append(_batch_round(args, tree, warm_bodies, bodies, bare, processes))
        if processes > 1:  # shown beside: what one process does
            single.append(_batch_round(args, tree, warm_bodies, bodies, bare, 1))
    median = _median_round(rounds)
    ratio = median.rate / median.bare
    expected = (len(warm_bodies) + len(bodies)) * BATCH_SIZE
    errors = Counter[int]()
    for r in [*rounds, *single]:
        errors.update(r.load.errors)
    row = Row(
        f"2. POST {EVENTS_PATH}, batches of {BATCH_SIZE}, c={args.batch_concurrency},"
        f" {processes} process{'es' if processes > 1 else ''}",
        f"{median.rate:,.0f} ev/s",
        f"{median.bare:,.0f} ev/s (bare COPY)",
        f"{ratio:.3f}",  # three places: 0.498 is not shown as the 0.50 it fails
        f">= {BATCH_TARGET:.2f}",
        ratio >= BATCH_TARGET
        and not errors
        and all(r.stored == expected for r in [*rounds, *single]),
        [
            f"tidings is `tidings serve --no-worker --processes {processes}` (one a core of this"
            " machine: --batch-processes); the median of"
            f" {len(rounds)} rounds, each tidings' rate over the bare rate measured just before"
            " it: "
            + ", ".join(f"{r.rate:,.0f} / {r.bare:,.0f} = {r.rate / r.bare:.3f}" for r in rounds),
            f"tidings (median round): {median.load.ok * BATCH_SIZE:,} events in"
            f" {median.load.seconds:.1f} s, {median.load.usage()}; all postgres processes"
            f" {median.postgres_cores:.2f} cores (warm-up included)",
            f"bare COPY: from {args.batch_concurrency} conn in each round, from 1 conn"
            f" {one_connection:,.0f} ev/s; {sum(map(len, rows)):,} events rows in transactions of"
            f" {BATCH_SIZE} (with the events indexes, GIN included; no event_ids, event_scopes or"
            " outbox rows), synchronous_commit on",
            f"{', '.join(f'{r.stored:,}' for r in [*rounds, *single])} events stored in the rounds,"
            f" {expected:,} sent in each",
        ],
    )
    if single:
        alone = _median_round(single)
        row.notes.append(
            f"one process (`--processes 1`), in the same rounds: median {alone.rate:,.0f} ev/s,"
            f" ratio {alone.rate / alone.bare:.3f} ("
            + ", ".join(f"{r.rate / r.bare:.3f}" for r in single)
            + f"); {alone.load.usage()}"
        )
    if errors:
        row.notes.append(f"non-2xx answers: {dict(errors)}")
    return row


def _median_round(rounds: list[BatchRound]) -> BatchRound:
    """The round of the median ratio."""
    return sorted(rounds, key=lambda r: r.rate / r.bare)[len(rounds) // 2]


async def _list_latencies(
    server_url: str,
    token: str,
    codec: CursorCodec,
    plan: FillPlan,
    queries: list[ListQuery],
    args: argparse.Namespace,
) -> tuple[dict[str, list[float]], dict[str, Counter[int]]]:
    """Per query, the latency (ms) of each timed request, and the statuses of failed ones."""
    rng = random.Random(args.list_seed)
    headers = {"authorization": f"Bearer {token}"}
    url = server_url + EVENTS_PATH
    found: dict[str, list[float]] = {}
    failed: dict[str, Counter[int]] = {query.name: Counter() for query in queries}
    async with _session(1) as session:
        async with session.get(url, params={"limit": str(PAGE_SIZE)}, headers=headers) as response:
            if (
                response.status != 200
                or len(orjson.loads(await response.read())["events"]) != PAGE_SIZE
            ):
                failed[queries[0].name][response.status] += 1
        for query in queries:
            samples: list[float] = []
            for number in range(args.list_warmup + args.list_requests):
                params = {"limit": str(PAGE_SIZE), **query.params(rng)}
                params["order"] = rng.choice(("asc", "desc"))
                seq = rng.randint(1, plan.count)  # a cursor as tidings gives it
                params["cursor"] = codec.encode(plan.position_of(seq), plan.stored_ns_of(seq))
                began = time.perf_counter()
                async with session.get(url, params=params, headers=headers) as response:
                    await response.read()
                    status = response.status
                elapsed = time.perf_counter() - began
                if status != 200:
                    failed[query.name][status] += 1
                if number >= args.list_warmup:
                    samples.append(elapsed * 1000)
            found[query.name] = samples
    return found, failed


def list_queries(tree: Tree, types: list[str]) -> list[ListQuery]:
    return [
        ListQuery("no filter", lambda rng: {}),
        ListQuery("type", lambda rng: {"type": rng.choice(types)}),
        ListQuery("group (a child's subtree)", lambda rng: {"group": rng.choice(tree.children)}),
        ListQuery(
            "type + group",
            lambda rng: {"type": rng.choice(types), "group": rng.choice(tree.children)},
        ),
    ]


def explain(database: ListDatabase, queries: list[ListQuery], seed: int) -> None:
    """Print EXPLAIN (ANALYZE, BUFFERS) of one request of each query, as the server runs it."""
    rng = random.Random(seed)
    plan = database.plan
    tree = plan.tree()
    with psycopg.connect(database.url) as conn:
        for query in queries:
            params = query.params(rng)
            scope = params.get("group", tree.root)
            types = (params["type"],) if "type" in params else ()
            descending = rng.random() < 0.5
            event_query = EventQuery(
                scope=scope,
                types=types,
                viewer_roles=1,
                after=plan.position_of(rng.randint(1, plan.count)),
                descending=descending,
                limit=PAGE_SIZE + 1,
            )
            text, values = dialect(conn, database.url, event_query).list_sql(event_query)
            print(f"\n  EXPLAIN {query.name} ({'desc' if descending else 'asc'}): {text}")
            lines = [
                line[0]
                for line in conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {text}", values).fetchall()
            ]
            # The head of the plan and its totals: every partition repeats the same scan.
            shown = lines if len(lines) <= 40 else [*lines[:24], "...", *lines[-4:]]
            for line in shown:
                print(f"    {line}")


def dialect(conn: psycopg.Connection[Any], url: str, query: EventQuery) -> PostgresEventSQL:
    """The query dialect as the server builds it: with the ingest horizon read just before, and
    a subtree's group and types by their interned numbers (looked up as the storage does)."""
    row = conn.execute("SELECT ingest_horizon()").fetchone()
    assert row is not None
    numbers = None
    if query.scope != groups.root_of(query.scope):
        numbers = asyncio.run(_scope_numbers(url, query))
    return PostgresEventSQL(int(row[0]), numbers=numbers)


async def _scope_numbers(url: str, query: EventQuery) -> ScopeNumbers:
    async with await AsyncConnection.connect(url) as conn:
        return await Interned().of_query(conn, query)


def figure_list(args: argparse.Namespace, database: ListDatabase, logs: Path) -> list[Row]:
    """3. List latency, a page of 100, over a kept database, through `tidings serve --no-worker`."""
    plan = database.plan
    tree = plan.tree()
    types = plan.type_names()
    queries = list_queries(tree, types)
    access = asyncio.run(_prepare(database.url, tree, record_groups=False))
    codec = CursorCodec(asyncio.run(_cursor_key(database.url)))
    prewarmed = prewarm_list_relations(database.url) if args.prewarm else "not prewarmed"
    print(f"  {prewarmed}", flush=True)
    blocks_before = block_counts(database.url)
    with serving(database.url, logs) as server:
        latencies, failed = uvloop.run(
            _list_latencies(server.url, access.viewer, codec, plan, queries, args)
        )
    hit, read = (
        after - before
        for after, before in zip(block_counts(database.url), blocks_before, strict=True)
    )
    if args.explain:
        explain(database, queries, args.seed)
    how = "filled" if database.made else "reused"
    size = database_bytes(database.url)
    rows = latency_rows(queries, latencies, failed, f" @{plan.count / 1e6:g}M")
    rows[0].notes.append(
        f"{plan.count:,} events over {plan.days} daily partitions ({how} in {database.seconds:.0f} s:"
        f" database {database.name}, {size / 2**30:.1f} GiB), {len(types)} types,"
        f" {len(tree.children)} children, {len(tree.grandchildren)} grandchildren;"
        f" random cursor and order per request (--list-seed {args.list_seed}), one request at a"
        f" time; {hit / max(hit + read, 1):.1%} of the {hit + read:,} blocks the run touched were"
        " in shared_buffers (the rest came from the OS cache or the disk), which hold"
        f" {shared_buffers_bytes(database.url) / 2**30:.1f} GiB against"
        f" {list_relations_bytes(database.url) / 2**30:.1f} GiB of relations list pages read"
        f" (see docs/deploy.md), {prewarmed}"
        + (
            f"; migrations applied to the kept database: {database.migrated}"
            if database.migrated
            else ""
        )
    )
    return rows


def pg_baseline_requests(url: str, prefix: str) -> dict[str, list[tuple[dict[str, str], bytes]]]:
    """The requests the worker sends for the deliveries of `prefix` events, by sink."""
    token = bench_token("http://127.0.0.1:8080")
    now_s = int(time.time())
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            f"SELECT s.sink, d.id, {EVENT_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq"
            " AND e.stored_ns = d.event_stored_ns JOIN subscriptions s ON s.id = d.subscription_id"
            " WHERE e.id LIKE %s ORDER BY d.id",
            (prefix + "-%",),
        ).fetchall()
    by_sink: dict[str, list[tuple[dict[str, str], bytes]]] = {}
    for sink, delivery_id, *columns in rows:
        event = event_from_row(columns)
        request = webhook_request(event, token, f"dlv_{delivery_id}", None, now_s)
        by_sink.setdefault(sink, []).append(request)
    return by_sink


def _baseline_main(url: str, prefix: str, per_sink: int, conn: Connection) -> None:
    by_sink = pg_baseline_requests(url, prefix)
    conn.send(sum(len(requests) for requests in by_sink.values()))
    conn.recv()  # go
    conn.send(asyncio.run(_baseline_post(by_sink, per_sink)))  # asyncio's loop, like the worker


def run_baseline(
    url: str, prefix: str, receivers: Receivers, timeout: float
) -> tuple[Receipts, float, float, int, dict[int, int]]:
    """aiohttp posting the same requests with no database, in its own process (bench/delivery.py's)."""
    return run_baseline_process(_baseline_main, (url, prefix, PER_SINK), prefix, receivers, timeout)


def delivery_statuses(url: str, prefix: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT d.status, count(*) FROM deliveries d JOIN events e ON e.seq = d.event_seq"
            " AND e.stored_ns = d.event_stored_ns WHERE e.id LIKE %s GROUP BY d.status",
            (prefix + "-%",),
        ).fetchall()
    return {status: int(count) for status, count in rows}


@dataclass
class Drained:
    workers: int
    rate: float
    window: float
    received: int
    expected: int
    duplicates: int
    complete: bool
    from_spawn: float
    worker_cpu: float
    receivers_cpu: float
    postgres_cpu: float
    ingest_s: float
    statuses: dict[str, int]


def drain(
    url: str,
    logs: Path,
    tenant: Tenant,
    receivers: Receivers,
    workers: int,
    args: argparse.Namespace,
) -> Drained:
    """Queue `args.delivery_events` x SINKS deliveries, then time `workers` worker processes on them."""
    prefix = f"w{workers}"
    maker = DeliveryEventMaker(tenant.root, args.seed + workers)
    events = [maker.make(f"{prefix}-{n:06d}") for n in range(args.delivery_events)]
    batches = [orjson.dumps(events[i : i + BATCH_SIZE]) for i in range(0, len(events), BATCH_SIZE)]
    with serving(url, logs) as server:
        if workers == 1:
            subscribe(server, tenant, receivers.urls)
        began = time.perf_counter()
        failed = uvloop.run(ingest_batches(server.url, tenant.token, batches, 4))
        ingest_s = time.perf_counter() - began
    if failed:
        raise RuntimeError(f"{failed} ingest batches were refused")
    expected = len(events) * SINKS
    receivers.reset()
    receivers_before, pg_before = cpu_seconds(receivers.pid), postgres_cpu_seconds()
    spawned = time.time()
    processes = [spawn(url, logs, "worker", "--log-level", "warning") for _ in range(workers)]
    try:
        complete = receivers.wait_for(prefix, expected, args.timeout)
        done = time.time()
        worker_cpu = sum(process.cpu_seconds() for process in processes)
        postgres_cpu = postgres_cpu_seconds() - pg_before  # before the workers' backends exit
    finally:
        for process in processes:
            process.stop()
    got = Receipts.of(receivers.dump(), prefix)
    window = got.latest - got.earliest
    return Drained(
        workers,
        len(got.first) / window if window > 0 else 0.0,
        window,
        len(got.first),
        expected,
        got.duplicates,
        complete,
        done - spawned,
        worker_cpu,
        cpu_seconds(receivers.pid) - receivers_before,
        postgres_cpu,
        ingest_s,
        delivery_statuses(url, prefix),
    )


def figure_delivery(args: argparse.Namespace, logs: Path) -> list[Row]:
    """4. Delivery throughput with 1, then 2 `tidings worker` processes."""
    receivers = Receivers(SINKS)
    try:
        with scratch_database(args.postgres, "delivery") as url:
            root = cli(url, "groups", "create", "--name", "bench")
            token = cli(
                url, "tokens", "create", "--group", root, "--role", "producer", "--role", "editor"
            )
            tenant = Tenant(root, token)
            runs = [drain(url, logs, tenant, receivers, workers, args) for workers in (1, 2)]
            base, base_s, base_cpu, base_ok, base_errors = run_baseline(
                url, "w1", receivers, args.timeout
            )
    finally:
        receivers.close()
    base_window = base.latest - base.earliest
    base_rate = len(base.first) / base_window if base_window > 0 else math.inf
    rows = []
    for run in runs:
        cores = max(run.window, 1e-9)
        if run.workers == 1:
            baseline = f"{base_rate:,.0f} req/s (aiohttp, no DB, c={PER_SINK}x{SINKS})"
            ratio = run.rate / base_rate
        else:
            baseline = f"{runs[0].rate:,.0f} deliveries/s (1 worker)"
            ratio = run.rate / runs[0].rate
        row = Row(
            f"4{'ab'[run.workers - 1]}. delivery, {run.workers} worker process{'es' * (run.workers > 1)},"
            f" {args.delivery_events:,} events x {SINKS} sinks",
            f"{run.rate:,.0f} deliveries/s",
            baseline,
            f"{ratio:.2f}",
            "- (SQLite's: >= 0.40 of aiohttp)" if run.workers == 1 else "-",
            run.complete and run.received == run.expected and not base_errors,
            [
                f"{run.received:,} of {run.expected:,} deliveries received in {run.window:.2f} s"
                f" (first to last receipt), {run.from_spawn:.1f} s from spawn; duplicates {run.duplicates};"
                f" CPU: workers {run.worker_cpu / cores:.2f} cores, receivers"
                f" {run.receivers_cpu / cores:.2f}, all postgres processes {run.postgres_cpu / cores:.2f}",
                f"outbox after: {run.statuses}; ingest of the events took {run.ingest_s:.1f} s"
                " (serve --no-worker)",
            ],
        )
        if run.workers == 1:
            row.notes.append(
                f"baseline: {len(base.first):,} received in {base_window:.2f} s (client {base_s:.2f} s,"
                f" {base_cpu / max(base_s, 1e-9):.2f} cores), {base_ok:,} 2xx"
                + (f", non-2xx {base_errors}" if base_errors else "")
            )
        if not run.complete:
            row.notes.append(f"the workers did not finish within {args.timeout:.0f} s")
        rows.append(row)
    return rows


def restore_day(database: ListDatabase, index: int) -> float:
    """Load a plan's day back after retention dropped it; seconds taken."""
    began = time.perf_counter()
    plan = database.plan
    day = plan.first_day + index
    asyncio.run(_ensure_days(database.url, day, day))
    with psycopg.connect(database.url) as conn:
        conn.execute("SET synchronous_commit = off")
        load_day(conn, RowMaker(plan, interned_numbers(database.url)), index)
        conn.commit()
    with psycopg.connect(database.url, autocommit=True) as conn:
        for table in PARTITIONED:
            conn.execute(
                sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(partition_name(table, day)))
            )
        conn.execute("VACUUM (ANALYZE) event_ids")
    return time.perf_counter() - began


def count_partitions(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = ANY(%s::regclass[])",
            (list(PARTITIONED),),
        ).fetchone()
    return int(row[0]) if row else 0


async def _expire(url: str, before_ns: int) -> tuple[int, float]:
    """Time `expire(before_ns)` on an opened storage: (events expired, seconds)."""
    storage = PostgresStorage(url)
    await storage.open()
    try:
        began = time.perf_counter()
        expired = await storage.expire(before_ns)
        return expired, time.perf_counter() - began
    finally:
        await storage.close()


def figure_expire(database: ListDatabase) -> Row:
    """5. Retention: expire() dropping the oldest day of the large database, which is then put back."""
    plan = database.plan
    _, expected = plan.day_span(0)
    ids_before = count_rows(database.url, "event_ids")
    parts_before = count_partitions(database.url)
    mark(database.url, None)  # changed from here until the day is back
    expired, seconds = asyncio.run(_expire(database.url, (plan.first_day + 1) * DAY_NS))
    parts_after = count_partitions(database.url)
    ids_after = count_rows(database.url, "event_ids")
    restored = restore_day(database, 0)
    whole = count_rows(database.url) == plan.count
    if whole:
        mark(database.url, plan)
    return Row(
        f"5. expire() one day @{plan.count / 1e6:g}M",
        f"{seconds * 1000:,.0f} ms",
        "-",
        "-",
        f"< {EXPIRE_TARGET_S * 1000:,.0f} ms",
        seconds < EXPIRE_TARGET_S and expired == expected and ids_before - ids_after == expected,
        [
            f"{expired:,} events expired ({expected:,} stored that day), event_ids"
            f" {ids_before:,} -> {ids_after:,}; partitions {parts_before} -> {parts_after};"
            " no deliveries were stored for that day",
            f"the day was loaded back afterwards in {restored:.0f} s;"
            + (
                " the kept database is whole again"
                if whole
                else " THE KEPT DATABASE IS NOT WHOLE: it will be filled again"
            ),
        ],
    )


# --- the table ------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    headers = ("figure", "value", "baseline", "ratio", "target", "result")

    def result(row: Row) -> str:
        if row.target.startswith("-"):
            return "-" if row.passed else "FAIL"
        return "PASS" if row.passed else "FAIL"

    cells = [
        (row.figure, row.value, row.baseline, row.ratio, row.target, result(row)) for row in rows
    ]
    report.print_table(headers, cells, [(row.figure, row.notes) for row in rows])


FIGURES = ("single", "batch", "list", "delivery", "expire")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run with small counts")
    parser.add_argument("--only", action="append", choices=FIGURES, help="repeatable")
    parser.add_argument(
        "--events", type=int, help="the large list size (default 10,000,000; quick: 100,000)"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("TIDINGS_BENCH_POSTGRES", DEFAULT_ADMIN_URL),
        help="a URL of the server, to create databases with (env TIDINGS_BENCH_POSTGRES)",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="figure 1's requests in flight")
    parser.add_argument("--batch-concurrency", type=int, default=8, help="figure 2's")
    parser.add_argument("--duration", type=float, help="seconds per side of figure 1")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before each round")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of figure 1's sides")
    parser.add_argument("--batch-events", type=int, help="events figure 2 sends (and copies)")
    parser.add_argument("--batch-rounds", type=int, help="figure 2's rounds (bare, then tidings)")
    parser.add_argument(
        "--batch-processes",
        type=int,
        default=os.cpu_count() or 1,
        help="figure 2's API processes (`tidings serve --processes`; default one a core); with"
        " more than one, each round also measures one",
    )
    parser.add_argument("--list-requests", type=int, help="timed requests per list query")
    parser.add_argument("--delivery-events", type=int, help="events of each delivery run (x5)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="the longest wait for receipts"
    )
    parser.add_argument(
        "--explain", action="store_true", help="print the plans of the list queries"
    )
    parser.add_argument(
        "--no-prewarm",
        dest="prewarm",
        action="store_false",
        help="measure figure 3 as the list's relations are, without first reading them into"
        " shared buffers (done only where they fit, as pg_prewarm's autoprewarm would)",
    )
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument(
        "--list-seed",
        type=int,
        help="figure 3's cursors (default: new ones each run, printed: the same cursors again"
        " find their pages cached by the run before)",
    )
    args = parser.parse_args(argv)
    if args.list_seed is None:
        args.list_seed = random.SystemRandom().randrange(2**32)
    quick: dict[str, float] = {
        "duration": 3.0,
        "warmup": 0.3,
        "batch_events": 10_000,
        "batch_rounds": 1,
        "list_requests": 100,
        "delivery_events": 1_000,
        "events": 100_000,
    }
    full: dict[str, float] = {
        "duration": 15.0,
        "warmup": 1.0,
        "batch_events": 100_000,
        "batch_rounds": 3,
        "list_requests": 1_000,
        "delivery_events": 10_000,
        "events": 10_000_000,
    }
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.small = min(20_000 if args.quick else 1_000_000, args.events)
    args.list_warmup = 20
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # On SIGTERM, unwind (stopping every child process) instead of dying at once.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    figures = args.only or list(FIGURES)
    began = time.perf_counter()
    print("load average at the start:", ", ".join(f"{value:.1f}" for value in os.getloadavg()))
    rows: list[Row] = []
    notes: list[str] = []
    large: ListDatabase | None = None
    with tempfile.TemporaryDirectory(prefix="tidings-bench-pg-") as workdir:
        logs = Path(workdir)
        if "single" in figures:
            print("figure 1: single-event ingest vs no-op POST ...", flush=True)
            rows.append(figure_single(args))
        if "batch" in figures:
            print("figure 2: batch ingest vs bare COPY ...", flush=True)
            rows.append(figure_batch(args))
        if "list" in figures or "expire" in figures:
            # The small database is made first (its size per event tells what fits on the
            # disk), and measured last: the large one's pages, read into shared buffers just
            # before its requests, would otherwise lose to the small one's, used more often.
            small = None
            if args.small < args.events:
                print(f"figure 3: the database of {args.small:,} events ...", flush=True)
                small = list_database(args.postgres, args.small, FILL_SEED)
            count, scaled = check_disk(args.postgres, args.events, small)
            if scaled:
                notes.append(scaled)
                print(f"  {scaled}", flush=True)
            print(f"figure 3: list latency over {count:,} events ...", flush=True)
            large = list_database(args.postgres, count, FILL_SEED)
            if "list" in figures:
                large_rows = figure_list(args, large, logs)
                if small is not None:
                    print(
                        f"figure 3: list latency over {small.plan.count:,} events ...", flush=True
                    )
                    rows.extend(figure_list(args, small, logs))
                rows.extend(large_rows)
        if "delivery" in figures:
            print("figure 4: delivery throughput with 1 and 2 worker processes ...", flush=True)
            rows.extend(figure_delivery(args, logs))
        if "expire" in figures and large is not None:
            print(f"figure 5: expiring one day of {large.plan.count:,} events ...", flush=True)
            rows.append(figure_expire(large))
    print_table(rows)
    for note in notes:
        print(f"  NOTE: {note}")
    with psycopg.connect(args.postgres) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        buffers = conn.execute("SHOW shared_buffers").fetchone()
        huge_pages = conn.execute("SHOW huge_pages").fetchone()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"\nload average at the end {load} (other work on the machine skews the figures);"
        f" {os.cpu_count()} CPUs, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM,"
        f" Python {sys.version.split()[0]}, PostgreSQL {version[0] if version else '?'}"
        f" (shared_buffers {buffers[0] if buffers else '?'}, huge_pages"
        f" {huge_pages[0] if huge_pages else '?'}), psycopg {psycopg.__version__},"
        f" aiohttp {aiohttp.__version__}; the run took {time.perf_counter() - began:.0f} s"
    )
    if (reclaim := report.page_cache_reclaim()) is not None:
        print(f"{reclaim}: outside shared_buffers, list pages read from the disk")
    return 0 if all(row.passed for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
