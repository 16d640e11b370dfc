"""The durability promise: a 2xx from ingest means the event is on disk, even across `kill -9`.

A real `tidings serve` takes concurrent single events and batches; it is killed with
SIGKILL while writes are in flight, restarted on the same file, and everything it
acknowledged must be there. That is repeated a few times on one database.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tests.conftest import TEST_TYPE
from tests.servers import Server, database_url
from tidings.cli import app

ROUNDS = 3
WORKERS = 8
ACKED_PER_ROUND = 300  # events acknowledged in a round before the kill
BATCH = "application/cloudevents-batch+json"
SOURCE = "https://durability.example/writer"
TIMEOUT = 30


@dataclass
class Request:
    """One ingest request: its events, and how it ended."""

    events: list[dict[str, Any]]
    batch: bool
    started: float
    ended: float = 0.0
    status: int | None = None  # None: no answer (the server went away)
    answer: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [event["id"] for event in self.events]

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def body(self) -> bytes:
        return json.dumps(self.events if self.batch else self.events[0]).encode()

    @property
    def content_type(self) -> str:
        return BATCH if self.batch else "application/json"


@dataclass
class Round:
    """One round: the requests sent, when the kill came, what was stored after the restart."""

    requests: list[Request] = field(default_factory=list)
    killed_at: float = 0.0
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    journal_mode: str = ""


@dataclass
class Run:
    """Every round on one database."""

    database: Path
    rounds: list[Round]
    server: Server
    producer: str
    viewer: str


def make_event(event_id: str, group: str, rng: random.Random) -> dict[str, Any]:
    """A valid event with a given id and a random body."""
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": SOURCE,
        "type": TEST_TYPE,
        "subject": f"{group}/{rng.randbytes(8).hex()}",
        "group": group,
        "data": {"actor": {"subject": f"writer-{event_id}"}, "body": {"n": rng.random()}},
    }


def send(client: httpx.Client, request: Request) -> None:
    """Send one request, recording when it started and how it ended (no answer: status None)."""
    request.started = time.monotonic()
    try:
        response = client.post(
            "/v1/events", content=request.body, headers={"content-type": request.content_type}
        )
    except httpx.TransportError:
        request.ended = time.monotonic()
        return
    request.ended = time.monotonic()
    request.status = response.status_code
    if request.acknowledged:
        body = response.json()
        request.answer = body["events"] if request.batch else [body]


def client_of(url: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=url,
        headers={"authorization": f"Bearer {token}"},
        timeout=TIMEOUT,
        trust_env=False,
    )


def writer(
    url: str, token: str, group: str, name: str, stop: threading.Event, sent: list[Request]
) -> None:
    """Send single events and batches (1 to 25) until stopped, recording every request."""
    rng = random.Random(name)
    number = 0
    with client_of(url, token) as client:
        while not stop.is_set():
            size = rng.choice([1, 1, 1, 2, 5, 25])
            batch = size > 1 or rng.random() < 0.2
            ids = [f"{name}-{number + i}" for i in range(size)]
            number += size
            request = Request([make_event(event_id, group, rng) for event_id in ids], batch, 0.0)
            sent.append(request)
            send(client, request)
            if request.status is None:
                time.sleep(0.01)


def last_batch(url: str, token: str, group: str, number: int) -> tuple[Request, threading.Thread]:
    """A batch of 1,000 events, sent on a thread of its own once its request has started: the
    server takes tens of milliseconds to store it, so a kill just after it was sent cuts it (the
    other writers' requests alone may all have been answered at the moment of the kill)."""
    rng = random.Random(number)
    events = [make_event(f"r{number}-last-{i}", group, rng) for i in range(1000)]
    request = Request(events, True, 0.0)

    def post() -> None:
        with client_of(url, token) as client:
            send(client, request)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not request.started and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.005)  # under way: sent, or being sent
    return request, thread


