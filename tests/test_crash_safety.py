"""Crash safety of delivery: `kill -9` the server while 10,000 events fan out to 5 receivers.

A real `tidings serve` (short lease, short retry schedule) has 5 subscriptions,
one per receiver (an aiohttp server on 127.0.0.1, each in a thread of its own,
recording (Ce-Source, Ce-Id) of every request). 10,000 events are ingested
through the API in batches of 100 by a few writer threads; the server is
SIGKILLed once at a random moment during ingest and twice at random moments
during fan-out, and each time restarted on the same database (on a new port;
the writers re-point). A batch whose request got no answer is sent again: ingest
is idempotent by (source, id). Only events acknowledged with a 2xx must arrive.

Afterwards every acknowledged event has reached every receiver at least once,
the outbox holds exactly one delivery per (event, subscription), all delivered.
At-least-once means duplicates: they are counted, printed, written to the
terminal and recorded as the test's `duplicates` property (junit XML).
"""

from __future__ import annotations

import json
import os
import queue
import random
import sqlite3
import threading
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from typer.testing import CliRunner

from tests.conftest import TEST_TYPE
from tests.receivers import Receiver
from tests.servers import Server, database_url
from tidings.cli import app

EVENTS = 10_000
BATCH = 100
SINKS = 5
WRITERS = 4
FAN_OUT_KILLS = 2  # besides the one during ingest
SOURCE = "https://crash.example/fan-out"
BATCH_TYPE = "application/cloudevents-batch+json"
SERVER_ENV = {
    "TIDINGS_ALLOW_PRIVATE_SINKS": "true",
    "TIDINGS_DELIVERY_LEASE": "2",
    "TIDINGS_RETRY_SCHEDULE": "0,200ms,500ms,1s,1s,1s,2s,2s",
    "TIDINGS_DELIVERY_POLL": "0.2",
}
INGEST_TIMEOUT = 60.0
ARRIVAL_TIMEOUT = 120.0
HTTP_TIMEOUT = 30.0

Key = tuple[str, str]  # (Ce-Source, Ce-Id)


@dataclass
class KeyReceiver(Receiver):
    """A receiver that keeps only how often each (Ce-Source, Ce-Id) arrived."""

    keys: Counter[Key] = field(default_factory=Counter)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        key = (request.headers.get("Ce-Source", ""), request.headers.get("Ce-Id", ""))
        with self._lock:
            self.keys[key] += 1
        return web.Response(status=200, text="ok")

    def snapshot(self) -> Counter[Key]:
        """How often each key arrived, so far."""
        with self._lock:
            return Counter(self.keys)

    def distinct(self) -> int:
        """How many different keys arrived, so far."""
        with self._lock:
            return len(self.keys)


class Target:
    """The base URL of the server now running: the writers re-point when it restarts."""

    def __init__(self, url: str):
        self._url = url
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        with self._lock:
            return self._url

    @url.setter
    def url(self, value: str) -> None:
        with self._lock:
            self._url = value


@dataclass
class Ingest:
    """What the writers did: the events acknowledged, and how many requests went unanswered."""

    acked: set[Key] = field(default_factory=set)
    acked_batches: int = 0
    unanswered: int = 0  # requests that got no answer (the server was killed or down)
    resent: set[int] = field(default_factory=set)  # batches sent more than once
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Kill:
    """One SIGKILL: when, what had been acknowledged and received, how long the restart took."""

    phase: str
    acked: int
    received: int
    restart_s: float


def make_batch(number: int, group: str, rng: random.Random) -> list[dict[str, Any]]:
    """Batch `number`: events `crash-<number>-<i>` of the test type in `group`."""
    return [
        {
            "specversion": "1.0",
            "id": f"crash-{number:03d}-{index:03d}",
            "source": SOURCE,
            "type": TEST_TYPE,
            "subject": f"{group}/{rng.randbytes(8).hex()}",
            "group": group,
            "data": {"actor": {"subject": "crash-writer"}, "body": {"n": number * BATCH + index}},
        }
        for index in range(BATCH)
    ]


