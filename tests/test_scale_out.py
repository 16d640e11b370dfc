"""Scale-out on PostgreSQL: two API processes and three workers on one database.

Real `tidings serve --no-worker` and `tidings worker` processes share a fresh schema.
5,000 events go in through both APIs (batches of 100, alternating) to three subscriptions
with a receiver each; one worker is killed with SIGKILL midway. Every receiver must still
get every event, and the workers' claim logs (JSON, debug level) must show that no delivery
was ever held by two claims at once: a delivery is claimed again only after the previous
claim's lease ran out, or after the previous claim's attempt was recorded. The dead
worker's unfinished claims are taken over by the others, after their leases.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.conftest import event
from tests.databases import new_schema, query
from tests.receivers import Received, Receiver
from tests.servers import TIDINGS, free_port, tidings_env
from tidings.storage.postgres import PostgresStorage

EVENTS = 5_000
BATCH = 100
LEASE_S = 3
DEADLINE_S = 240  # the whole scenario, from the first process started: a guard against hangs (about 45 s on a slow machine)
START_TIMEOUT_S = 30
RECEIVER_DELAY_S = (
    0.005  # each receiver takes a moment to answer: the workers have claims in flight
)
FAIL_EVERY = 97  # the third receiver fails the first attempt of some events: retries happen too
NS = 1_000_000_000


@dataclass
class Proc:
    """A `tidings` process of the test, its log file and (for `serve`) its port."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def lines(self) -> Iterator[dict[str, Any]]:
        """The JSON log lines (anything else the process printed is skipped)."""
        for line in self.text().splitlines():
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass(frozen=True)
class ClaimLine:
    """One delivery of a "claimed" log line."""

    worker: str
    delivery: int
    token: str
    claimed_ns: int
    lease_until_ns: int


