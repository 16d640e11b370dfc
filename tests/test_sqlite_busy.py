"""SQLite held by another process past the busy timeout (a long write of a `tidings retention`
run from cron, a backup tool, an `sqlite3` shell left in a transaction): a request that cannot
get the write lock is a 503 to retry, with nothing stored, not a 500."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import auth, event, new_tenant
from tidings.api import create_app
from tidings.api.errors import is_transient
from tidings.config import Settings
from tidings.storage import sqlite_engine


@pytest.fixture
def client(
    backend: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    if backend != "sqlite":
        pytest.skip("the busy timeout is SQLite's")
    monkeypatch.setattr(sqlite_engine, "_BUSY_TIMEOUT_S", 1.0)
    with TestClient(create_app(Settings(database_url=database_url))) as client:
        yield client


def test_a_write_locked_out_past_the_busy_timeout_is_a_503_and_stores_nothing(
    client: TestClient, database_url: str
) -> None:
    """Meanwhile the loop goes on: a read is answered while the write waits for the lock."""
    tenant = new_tenant(client)
    answers: list[httpx.Response] = []
    other = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the write lock, held
    try:
        writing = threading.Thread(
            target=lambda: answers.append(
                client.post(
                    "/v1/events", json=event(tenant.root, id="held"), headers=auth(tenant.producer)
                )
            )
        )
        writing.start()
        listed = client.get("/v1/events", headers=auth(tenant.owner))
        assert listed.status_code == 200
        assert writing.is_alive()  # the read did not wait for the write's lock
        writing.join(30)
        assert not writing.is_alive(), "the write was never answered"
    finally:
        other.execute("ROLLBACK")
        other.close()
    [locked] = answers
    assert locked.status_code == 503, locked.text
    assert locked.headers["retry-after"] == "1"
    assert locked.json()["error"] == {
        "code": "unavailable",
        "message": "the database is locked by another process just now; retry",
        "details": [],
    }
    assert client.get("/v1/events/held", headers=auth(tenant.owner)).status_code == 404
    again = client.post(
        "/v1/events", json=event(tenant.root, id="held"), headers=auth(tenant.producer)
    )
    assert again.status_code == 201, again.text


@pytest.mark.parametrize(
    ("message", "code", "transient"),
    [
        ("database is locked", sqlite3.SQLITE_BUSY, True),
        ("database table is locked", sqlite3.SQLITE_LOCKED, True),
        ("disk I/O error", sqlite3.SQLITE_IOERR, False),
        ("database or disk is full", sqlite3.SQLITE_FULL, False),
        ("unable to open database file", sqlite3.SQLITE_CANTOPEN, False),
    ],
)
def test_only_a_lock_held_elsewhere_is_an_error_of_the_moment(
    message: str, code: int, transient: bool
) -> None:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code
    assert is_transient(error) is transient