def writer(
    target: Target,
    token: str,
    todo: queue.Queue[tuple[int, bytes, list[Key]]],
    ingest: Ingest,
    stop: threading.Event,
) -> None:
    """Send batches until none is left; a batch that gets no answer is sent again."""
    headers = {"authorization": f"Bearer {token}", "content-type": BATCH_TYPE}
    with httpx.Client(headers=headers, timeout=HTTP_TIMEOUT, trust_env=False) as client:
        while not stop.is_set():
            try:
                number, body, keys = todo.get_nowait()
            except queue.Empty:
                return
            while not stop.is_set():
                try:
                    response = client.post(f"{target.url}/v1/events", content=body)
                except httpx.TransportError:
                    with ingest.lock:
                        ingest.unanswered += 1
                        ingest.resent.add(number)
                    time.sleep(0.05)  # the server is down: wait for the restart
                    continue
                with ingest.lock:
                    if 200 <= response.status_code < 300:
                        assert len(response.json()["events"]) == BATCH
                        ingest.acked.update(keys)
                        ingest.acked_batches += 1
                    else:
                        ingest.refused.append(f"batch {number}: {response.status_code}")
                break


def bootstrap(database: Path) -> tuple[str, str]:
    """A root group and a producer + editor token on it, made with the CLI."""
    runner = CliRunner(env={"TIDINGS_DATABASE_URL": database_url(database)})

    def tidings(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.stdout.strip()

    root = tidings("groups", "create", "--name", "crash")
    token = tidings("tokens", "create", "--group", root, "--role", "producer", "--role", "editor")
    return root, token


def wait_until(condition: Any, timeout: float, interval: float = 0.01) -> bool:
    """Poll `condition()` until it is true or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def outbox(database: Path) -> dict[str, int]:
    """The deliveries of the test's events, by status."""
    with closing(sqlite3.connect(database, timeout=30)) as conn:
        rows = conn.execute(
            "SELECT d.status, count(*) FROM deliveries d JOIN events e"
            " ON e.position = d.event_position WHERE e.source = ? GROUP BY d.status",
            (SOURCE,),
        ).fetchall()
    return {str(status): int(count) for status, count in rows}


def report(pytestconfig: pytest.Config, lines: list[str]) -> None:
    """Print the lines, and write them to the terminal whatever the capture mode."""
    for line in lines:
        print(line)
    terminal = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if terminal is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        terminal.write_line("")
        for line in lines:
            terminal.write_line(line)


def test_every_acknowledged_event_reaches_every_receiver_across_kill_9(
    tmp_path: Path,
    record_property: Any,
    pytestconfig: pytest.Config,
) -> None:
    """SIGKILL three times during ingest and fan-out; every acked event reaches all 5 receivers."""
    began = time.monotonic()
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    database = tmp_path / "tidings.db"
    root, token = bootstrap(database)
    receivers = [KeyReceiver().start() for _ in range(SINKS)]
    server = Server(database, SERVER_ENV)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    kills: list[Kill] = []
    ingest = Ingest()

    def received() -> int:
        return sum(receiver.distinct() for receiver in receivers)

    def kill_and_restart(phase: str) -> None:
        time.sleep(rng.uniform(0, 0.05))  # land anywhere, not just after a poll
        with ingest.lock:
            acked = len(ingest.acked)
        server.kill()
        got = received()
        started = time.monotonic()
        server.start()
        target.url = server.url
        kills.append(Kill(phase, acked, got, time.monotonic() - started))

    try:
        server.start()
        target = Target(server.url)
        auth = {"authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url, headers=auth, trust_env=False) as client:
            for receiver in receivers:
                response = client.post(
                    "/v1/subscriptions",
                    json={"parent": root, "sink": f"{receiver.url}/hook", "types": [TEST_TYPE]},
                )
                assert response.status_code == 201, response.text

        todo: queue.Queue[tuple[int, bytes, list[Key]]] = queue.Queue()
        for number in range(EVENTS // BATCH):
            events = make_batch(number, root, rng)
            todo.put((number, json.dumps(events).encode(), [(SOURCE, e["id"]) for e in events]))
        threads = [
            threading.Thread(target=writer, args=(target, token, todo, ingest, stop), daemon=True)
            for _ in range(WRITERS)
        ]
        for thread in threads:
            thread.start()

        # Kill 1: during ingest, once a random share of the batches is acknowledged.
        at_batch = rng.randint(10, 60)
        assert wait_until(lambda: ingest.acked_batches >= at_batch, INGEST_TIMEOUT)
        kill_and_restart("ingest")
        for thread in threads:
            thread.join(max(1.0, INGEST_TIMEOUT - (time.monotonic() - began)))
        assert not any(thread.is_alive() for thread in threads), "ingest did not finish in time"
        assert ingest.refused == []
        assert len(ingest.acked) == EVENTS
        expected = len(ingest.acked) * SINKS
        ingested_s = time.monotonic() - began

        # Kills 2 and 3: during fan-out, after a random share of what is left has arrived.
        for _ in range(FAN_OUT_KILLS):
            got = received()
            mark = got + int(rng.uniform(0.15, 0.45) * (expected - got))
            assert wait_until(lambda mark=mark: received() >= mark, ARRIVAL_TIMEOUT), (
                f"fan-out stalled at {received():,} of {expected:,}\n{server.log_text()[-3000:]}"
            )
            kill_and_restart("fan-out")

        def all_arrived() -> bool:
            return all(ingest.acked <= receiver.snapshot().keys() for receiver in receivers)

        arrived = wait_until(all_arrived, ARRIVAL_TIMEOUT, interval=0.2)
        delivered_s = time.monotonic() - began
        counts = [receiver.snapshot() for receiver in receivers]
        missing = [len(ingest.acked - set(count)) for count in counts]
        assert arrived, (
            f"acknowledged events missing per receiver: {missing}; outbox {outbox(database)}\n"
            f"{server.log_text()[-3000:]}"
        )
        assert wait_until(lambda: outbox(database).get("pending", 0) == 0, 30, interval=0.1)
        final = outbox(database)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        try:
            server.stop()
        finally:
            server.kill()
            for receiver in receivers:
                receiver.stop()

    duplicates = [
        sum(times - 1 for key, times in count.items() if key in ingest.acked) for count in counts
    ]
    twice_or_more = sum(
        1 for count in counts for key, times in count.items() if key in ingest.acked and times > 1
    )
    total = sum(duplicates)
    record_property("duplicates", total)
    record_property("duplicates_per_receiver", duplicates)
    record_property("kills", len(kills))
    record_property("seconds", round(delivered_s, 1))
    report(
        pytestconfig,
        [
            f"crash safety (seed {seed}): {EVENTS:,} events x {SINKS} receivers ="
            f" {expected:,} deliveries, {len(kills)} x kill -9, all arrived;"
            f" duplicates {total} ({twice_or_more} deliveries received more than once,"
            f" per receiver {duplicates}); ingest took {ingested_s:.1f} s, all arrived"
            f" after {delivered_s:.1f} s",
            *(
                f"  kill {n} during {k.phase}: {k.acked:,} events acknowledged,"
                f" {k.received:,} deliveries received; restarted in {k.restart_s:.1f} s"
                for n, k in enumerate(kills, 1)
            ),
            f"  {len(ingest.resent)} batches were sent again after {ingest.unanswered} requests"
            f" got no answer; outbox {final}",
        ],
    )
    assert [k.phase for k in kills] == ["ingest"] + ["fan-out"] * FAN_OUT_KILLS
    assert kills[0].acked < EVENTS, "the first kill came after ingest had finished"
    assert all(k.received < expected for k in kills), "a kill came after fan-out had finished"
    # Re-sent batches are stored once: one delivery per (event, subscription), each delivered.
    assert final == {"delivered": expected}