def stored_events(server: Server, token: str) -> dict[str, dict[str, Any]]:
    """Every event the token sees, by id."""
    found: dict[str, dict[str, Any]] = {}
    params: dict[str, Any] = {"limit": 100}
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=TIMEOUT, trust_env=False) as c:
        for _ in range(10_000):
            response = c.get("/v1/events", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            for event in page["events"]:
                assert event["id"] not in found, f"event {event['id']} listed twice"
                found[event["id"]] = event
            if not page["has_more"]:
                return found
            params["cursor"] = page["next_cursor"]
    raise AssertionError("too many pages")


def journal_mode(database: Path) -> str:
    """The journal mode recorded in the database file."""
    with closing(sqlite3.connect(database)) as conn:
        mode: str = conn.execute("PRAGMA journal_mode").fetchone()[0]
        return mode


def bootstrap(database: Path) -> tuple[str, str, str]:
    """A root group with producer and viewer tokens, made with the CLI; (root, producer, viewer)."""
    runner = CliRunner(env={"TIDINGS_DATABASE_URL": database_url(database)})

    def tidings(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.stdout.strip()

    root = tidings("groups", "create", "--name", "durable")
    producer = tidings("tokens", "create", "--group", root, "--role", "producer")
    viewer = tidings("tokens", "create", "--group", root, "--role", "viewer")
    return root, producer, viewer


def one_round(server: Server, producer: str, group: str, number: int) -> Round:
    """Write concurrently until enough is acknowledged, SIGKILL the server mid-write, restart it."""
    this = Round()
    stop = threading.Event()
    per_writer: list[list[Request]] = [[] for _ in range(WORKERS)]
    threads = [
        threading.Thread(
            target=writer,
            args=(server.url, producer, group, f"r{number}w{i}", stop, per_writer[i]),
            daemon=True,
        )
        for i in range(WORKERS)
    ]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            acked = sum(len(r.ids) for sent in per_writer for r in list(sent) if r.acknowledged)
            if acked >= ACKED_PER_ROUND:
                break
            time.sleep(0.005)
        last, sender = last_batch(server.url, producer, group, number)
        threads.append(sender)
        per_writer.append([last])
        this.killed_at = time.monotonic()
        server.kill()
    finally:
        stop.set()
        server.kill()
        for thread in threads:
            thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a writer did not stop"
    this.requests = [request for sent in per_writer for request in sent]
    server.start()
    this.journal_mode = journal_mode(server.database)
    return this


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """ROUNDS rounds of concurrent writes and SIGKILL on one database; the server left running."""
    database = tmp_path_factory.mktemp("durability") / "tidings.db"
    group, producer, viewer = bootstrap(database)
    server = Server(database)
    try:
        server.start()
        rounds = []
        for number in range(ROUNDS):
            this = one_round(server, producer, group, number)
            this.stored = stored_events(server, viewer)
            rounds.append(this)
        yield Run(database, rounds, server, producer, viewer)
    finally:
        try:
            server.stop()
        finally:
            server.kill()


def acknowledged_up_to(run: Run, last: int) -> dict[str, dict[str, Any]]:
    """The events acknowledged in rounds 0..last, by id, as the acknowledgement showed them."""
    return {
        event["id"]: event
        for this in run.rounds[: last + 1]
        for request in this.requests
        if request.acknowledged
        for event in request.answer
    }


def test_every_acknowledged_event_survives_kill_9(run: Run) -> None:
    """After each SIGKILL and restart, every event answered with a 2xx so far is stored."""
    for number, this in enumerate(run.rounds):
        acked = acknowledged_up_to(run, number)
        assert len(acked) >= ACKED_PER_ROUND * (number + 1)
        missing = sorted(set(acked) - set(this.stored))
        assert missing == [], f"round {number}: {len(missing)} acknowledged events lost"


def test_acknowledged_events_are_stored_as_acknowledged(run: Run) -> None:
    """The stored event is exactly what the 2xx answer showed."""
    acked = acknowledged_up_to(run, len(run.rounds) - 1)
    stored = run.rounds[-1].stored
    assert [event_id for event_id in acked if stored[event_id] != acked[event_id]] == []


def test_each_round_killed_writes_in_flight(run: Run) -> None:
    """The kill interrupted requests: some sent before it got no answer."""
    for this in run.rounds:
        cut = [r for r in this.requests if r.status is None and r.started < this.killed_at]
        assert cut, "the server was killed with no write in flight"


def test_no_write_is_refused_before_the_kill(run: Run) -> None:
    """Every request answered before the kill was a 201: concurrency refuses nothing."""
    for this in run.rounds:
        answered = [r.status for r in this.requests if r.status is not None]
        assert answered
        assert set(answered) == {201}


def test_batches_are_stored_whole_or_not_at_all(run: Run) -> None:
    """A batch cut off by the kill left either all of its events or none."""
    stored = run.rounds[-1].stored
    partial = [
        request.ids
        for this in run.rounds
        for request in this.requests
        if request.batch
        and 0 < sum(event_id in stored for event_id in request.ids) < len(request.ids)
    ]
    assert partial == []


def test_nothing_unsent_is_stored(run: Run) -> None:
    """The store holds only events that were sent, each once."""
    sent = {event_id for this in run.rounds for r in this.requests for event_id in r.ids}
    assert set(run.rounds[-1].stored) <= sent


def test_retrying_unanswered_writes_after_restart_stores_each_once(run: Run) -> None:
    """Resending a request that got no answer is a 200 if it was stored, else a 201; never a 409."""
    unanswered = [r for this in run.rounds for r in this.requests if r.status is None]
    assert unanswered
    stored_before = run.rounds[-1].stored
    headers = {"authorization": f"Bearer {run.producer}"}
    with httpx.Client(
        base_url=run.server.url, headers=headers, timeout=TIMEOUT, trust_env=False
    ) as client:
        for request in unanswered:
            was_stored = request.ids[0] in stored_before
            response = client.post(
                "/v1/events", content=request.body, headers={"content-type": request.content_type}
            )
            assert response.status_code == (200 if was_stored else 201), response.text
    stored_after = stored_events(run.server, run.viewer)
    assert set(stored_after) == set(stored_before) | {
        event_id for request in unanswered for event_id in request.ids
    }


def test_database_is_in_wal_mode(run: Run) -> None:
    """The SQLite file is in WAL mode, also after each crash and restart."""
    assert [this.journal_mode for this in run.rounds] == ["wal"] * ROUNDS
    assert journal_mode(run.database) == "wal"
