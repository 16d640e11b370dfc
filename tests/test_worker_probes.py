"""`tidings worker --metrics-port`: a worker process answers /healthz, /readyz and /metrics,
and its metrics count the deliveries it made."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import structlog
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Tenant, auth, event
from tests.receivers import Receiver
from tests.servers import TIDINGS, free_port, run_tidings, taken_port, tidings_env
from tidings.config import Settings
from tidings.delivery.probes import serve_probes
from tidings.delivery.standalone import run_standalone_worker
from tidings.delivery.worker import Worker
from tidings.metrics import Metrics
from tidings.storage import storage_for


@pytest.fixture
def settings(database_url: str) -> Settings:
    """An API without a worker of its own, whose deliveries may go to 127.0.0.1."""
    return Settings(
        database_url=database_url,
        allow_private_sinks=True,
        run_worker=False,
        public_url="http://tidings.test",
    )


WORKER_NAME = "tidings_probed_worker"  # the application name of the worker's connections


@pytest.fixture
def worker(database_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A `tidings worker` process on the test's database, and its probes' base URL."""
    port = free_port()
    log = tmp_path / "worker.log"
    if database_url.startswith("postgresql"):
        database_url += f"&application_name={WORKER_NAME}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [TIDINGS, "worker", "--metrics-port", str(port)],
            env=tidings_env(
                TIDINGS_DATABASE_URL=database_url,
                TIDINGS_ISSUER="http://tidings.test",
                TIDINGS_ALLOW_PRIVATE_SINKS="true",
                TIDINGS_DELIVERY_POLL="0.05",
            ),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while not _answers(f"{url}/readyz"):  # delivering, not only alive
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield process, url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def _database_away(server_url: str) -> Iterator[None]:
    """The worker's database refuses connections, and the worker's own are ended, until the
    block ends."""
    database = server_url.rsplit("/", 1)[1].split("?", maxsplit=1)[0]
    admin = server_url.replace(f"/{database}", "/postgres", 1)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (WORKER_NAME,),
            )
            yield
        finally:
            conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_workers_probes_answer_and_its_metrics_count_its_deliveries(
    client: TestClient,
    tenant: Tenant,
    receivers: Any,
    worker: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, url = worker
    receiver: Receiver = receivers()
    assert httpx.get(f"{url}/readyz", timeout=5).json() == {"status": "ready"}
    before = _samples(url)
    assert ("tidings_delivery_attempts_total", (("outcome", "delivered"),)) not in before
    assert before[("tidings_deliveries_due", ())] == 0.0

    subscribed = client.post(
        "/v1/subscriptions",
        json={"parent": tenant.root, "sink": receiver.url, "types": [event(tenant.root)["type"]]},
        headers=auth(tenant.owner),
    )
    assert subscribed.status_code == 201, subscribed.text
    for index in range(3):
        sent = client.post(
            "/v1/events", json=event(tenant.root, id=f"e{index}"), headers=auth(tenant.producer)
        )
        assert sent.status_code == 201, sent.text
    receiver.wait_for(3)

    deadline = time.monotonic() + 10
    while True:  # the worker records a batch of results after the sends
        after = _samples(url)
        delivered = after.get(("tidings_delivery_attempts_total", (("outcome", "delivered"),)))
        if delivered == 3.0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert delivered == 3.0
    assert after[("tidings_delivery_latency_seconds_count", ())] == 3.0
    assert after[("tidings_deliveries_due", ())] == 0.0

    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0


def test_a_metrics_port_in_use_is_a_one_line_error(database_url: str) -> None:
    """A port something listens on: exit code 1 and one line naming --metrics-port."""
    with taken_port() as port:
        done = run_tidings(
            "worker",
            "--metrics-port",
            str(port),
            TIDINGS_DATABASE_URL=database_url,
            TIDINGS_ISSUER="https://x.test",
        )
    assert done.returncode == 1, done.stderr
    message = " ".join(done.stderr.split())
    assert message.startswith(f"error: --metrics-host 127.0.0.1 --metrics-port {port}: "), message
    assert message.endswith("address already in use"), message
    assert len(done.stderr.strip().splitlines()) <= 2  # one line, wrapped at most once


def test_while_the_database_is_away_the_probes_answer_at_once(
    backend: str, worker: tuple[subprocess.Popen[bytes], str], postgres_server: str
) -> None:
    """No connection to the database can be made: /metrics still answers with the counters
    (the backlog gauges as they were), /readyz answers 503, each within the probe's wait (the
    requests give up at 10 s; the pool waits 30 s for a connection); once the database is back, the worker is ready again."""
    if backend != "postgres":
        pytest.skip("a database that refuses connections is a PostgreSQL server's state")
    _, url = worker
    assert _samples(url)[("tidings_deliveries_due", ())] == 0.0
    with _database_away(postgres_server):
        scraped = httpx.get(f"{url}/metrics", timeout=10)
        assert scraped.status_code == 200
        assert "tidings_delivery_attempts" in scraped.text
        assert "tidings_deliveries_due 0.0" in scraped.text
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "not_ready"
    deadline = time.monotonic() + 20
    while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_worker_stops_at_once_while_the_database_is_away(
    backend: str, worker: tuple[subprocess.Popen[bytes], str], postgres_server: str
) -> None:
    """SIGTERM while no connection can be made: the worker gives up the claim that waits for
    one (the pool would wait 30 s, past a supervisor's patience) and exits 0 within seconds."""
    if backend != "postgres":
        pytest.skip("a database that refuses connections is a PostgreSQL server's state")
    process, url = worker
    with _database_away(postgres_server):
        time.sleep(1)  # the worker polls every 0.05 s: a claim now waits for a connection
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 503
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        assert time.monotonic() - began < 10


async def test_a_worker_is_ready_once_it_has_started(database_url: str) -> None:
    """The probes are bound before the worker makes its key and starts delivering: until then
    /healthz answers and /readyz answers 503 saying that the worker is starting."""
    storage = storage_for(Settings(database_url=database_url))
    await storage.open()
    started = False
    port = free_port()
    runner = await serve_probes(storage, Metrics(), "127.0.0.1", port, lambda: started)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/healthz")).status_code == 200
            starting = await http.get("/readyz")
            assert starting.status_code == 503
            assert starting.json()["error"] == {
                "code": "not_ready",
                "message": "the worker is starting",
                "details": [],
            }
            started = True
            assert (await http.get("/readyz")).json() == {"status": "ready"}
    finally:
        await runner.cleanup()
        await storage.close()


async def test_a_worker_whose_loop_dies_exits_with_1(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A defect that ends the delivery loop (here: one put in its place) ends the process with
    exit code 1 and a logged error, rather than leaving it alive and delivering nothing."""

    async def broken_run(self: Worker, stop: asyncio.Event) -> None:
        raise RuntimeError("a defect in the loop")

    monkeypatch.setattr(Worker, "run", broken_run)
    settings = Settings(database_url=database_url, issuer="http://tidings.test")
    with structlog.testing.capture_logs() as logged:
        code = await asyncio.wait_for(run_standalone_worker(settings), 30)
    assert code == 1
    [line] = [entry for entry in logged if entry["log_level"] == "error"]
    assert line["task"] == "tidings-worker"
    assert isinstance(line["exc_info"], RuntimeError)
