"""`GET /v1/events/stats` latency over 1,000,000 stored events, against p99 < 500 ms on SQLite.

The events are the kept database of `bench/ingest.py` (its figure 3): one tenant,
40 Chainguard types (Zipf-distributed), 10 children with 10 grandchildren each,
times spread over 90 days. It is reused when present; when only a database of an
earlier schema is kept and the migrations since then only add or drop indexes
(derived data: the rows are what a fill would store now), a copy is brought up to
date under the current schema's name instead of filling 1,000,000 events again.
Otherwise it is filled as `bench/ingest.py` fills it.

The server runs in its own process (tidings' app under tidings' uvicorn config);
one request at a time, by a root viewer token (the whole tenant) unless the query
names a child's subtree. Each query's SQL plan is printed beside its figure.

    .venv/bin/python bench/stats.py            # the full run over 1,000,000 events
    .venv/bin/python bench/stats.py --quick    # a smoke run over 20,000 events
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import random
import re
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

import report
from ingest import (
    BENCH_DIR,
    FILL_VERSION,
    Access,
    EventMaker,
    Row,
    Server,
    Tree,
    _prepare,
    count_events,
    list_database,
    percentile,
    running_server,
    schema_key,
)
from tidings.model import EventQuery
from tidings.storage.migrations import migration_files
from tidings.storage.sqlite import apply_migrations, split_statements
from tidings.storage.sqlite_events import SQL

STATS_PATH = "/v1/events/stats"
P99_TARGET_MS = 500.0
SEED = 20240601 + 3  # bench/ingest.py's seed for its list database: the same database
_INDEX_ONLY = re.compile(r"(CREATE\s+INDEX|DROP\s+INDEX)\b", re.IGNORECASE)


# --- the database ---------------------------------------------------------------------------


def _applied(database: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
    finally:
        conn.close()


def _index_only(sql: str) -> bool:
    """Whether a migration only creates or drops indexes (comments aside)."""
    statements = [
        "\n".join(line for line in statement.splitlines() if not line.strip().startswith("--"))
        for statement in split_statements(sql)
    ]
    return all(
        _INDEX_ONLY.match(statement.strip()) for statement in statements if statement.strip()
    )


def _upgradable(count: int) -> tuple[Path, list[str]] | None:
    """A kept list database of an earlier schema that index-only migrations bring up to date."""
    current = dict(migration_files("sqlite"))
    pattern = re.compile(rf"list-v{FILL_VERSION}-{count}-[0-9a-f]{{10}}\.db")
    kept = sorted(
        (path for path in BENCH_DIR.iterdir() if pattern.fullmatch(path.name)),
        key=lambda path: path.stat().st_mtime,
        reverse=True,
    )
    for path in kept:
        try:
            applied = _applied(path)
        except sqlite3.Error:
            continue
        pending = sorted(set(current) - applied)
        if (
            applied <= set(current)
            and all(_index_only(current[name]) for name in pending)
            and count_events(path)[0] == count
        ):
            return path, pending
    return None


def stats_database(count: int) -> tuple[Path, Tree, str]:
    """The kept database of `count` events for the current schema, and how it was obtained."""
    name = f"list-v{FILL_VERSION}-{count}-{schema_key()}.db"
    database = BENCH_DIR / name
    how = "reused"
    if not database.exists():
        # The same lock as bench/ingest.py's, so that two runs never build it at once.
        with (BENCH_DIR / f"{name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            older = None if database.exists() else _upgradable(count)
            if older is not None:
                source, pending = older
                began = time.perf_counter()
                partial = BENCH_DIR / f"{name}.partial"
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{partial}{suffix}").unlink(missing_ok=True)
                src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
                dst = sqlite3.connect(partial)
                try:
                    src.backup(dst)
                finally:
                    dst.close()
                    src.close()
                apply_migrations(str(partial))
                partial.rename(database)
                how = (
                    f"copied from {source.name} and migrated ({', '.join(pending)}) in"
                    f" {time.perf_counter() - began:.0f} s"
                )
    began = time.perf_counter()
    database, tree, made = list_database(count, SEED)
    if made:
        how = f"filled in {time.perf_counter() - began:.0f} s"
    return database, tree, how


# --- the queries ----------------------------------------------------------------------------


@dataclass
class StatsQuery:
    name: str
    params: Callable[[random.Random], dict[str, Any]]
    targeted: bool = True


def queries(tree: Tree, types: list[str]) -> list[StatsQuery]:
    """The two figures the target is for (a whole tenant by type, and by day), then others
    shown for context."""
    return [
        StatsQuery("group_by=type", lambda rng: {"group_by": "type"}),
        StatsQuery("interval=day", lambda rng: {"interval": "day"}),
        StatsQuery(
            "interval=day, one type",
            lambda rng: {"interval": "day", "type": rng.choice(types)},
            targeted=False,
        ),
        StatsQuery(
            "group_by=type, a child's subtree",
            lambda rng: {"group_by": "type", "group": rng.choice(tree.children)},
            targeted=False,
        ),
        StatsQuery(
            "interval=day, a child's subtree",
            lambda rng: {"interval": "day", "group": rng.choice(tree.children)},
            targeted=False,
        ),
        StatsQuery(
            "group_by=type&interval=day",
            lambda rng: {"group_by": "type", "interval": "day"},
            targeted=False,
        ),
    ]


def query_plan(database: Path, root: str, params: dict[str, Any]) -> str:
    """EXPLAIN QUERY PLAN of the SQL the server runs for `params`, one line."""
    scope = params.get("group", root)
    types = tuple(filter(None, [params.get("type")]))
    query = EventQuery(scope=scope, types=types, viewer_roles=1)
    group_by = [params["group_by"]] if "group_by" in params else []
    sql, values = SQL.stats_sql(query, group_by, params.get("interval"))
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        plan = conn.execute(f"EXPLAIN QUERY PLAN {sql}", values).fetchall()
    finally:
        conn.close()
    return "; ".join(str(row[-1]) for row in plan)


async def _latencies(
    server: Server, access: Access, stats_queries: list[StatsQuery], args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, float], dict[str, dict[str, Any]], list[str]]:
    """Milliseconds per request of each query, and of the server's CPU time per timed request
    (which other work on the machine skews less); one sample answer of each; problems seen."""
    rng = random.Random(args.seed)
    headers = {"authorization": f"Bearer {access.viewer}"}
    url = server.url + STATS_PATH
    found: dict[str, list[float]] = {}
    cpu: dict[str, float] = {}
    samples: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for query in stats_queries:
            times: list[float] = []
            cpu_began = server.cpu_seconds()
            for number in range(args.warmup + args.requests):
                if number == args.warmup:
                    cpu_began = server.cpu_seconds()
                params = query.params(rng)
                began = time.perf_counter()
                async with session.get(url, params=params, headers=headers) as response:
                    body = await response.read()
                    status = response.status
                elapsed = (time.perf_counter() - began) * 1000
                if status != 200:
                    problems.append(f"{query.name}: {status} {body[:200]!r}")
                    break
                if number >= args.warmup:
                    times.append(elapsed)
                if query.name not in samples:
                    samples[query.name] = {"params": params, "answer": orjson.loads(body)}
            found[query.name] = times
            cpu[query.name] = (server.cpu_seconds() - cpu_began) * 1000 / max(1, len(times))
    return found, cpu, samples, problems


def check(
    samples: dict[str, dict[str, Any]], total: int, types: list[str], problems: list[str]
) -> None:
    """The answers add up: every event is counted once by type and once by day."""
    for name in ("group_by=type", "interval=day"):
        rows = samples.get(name, {}).get("answer", {}).get("rows", [])
        counted = sum(row["count"] for row in rows)
        if counted != total:
            problems.append(f"{name}: the counts add up to {counted:,}, not {total:,}")
        counts = [row["count"] for row in rows]
        if counts != sorted(counts, reverse=True):
            problems.append(f"{name}: rows are not sorted by count")
    by_type = samples.get("group_by=type", {}).get("answer", {}).get("rows", [])
    if not {row["type"] for row in by_type} <= set(types):
        problems.append("group_by=type: unknown types in the answer")


def run(args: argparse.Namespace) -> list[Row]:
    began = time.perf_counter()
    database, tree, how = stats_database(args.events)
    prepared = time.perf_counter() - began
    types = EventMaker(tree, random.Random(0)).type_names
    total, _ = count_events(database)
    access = asyncio.run(_prepare(database, tree, record_groups=False))
    stats_queries = queries(tree, types)
    plans = {
        query.name: query_plan(database, tree.root, query.params(random.Random(1)))
        for query in stats_queries
    }
    with running_server(database) as server:
        latencies, cpu, samples, problems = uvloop.run(
            _latencies(server, access, stats_queries, args)
        )
    check(samples, total, types, problems)
    rows: list[Row] = []
    for letter, query in zip("abcdefgh", stats_queries, strict=False):
        times = latencies.get(query.name) or [float("nan")]
        p50, p99 = percentile(times, 0.50), percentile(times, 0.99)
        answer = samples.get(query.name, {}).get("answer", {}).get("rows", [])
        rows.append(
            Row(
                f"{letter}. GET {STATS_PATH}?{query.name}",
                f"p50 {p50:.0f} ms, p99 {p99:.0f} ms",
                "-",
                "-",
                f"p99 < {P99_TARGET_MS:.0f} ms" if query.targeted else "-",
                not query.targeted
                or (p99 < P99_TARGET_MS and not any(p.startswith(query.name) for p in problems)),
                [
                    f"{len(times)} requests, max {max(times):.0f} ms, mean"
                    f" {statistics.fmean(times):.0f} ms, server CPU {cpu.get(query.name, 0):.0f} ms"
                    f" a request; {len(answer):,} rows in an answer",
                    f"plan: {plans[query.name]}",
                ],
            )
        )
    rows[0].notes.insert(
        0,
        f"{total:,} events ({how}, ready in {prepared:.0f} s: {database.name}), {len(types)} types,"
        f" {len(tree.children)} children; one request at a time, a root viewer token",
    )
    if problems:
        rows[0].notes.append(f"problems: {problems[:5]}")
        for row in rows:
            row.passed = False
    return rows


def print_results(rows: list[Row]) -> None:
    """The table of bench/ingest.py, with no result for the figures without a target."""
    headers = ("figure", "value", "target", "result")
    cells = [
        (
            row.figure,
            row.value,
            row.target,
            "-" if row.target == "-" else ("PASS" if row.passed else "FAIL"),
        )
        for row in rows
    ]
    report.print_table(headers, cells, [(row.figure, row.notes) for row in rows])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run over 20,000 events")
    parser.add_argument("--events", type=int, help="events in the database (default 1,000,000)")
    parser.add_argument("--requests", type=int, help="timed requests per query")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per query first")
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = 20_000 if args.quick else 1_000_000
    if args.requests is None:
        args.requests = 20 if args.quick else 100
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    print("load average at the start:", ", ".join(f"{value:.1f}" for value in os.getloadavg()))
    print(f"stats latency over {args.events:,} events ...", flush=True)
    rows = run(args)
    print_results(rows)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"\nload average at the end {load} (other work on the machine skews the figures);"
        f" {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version};"
        f" the run took {time.perf_counter() - began:.0f} s"
    )
    return 0 if all(row.passed for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
