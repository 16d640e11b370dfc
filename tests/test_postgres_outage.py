"""PostgreSQL going away under a running service: the connections that broke are replaced
before a request or the worker meets them, and a request whose connection breaks under it is
a 503 to retry, with nothing stored."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg_pool import PoolTimeout

from tests.conftest import auth, event, new_tenant
from tests.databases import new_schema
from tests.receivers import Receiver
from tidings.api import create_app
from tidings.api.errors import is_transient
from tidings.config import Settings
from tidings.storage.postgres_pool import IDLE_CHECK_S


@pytest.fixture
def served(postgres_server: str) -> Iterator[tuple[TestClient, str, str]]:
    """The app (API and worker) on a new schema, the application name its connections carry
    (by which the test finds and ends them), and the schema's URL."""
    name = f"tidings_outage_{secrets.token_hex(4)}"
    url = new_schema(postgres_server)
    settings = Settings(
        database_url=f"{url}&application_name={name}",
        allow_private_sinks=True,
        delivery_poll_s=60,  # deliveries come by LISTEN/NOTIFY, not by a poll
    )
    with TestClient(create_app(settings)) as client:
        yield client, name, url


def _backends(server_url: str, name: str, waiting_to: str | None = None) -> list[int]:
    """The process ids of the app's connections; with `waiting_to`, only those waiting on a
    lock in a statement that holds that text."""
    query = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
    params = [name]
    if waiting_to is not None:
        query += " AND wait_event_type = 'Lock' AND strpos(query, %s) > 0"
        params.append(waiting_to)
    with psycopg.connect(server_url, autocommit=True) as conn:
        return [pid for (pid,) in conn.execute(query, params).fetchall()]


def _terminate(server_url: str, pids: list[int]) -> None:
    """End those connections, as a restart, a failover or an administrator does."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _delivered(receiver: Receiver, event_id: str) -> bool:
    return any(r.header("ce-id") == event_id for r in receiver.received())


def _wait_for(condition: Any, what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.01)
    pytest.fail(f"no {what} within {timeout} s")


def test_connections_ended_by_the_server_are_replaced_before_use(
    served: tuple[TestClient, str, str], postgres_server: str, receivers: Any
) -> None:
    """Every connection of the API and the worker ends at once; the next requests succeed
    and the next event is delivered, with no request answered 5xx."""
    client, name, _ = served
    tenant = new_tenant(client)
    receiver: Receiver = receivers()
    created = client.post(
        "/v1/subscriptions",
        json={"parent": tenant.root, "sink": receiver.url},
        headers=auth(tenant.owner),
    )
    assert created.status_code == 201, created.text
    first = client.post("/v1/events", json=event(tenant.root), headers=auth(tenant.producer))
    assert first.status_code == 201, first.text
    _wait_for(lambda: _delivered(receiver, first.json()["id"]), "first delivery")

    ended = _backends(postgres_server, name)
    assert len(ended) >= 3  # the pool's connections and the worker's listener, at least
    _terminate(postgres_server, ended)
    _wait_for(lambda: not set(ended) & set(_backends(postgres_server, name)), "end of them")
    time.sleep(IDLE_CHECK_S)  # a restart takes longer: connections idle this long are checked

    listed = client.get("/v1/events", headers=auth(tenant.viewer))
    assert listed.status_code == 200, listed.text
    second = client.post("/v1/events", json=event(tenant.root), headers=auth(tenant.producer))
    assert second.status_code == 201, second.text
    _wait_for(lambda: _delivered(receiver, second.json()["id"]), "delivery after the end")
    assert len(listed.json()["events"]) == 2  # the first event and the subscription's record


def test_a_connection_that_breaks_under_a_request_is_a_503_and_stores_nothing(
    served: tuple[TestClient, str, str], postgres_server: str
) -> None:
    """An ingest waits on a lock the test holds; its connection is ended meanwhile. The
    answer is 503 with Retry-After, nothing is stored, and sending the event again stores it."""
    client, name, url = served
    tenant = new_tenant(client)
    body = event(tenant.root, id="held-up")
    answers: list[httpx.Response] = []
    with psycopg.connect(url) as holder:
        holder.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        sender = threading.Thread(
            target=lambda: answers.append(
                client.post("/v1/events", json=body, headers=auth(tenant.producer))
            )
        )
        sender.start()
        # The ingest's statement, not housekeeping's or the worker's, which the lock may hold
        # up too.
        waiting = _wait_for(
            lambda: _backends(postgres_server, name, waiting_to="WITH input AS MATERIALIZED"),
            "ingest waiting",
        )
        _terminate(postgres_server, waiting)
        sender.join(30)
        holder.rollback()
    [answer] = answers
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["error"]["code"] == "unavailable"

    listed = client.get(
        "/v1/events", params={"source": body["source"]}, headers=auth(tenant.viewer)
    )
    assert [e["id"] for e in listed.json()["events"]] == []
    again = client.post("/v1/events", json=body, headers=auth(tenant.producer))
    assert again.status_code == 201, again.text


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (psycopg.OperationalError("consuming input failed: server closed the connection"), True),
        (PoolTimeout("couldn't get a connection after 30.00 sec"), True),
        (psycopg.errors.AdminShutdown(), True),
        (psycopg.errors.DeadlockDetected(), True),
        (psycopg.errors.SerializationFailure(), True),
        (psycopg.errors.TooManyConnections(), True),
        (psycopg.errors.DiskFull(), True),
        (psycopg.errors.LockNotAvailable(), True),
        (psycopg.errors.ConnectionFailure(), True),
        (psycopg.errors.CannotConnectNow(), True),
        (psycopg.errors.ProgramLimitExceeded(), False),  # an index row too big: the request's
        (psycopg.errors.QueryCanceled(), False),  # a statement timeout: it would time out again
        (psycopg.errors.ProtocolViolation(), False),
        (psycopg.errors.DatabaseDropped(), False),
        (psycopg.errors.PipelineAborted(), False),
        (psycopg.errors.ObjectInUse(), False),
        (psycopg.errors.UndefinedFile(), False),
    ],
)
def test_only_errors_of_the_moment_are_answered_503(
    error: psycopg.OperationalError, transient: bool
) -> None:
    """A 503 says "send it again": never for an error the same request would meet again."""
    assert is_transient(error) is transient


@pytest.mark.parametrize(
    ("error", "status"),
    [(psycopg.errors.AdminShutdown(), 503), (psycopg.errors.ProgramLimitExceeded(), 500)],
)
def test_the_answer_follows_the_kind_of_error(
    app: FastAPI, error: psycopg.OperationalError, status: int
) -> None:
    @app.get("/v1/fails-for-this-test")
    async def fails() -> None:
        raise error

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/v1/fails-for-this-test")
    assert answer.status_code == status
    assert ("retry-after" in answer.headers) is (status == 503)
