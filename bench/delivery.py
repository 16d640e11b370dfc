"""Delivery benchmarks of tidings: webhook throughput and latency, each beside a baseline.

a. Throughput. 10,000 events (batches of 100) are ingested by `tidings serve
   --no-worker` with 5 subscriptions (one per receiver): 50,000 deliveries wait
   in the outbox. The server is stopped, then `tidings worker` alone delivers
   them. The rate is measured at the receivers, from the first receipt to the
   last, so worker start-up (imports, keys) is left out; its wall time from
   spawn is a note.
c. Baseline of (a). aiohttp in a process of its own, on the same event loop as
   `tidings worker` (asyncio's own), posts the same 50,000 requests (headers
   built by tidings' `webhook_request` from the same stored events, a real RS256
   token) to the same receivers with the worker's concurrency (16 per sink, 5
   sinks: 80 in flight), with no database, and is measured the same way.
b. Latency. `tidings serve` (API and worker in one process) takes single-event
   POSTs paced at 500 events/s for 20 s. For every (event, receiver) the
   latency is the receipt time at the receiver minus the time the client got
   the ingest response: both `time.time()` on one machine. Its baseline is
   aiohttp posting the same five requests per event straight to the receivers
   at the same pace, from the start of the send to the receipt.
b2. The same with the worker in a process of its own: `serve --no-worker` and
   `tidings worker` (which polls, every 10 ms here: SQLite has no notifications).

The 5 receivers are aiohttp low-level servers on uvloop, all in one child
process (not sharing a GIL with the worker or the load generator); they record
(Ce-Id, time) of every request. Everything talks only to 127.0.0.1, every wait
is bounded, and every process started is stopped at the end.

    .venv/bin/python bench/delivery.py            # the full run (two to three minutes)
    .venv/bin/python bench/delivery.py --quick    # a smoke run: small counts, short durations
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import uvloop
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

import report
from tidings.catalog import chainguard_examples
from tidings.delivery.request import webhook_request
from tidings.storage.sqlite_events import EVENT_COLUMNS, event_from_row

TIDINGS = str(Path(sys.executable).parent / "tidings")
SINKS = 5
BATCH_SIZE = 100
BATCH_TYPE = "application/cloudevents-batch+json"
SINGLE_TYPE = "application/cloudevents+json"
PER_SINK = 16  # the worker's default TIDINGS_DELIVERY_PER_SINK
CONCURRENCY = 128  # the worker's default TIDINGS_DELIVERY_CONCURRENCY
START_TIMEOUT = 30.0

THROUGHPUT_TARGET = 0.40  # of the baseline
LATENCY_P99_TARGET_MS = 100.0


# --- the receivers (a child process) --------------------------------------------------------


def _receivers_main(conn: Connection, count: int) -> None:
    uvloop.run(_serve_receivers(conn, count))


async def _serve_receivers(conn: Connection, count: int) -> None:
    """`count` HTTP servers answering 200 to anything, recording (Ce-Id, receipt time)."""
    loop = asyncio.get_running_loop()
    receipts: list[list[tuple[str, float]]] = [[] for _ in range(count)]
    by_prefix: Counter[str] = Counter()
    clock = time.time

    def handler_for(bucket: list[tuple[str, float]]) -> Callable[[web.BaseRequest], Any]:
        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            await request.read()
            event_id = request.headers.get("Ce-Id", "")
            bucket.append((event_id, clock()))
            by_prefix[event_id.partition("-")[0]] += 1
            return web.Response(status=200)

        return handle

    servers: list[tuple[web.Server, asyncio.Server]] = []
    for bucket in receipts:
        handler = web.Server(handler_for(bucket), access_log=None)
        listener = await loop.create_server(handler, "127.0.0.1", 0, backlog=1024)
        servers.append((handler, listener))
    conn.send([listener.sockets[0].getsockname()[1] for _, listener in servers])
    stopped = asyncio.Event()

    def on_command() -> None:
        os.set_blocking(conn.fileno(), True)  # the loop made it non-blocking; big dumps need it
        command, argument = conn.recv()
        if command == "count":
            conn.send(by_prefix[argument])
        elif command == "dump":
            conn.send(receipts)
        elif command == "reset":
            for bucket in receipts:
                bucket.clear()
            by_prefix.clear()
            conn.send(True)
        else:
            stopped.set()
            conn.send(True)

    loop.add_reader(conn.fileno(), on_command)
    await stopped.wait()
    loop.remove_reader(conn.fileno())
    for handler, listener in servers:
        listener.close()
        await handler.shutdown(1.0)


class Receivers:
    """The receivers' child process and its control pipe."""

    def __init__(self, count: int):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_receivers_main, args=(child, count), name="bench-receivers", daemon=True
        )
        self._process.start()
        if not self._conn.poll(START_TIMEOUT):
            self._process.kill()
            raise RuntimeError("the receivers did not start")
        self.ports: list[int] = self._conn.recv()

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}/hook" for port in self.ports]

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    def _ask(self, command: str, argument: str = "") -> Any:
        self._conn.send((command, argument))
        if not self._conn.poll(60):
            raise RuntimeError(f"the receivers did not answer {command!r}")
        return self._conn.recv()

    def count(self, prefix: str) -> int:
        """How many requests arrived whose Ce-Id starts with `prefix` and a dash."""
        found: int = self._ask("count", prefix)
        return found

    def dump(self) -> list[list[tuple[str, float]]]:
        """Every receiver's (Ce-Id, receipt time) in order of arrival."""
        found: list[list[tuple[str, float]]] = self._ask("dump")
        return found

    def reset(self) -> None:
        self._ask("reset")

    def wait_for(self, prefix: str, count: int, timeout: float) -> bool:
        """Wait until `count` requests of `prefix` arrived; False if time ran out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(prefix) >= count:
                return True
            time.sleep(0.02)
        return self.count(prefix) >= count

    def close(self) -> None:
        try:
            if self._process.is_alive():
                self._ask("stop")
        finally:
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()


# --- tidings processes ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tidings_env(database: Path | str, **settings: str) -> dict[str, str]:
    """The environment of a `tidings` process on `database` (a file, or a database URL), with
    private sinks allowed and these other settings; none of this process's TIDINGS_*."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TIDINGS_")}
    url = f"sqlite:///{database}" if isinstance(database, Path) else database
    env.update(
        TIDINGS_DATABASE_URL=url,
        TIDINGS_ALLOW_PRIVATE_SINKS="true",
        NO_COLOR="1",
        **settings,
    )
    return env