class Processes:
    """Every process the test starts; all stopped (or killed) at the end, whatever happens."""

    def __init__(self, directory: Path, env: dict[str, str]):
        self.directory = directory
        self.env = env
        self.started: list[Proc] = []

    def launch(self, name: str, *args: str, port: int = 0) -> Proc:
        log = self.directory / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [TIDINGS, *args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc = Proc(name, process, log, port)
        self.started.append(proc)
        return proc

    def serve(self, name: str) -> Proc:
        port = free_port()
        return self.launch(
            name,
            "serve",
            "--no-worker",
            "--port",
            str(port),
            "--log-format",
            "json",
            "--log-level",
            "debug",
            port=port,
        )

    def worker(self, name: str) -> Proc:
        return self.launch(name, "worker", "--log-format", "json", "--log-level", "debug")

    def run(self, *args: str) -> str:
        """Run a `tidings` command to its end; its stdout."""
        result = subprocess.run(
            [TIDINGS, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, f"tidings {' '.join(args)}:\n{result.stderr}"
        return result.stdout.strip()

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.alive():
                proc.process.send_signal(signal.SIGTERM)
        for proc in self.started:
            try:
                proc.process.wait(10)
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait(10)


def wait_until(condition: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    """Wait until `condition()`; fail saying `what()` (as it is then) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what()}")
        time.sleep(0.05)


def wait_healthy(proc: Proc) -> None:
    """Wait until a `serve` process answers /healthz; fail with its log if it dies first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if not proc.alive():
                pytest.fail(
                    f"{proc.name} exited with {proc.process.returncode}:\n{proc.text()[-4000:]}"
                )
            try:
                if client.get(f"{proc.url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    pytest.fail(f"{proc.name} did not become healthy:\n{proc.text()[-4000:]}")


def wait_started(proc: Proc) -> None:
    """Wait until a worker logs that it started; fail with its log if it dies first."""

    def started() -> bool:
        if not proc.alive():
            pytest.fail(
                f"{proc.name} exited with {proc.process.returncode}:\n{proc.text()[-4000:]}"
            )
        return any(line.get("event") == "worker started" for line in proc.lines())

    wait_until(started, START_TIMEOUT_S, lambda: f"{proc.name} to start")


class Tally:
    """A receiver's answers: 200 after a short delay, but the first attempt of every
    FAIL_EVERY-th event fails with 500 (if `flaky`). Counts what it answered 200, per event."""

    def __init__(self, flaky: bool):
        self.flaky = flaky
        self.lock = threading.Lock()
        self.ok: Counter[str] = Counter()
        self.failed: set[str] = set()

    async def __call__(self, request: Received) -> web.Response:
        await asyncio.sleep(RECEIVER_DELAY_S)
        event_id = request.header("Ce-Id") or ""
        with self.lock:
            if self.flaky and int(event_id[1:]) % FAIL_EVERY == 0 and event_id not in self.failed:
                self.failed.add(event_id)
                return web.Response(status=500, text="try again")
            self.ok[event_id] += 1
        return web.Response(status=200, text="ok")

    def received(self) -> int:
        with self.lock:
            return len(self.ok)

    def duplicates(self) -> int:
        with self.lock:
            return sum(count - 1 for count in self.ok.values())


def event_batches() -> list[list[dict[str, Any]]]:
    ids = [f"e{n:05d}" for n in range(EVENTS)]
    return [
        [{"id": event_id} for event_id in ids[start : start + BATCH]]
        for start in range(0, EVENTS, BATCH)
    ]


def claims_in(proc: Proc) -> list[ClaimLine]:
    return [
        ClaimLine(
            proc.name, delivery, line["claim_token"], line["claimed_ns"], line["lease_until_ns"]
        )
        for line in proc.lines()
        if line.get("event") == "claimed"
        for delivery in line["deliveries"]
    ]


def test_two_apis_three_workers_one_killed(
    postgres_server: str, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    """5,000 events to 3 receivers through 2 API processes and 3 workers, one of them killed
    midway: every event reaches every receiver, and no delivery is ever held by two claims."""
    began = time.monotonic()
    url = new_schema(postgres_server)
    env = tidings_env(
        TIDINGS_DATABASE_URL=url,
        TIDINGS_ALLOW_PRIVATE_SINKS="true",
        TIDINGS_DELIVERY_LEASE=str(LEASE_S),
        TIDINGS_RETRY_SCHEDULE="0,200ms,500ms,1s,2s",
        TIDINGS_DELIVERY_POLL="0.2",
        TIDINGS_DB_POOL_MAX="6",
        # No sink ever has all its slots busy, so no worker hands a claim back unsent (it logs
        # claims, not hand-backs, and a hand-back makes a delivery claimable before its lease
        # runs out): every second claim of a delivery is then explained by the log and the
        # database alone.
        TIDINGS_DELIVERY_CONCURRENCY="64",
        TIDINGS_DELIVERY_PER_SINK="64",
    )
    procs = Processes(tmp_path, env)
    tallies = [Tally(flaky=index == 2) for index in range(3)]
    sinks = [receivers(tally) for tally in tallies]
    try:
        # Both API processes start at once on the empty schema: one migrates while the other
        # waits, then both make today's partitions. The first to serve stores the issuer URL.
        apis = [procs.serve(f"api{n}") for n in range(2)]
        for api in apis:
            wait_healthy(api)
        root = procs.run("groups", "create", "--name", "scale-out")
        token = procs.run(
            "tokens", "create", "--group", root, "--role", "owner", "--role", "producer"
        )
        workers = [procs.worker(f"worker{n}") for n in range(3)]
        for worker in workers:
            wait_started(worker)
        headers = {"Authorization": f"Bearer {token}"}
        clients = [
            httpx.Client(base_url=api.url, headers=headers, timeout=30, trust_env=False)
            for api in apis
        ]
        try:
            for index, sink in enumerate(sinks):
                created = clients[index % 2].post(
                    "/v1/subscriptions",
                    json={"parent": root, "sink": f"{sink.url}/hook", "types": ["dev.example.*"]},
                )
                assert created.status_code == 201, created.text

            def ingest(batch_number: int, batch: list[dict[str, Any]]) -> None:
                body = json.dumps([event(root, **overrides) for overrides in batch])
                response = clients[batch_number % 2].post(
                    "/v1/events",
                    content=body,
                    headers={"Content-Type": "application/cloudevents-batch+json"},
                )
                assert response.status_code == 201, response.text

            batches = event_batches()
            half = len(batches) // 2
            for number, batch in enumerate(batches[:half]):
                ingest(number, batch)
            # Midway: the first worker is busy (it has claimed); kill it, without warning.
            victim = workers[0]
            wait_until(lambda: bool(claims_in(victim)), 20, lambda: "the first worker to claim")
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait(10)
            killed_ns = time.time_ns()
            for number, batch in enumerate(batches[half:], start=half):
                ingest(number, batch)
        finally:
            for client in clients:
                client.close()

        wait_until(
            lambda: all(tally.received() == EVENTS for tally in tallies),
            max(DEADLINE_S - (time.monotonic() - began), 10),
            lambda: (
                f"every receiver to get all {EVENTS} events, got {[t.received() for t in tallies]}"
            ),
        )
        assert all(worker.alive() for worker in workers[1:])
        assert all(api.alive() for api in apis)
    finally:
        procs.stop_all()  # SIGTERM: the live workers finish what they hold and exit

    assert all(worker.process.returncode == 0 for worker in workers[1:]), [
        (w.name, w.process.returncode, w.text()[-2000:]) for w in workers[1:]
    ]
    ids = {f"e{n:05d}" for n in range(EVENTS)}
    for tally in tallies:
        assert set(tally.ok) == ids
    assert len(tallies[2].failed) == len([i for i in ids if int(i[1:]) % FAIL_EVERY == 0])
    duplicates = [tally.duplicates() for tally in tallies]

    # What the database says: every delivery delivered, and each one's attempts.
    status = dict(query(url, "SELECT status, count(*) FROM deliveries GROUP BY status"))
    assert status == {"delivered": 3 * EVENTS}, status
    attempts: dict[int, list[int]] = defaultdict(list)
    codes: Counter[int] = Counter()
    for delivery_id, started_ns, code in query(
        url, "SELECT delivery_id, started_ns, status_code FROM delivery_attempts"
    ):
        attempts[int(str(delivery_id))].append(int(str(started_ns)))
        codes[int(str(code))] += 1
    # One 200 per delivery; the 500s, unless the killed worker got one and died unrecorded.
    assert codes[200] == 3 * EVENTS
    assert set(codes) <= {200, 500}
    assert codes[500] <= len(tallies[2].failed)

    # What the workers logged: every claim of every delivery.
    claims: dict[int, list[ClaimLine]] = defaultdict(list)
    for worker in workers:
        for claim in claims_in(worker):
            claims[claim.delivery].append(claim)
    assert set(claims) == set(attempts), "every delivery attempted was claimed in a log"
    by_worker = Counter(claim.worker for found in claims.values() for claim in found)
    assert all(by_worker[worker.name] > 0 for worker in workers), by_worker
    lost = sum(
        1
        for worker in workers
        for line in worker.lines()
        if line.get("event") == "a claim was lost before its result was recorded"
    )

    overlapping, orphans, taken_over_early = [], [], []
    takeovers: list[float] = []  # seconds from a dead claim to the claim that took it over
    for delivery, found in claims.items():
        found.sort(key=lambda claim: claim.claimed_ns)
        for first, then in itertools.pairwise([*found, None]):
            # Did the first claim's worker record an attempt before the next claim was made?
            until = then.claimed_ns if then is not None else 2**63
            recorded = any(first.claimed_ns <= at <= until for at in attempts[delivery])
            if then is not None and then.claimed_ns < first.lease_until_ns and not recorded:
                overlapping.append((first, then))
            if first.worker == workers[0].name and not recorded:
                orphans.append(first)  # the killed worker's claim, never finished
                assert then is not None, f"delivery {delivery} was never taken over"
                assert then.worker != first.worker
                takeovers.append((then.claimed_ns - first.claimed_ns) / NS)
                if then.claimed_ns < first.lease_until_ns:
                    taken_over_early.append((first, then))
    print(
        f"\nscale-out: {time.monotonic() - began:.1f} s; claims per worker {dict(by_worker)};"
        f" orphaned by the kill {len(orphans)}; lost claims {lost}; duplicates per receiver"
        f" {duplicates}; retried {len(tallies[2].failed)}; taken over after"
        f" {min(takeovers, default=0):.2f} to {max(takeovers, default=0):.2f} s"
    )
    assert not overlapping, (
        f"{len(overlapping)} deliveries held by two claims at once: {overlapping[:3]}"
    )
    assert not taken_over_early, taken_over_early[:3]
    # The kill came midway: the dead worker held claims it never finished, all taken over
    # once their leases ran out (a lease runs from the claim; the kill came after it).
    assert orphans, "the killed worker held no unfinished claim"
    assert all(claim.claimed_ns < killed_ns for claim in orphans)
    # A receiver gets an event twice only when a claim's worker sent it but did not record it:
    # the killed worker's, or a live worker's that recorded too late (its lease had run out).
    assert sum(duplicates) <= len(orphans) + lost
    assert time.monotonic() - began < DEADLINE_S + 15


async def test_processes_opening_a_new_schema_at_once_all_open(postgres_server: str) -> None:
    """Five processes starting together on an empty schema (each migrating and making today's
    partitions as it opens) all open: they take turns rather than fail on each other's tables."""
    url = new_schema(postgres_server)
    storages = [PostgresStorage(url, min_size=1, max_size=2) for _ in range(5)]
    try:
        opened = await asyncio.gather(*(s.open() for s in storages), return_exceptions=True)
        assert [o for o in opened if isinstance(o, BaseException)] == []
        assert all([await s.ready() for s in storages])
    finally:
        for storage in storages:
            await storage.close()