def cli(database: Path | str, *args: str, **settings: str) -> str:
    """Run a `tidings` command on `database` (as `tidings_env` has it); its stdout."""
    done = subprocess.run(
        [TIDINGS, *args],
        env=tidings_env(database, **settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tidings {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout.strip()


@dataclass
class Process:
    """A `tidings` child process with its log file."""

    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def spawn(database: Path, *args: str, env: dict[str, str] | None = None) -> Process:
    log = database.with_name(f"{database.stem}.{args[0]}.log")
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [TIDINGS, *args],
            env={**tidings_env(database), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Process(popen, log)


@contextmanager
def serving(database: Path, worker: bool) -> Iterator[Process]:
    """`tidings serve` (with or without its worker) on `database`, healthy, until the block ends."""
    port = _free_port()
    args = ["serve", "--port", str(port)] + ([] if worker else ["--no-worker"])
    process = spawn(database, *args)
    process.url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{process.url}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if process.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"tidings serve did not start: {process.log.read_text()[-2000:]}"
                )
            time.sleep(0.05)
        yield process
    finally:
        process.stop()


@contextmanager
def stopping(process: Process) -> Iterator[Process]:
    try:
        yield process
    finally:
        process.stop()


# --- the tenant, its subscriptions and events -----------------------------------------------


@dataclass
class Tenant:
    root: str
    token: str


def bootstrap(database: Path) -> Tenant:
    """A root group and a producer + editor token on it, made with the CLI."""
    root = cli(database, "groups", "create", "--name", "bench")
    token = cli(
        database, "tokens", "create", "--group", root, "--role", "producer", "--role", "editor"
    )
    return Tenant(root, token)


def _post_json(url: str, token: str, body: Any) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def subscribe(server: Process, tenant: Tenant, sinks: Sequence[str]) -> None:
    """One subscription of the whole tenant per sink."""
    for sink in sinks:
        _post_json(
            f"{server.url}/v1/subscriptions", tenant.token, {"parent": tenant.root, "sink": sink}
        )


class EventMaker:
    """Events shaped like Chainguard's seed examples, with ids `<prefix>-<n>`."""

    def __init__(self, root: str, seed: int):
        self.root = root
        self.rng = random.Random(seed)
        self.examples = [
            e for e in chainguard_examples() if "subscription" not in str(e["ce_type"])
        ]

    def make(self, event_id: str) -> dict[str, Any]:
        example = self.examples[self.rng.randrange(len(self.examples))]
        return {
            "specversion": "1.0",
            "id": event_id,
            "type": example["ce_type"],
            "source": str(example["ce_source"]).replace("UID", self.rng.randbytes(8).hex()),
            "subject": f"{self.root}/{self.rng.randbytes(8).hex()}",
            "group": self.root,
            "data": example["data"],
        }


def _session(limit: int, loop_timeout: float = 60.0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        timeout=aiohttp.ClientTimeout(total=loop_timeout),
    )


async def ingest_batches(url: str, token: str, batches: list[bytes], concurrency: int) -> int:
    """POST the batches; how many were not answered with a 2xx."""
    headers = {"authorization": f"Bearer {token}", "content-type": BATCH_TYPE}
    todo = iter(batches)
    failed = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        for body in todo:
            async with session.post(f"{url}/v1/events", data=body, headers=headers) as response:
                await response.read()
                failed += not 200 <= response.status < 300

    async with _session(concurrency) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return failed


def delivery_statuses(database: Path) -> dict[str, int]:
    conn = sqlite3.connect(database)
    try:
        return dict(conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status"))
    finally:
        conn.close()


# --- receipts -------------------------------------------------------------------------------


@dataclass
class Receipts:
    """What the receivers got of one prefix: the first receipt of each (receiver, id), duplicates."""

    first: dict[tuple[int, str], float]
    duplicates: int
    earliest: float
    latest: float

    @classmethod
    def of(cls, dump: list[list[tuple[str, float]]], prefix: str) -> Receipts:
        first: dict[tuple[int, str], float] = {}
        duplicates = 0
        earliest, latest = math.inf, -math.inf
        for index, bucket in enumerate(dump):
            for event_id, at in bucket:
                if not event_id.startswith(prefix + "-"):
                    continue
                key = (index, event_id)
                if key in first:
                    duplicates += 1
                    first[key] = min(first[key], at)
                else:
                    first[key] = at
                earliest, latest = min(earliest, at), max(latest, at)
        return cls(first, duplicates, earliest, latest)


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# --- the baseline poster (a child process) --------------------------------------------------


def bench_token(issuer: str) -> str:
    """A real RS256 token shaped like the issuer's (2048-bit key, the same claims)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": "webhook:" + "0" * 40,
        "aud": "customer",
        "iat": now,
        "exp": now + 300,
        "jti": "x" * 22,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k" * 43})


def baseline_requests(database: Path, prefix: str) -> dict[str, list[tuple[dict[str, str], bytes]]]:
    """The requests the worker sends for the deliveries of `prefix` events, by sink."""
    token = bench_token("http://127.0.0.1:8080")
    now_s = int(time.time())
    conn = sqlite3.connect(database)
    try:
        rows = conn.execute(
            f"SELECT s.sink, d.id, {EVENT_COLUMNS} FROM deliveries d"
            " JOIN events e ON e.position = d.event_position"
            " JOIN subscriptions s ON s.id = d.subscription_id WHERE e.id LIKE ? ORDER BY d.id",
            (prefix + "-%",),
        ).fetchall()
    finally:
        conn.close()
    by_sink: dict[str, list[tuple[dict[str, str], bytes]]] = {}
    for sink, delivery_id, *columns in rows:
        event = event_from_row(columns)
        request = webhook_request(event, token, f"dlv_{delivery_id}", None, now_s)
        by_sink.setdefault(sink, []).append(request)
    return by_sink


def _baseline_main(
    database: str, prefix: str, per_sink: int, use_uvloop: bool, conn: Connection
) -> None:
    by_sink = baseline_requests(Path(database), prefix)
    conn.send(sum(len(requests) for requests in by_sink.values()))
    conn.recv()  # go
    run = uvloop.run if use_uvloop else asyncio.run
    conn.send(run(_baseline_post(by_sink, per_sink)))


async def _baseline_post(
    by_sink: dict[str, list[tuple[dict[str, str], bytes]]], per_sink: int
) -> tuple[float, int, dict[int, int]]:
    """POST every request, `per_sink` at a time to each sink; (seconds, 2xx, other statuses)."""
    ok = 0
    errors: Counter[int] = Counter()
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256),
        timeout=aiohttp.ClientTimeout(total=15, sock_connect=5),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )

    async def poster(url: str, todo: Iterator[tuple[dict[str, str], bytes]]) -> None:
        nonlocal ok
        for headers, body in todo:
            async with session.post(url, headers=headers, data=body, allow_redirects=False) as r:
                await r.read()
                if 200 <= r.status < 300:
                    ok += 1
                else:
                    errors[r.status] += 1

    began = time.perf_counter()
    async with session:
        tasks = []
        for url, requests in by_sink.items():
            todo = iter(requests)
            tasks += [poster(url, todo) for _ in range(per_sink)]
        await asyncio.gather(*tasks)
    return time.perf_counter() - began, ok, dict(errors)


def run_baseline(
    database: Path, prefix: str, receivers: Receivers, use_uvloop: bool, timeout: float
) -> tuple[Receipts, float, float, int, dict[int, int]]:
    """The baseline in its own process: (receipts, client seconds, client CPU s, 2xx, errors)."""
    return run_baseline_process(
        _baseline_main, (str(database), prefix, PER_SINK, use_uvloop), prefix, receivers, timeout
    )


def run_baseline_process(
    main: Callable[..., None],
    main_args: tuple[Any, ...],
    prefix: str,
    receivers: Receivers,
    timeout: float,
) -> tuple[Receipts, float, float, int, dict[int, int]]:
    """`main(*main_args, conn)` in its own process, a baseline: it sends how many requests it
    will post, posts them on "go", and sends (seconds, 2xx, errors); what the receivers got."""
    receivers.reset()
    context = multiprocessing.get_context("spawn")
    conn, child = context.Pipe()
    process = context.Process(
        target=main, args=(*main_args, child), name="bench-baseline", daemon=True
    )
    process.start()
    try:
        if not conn.poll(120):
            raise RuntimeError("the baseline did not get ready")
        total: int = conn.recv()
        assert process.pid is not None
        cpu_before = cpu_seconds(process.pid)
        conn.send("go")
        if not conn.poll(timeout):
            raise RuntimeError("the baseline did not finish in time")
        cpu = cpu_seconds(process.pid) - cpu_before
        seconds, ok, errors = conn.recv()
        receivers.wait_for(prefix, total, 10)
        return Receipts.of(receivers.dump(), prefix), seconds, cpu, ok, errors
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()


# --- the figures ----------------------------------------------------------------------------


@dataclass
class Row:
    """A line of the results table."""

    figure: str
    value: str
    baseline: str
    ratio: str
    target: str
    passed: bool
    notes: list[str] = field(default_factory=list)


def figure_throughput(args: argparse.Namespace, workdir: Path, receivers: Receivers) -> Row:
    """(a) `tidings worker` draining 50,000 deliveries, and (c) aiohttp posting the same."""
    database = workdir / "throughput.db"
    tenant = bootstrap(database)
    maker = EventMaker(tenant.root, args.seed)
    events = [maker.make(f"a-{n:06d}") for n in range(args.events)]
    batches = [orjson.dumps(events[i : i + BATCH_SIZE]) for i in range(0, len(events), BATCH_SIZE)]
    with serving(database, worker=False) as server:
        subscribe(server, tenant, receivers.urls)
        began = time.perf_counter()
        failed = uvloop.run(ingest_batches(server.url, tenant.token, batches, 4))
        ingest_s = time.perf_counter() - began
    if failed:
        raise RuntimeError(f"{failed} ingest batches were refused")
    expected = args.events * SINKS
    pending = delivery_statuses(database)

    receivers.reset()
    cpu_receivers = cpu_seconds(receivers.pid)
    spawned = time.time()
    with stopping(spawn(database, "worker")) as worker:
        receivers.wait_for("a", 1, START_TIMEOUT)
        startup_cpu = worker.cpu_seconds()  # imports, keys: before the first receipt
        complete = receivers.wait_for("a", expected, args.timeout)
        done = time.time()
        worker_cpu = worker.cpu_seconds() - startup_cpu
    receivers_cpu = cpu_seconds(receivers.pid) - cpu_receivers
    got = Receipts.of(receivers.dump(), "a")
    statuses = delivery_statuses(database)
    window = got.latest - got.earliest
    rate = len(got.first) / window if window > 0 else 0.0

    base_cpu_receivers = cpu_seconds(receivers.pid)
    base, base_s, base_cpu, base_ok, base_errors = run_baseline(
        database, "a", receivers, use_uvloop=False, timeout=args.timeout
    )
    base_receivers_cpu = cpu_seconds(receivers.pid) - base_cpu_receivers
    base_window = base.latest - base.earliest
    base_rate = len(base.first) / base_window if base_window > 0 else math.inf
    uv, uv_s, uv_cpu, _, uv_errors = run_baseline(
        database, "a", receivers, use_uvloop=True, timeout=args.timeout
    )
    uv_window = uv.latest - uv.earliest
    uv_rate = len(uv.first) / uv_window if uv_window > 0 else math.inf

    ratio = rate / base_rate
    passed = (
        complete and len(got.first) == expected and ratio >= THROUGHPUT_TARGET and not base_errors
    )
    row = Row(
        f"a. delivery throughput, {args.events:,} events x {SINKS} sinks",
        f"{rate:,.0f} deliveries/s",
        f"{base_rate:,.0f} req/s (aiohttp, no DB, c={PER_SINK}x{SINKS})",
        f"{ratio:.2f}",
        f">= {THROUGHPUT_TARGET:.2f}",
        passed,
        [
            f"tidings worker: {len(got.first):,} of {expected:,} deliveries received"
            f" in {window:.2f} s (first to last receipt); {done - spawned:.1f} s from spawn;"
            f" duplicates {got.duplicates}",
            f"worker CPU after start-up {worker_cpu:.1f} s ({worker_cpu / max(window, 1e-9):.2f}"
            f" cores, {worker_cpu / max(len(got.first), 1) * 1e6:.0f} us a delivery),"
            f" start-up {startup_cpu:.1f} s; receivers {receivers_cpu / max(window, 1e-9):.2f} cores",
            f"outbox before: {pending}; after: {statuses}; ingest of the {len(batches)} batches"
            f" took {ingest_s:.1f} s (serve --no-worker)",
            f"baseline (asyncio loop, like `tidings worker`): {len(base.first):,} received in"
            f" {base_window:.2f} s (client {base_s:.2f} s, {base_cpu / max(base_s, 1e-9):.2f} cores,"
            f" {base_cpu / max(len(base.first), 1) * 1e6:.0f} us a request;"
            f" receivers {base_receivers_cpu / max(base_window, 1e-9):.2f} cores), {base_ok:,} 2xx",
            f"baseline on uvloop: {uv_rate:,.0f} req/s ({len(uv.first):,} in {uv_window:.2f} s,"
            f" client {uv_cpu / max(uv_s, 1e-9):.2f} cores); tidings is {rate / uv_rate:.2f} of it",
        ],
    )
    if not complete:
        row.notes.append(f"the worker did not finish within {args.timeout:.0f} s")
    if base_errors or uv_errors:
        row.notes.append(f"baseline non-2xx: {base_errors} {uv_errors}")
    return row


@dataclass
class Paced:
    """What a paced load achieved."""

    sent: dict[str, float] = field(default_factory=dict)  # id -> time the request started
    acked: dict[str, float] = field(default_factory=dict)  # id -> time the 2xx was read
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    max_lag_ms: float = 0.0


async def paced(count: int, rate: float, send: Callable[[int], Any], paced_load: Paced) -> None:
    """Call `send(n)` for n in range(count) at `rate` a second (open loop), wait for all."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()
    began = loop.time()
    for number in range(count):
        due = began + number / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            paced_load.max_lag_ms = max(paced_load.max_lag_ms, -delay * 1000)
        task = asyncio.ensure_future(send(number))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    paced_load.seconds = loop.time() - began


async def ingest_paced(url: str, token: str, bodies: list[tuple[str, bytes]], rate: float) -> Paced:
    """POST single events at `rate` a second; record when each was sent and acknowledged."""
    load = Paced()
    headers = {"authorization": f"Bearer {token}", "content-type": SINGLE_TYPE}
    async with _session(256) as session:

        async def send(number: int) -> None:
            event_id, body = bodies[number]
            load.sent[event_id] = time.time()
            try:
                async with session.post(f"{url}/v1/events", data=body, headers=headers) as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                load.errors[type(exc).__name__] += 1
                return
            if 200 <= status < 300:
                load.acked[event_id] = time.time()
            else:
                load.errors[str(status)] += 1

        await paced(len(bodies), rate, send, load)
    return load


async def post_direct_paced(
    requests: list[tuple[str, list[tuple[str, dict[str, str], bytes]]]], rate: float
) -> Paced:
    """For each event, POST its requests straight to the receivers, at `rate` events a second."""
    load = Paced()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=512),
        timeout=aiohttp.ClientTimeout(total=60),
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:

        async def post(url: str, headers: dict[str, str], body: bytes) -> None:
            try:
                async with session.post(url, headers=headers, data=body) as r:
                    await r.read()
                    if not 200 <= r.status < 300:
                        load.errors[str(r.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                load.errors[type(exc).__name__] += 1

        async def send(number: int) -> None:
            event_id, targets = requests[number]
            load.sent[event_id] = time.time()
            await asyncio.gather(*(post(url, h, b) for url, h, b in targets))
            load.acked[event_id] = time.time()

        await paced(len(requests), rate, send, load)
    return load


def latencies(got: Receipts, since: dict[str, float]) -> tuple[list[float], list[float]]:
    """Per (receiver, event): receipt minus `since[event]`, in ms; and per event, the last receiver's."""
    per_delivery: list[float] = []
    last: dict[str, float] = {}
    for (_, event_id), at in got.first.items():
        start = since.get(event_id)
        if start is None:
            continue
        per_delivery.append((at - start) * 1000)
        last[event_id] = max(last.get(event_id, -math.inf), at)
    per_event = [(at - since[event_id]) * 1000 for event_id, at in last.items()]
    return per_delivery, per_event


@dataclass
class Direct:
    """The baseline of figure b: aiohttp posting each event's requests straight to the receivers."""

    p50: float = math.nan
    p99: float = math.nan
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)


def direct_baseline(
    database: Path, bodies: list[tuple[str, bytes]], rate: float, receivers: Receivers
) -> Direct:
    """Post the requests tidings sent for each `b-` event, 5 at a time, at `rate` events/s."""
    per_event: dict[str, list[tuple[str, dict[str, str], bytes]]] = {}
    for sink, requests in baseline_requests(database, "b").items():
        for headers, body in requests:
            per_event.setdefault(headers["Ce-Id"], []).append((sink, headers, body))
    ordered = [(event_id, per_event[event_id]) for event_id, _ in bodies if event_id in per_event]
    receivers.reset()
    load = uvloop.run(post_direct_paced(ordered, rate))
    receivers.wait_for("b", len(ordered) * SINKS, 30)
    samples, _ = latencies(Receipts.of(receivers.dump(), "b"), load.sent)
    return Direct(percentile(samples, 0.5), percentile(samples, 0.99), len(samples), load.errors)


def figure_latency(
    args: argparse.Namespace, workdir: Path, receivers: Receivers, split: bool, direct: Direct
) -> Row:
    """(b) ingest-response-to-receipt latency at a steady `rate` events/s, beside aiohttp direct.

    In one process (`tidings serve`), or with `split` in two: `serve --no-worker` and
    `tidings worker`, which polls every 10 ms (SQLite has no notifications). The
    baseline `direct` is measured on the first call and reused.
    """
    database = workdir / ("latency-split.db" if split else "latency.db")
    tenant = bootstrap(database)
    maker = EventMaker(tenant.root, args.seed + 1)
    count = round(args.rate * args.duration)
    warm = [(f"w-{n:06d}", orjson.dumps(maker.make(f"w-{n:06d}"))) for n in range(args.rate)]
    bodies = [(f"b-{n:06d}", orjson.dumps(maker.make(f"b-{n:06d}"))) for n in range(count)]
    receivers.reset()
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(serving(database, worker=not split))
        subscribe(server, tenant, receivers.urls)
        processes = [server]
        if split:
            processes.append(
                stack.enter_context(
                    stopping(spawn(database, "worker", env={"TIDINGS_DELIVERY_POLL": "0.01"}))
                )
            )
        uvloop.run(ingest_paced(server.url, tenant.token, warm, args.rate))
        receivers.wait_for("w", len(warm) * SINKS, 30)
        cpu_before = [process.cpu_seconds() for process in processes]
        receivers_before = cpu_seconds(receivers.pid)
        client_before = time.process_time()
        load = uvloop.run(ingest_paced(server.url, tenant.token, bodies, args.rate))
        complete = receivers.wait_for("b", len(load.acked) * SINKS, args.timeout)
        cpu = [p.cpu_seconds() - before for p, before in zip(processes, cpu_before, strict=True)]
        receivers_cpu = cpu_seconds(receivers.pid) - receivers_before
        client_cpu = time.process_time() - client_before
    got = Receipts.of(receivers.dump(), "b")
    per_delivery, per_event = latencies(got, load.acked)
    statuses = delivery_statuses(database)
    if not direct.requests:
        fresh = direct_baseline(database, bodies, args.rate, receivers)
        direct.p50, direct.p99, direct.requests, direct.errors = (
            fresh.p50,
            fresh.p99,
            fresh.requests,
            fresh.errors,
        )

    expected = len(load.acked) * SINKS
    p50, p99 = percentile(per_delivery, 0.5), percentile(per_delivery, 0.99)
    wall = load.seconds
    negative = sum(1 for value in per_delivery if value < 0)
    where = (
        "serve --no-worker + tidings worker (poll 10 ms)"
        if split
        else "tidings serve (API + worker)"
    )
    usage = (
        f"serve {cpu[0] / wall:.2f} cores, worker {cpu[1] / wall:.2f}"
        if split
        else f"serve (API + worker) {cpu[0] / wall:.2f} cores"
    )
    row = Row(
        f"b{'2' if split else ''}. ingest response -> receipt, {args.rate} ev/s x {args.duration:g} s"
        + (", split" if split else ""),
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
        f"p50 {direct.p50:.1f} ms, p99 {direct.p99:.1f} ms (aiohttp direct)",
        f"{p99 / direct.p99:.1f}x p99",
        f"p99 < {LATENCY_P99_TARGET_MS:.0f} ms",
        complete and len(got.first) == expected and not load.errors and p99 < LATENCY_P99_TARGET_MS,
        [
            f"{where}: {len(load.acked):,} events acknowledged of {count:,}"
            f" ({len(load.acked) / wall:,.0f}/s over {wall:.1f} s, pacing lag max"
            f" {load.max_lag_ms:.1f} ms), {len(got.first):,} of {expected:,} deliveries received,"
            f" duplicates {got.duplicates}",
            f"per delivery: min {min(per_delivery):.1f}, mean {statistics.fmean(per_delivery):.1f},"
            f" p90 {percentile(per_delivery, 0.9):.1f}, p99.9 {percentile(per_delivery, 0.999):.1f},"
            f" max {max(per_delivery):.1f} ms; {negative:,} arrived before the client read its 2xx",
            f"per event (the last of its {SINKS} receipts): p50 {percentile(per_event, 0.5):.1f},"
            f" p99 {percentile(per_event, 0.99):.1f} ms",
            f"CPU: {usage}, receivers {receivers_cpu / wall:.2f}, load generator"
            f" {client_cpu / wall:.2f}; outbox after: {statuses}",
        ],
    )
    if not split:
        row.notes.append(
            f"baseline: send start -> receipt, {direct.requests:,} requests,"
            f" {SINKS} per event at {args.rate} events/s"
        )
    if load.errors or direct.errors:
        row.notes.append(f"errors: {dict(load.errors)} {dict(direct.errors)}")
    if not complete:
        row.notes.append(f"not every delivery arrived within {args.timeout:.0f} s")
    return row


# --- the table ------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    headers = ("figure", "value", "baseline", "ratio", "target", "result")
    cells = [
        (
            row.figure,
            row.value,
            row.baseline,
            row.ratio,
            row.target,
            "PASS" if row.passed else "FAIL",
        )
        for row in rows
    ]
    report.print_table(headers, cells, [(row.figure, row.notes) for row in rows])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run with small counts")
    parser.add_argument(
        "--only", action="append", choices=("throughput", "latency"), help="repeatable"
    )
    parser.add_argument("--events", type=int, help="events of figure a (x5 deliveries)")
    parser.add_argument("--rate", type=int, default=500, help="events/s of figure b")
    parser.add_argument("--duration", type=float, help="seconds of paced load in figure b")
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="the longest wait for receipts"
    )
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = 1_000 if args.quick else 10_000
    if args.duration is None:
        args.duration = 3.0 if args.quick else 20.0
    return args


def guarded(
    name: str,
    figure: Callable[[argparse.Namespace, Path, Receivers], Row],
    args: argparse.Namespace,
    workdir: str,
    receivers: Receivers,
) -> Row:
    """The figure's row, or a failed row saying what went wrong."""
    try:
        return figure(args, Path(workdir), receivers)
    except Exception as exc:
        traceback.print_exc()
        return Row(name, "error", "-", "-", "-", False, [f"{type(exc).__name__}: {exc}"])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    figures = args.only or ["throughput", "latency"]
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    rows: list[Row] = []
    receivers = Receivers(SINKS)
    try:
        with tempfile.TemporaryDirectory(prefix="tidings-bench-delivery-") as workdir:
            if "throughput" in figures:
                print(
                    f"figure a: delivering {args.events:,} events to {SINKS} sinks ...", flush=True
                )
                rows.append(
                    guarded("a. delivery throughput", figure_throughput, args, workdir, receivers)
                )
            if "latency" in figures:
                print(
                    f"figure b: latency at {args.rate} events/s for {args.duration:g} s ...",
                    flush=True,
                )
                direct = Direct()
                for split in (False, True):
                    rows.append(
                        guarded(
                            f"b{'2' if split else ''}. latency",
                            partial(figure_latency, split=split, direct=direct),
                            args,
                            workdir,
                            receivers,
                        )
                    )
    finally:
        receivers.close()
    print_table(rows)
    print(
        f"\n{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version},"
        f" aiohttp {aiohttp.__version__}; the run took {time.perf_counter() - began:.0f} s;"
        f" load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    if max(load_before, os.getloadavg()[0]) > (os.cpu_count() or 1):
        print("note: other processes competed for the CPUs; rates and latencies are pessimistic")
    return 0 if all(row.passed for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
